// Client channels to meshrt's gRPC services, with the same message limit as
// the server, and deadlines on every call (a peer that died is an error with a
// status within the deadline, never a hang).
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>

namespace meshrt::rpc {

// target: "host:port". Insecure (meshrt's services run inside a cluster's network).
// Channels to one target share a connection unless own_connection (a load
// generator's clients, each with a connection as an HTTP client has).
std::shared_ptr<grpc::Channel> make_channel(const std::string& target, size_t max_message_bytes = 64u << 20,
                                            bool own_connection = false);
// The same, reconnecting to a peer that went away at most max_reconnect_backoff
// after each attempt (gRPC's default backs off up to 120 s, so a restarted
// worker or server would wait that long to be found again).
std::shared_ptr<grpc::Channel> make_channel(const std::string& target, size_t max_message_bytes, bool own_connection,
                                            std::chrono::milliseconds max_reconnect_backoff);
// Waits up to `within` for the channel to connect; false if it did not.
bool wait_connected(const std::shared_ptr<grpc::Channel>& channel, std::chrono::milliseconds within);
// Sets the call's deadline to now + timeout.
void set_timeout(grpc::ClientContext& context, std::chrono::milliseconds timeout);

}  // namespace meshrt::rpc

#include "rpc/client.h"

#include <algorithm>
#include <climits>

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>

namespace meshrt::rpc {

namespace {

grpc::ChannelArguments channel_arguments(size_t max_message_bytes, bool own_connection) {
  grpc::ChannelArguments args;
  if (own_connection) args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  int max_bytes = max_message_bytes > static_cast<size_t>(INT_MAX) ? INT_MAX : static_cast<int>(max_message_bytes);
  args.SetMaxReceiveMessageSize(max_bytes);
  args.SetMaxSendMessageSize(max_bytes);
  return args;
}

}  // namespace

std::shared_ptr<grpc::Channel> make_channel(const std::string& target, size_t max_message_bytes, bool own_connection) {
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(),
                                   channel_arguments(max_message_bytes, own_connection));
}

std::shared_ptr<grpc::Channel> make_channel(const std::string& target, size_t max_message_bytes, bool own_connection,
                                            std::chrono::milliseconds max_reconnect_backoff) {
  grpc::ChannelArguments args = channel_arguments(max_message_bytes, own_connection);
  int backoff = static_cast<int>(std::max<int64_t>(1, max_reconnect_backoff.count()));
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, std::min(backoff, 100));
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, std::min(backoff, 100));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, backoff);
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
}

bool wait_connected(const std::shared_ptr<grpc::Channel>& channel, std::chrono::milliseconds within) {
  return channel->WaitForConnected(std::chrono::system_clock::now() + within);
}

void set_timeout(grpc::ClientContext& context, std::chrono::milliseconds timeout) {
  context.set_deadline(std::chrono::system_clock::now() + timeout);
}

}  // namespace meshrt::rpc

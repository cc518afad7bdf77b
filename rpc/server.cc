#include "rpc/server.h"

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>

#include "device/error.h"

namespace meshrt::rpc {

Server::Server(const ServerOptions& options, const std::vector<grpc::Service*>& services,
               grpc::CallbackGenericService* generic) {
  grpc::ServerBuilder builder;
  // An IPv6 literal needs brackets in a gRPC address.
  std::string host = options.address.find(':') != std::string::npos && options.address.front() != '['
                         ? "[" + options.address + "]"
                         : options.address;
  std::string address = host + ":" + std::to_string(options.port);
  int selected = 0;
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &selected);
  // No SO_REUSEPORT: a second server on a taken port must fail, not share it.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  int max_bytes = options.max_message_bytes > static_cast<size_t>(INT32_MAX) ? INT32_MAX
                                                                             : static_cast<int>(options.max_message_bytes);
  builder.SetMaxReceiveMessageSize(max_bytes);
  builder.SetMaxSendMessageSize(-1);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, static_cast<int>(options.keepalive_time.count()));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, static_cast<int>(options.keepalive_timeout.count()));
  // Keep pinging while nothing is sent (by default gRPC stops after two pings
  // without data), so an idle stream of a vanished client is found out.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  for (grpc::Service* s : services) builder.RegisterService(s);
  if (generic) builder.RegisterCallbackGenericService(generic);
  server_ = builder.BuildAndStart();
  MESHRT_CHECK(server_ && selected > 0, ErrorKind::kUnavailable, "cannot serve gRPC on ", address,
               " (the port is taken, or the address is not this machine's)");
  port_ = static_cast<uint16_t>(selected);
}

Server::~Server() { shutdown(std::chrono::milliseconds(0)); }

void Server::shutdown(std::chrono::milliseconds grace) {
  if (shut_down_ || !server_) return;
  shut_down_ = true;
  server_->Shutdown(std::chrono::system_clock::now() + grace);
  server_->Wait();
}

}  // namespace meshrt::rpc

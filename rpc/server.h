// A gRPC server for meshrt's services (callback API: a handler returns at once
// and finishes its call from whichever thread has the answer, as the engine's
// callbacks do). It binds when constructed, so a taken port is an error at
// start, with its address; port 0 takes any free port (port() says which).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/server.h>

namespace meshrt::rpc {

struct ServerOptions {
  std::string address = "0.0.0.0";
  uint16_t port = 0;  // 0: any free port
  // The largest message received (a request's tensors travel in one message);
  // what is sent is not bounded (an answer may be larger than its question).
  size_t max_message_bytes = 64u << 20;
  // Connections idle this long are pinged, with or without calls on them (an
  // open stream that carries nothing too); one that does not answer within
  // keepalive_timeout is closed (a client that vanished without a FIN).
  std::chrono::milliseconds keepalive_time{60000};
  std::chrono::milliseconds keepalive_timeout{20000};
};

class Server {
 public:
  // Registers the services (not owned: they must outlive the server), and the
  // generic service that takes every method the others do not (rpc/relay.h),
  // binds and starts. Throws Error(kUnavailable) naming the address when it cannot bind.
  Server(const ServerOptions& options, const std::vector<grpc::Service*>& services,
         grpc::CallbackGenericService* generic = nullptr);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  uint16_t port() const { return port_; }
  // Stops accepting calls; calls in flight get `grace` to finish, then are
  // cancelled. Idempotent; returns when every call is done.
  void shutdown(std::chrono::milliseconds grace);

 private:
  std::unique_ptr<grpc::Server> server_;
  uint16_t port_ = 0;
  bool shut_down_ = false;
};

}  // namespace meshrt::rpc

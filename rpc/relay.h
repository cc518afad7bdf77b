// A gRPC relay: every call on its port, whatever the service and method,
// forwarded as bytes to an upstream server chosen per call, and the answers
// (one or many, then the status) back. The supervisor uses it to own the
// public gRPC port of a job it relaunches: while there is no upstream, calls
// get UNAVAILABLE with the reason, as HTTP clients get 503.
//
// Each call is one upstream call: messages pass one at a time in each
// direction (a message read from the client is written upstream before the
// next is read, and likewise back), the client's deadline goes upstream with
// it, a client that cancels cancels the upstream call, and the upstream status
// (code, message) is the client's.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "rpc/server.h"

namespace meshrt::rpc {

class Relay {
 public:
  // The upstream to relay a call to now ("host:port"), or nullopt and why not.
  using Upstream = std::function<std::optional<std::string>(std::string* why_not)>;

  // Binds and starts (Error(kUnavailable) when the port is taken).
  Relay(const ServerOptions& options, Upstream upstream);
  ~Relay();
  Relay(const Relay&) = delete;
  Relay& operator=(const Relay&) = delete;

  uint16_t port() const;
  // Calls being relayed.
  size_t in_flight() const;
  // Stops taking calls; those in flight get `grace`, then are cancelled.
  void shutdown(std::chrono::milliseconds grace);

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace meshrt::rpc

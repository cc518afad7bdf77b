// A client of one parameter server (rpc/proto/cluster.proto's
// ParameterServer service), used by workers, the coordinator and the
// checkpoint manager. Every call has a deadline (PsClientOptions::timeout):
// a server that died or hangs is an Error within it, never a hang; a server
// that is restarting (its connection in backoff) is waited for within it.
//
// Errors: the server unreachable, gone or past the deadline (gRPC
// UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED) is Error(kUnavailable) whose
// message names the server ("ps 1 (localhost:2227) is unavailable: ...");
// a variable the server does not hold (NOT_FOUND: it restarted and lost
// them) is Error(kUnavailable) too; a refusal (INVALID_ARGUMENT, ...) is
// Error(kInvalidArgument) with the server's message, also naming the server.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "device/tensor.h"
#include "rpc/proto/cluster.grpc.pb.h"
#include "training/optimizers.h"

namespace meshrt::cluster {

struct PsClientOptions {
  std::chrono::milliseconds timeout{30000};
  size_t max_message_bytes = 256u << 20;
};

// The gradient of one variable shard: dense (of its shape), or sparse (ids
// local to the shard and rows [ids, row...]).
struct GradientUpdate {
  std::string name;
  HostTensor dense;
  std::vector<int64_t> ids;
  HostTensor rows;
};

struct ApplyResult {
  int applied = 0;     // variables updated by this call
  int duplicates = 0;  // variables that had applied this step id already (a retried step)
};

class PsClient {
 public:
  PsClient(int index, std::string address, PsClientOptions options = {});
  int index() const { return index_; }
  const std::string& address() const { return address_; }
  // "ps 1 (localhost:2227)"
  std::string describe() const;

  // True when created; false when the variable existed already (same dtype
  // and shape: it keeps its value; another shape is an error).
  bool create_variable(const std::string& name, const HostTensor& initial, const OptimizerConfig& optimizer);
  // Values in the order of names.
  std::vector<HostTensor> read(const std::vector<std::string>& names);
  // Rows of a variable by ids local to it: [ids, row...].
  HostTensor read_rows(const std::string& name, const std::vector<int64_t>& ids);
  // Applies the gradients of step_id (each variable at most once per step
  // id); done_below: every step id below it has finished (the server drops
  // late applies of those and forgets their ids).
  ApplyResult apply(int64_t step_id, const std::vector<GradientUpdate>& gradients, int64_t done_below = 0);
  // Checkpoints: the server writes (reads) path on its own file system.
  int64_t save(const std::string& path);
  // After a restore the server drops applies of step ids below fence_step_id.
  int restore(const std::string& path, int64_t fence_step_id = 0);
  StatusResponse status();

 private:
  // Throws the Error for a failed call of method.
  [[noreturn]] void fail(const char* method, const grpc::Status& status) const;
  void prepare(grpc::ClientContext& context) const;
  // One call of method with the deadline; throws its failure.
  template <class Request, class Response>
  void call(const char* method,
            grpc::Status (ParameterServer::Stub::*rpc)(grpc::ClientContext*, const Request&, Response*),
            const Request& request, Response& response);

  int index_;
  std::string address_;
  PsClientOptions options_;
  std::unique_ptr<ParameterServer::Stub> stub_;
};

// The optimizer a config names (training/optimizers.h); Keras's defaults for
// fields left 0. Throws Error(kInvalidArgument) for an unknown kind.
std::unique_ptr<training::Optimizer> make_optimizer(const OptimizerConfig& config);

}  // namespace meshrt::cluster

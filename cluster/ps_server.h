// A parameter server task (seed 003's "ps"): holds variable shards in host
// memory (the cpu device), each with its own optimizer (the config it was
// created with), and serves rpc/proto/cluster.proto's ParameterServer.
//
// - CreateVariable: a new shard with its initial value; an existing one of
//   the same dtype and shape keeps its value (created = false), so a
//   coordinator that starts again after a restore does not reset it.
// - Read / ReadRows: copies of the values (a read never sees half an update:
//   each shard's update runs under its lock).
// - Apply: per variable, atomically, the optimizer's step on the gradient
//   (dense, or sparse rows: a lazy update, training/optimizers.h), at most
//   once per step id: a step id the shard applied already is skipped and
//   counted as a duplicate (a step retried after its worker died).
// - Save / Restore: every shard's value, its optimizer's slots and
//   iterations, and the step ids it applied, in one safetensors file written
//   atomically (a temporary file, fsync, rename).
// - Status: the shards, their update counts, the gradient bytes applied.
//
// Asynchronous training: updates from different workers interleave; each
// shard applies one at a time.
#pragma once

#include <chrono>
#include <memory>

#include "rpc/server.h"

namespace meshrt::cluster {

class PsService;

class PsServer {
 public:
  // Binds (options.port 0: any free port) and starts serving; throws
  // Error(kUnavailable) naming the address when it cannot bind.
  PsServer(int task_index, const rpc::ServerOptions& options);
  ~PsServer();
  PsServer(const PsServer&) = delete;
  PsServer& operator=(const PsServer&) = delete;

  uint16_t port() const;
  int task_index() const { return task_index_; }
  // Stops serving: calls in flight get grace to finish.
  void shutdown(std::chrono::milliseconds grace);

 private:
  int task_index_;
  std::unique_ptr<PsService> service_;
  std::unique_ptr<rpc::Server> server_;
};

}  // namespace meshrt::cluster

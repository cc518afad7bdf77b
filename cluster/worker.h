// A worker task (seed 003's "worker"): runs step functions the coordinator
// schedules, by name, one at a time, on its own device, against the
// parameter servers. Functions and the datasets they read are registered in
// the binary (FunctionRegistry): every task of a job runs the same binary,
// so a name means the same code everywhere.
//
// A worker's dataset is created on first use by its dataset function, with
// the worker's index and the number of workers (each worker reads its own
// shard), and kept in the worker's process: each step continues where the
// last one left off. A worker that is restarted creates it again (seed
// 003's per-worker datasets, recreated when a worker comes back).
//
// Errors in a step: a parameter server that is unavailable (PsClient's
// Error(kUnavailable)) answers ABORTED naming the server, which the
// coordinator reports as the cluster's failure (not the worker's: another
// worker would meet the same server); any other error answers with its
// status (rpc/status.h) and fails that step.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "cluster/cluster_spec.h"
#include "cluster/ps_client.h"
#include "device/tensor.h"
#include "rpc/server.h"

namespace meshrt::cluster {

struct Batch {
  HostTensor inputs, targets;
};

class Dataset {
 public:
  virtual ~Dataset() = default;
  // The next batch (a repeated dataset never ends).
  virtual Batch next() = 0;
};

using DatasetFunction = std::function<std::unique_ptr<Dataset>(int worker_index, int num_workers)>;

class WorkerContext;
// A step function: its arguments and result are JSON text.
using StepFunction = std::function<std::string(WorkerContext& context, const std::string& args)>;

class FunctionRegistry {
 public:
  // Throws Error(kInvalidArgument) when the name is taken.
  void add_function(const std::string& name, StepFunction function);
  // Throws Error(kInvalidArgument) naming the registered ones when there is no such name.
  const StepFunction& function(const std::string& name) const;
  std::vector<std::string> function_names() const;

 private:
  std::map<std::string, StepFunction> functions_;
};

// What a step function sees.
class WorkerContext {
 public:
  WorkerContext(int worker_index, int num_workers, Device device, std::vector<PsClient> ps);
  int worker_index() const { return worker_index_; }
  int num_workers() const { return num_workers_; }
  const Device& device() const { return device_; }
  // One client per parameter server, in task order.
  std::vector<PsClient>& ps() { return ps_; }
  // The running step's id (the coordinator's; a retried step keeps its id).
  int64_t step_id() const { return step_id_; }
  void set_step_id(int64_t id) { step_id_ = id; }
  // Every step id below this has finished (the coordinator's word, for the
  // servers: PsClient::apply's done_below).
  int64_t done_below() const { return done_below_; }
  void set_done_below(int64_t id) { done_below_ = id; }
  // The worker's dataset under key, made on first use by make(worker_index,
  // num_workers) (the key names the dataset and its settings).
  Dataset& dataset(const std::string& key, const DatasetFunction& make);
  // State a program keeps on the worker between steps (its model, say),
  // created on first use by make.
  template <class T>
  T& state(const std::string& key, const std::function<std::unique_ptr<T>()>& make) {
    auto it = state_.find(key);
    if (it == state_.end()) {
      std::unique_ptr<T> made = make();
      T& ref = *made;
      state_.emplace(key, std::shared_ptr<void>(std::move(made)));
      return ref;
    }
    return *static_cast<T*>(it->second.get());
  }

 private:
  int worker_index_, num_workers_;
  Device device_;
  std::vector<PsClient> ps_;
  int64_t step_id_ = -1, done_below_ = 0;
  std::map<std::string, std::unique_ptr<Dataset>> datasets_;
  std::map<std::string, std::shared_ptr<void>> state_;
};

struct WorkerOptions {
  rpc::ServerOptions server;
  PsClientOptions ps;
  Device device = Device::cpu();
};

class WorkerService;

class WorkerServer {
 public:
  // Serves worker task `index` of cluster (binds options.server; port 0: any).
  WorkerServer(int index, const ClusterSpec& cluster, const FunctionRegistry& registry, WorkerOptions options);
  ~WorkerServer();
  WorkerServer(const WorkerServer&) = delete;
  WorkerServer& operator=(const WorkerServer&) = delete;
  uint16_t port() const;
  int64_t steps_run() const;
  // Stops serving: queued calls are answered UNAVAILABLE without running, a
  // step in flight gets grace to finish.
  void shutdown(std::chrono::milliseconds grace);

 private:
  std::unique_ptr<WorkerService> service_;
  std::unique_ptr<rpc::Server> server_;
};

}  // namespace meshrt::cluster

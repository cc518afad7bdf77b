// The coordinator (seed 003's ClusterCoordinator, run by the chief):
// schedules step functions onto the workers and returns futures.
//
//   Coordinator coordinator(cluster);
//   RemoteValue loss = coordinator.schedule("avenger.train_step");  // returns at once
//   coordinator.join();                // waits for everything scheduled
//   std::string result = loss.fetch(); // the function's JSON result
//
// Each scheduled function (a closure) gets a step id, kept when it is
// retried; the parameter servers apply each step id at most once. One
// dispatcher thread per worker takes closures from one queue, so a free
// worker takes the next one (the seed's load balancing).
//
// Failures:
// - A worker that dies or stops answering (its call fails UNAVAILABLE or
//   passes step_timeout): the closure goes back to the front of the queue
//   for another worker (counted in retried()), and the worker is pinged
//   every ping_interval until it answers again; a restarted worker on the
//   same address rejoins and gets work. A closure that lost its worker
//   max_attempts times fails (a step that kills or outlasts every worker),
//   and when no worker has answered for worker_wait while closures wait,
//   the cluster fails as below.
// - A parameter server that is unavailable (the worker answers ABORTED, its
//   message naming the server): the cluster has failed. Every waiting
//   closure fails at once with Error(kUnavailable) naming the server, calls
//   in flight are cancelled, later schedule() calls fail the same way, and
//   join() throws it: restart the cluster and restore the latest checkpoint
//   (cluster/checkpoint.h).
// - Any other failure of the function: that closure fails with its error,
//   and join() throws the first such error.
//
// A retried step keeps its id, and each variable shard applies an id at
// most once; but a worker lost between its updates to two servers has
// updated one of them, and the retry (another batch) then updates only the
// other: at most once per shard, not all or nothing across shards.
#pragma once

#include <chrono>
#include <cstdint>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "cluster/cluster_spec.h"

namespace meshrt::cluster {

namespace detail {
struct Closure;
}

class RemoteValue {
 public:
  RemoteValue() = default;
  // Whether the closure finished (with a value or an error).
  bool done() const;
  // Waits for the closure; its result, or throws its error.
  std::string fetch() const;
  int64_t step_id() const;
  // The worker that ran it (-1 before it finished).
  int worker() const;
  // Calls made (more than 1 after a worker was lost).
  int attempts() const;

 private:
  friend class Coordinator;
  explicit RemoteValue(std::shared_ptr<detail::Closure> closure) : closure_(std::move(closure)) {}
  std::shared_ptr<detail::Closure> closure_;
};

struct CoordinatorOptions {
  // The deadline of one step on a worker: past it, the worker counts as lost.
  std::chrono::milliseconds step_timeout{120000};
  // How often a lost worker is pinged, and each ping's deadline.
  std::chrono::milliseconds ping_interval{200};
  std::chrono::milliseconds ping_timeout{1000};
  // Calls a closure may make before it fails (each lost worker is one).
  int max_attempts = 5;
  // How long closures may wait with no worker answering before the cluster fails.
  std::chrono::milliseconds worker_wait{300000};
};

struct WorkerStatus {
  int index = 0;
  std::string address;
  bool up = false;
  int64_t steps = 0;      // closures it finished for this coordinator
  int64_t restarts = 0;   // times it came back as a new process
  int64_t losses = 0;     // times it was found lost
};

class Coordinator {
 public:
  // Starts a dispatcher per worker of cluster (at least one).
  explicit Coordinator(const ClusterSpec& cluster, CoordinatorOptions options = {});
  // Stops the dispatchers: closures not yet run fail ("the coordinator stopped").
  ~Coordinator();
  Coordinator(const Coordinator&) = delete;
  Coordinator& operator=(const Coordinator&) = delete;

  // Queues function (registered by that name in the workers' binary) with
  // args (JSON text); returns at once.
  RemoteValue schedule(const std::string& function, const std::string& args = "{}");
  // Waits until every scheduled closure finished; throws the first error
  // among those that finished since the last join (then forgets it).
  void join();
  // Whether every scheduled closure finished.
  bool done() const;

  int64_t scheduled() const;
  int64_t completed() const;  // finished with a value
  int64_t failed() const;     // finished with an error
  int64_t retried() const;    // calls repeated after a worker was lost
  // The cluster's failure (a parameter server lost, no worker left), if any.
  std::exception_ptr cluster_failure() const;
  std::vector<WorkerStatus> workers() const;
  // The next step id (after a restore, the saved step, so that ids never repeat).
  int64_t next_step_id() const;
  void set_next_step_id(int64_t id);

 private:
  struct State;
  std::shared_ptr<State> state_;
};

}  // namespace meshrt::cluster

#include "cluster/coordinator.h"

#include <condition_variable>
#include <deque>
#include <mutex>
#include <set>
#include <thread>

#include "device/error.h"
#include "device/log.h"
#include "rpc/client.h"
#include "rpc/proto/cluster.grpc.pb.h"
#include "rpc/status.h"

namespace meshrt::cluster {

namespace detail {

struct Closure {
  std::string function, args;
  int64_t step_id = 0;
  mutable std::mutex mu;
  mutable std::condition_variable cv;
  bool finished = false;
  std::string value;
  std::exception_ptr error;
  int worker = -1;
  int attempts = 0;

  void finish(std::string result, std::exception_ptr failure, int by) {
    {
      std::lock_guard<std::mutex> lock(mu);
      value = std::move(result);
      error = std::move(failure);
      worker = by;
      finished = true;
    }
    cv.notify_all();
  }
};

}  // namespace detail

using detail::Closure;

bool RemoteValue::done() const {
  MESHRT_CHECK_ARG(closure_ != nullptr, "RemoteValue: empty");
  std::lock_guard<std::mutex> lock(closure_->mu);
  return closure_->finished;
}

std::string RemoteValue::fetch() const {
  MESHRT_CHECK_ARG(closure_ != nullptr, "RemoteValue: empty");
  std::unique_lock<std::mutex> lock(closure_->mu);
  closure_->cv.wait(lock, [&] { return closure_->finished; });
  if (closure_->error) std::rethrow_exception(closure_->error);
  return closure_->value;
}

int64_t RemoteValue::step_id() const { return closure_ ? closure_->step_id : -1; }

int RemoteValue::worker() const {
  if (!closure_) return -1;
  std::lock_guard<std::mutex> lock(closure_->mu);
  return closure_->worker;
}

int RemoteValue::attempts() const {
  if (!closure_) return 0;
  std::lock_guard<std::mutex> lock(closure_->mu);
  return closure_->attempts;
}

struct Coordinator::State {
  struct WorkerSlot {
    WorkerStatus status;
    std::unique_ptr<Worker::Stub> stub;
    int64_t started_ms = -1;
    grpc::ClientContext* in_flight = nullptr;  // the Run call being made (cancelled on stop or failure)
  };

  CoordinatorOptions options;
  mutable std::mutex mu;
  std::condition_variable work_cv, idle_cv;
  std::deque<std::shared_ptr<Closure>> queue;
  int64_t scheduled = 0, completed = 0, failed = 0, retried = 0, next_step = 0;
  std::exception_ptr first_error, cluster_failure;
  std::set<int64_t> unfinished;  // step ids scheduled and not finished (join waits for it to empty)
  bool stopping = false;
  std::chrono::steady_clock::time_point last_answer = std::chrono::steady_clock::now();
  std::vector<WorkerSlot> workers;
  std::vector<std::thread> threads;

  // Counts the outcome, then wakes the closure's waiters (so that a fetch()
  // sees the counters already updated) and join().
  void finish(const std::shared_ptr<Closure>& closure, std::string value, std::exception_ptr error, int worker) {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (error) {
        ++failed;
        if (!first_error) first_error = error;
      } else {
        ++completed;
        if (worker >= 0) ++workers[static_cast<size_t>(worker)].status.steps;
      }
      unfinished.erase(closure->step_id);
    }
    closure->finish(std::move(value), error, worker);
    idle_cv.notify_all();
  }

  // The cluster failed (under mu): every waiting closure fails with error,
  // calls in flight are cancelled; returns the closures to finish.
  std::deque<std::shared_ptr<Closure>> fail_cluster_locked(std::exception_ptr error) {
    if (!cluster_failure) cluster_failure = error;
    for (WorkerSlot& w : workers) {
      if (w.in_flight != nullptr) w.in_flight->TryCancel();
    }
    std::deque<std::shared_ptr<Closure>> waiting;
    waiting.swap(queue);
    return waiting;
  }

  void fail_all(std::deque<std::shared_ptr<Closure>> closures, std::exception_ptr error) {
    for (const std::shared_ptr<Closure>& c : closures) finish(c, "", error, -1);
  }

  // Waits up to d unless stopping; returns false when stopping.
  bool pause(std::chrono::milliseconds d) {
    std::unique_lock<std::mutex> lock(mu);
    work_cv.wait_for(lock, d, [&] { return stopping; });
    return !stopping;
  }

  // Notes a worker's process start (from Ping or Run) under mu.
  void note_start_locked(int i, int64_t started_ms) {
    WorkerSlot& w = workers[static_cast<size_t>(i)];
    if (w.started_ms != -1 && w.started_ms != started_ms) {
      ++w.status.restarts;
      log::info(meshrt::detail::cat("coordinator: worker ", i, " (", w.status.address, ") is back as a new process"));
    }
    w.started_ms = started_ms;
    last_answer = std::chrono::steady_clock::now();
  }

  bool ping(int i) {
    PingRequest request;
    PingResponse response;
    grpc::ClientContext context;
    rpc::set_timeout(context, options.ping_timeout);
    grpc::Status status = workers[static_cast<size_t>(i)].stub->Ping(&context, request, &response);
    if (!status.ok()) return false;
    std::lock_guard<std::mutex> lock(mu);
    note_start_locked(i, response.started_unix_ms());
    workers[static_cast<size_t>(i)].status.up = true;
    return true;
  }

  // While no worker answers and closures wait, the cluster fails after worker_wait.
  void check_worker_wait() {
    std::deque<std::shared_ptr<Closure>> failed_now;
    std::exception_ptr error;
    {
      std::lock_guard<std::mutex> lock(mu);
      bool any_up = false;
      for (const WorkerSlot& w : workers) any_up = any_up || w.status.up;
      if (any_up || queue.empty() || cluster_failure ||
          std::chrono::steady_clock::now() - last_answer < options.worker_wait) {
        return;
      }
      error = std::make_exception_ptr(Error(
          ErrorKind::kUnavailable, meshrt::detail::cat("no worker answered for ", options.worker_wait.count(),
                                                       " ms while ", queue.size(), " step(s) waited")));
      failed_now = fail_cluster_locked(error);
    }
    fail_all(std::move(failed_now), error);
  }

  void dispatch(int i) {
    WorkerSlot& w = workers[static_cast<size_t>(i)];
    for (;;) {
      bool up;
      {
        std::lock_guard<std::mutex> lock(mu);
        if (stopping) return;
        up = w.status.up;
      }
      if (!up) {
        if (ping(i)) continue;
        check_worker_wait();
        if (!pause(options.ping_interval)) return;
        continue;
      }
      std::shared_ptr<Closure> closure;
      grpc::ClientContext context;
      RunRequest request;
      {
        std::unique_lock<std::mutex> lock(mu);
        work_cv.wait(lock, [&] { return stopping || !queue.empty(); });
        if (stopping) return;
        closure = queue.front();
        queue.pop_front();
        w.in_flight = &context;
        request.set_done_below(unfinished.empty() ? next_step : *unfinished.begin());
      }
      int attempts;
      {
        std::lock_guard<std::mutex> lock(closure->mu);
        attempts = ++closure->attempts;
      }
      request.set_function(closure->function);
      request.set_step_id(closure->step_id);
      request.set_args(closure->args);
      RunResponse response;
      rpc::set_timeout(context, options.step_timeout);
      grpc::Status status = w.stub->Run(&context, request, &response);
      const grpc::StatusCode code = status.error_code();
      std::exception_ptr failure;  // the closure's, when it ends here with an error
      std::deque<std::shared_ptr<Closure>> failed_now;
      {
        std::lock_guard<std::mutex> lock(mu);
        w.in_flight = nullptr;
        if (status.ok()) {
          note_start_locked(i, response.started_unix_ms());
        } else if (stopping) {
          failure = std::make_exception_ptr(Error(ErrorKind::kUnavailable, "the coordinator stopped"));
        } else if (cluster_failure) {
          failure = cluster_failure;
        } else if (code == grpc::StatusCode::ABORTED) {
          // The worker met a parameter server it could not reach: the cluster failed.
          failure = std::make_exception_ptr(Error(ErrorKind::kUnavailable, status.error_message()));
          failed_now = fail_cluster_locked(failure);
        } else if (code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::DEADLINE_EXCEEDED ||
                   code == grpc::StatusCode::CANCELLED) {
          ++w.status.losses;
          w.status.up = false;
          log::warn(meshrt::detail::cat("coordinator: worker ", i, " (", w.status.address, ") lost during step ",
                                        closure->step_id, " (", rpc::code_name(code), ": ", status.error_message(),
                                        ")", attempts < options.max_attempts ? "; the step goes to another worker" : ""));
          if (attempts < options.max_attempts) {
            // The worker is lost: the closure goes to another one, first in line.
            queue.push_front(closure);
            ++retried;
            work_cv.notify_all();
            continue;
          }
          failure = std::make_exception_ptr(
              Error(ErrorKind::kUnavailable, meshrt::detail::cat("step ", closure->step_id, " (", closure->function,
                                                                 ") lost its worker ", attempts, " times")));
        } else {
          ErrorKind kind =
              code == grpc::StatusCode::INVALID_ARGUMENT ? ErrorKind::kInvalidArgument : ErrorKind::kInternal;
          failure = std::make_exception_ptr(Error(kind, meshrt::detail::cat("step function ", closure->function, " (step ",
                                                                            closure->step_id, ") on worker ", i, ": ",
                                                                            rpc::code_name(code), ": ",
                                                                            status.error_message())));
        }
      }
      if (status.ok()) {
        finish(closure, response.result(), nullptr, i);
      } else {
        finish(closure, "", failure, i);
        fail_all(std::move(failed_now), failure);
      }
    }
  }
};

Coordinator::Coordinator(const ClusterSpec& cluster, CoordinatorOptions options)
    : state_(std::make_shared<State>()) {
  MESHRT_CHECK_ARG(cluster.num_tasks(TaskType::kWorker) > 0, "Coordinator: the cluster has no worker");
  MESHRT_CHECK_ARG(options.step_timeout.count() > 0 && options.ping_interval.count() > 0 &&
                       options.ping_timeout.count() > 0 && options.worker_wait.count() > 0 && options.max_attempts >= 1,
                   "Coordinator: timeouts, the ping interval and worker_wait must be > 0, max_attempts >= 1");
  state_->options = options;
  for (int i = 0; i < cluster.num_tasks(TaskType::kWorker); ++i) {
    State::WorkerSlot slot;
    slot.status.index = i;
    slot.status.address = cluster.address({TaskType::kWorker, i});
    // Reconnects within half a second of a restarted worker coming back.
    slot.stub = Worker::NewStub(rpc::make_channel(slot.status.address, 64u << 20, false, std::chrono::milliseconds(500)));
    state_->workers.push_back(std::move(slot));
  }
  for (int i = 0; i < cluster.num_tasks(TaskType::kWorker); ++i) {
    state_->threads.emplace_back([state = state_.get(), i] { state->dispatch(i); });
  }
}

Coordinator::~Coordinator() {
  std::deque<std::shared_ptr<Closure>> left;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->stopping = true;
    for (State::WorkerSlot& w : state_->workers) {
      if (w.in_flight != nullptr) w.in_flight->TryCancel();
    }
    left.swap(state_->queue);
  }
  state_->work_cv.notify_all();
  for (std::thread& t : state_->threads) t.join();
  {
    // Nothing is queued after the threads end, but a closure put back just
    // before they saw the stop is still here.
    std::lock_guard<std::mutex> lock(state_->mu);
    for (const std::shared_ptr<Closure>& c : state_->queue) left.push_back(c);
    state_->queue.clear();
  }
  state_->fail_all(std::move(left), std::make_exception_ptr(Error(ErrorKind::kUnavailable, "the coordinator stopped")));
}

RemoteValue Coordinator::schedule(const std::string& function, const std::string& args) {
  auto closure = std::make_shared<Closure>();
  closure->function = function;
  closure->args = args;
  std::exception_ptr failed;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    MESHRT_CHECK_ARG(!state_->stopping, "Coordinator::schedule: the coordinator is stopping");
    closure->step_id = state_->next_step++;
    ++state_->scheduled;
    state_->unfinished.insert(closure->step_id);
    failed = state_->cluster_failure;
    if (!failed) state_->queue.push_back(closure);
  }
  if (failed) {
    // The cluster failed: nothing more runs until it is started again.
    state_->finish(closure, "", failed, -1);
  } else {
    state_->work_cv.notify_one();
  }
  return RemoteValue(closure);
}

void Coordinator::join() {
  std::unique_lock<std::mutex> lock(state_->mu);
  state_->idle_cv.wait(lock, [&] { return state_->unfinished.empty(); });
  if (state_->first_error) {
    std::exception_ptr error = state_->first_error;
    state_->first_error = nullptr;
    std::rethrow_exception(error);
  }
}

bool Coordinator::done() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->unfinished.empty();
}

int64_t Coordinator::scheduled() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->scheduled;
}

int64_t Coordinator::completed() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->completed;
}

int64_t Coordinator::failed() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->failed;
}

int64_t Coordinator::retried() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->retried;
}

std::exception_ptr Coordinator::cluster_failure() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->cluster_failure;
}

std::vector<WorkerStatus> Coordinator::workers() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  std::vector<WorkerStatus> out;
  for (const State::WorkerSlot& w : state_->workers) out.push_back(w.status);
  return out;
}

int64_t Coordinator::next_step_id() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->next_step;
}

void Coordinator::set_next_step_id(int64_t id) {
  std::lock_guard<std::mutex> lock(state_->mu);
  MESHRT_CHECK_ARG(id >= state_->next_step || state_->scheduled == 0, "Coordinator::set_next_step_id: ", id,
                   " would repeat step ids already given out (next is ", state_->next_step, ")");
  state_->next_step = id;
}

}  // namespace meshrt::cluster

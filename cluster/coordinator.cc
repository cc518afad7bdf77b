#include "cluster/coordinator.h"

#include <condition_variable>
#include <deque>
#include <mutex>
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
    grpc::ClientContext* in_flight = nullptr;  // the Run call being made (cancelled on stop)
  };

  CoordinatorOptions options;
  mutable std::mutex mu;
  std::condition_variable work_cv, idle_cv;
  std::deque<std::shared_ptr<Closure>> queue;
  int64_t scheduled = 0, completed = 0, failed = 0, retried = 0, outstanding = 0, next_step = 0;
  std::exception_ptr first_error;
  bool stopping = false;
  std::vector<WorkerSlot> workers;
  std::vector<std::thread> threads;

  void finish(const std::shared_ptr<Closure>& closure, std::string value, std::exception_ptr error, int worker) {
    closure->finish(std::move(value), error, worker);
    std::lock_guard<std::mutex> lock(mu);
    if (error) {
      ++failed;
      if (!first_error) first_error = error;
    } else {
      ++completed;
      if (worker >= 0) ++workers[static_cast<size_t>(worker)].status.steps;
    }
    --outstanding;
    idle_cv.notify_all();
  }

  // Waits up to d unless stopping; returns false when stopping.
  bool pause(std::chrono::milliseconds d) {
    std::unique_lock<std::mutex> lock(mu);
    work_cv.wait_for(lock, d, [&] { return stopping; });
    return !stopping;
  }

  bool ping(int i) {
    PingRequest request;
    PingResponse response;
    grpc::ClientContext context;
    rpc::set_timeout(context, options.ping_timeout);
    grpc::Status status = workers[static_cast<size_t>(i)].stub->Ping(&context, request, &response);
    if (!status.ok()) return false;
    std::lock_guard<std::mutex> lock(mu);
    WorkerSlot& w = workers[static_cast<size_t>(i)];
    if (w.started_ms != -1 && w.started_ms != response.started_unix_ms()) {
      ++w.status.restarts;
      log::info(meshrt::detail::cat("coordinator: worker ", i, " (", w.status.address, ") is back as a new process"));
    } else if (w.started_ms != -1) {
      log::info(meshrt::detail::cat("coordinator: worker ", i, " (", w.status.address, ") answers again"));
    }
    w.started_ms = response.started_unix_ms();
    w.status.up = true;
    return true;
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
        if (!ping(i) && !pause(options.ping_interval)) return;
        continue;
      }
      std::shared_ptr<Closure> closure;
      grpc::ClientContext context;
      {
        std::unique_lock<std::mutex> lock(mu);
        work_cv.wait(lock, [&] { return stopping || !queue.empty(); });
        if (stopping) return;
        closure = queue.front();
        queue.pop_front();
        w.in_flight = &context;
      }
      {
        std::lock_guard<std::mutex> lock(closure->mu);
        ++closure->attempts;
      }
      RunRequest request;
      request.set_function(closure->function);
      request.set_step_id(closure->step_id);
      request.set_args(closure->args);
      RunResponse response;
      rpc::set_timeout(context, options.step_timeout);
      grpc::Status status = w.stub->Run(&context, request, &response);
      bool stopped;
      {
        std::lock_guard<std::mutex> lock(mu);
        w.in_flight = nullptr;
        stopped = stopping;
      }
      if (status.ok()) {
        finish(closure, response.result(), nullptr, i);
        continue;
      }
      const grpc::StatusCode code = status.error_code();
      if (stopped) {
        finish(closure, "", std::make_exception_ptr(Error(ErrorKind::kUnavailable, "the coordinator stopped")), -1);
        return;
      }
      if (code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::DEADLINE_EXCEEDED ||
          code == grpc::StatusCode::CANCELLED) {
        // The worker is lost: the closure goes to another one, first in line.
        log::warn(meshrt::detail::cat("coordinator: worker ", i, " (", w.status.address, ") lost during step ",
                                      closure->step_id, " (", rpc::code_name(code), ": ", status.error_message(),
                                      "); the step goes to another worker"));
        std::lock_guard<std::mutex> lock(mu);
        queue.push_front(closure);
        ++retried;
        ++w.status.losses;
        w.status.up = false;
        work_cv.notify_all();
        continue;
      }
      std::exception_ptr error;
      if (code == grpc::StatusCode::ABORTED) {
        // The worker met a parameter server it could not reach.
        error = std::make_exception_ptr(Error(ErrorKind::kUnavailable, status.error_message()));
      } else {
        ErrorKind kind = code == grpc::StatusCode::INVALID_ARGUMENT ? ErrorKind::kInvalidArgument : ErrorKind::kInternal;
        error = std::make_exception_ptr(Error(kind, "step function " + closure->function + " (step " +
                                                        std::to_string(closure->step_id) + ") on worker " +
                                                        std::to_string(i) + ": " + rpc::code_name(code) + ": " +
                                                        status.error_message()));
      }
      finish(closure, "", error, i);
    }
  }
};

Coordinator::Coordinator(const ClusterSpec& cluster, CoordinatorOptions options)
    : state_(std::make_shared<State>()) {
  MESHRT_CHECK_ARG(cluster.num_tasks(TaskType::kWorker) > 0, "Coordinator: the cluster has no worker");
  MESHRT_CHECK_ARG(options.step_timeout.count() > 0 && options.ping_interval.count() > 0 &&
                       options.ping_timeout.count() > 0,
                   "Coordinator: timeouts and the ping interval must be > 0");
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
  for (const std::shared_ptr<Closure>& c : left) {
    state_->finish(c, "", std::make_exception_ptr(Error(ErrorKind::kUnavailable, "the coordinator stopped")), -1);
  }
}

RemoteValue Coordinator::schedule(const std::string& function, const std::string& args) {
  auto closure = std::make_shared<Closure>();
  closure->function = function;
  closure->args = args;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    MESHRT_CHECK_ARG(!state_->stopping, "Coordinator::schedule: the coordinator is stopping");
    closure->step_id = state_->next_step++;
    ++state_->scheduled;
    ++state_->outstanding;
    state_->queue.push_back(closure);
  }
  state_->work_cv.notify_one();
  return RemoteValue(closure);
}

void Coordinator::join() {
  std::unique_lock<std::mutex> lock(state_->mu);
  state_->idle_cv.wait(lock, [&] { return state_->outstanding == 0; });
  if (state_->first_error) {
    std::exception_ptr error = state_->first_error;
    state_->first_error = nullptr;
    std::rethrow_exception(error);
  }
}

bool Coordinator::done() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->outstanding == 0;
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

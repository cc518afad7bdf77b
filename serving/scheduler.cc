#include "serving/scheduler.h"

#include <algorithm>
#include <cstdio>

#include "device/log.h"

namespace meshrt::serving {

namespace {
// Whether two requests' inputs can be stacked into one batch: the same extents after the rows axis.
bool stackable(const HostTensor& a, const HostTensor& b) {
  const std::vector<int64_t>& x = a.shape().dims();
  const std::vector<int64_t>& y = b.shape().dims();
  return x.size() == y.size() && std::equal(x.begin() + 1, x.end(), y.begin() + 1);
}
}  // namespace

Scheduler::Scheduler(Engine& engine, Metrics& metrics) : engine_(engine), metrics_(metrics) {
  std::vector<int> models;
  for (int m = 0; m < engine_.servable_count(); ++m) models.push_back(m);
  add(models);
  thread_ = std::thread([this] { loop(); });
}

void Scheduler::add(const std::vector<int>& models) {
  std::lock_guard<std::mutex> lock(mutex_);
  for (int m : models) {
    const ServableDefinition& def = engine_.servable(m);
    metrics_.add_model(def.name, def.version);
    // Indices in between are servables that never served (a load that failed): closed.
    while (queues_.size() <= static_cast<size_t>(m)) queues_.emplace_back().closed = "not loaded";
    Queue& q = queues_[static_cast<size_t>(m)];
    q.closed.clear();
    q.max_in_flight = std::max(1, def.stage_size);
  }
}

void Scheduler::close(int model, const std::string& why) {
  std::lock_guard<std::mutex> lock(mutex_);
  queues_.at(static_cast<size_t>(model)).closed = why;
}

bool Scheduler::wait_idle(int model, std::chrono::milliseconds within) {
  std::unique_lock<std::mutex> lock(mutex_);
  const Queue& q = queues_.at(static_cast<size_t>(model));
  return idle_cv_.wait_for(lock, within, [&] { return q.requests.empty() && q.in_flight == 0; });
}

Scheduler::~Scheduler() {
  drain();
  if (thread_.joinable()) thread_.join();
}

Admission Scheduler::submit(int model, HostTensor input, Completion done) {
  const ServableDefinition& def = engine_.servable(model);
  std::lock_guard<std::mutex> lock(mutex_);
  Queue& q = queues_.at(static_cast<size_t>(model));
  if (draining_) return Admission::kDraining;
  if (!q.failure.empty() || !q.closed.empty()) return Admission::kModelUnavailable;
  if (static_cast<int64_t>(q.requests.size()) >= def.batching.max_queue_size) return Admission::kQueueFull;
  q.rows += input.dim(0);
  q.requests.push_back({std::move(input), std::move(done), std::chrono::steady_clock::now()});
  metrics_.queue_size(def.name, def.version, static_cast<int64_t>(q.requests.size()));
  cv_.notify_all();
  return Admission::kQueued;
}

bool Scheduler::next_batch(std::chrono::steady_clock::time_point now, int* model, std::vector<Request>* batch,
                           std::chrono::steady_clock::time_point* wake) {
  int count = static_cast<int>(queues_.size());
  for (int k = 0; k < count; ++k) {
    int m = (next_model_ + k) % count;
    Queue& q = queues_[static_cast<size_t>(m)];
    if (q.requests.empty()) continue;
    if (q.in_flight >= q.max_in_flight) continue;  // the pipeline is full: collect
    if (!q.failure.empty()) {  // a failed model: answer what waits (run_batch sees the failure)
      while (!q.requests.empty()) {
        batch->push_back(std::move(q.requests.front()));
        q.requests.pop_front();
      }
      q.rows = 0;
      *model = m;
      ++q.in_flight;  // counted with the lock still held: wait_idle never sees it between queue and engine
      return true;
    }
    if (engine_.busy(m)) {
      // A load builds on its ranks: its batch would wait behind it there. Held
      // here (nothing signals the end of the build: look again soon).
      *wake = std::min(*wake, now + std::chrono::milliseconds(20));
      continue;
    }
    const BatchingConfig& b = engine_.servable(m).batching;
    int64_t limit = 0;
    if (!b.enabled) {
      limit = q.requests.front().input.dim(0);
    } else if (q.rows >= b.max_batch_size || draining_ || b.start_when_idle) {
      // Stage 0 is free whenever this runs (the scheduler's thread runs rank 0's
      // part of it) and the pipeline has room: with start_when_idle, what is
      // queued goes at once.
      limit = b.max_batch_size;
    } else {
      for (int64_t p : b.preferred_batch_sizes) {
        if (q.rows >= p) limit = p;  // sorted: the largest one reached
      }
      auto due = q.requests.front().arrived + std::chrono::microseconds(b.max_queue_delay_us);
      if (limit == 0 && now >= due) limit = b.max_batch_size;
      if (limit == 0) {
        *wake = std::min(*wake, due);
        continue;
      }
    }
    int64_t rows = 0;
    // Whole requests in arrival order, while they fit and have the first one's extents.
    while (!q.requests.empty() &&
           (batch->empty() ||
            (rows + q.requests.front().input.dim(0) <= limit && stackable(batch->front().input, q.requests.front().input)))) {
      rows += q.requests.front().input.dim(0);
      q.rows -= q.requests.front().input.dim(0);
      batch->push_back(std::move(q.requests.front()));
      q.requests.pop_front();
    }
    *model = m;
    ++q.in_flight;
    next_model_ = (m + 1) % count;
    metrics_.queue_size(engine_.servable(m).name, engine_.servable(m).version, static_cast<int64_t>(q.requests.size()));
    return true;
  }
  return false;
}

namespace {
// The answer for a batch that failed with error: 503 for Error(kUnavailable)
// (the engine reports every failure of a started batch so, and a failed model
// before one starts), 500 for anything else (a bug on rank 0).
InferOutcome outcome_of(std::exception_ptr error) {
  InferOutcome outcome;
  try {
    std::rethrow_exception(error);
  } catch (const Error& e) {
    outcome.status = e.kind() == ErrorKind::kUnavailable ? 503 : 500;
    outcome.error = outcome.status == 503 ? e.message() : "internal error: " + e.message();
  } catch (const std::exception& e) {
    outcome.status = 500;
    outcome.error = std::string("internal error: ") + e.what();
  }
  return outcome;
}
}  // namespace

void Scheduler::run_batch(int model, std::vector<Request> batch) {
  const ServableDefinition& def = engine_.servable(model);
  auto start = std::chrono::steady_clock::now();
  std::vector<double> queued;
  int64_t rows = 0;
  for (const Request& r : batch) {
    queued.push_back(std::chrono::duration<double>(start - r.arrived).count());
    rows += r.input.dim(0);
  }
  InferOutcome failure;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    Queue& q = queues_[static_cast<size_t>(model)];
    if (!q.failure.empty()) {
      failure.status = 503;
      failure.error = q.failure;
    }
  }
  if (failure.status != 200) {
    finish_batch(model, batch, start, std::move(queued), rows, failure, HostTensor(), BatchReport{});
    return;
  }
  // The requests move into the completion, which the engine calls exactly once.
  auto held = std::make_shared<std::vector<Request>>(std::move(batch));
  try {
    // Stack the requests' rows (one copy), start, and cut the result back when done.
    std::vector<HostTensor> inputs;
    for (const Request& r : *held) inputs.push_back(r.input);
    engine_.start(model, concat_rows(inputs), def.batching.micro_batches,
                  [this, model, held, start, queued, rows](HostTensor output, std::exception_ptr error,
                                                           const BatchReport& report) {
                    finish_batch(model, *held, start, queued, rows, error ? outcome_of(error) : InferOutcome{},
                                 std::move(output), report);
                  });
  } catch (const std::exception&) {
    // Thrown before the batch was sent: a failed model (503), or a bug on rank 0.
    finish_batch(model, *held, start, queued, rows, outcome_of(std::current_exception()), HostTensor(), BatchReport{});
  }
}

void Scheduler::finish_batch(int model, std::vector<Request>& batch, std::chrono::steady_clock::time_point start,
                             std::vector<double> queued, int64_t rows, InferOutcome failure, HostTensor output,
                             const BatchReport& report) {
  const ServableDefinition& def = engine_.servable(model);
  if (failure.status == 200) {
    try {
      const std::vector<int64_t>& dims = output.shape().dims();
      bool fits = output.ndim() >= 1 && output.dim(0) == rows && output.dtype() == def.output.dtype &&
                  fits_spec(def.output, std::vector<int64_t>(dims.begin() + 1, dims.end()));
      MESHRT_CHECK(fits, ErrorKind::kInternal, "model '", def.name, "' returned ", output.description(), " for ", rows,
                   " rows (expected ", kserve_datatype(def.output.dtype), shape_text(def.output.shape),
                   " with ", rows, " rows)");
    } catch (const std::exception& e) {
      failure.status = 500;
      failure.error = std::string("internal error: ") + e.what();
    }
  }
  std::string reason = failure.error;
  if (failure.status == 503) failure.error = "model '" + def.name + "' is unavailable: " + reason;
  bool engine_failed = failure.status == 503 && !engine_.failure(model).empty();
  double compute = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  metrics_.batch(def.name, def.version, rows, static_cast<int64_t>(batch.size()), queued, compute,
                 failure.status == 200);
  if (failure.status == 200) metrics_.engine(def.name, def.version, report.engine_seconds, report.forward_seconds);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    Queue& q = queues_[static_cast<size_t>(model)];
    if (engine_failed && q.failure.empty()) {
      q.failure = reason;
      q.failed_at = std::chrono::steady_clock::now();
      q.next_recovery = q.failed_at + kRecoveryInterval;
      q.recovery_note.clear();
      log::error("model '" + def.name + "' version " + def.version +
                 " failed (the server is not ready until it recovers): " + reason);
    }
  }
  int64_t row = 0;
  for (Request& r : batch) {
    // Every request is answered once, whatever its completion does.
    try {
      if (failure.status != 200) {
        r.done(failure);
      } else {
        InferOutcome ok;
        ok.output = output.narrow(row, r.input.dim(0));  // a view: the batch's output stays alive with it
        row += r.input.dim(0);
        r.done(std::move(ok));
      }
    } catch (const std::exception& e) {
      log::error("answering a request of model '" + def.name + "' failed: " + e.what());
      try {
        r.done({500, std::string("internal error: ") + e.what(), HostTensor()});
      } catch (const std::exception&) {
        // nothing more can be done for this one; the others still get their answers
      }
    }
  }
  std::lock_guard<std::mutex> lock(mutex_);
  --queues_[static_cast<size_t>(model)].in_flight;
  cv_.notify_all();
  idle_cv_.notify_all();
}

void Scheduler::loop() {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    auto now = std::chrono::steady_clock::now();
    auto wake = now + std::chrono::hours(1);
    int model = -1;
    std::vector<Request> batch;
    if (next_batch(now, &model, &batch, &wake)) {
      lock.unlock();
      run_batch(model, std::move(batch));
      lock.lock();
      continue;
    }
    bool empty = std::all_of(queues_.begin(), queues_.end(),
                             [](const Queue& q) { return q.requests.empty() && q.in_flight == 0; });
    if (draining_ && empty) break;
    if (!draining_ && try_recoveries(lock, now, &wake)) continue;
    cv_.wait_until(lock, wake);
  }
  // Drained: the other ranks can stop.
  lock.unlock();
  try {
    engine_.stop();
  } catch (const std::exception&) {
    // a lost worker cannot be told; the job ends anyway
  }
  lock.lock();
  finished_ = true;
  finished_cv_.notify_all();
}

bool Scheduler::try_recoveries(std::unique_lock<std::mutex>& lock, std::chrono::steady_clock::time_point now,
                               std::chrono::steady_clock::time_point* wake) {
  for (int m = 0; m < static_cast<int>(queues_.size()); ++m) {
    Queue& q = queues_[static_cast<size_t>(m)];
    // Being unloaded, unloaded, or never loaded: not brought back.
    if (!q.closed.empty() || engine_.state(m) != ServableState::kServing) continue;
    // A failure the scheduler did not see (a generation step failed): recover it too.
    if (q.failure.empty()) {
      std::string failed = engine_.failure(m);
      if (!failed.empty()) {
        q.failure = failed;
        q.failed_at = now;
        q.next_recovery = now + kRecoveryInterval;
        q.recovery_note.clear();
        log::error("model '" + engine_.servable(m).name + "' version " + engine_.servable(m).version +
                   " failed (the server is not ready until it recovers): " + failed);
      }
      // Look again in a while: nothing wakes the scheduler when another thread's batch fails.
      *wake = std::min(*wake, now + kRecoveryInterval);
    }
    if (q.failure.empty() || q.in_flight > 0) continue;  // its last batches are still being answered
    if (engine_.busy(m)) {  // a load builds on its ranks: they answer after it
      *wake = std::min(*wake, now + std::chrono::milliseconds(20));
      continue;
    }
    if (now < q.next_recovery) {
      *wake = std::min(*wake, q.next_recovery);
      continue;
    }
    const ServableDefinition& def = engine_.servable(m);
    lock.unlock();
    std::string why_not;
    try {
      why_not = engine_.try_recover(m, kRecoveryAnswerTime);
    } catch (const std::exception& e) {
      why_not = e.what();
    }
    lock.lock();
    if (why_not.empty()) {
      double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - q.failed_at).count();
      char after[32];
      std::snprintf(after, sizeof after, "%.1f", seconds);
      log::info(detail::cat("model '", def.name, "' version ", def.version, " recovered ", after,
                            " s after it failed (generation ", engine_.generation(m),
                            ": new communicators, same processes); ready again"));
      q.failure.clear();
    } else {
      if (why_not != q.recovery_note) {
        log::warn(detail::cat("model '", def.name, "' version ", def.version, " cannot recover yet (trying every ",
                              kRecoveryInterval.count(), " ms): ", why_not));
        q.recovery_note = why_not;
      }
      q.next_recovery = std::chrono::steady_clock::now() + kRecoveryInterval;
    }
    return true;  // the lock was released: look at the queues again
  }
  return false;
}

void Scheduler::drain() {
  std::unique_lock<std::mutex> lock(mutex_);
  draining_ = true;
  cv_.notify_all();
  finished_cv_.wait(lock, [&] { return finished_; });
}

bool Scheduler::model_ready(int model) const {
  std::lock_guard<std::mutex> lock(mutex_);
  const Queue& q = queues_.at(static_cast<size_t>(model));
  return !draining_ && q.failure.empty() && q.closed.empty() && engine_.failure(model).empty();
}

std::string Scheduler::model_failure(int model) const {
  std::lock_guard<std::mutex> lock(mutex_);
  const Queue& q = queues_.at(static_cast<size_t>(model));
  if (!q.closed.empty()) return q.closed;
  return q.failure.empty() ? engine_.failure(model) : q.failure;
}

}  // namespace meshrt::serving

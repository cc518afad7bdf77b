// The dynamic batcher on rank 0: per model, a bounded queue of requests, stacked
// along the batch axis into batches and run by the engine; each request gets its
// rows of the result back.
//
// A model has at most stage_size batches in flight (Engine::start: stage 0
// takes batch b+1 while the later stages run batch b). While it has room, its
// queue is dispatched at once when the model starts batches when idle (the
// default: requests collect only while stage 0 is busy or the pipeline is
// full); otherwise when its rows reach max_batch_size, when they reach one of
// its preferred batch sizes (the largest one reached is used), or when its
// oldest request has waited max_queue_delay_us; a batch takes whole requests in
// arrival order up to the limit, stopping at one whose extents after the rows
// axis differ from the first's (it starts the next batch: sequences of
// different lengths are not padded together). Requests are never split. With batching
// disabled, every request runs alone. One thread starts the batches; their
// results are answered on the engine's result thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "serving/engine.h"
#include "serving/metrics.h"

namespace meshrt::serving {

struct InferOutcome {
  int status = 200;   // HTTP status: 200, or 503 (a worker failed), 500 (a bug)
  std::string error;  // when status != 200
  HostTensor output;  // this request's rows of the output
};
using Completion = std::function<void(InferOutcome)>;

enum class Admission { kQueued, kQueueFull, kDraining, kModelUnavailable };

class Scheduler {
 public:
  // engine: the engine on rank 0; the scheduler's thread is the only one to use it.
  Scheduler(Engine& engine, Metrics& metrics);
  ~Scheduler();

  // From any thread. input: [rows, ...] fitting the model's input; rows must
  // not exceed max_batch_size (callers check). When queued, done is called
  // exactly once, on the scheduler's thread; otherwise it is never called and the
  // caller answers (503).
  Admission submit(int model, HostTensor input, Completion done);
  // Stops taking requests, runs every queued one, then stops the engine's other
  // ranks. Returns when all of it is done. Idempotent.
  void drain();
  // False once a model's batch failed on a worker (its communicators are gone),
  // until it recovers: while idle, the scheduler tries every kRecoveryInterval to
  // bring a failed model back in place (Engine::try_recover).
  bool model_ready(int model) const;
  std::string model_failure(int model) const;

  // Models added to the engine while serving (Engine::load): their queues.
  void add(const std::vector<int>& models);
  // Stops taking requests for model (submit answers kModelUnavailable, saying
  // why); those queued and in flight still run.
  void close(int model, const std::string& why);
  // Waits until model has nothing queued or in flight, at most `within`;
  // returns whether it has not.
  bool wait_idle(int model, std::chrono::milliseconds within);

 private:
  struct Request {
    HostTensor input;
    Completion done;
    std::chrono::steady_clock::time_point arrived;
  };
  struct Queue {
    std::deque<Request> requests;
    int64_t rows = 0;
    std::string failure;  // non-empty: the model is unavailable
    std::chrono::steady_clock::time_point failed_at, next_recovery;
    std::string recovery_note;  // why the last recovery attempt failed (logged when it changes)
    int in_flight = 0;          // batches started and not yet answered
    int max_in_flight = 1;      // the model's stage_size
    std::string closed;         // non-empty: takes no more requests (being unloaded), why
  };
  static constexpr std::chrono::milliseconds kRecoveryInterval{1000};
  static constexpr std::chrono::milliseconds kRecoveryAnswerTime{500};
  // Under the lock (released while it runs): one recovery attempt of a failed
  // model that is due; true if it made one. Pushes wake to the next one due.
  bool try_recoveries(std::unique_lock<std::mutex>& lock, std::chrono::steady_clock::time_point now,
                      std::chrono::steady_clock::time_point* wake);
  void loop();
  // Under the lock: the next batch to run (model and requests), or the time to
  // wake up and look again.
  bool next_batch(std::chrono::steady_clock::time_point now, int* model, std::vector<Request>* batch,
                  std::chrono::steady_clock::time_point* wake);
  // Starts a batch (or answers it at once for a failed model); its requests are
  // answered when it is done.
  void run_batch(int model, std::vector<Request> batch);
  // A batch is done: metrics, the answers, and room for the next one.
  void finish_batch(int model, std::vector<Request>& batch, std::chrono::steady_clock::time_point start,
                    std::vector<double> queued, int64_t rows, InferOutcome failure, HostTensor output,
                    const BatchReport& report);

  Engine& engine_;
  Metrics& metrics_;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Queue> queues_;  // by engine index (a deque: add() keeps references to the others valid)
  std::condition_variable idle_cv_;  // a batch finished (wait_idle)
  int next_model_ = 0;  // round-robin start among models with work
  bool draining_ = false;
  bool finished_ = false;
  std::condition_variable finished_cv_;
  std::thread thread_;
};

}  // namespace meshrt::serving

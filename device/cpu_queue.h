// Internal to device/: the work queue behind a cpu Stream. Tasks run in the
// order they were queued, on a worker thread of the queue, asynchronously to
// whoever queued them, as work on a CUDA stream does. Small work may run at once
// on the calling thread when the queue is idle (no thread hop per small kernel).
//
// Completion is counted: the n-th task queued is done when completed() >= n, so
// an Event is a queue and a number. A task that throws makes the error sticky:
// every later wait on the queue rethrows it (as CUDA's sticky errors).
//
// A wait for another queue (Event::block) is a task too, but one that nobody
// needs to run: it is settled, without waking the worker, as soon as anyone
// looks at the queue (queues work, waits, queries) after the other queue got
// there. So "all_reduce, wait for it, then a small kernel" runs that kernel at
// once on the caller's thread; the worker blocks on the other queue only when
// real work is queued behind the wait.
//
// The delayed test mode (MESHRT_CPU_STREAMS=delayed) never runs work inline and
// holds every task back for a while unless someone waits for the queue, so code
// that reads a result without waiting for it reads memory not yet written.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

namespace meshrt::detail {

// True when MESHRT_CPU_STREAMS=delayed (read once).
bool cpu_streams_delayed();

// set_cpu_work_delay_for_testing's delay in microseconds (0: none).
extern std::atomic<int64_t> g_cpu_work_delay_us;

// Made with std::make_shared only: the worker thread holds a reference while
// it runs, so a queue whose last handle dies inside one of its own tasks (or
// under someone's lock) is freed by the worker once it is done.
class CpuQueue : public std::enable_shared_from_this<CpuQueue> {
 public:
  // held: whether the delayed mode holds tasks back (see CpuStreamOptions);
  // spin: how long the worker yield-polls for the next task before it parks on
  // its condition variable (at most 1 ms).
  CpuQueue(std::string name, bool held, std::chrono::microseconds spin);
  ~CpuQueue();
  CpuQueue(const CpuQueue&) = delete;
  CpuQueue& operator=(const CpuQueue&) = delete;

  // The stream is gone (no more work can be queued): runs what is queued, then
  // stops the worker. Waits for that, unless called on the worker itself.
  void shutdown();

  // Queues fn; runs it at once on this thread instead when inline_ok, the queue
  // is idle and the mode is not delayed (an exception of fn then propagates here).
  void enqueue(std::function<void()> fn, bool inline_ok);
  // Runs call(fn) at once on this thread, as a task of the queue, when the queue
  // is idle (nothing queued or running) and the mode is not delayed; work queued
  // meanwhile runs after it. False, without running it, otherwise. An exception
  // propagates here (it is not sticky). Without the mutex when nothing is queued
  // (the idle check and the claim are one compare-and-swap: see ctl_).
  bool run_if_idle(void (*call)(void*), void* fn) {
    if (delayed_ || g_cpu_work_delay_us.load(std::memory_order_relaxed) != 0) return false;
    uint64_t c = ctl_.load(std::memory_order_acquire);
    if (c & kBusy) return false;
    uint64_t number = (c >> kShift) + 1;
    // Idle: every task numbered so far is done (none queued, no wait to settle)
    // and nobody runs one. The swap claims it unless someone numbered or started
    // a task since c was read (each changes ctl_).
    if (completed_.load(std::memory_order_acquire) == number - 1 &&
        ctl_.compare_exchange_strong(c, (number << kShift) | kBusy, std::memory_order_acq_rel,
                                     std::memory_order_relaxed)) {
      run_claimed(number, call, fn);
      return true;
    }
    return run_if_idle_locked(call, fn);
  }
  // Makes the work queued after this wait until other has done its task n.
  void enqueue_wait(std::shared_ptr<const CpuQueue> other, uint64_t n);
  // The number of tasks queued so far: an event recorded now completes at it.
  uint64_t submitted() const {
    // Without the mutex: a thread sees at least the tasks it queued itself.
    return ctl_.load(std::memory_order_relaxed) >> kShift;
  }
  // Whether task number n is done; rethrows the queue's sticky error.
  bool reached(uint64_t n) const {
    // Without the mutex when it is done and nothing failed (failed_ is published
    // before the count: work()); the common question of a small collective.
    if (passed(n) && !failed_.load()) return true;
    return reached_locked(n);
  }
  // Whether task number n is done, failed or not (never throws).
  bool passed(uint64_t n) const { return completed_.load(std::memory_order_acquire) >= n; }
  // Waits until task n is done, at most timeout (then Error(kDeadlineExceeded)
  // naming what); rethrows the sticky error.
  void wait(uint64_t n, std::chrono::milliseconds timeout, const char* what) const;
  const std::string& name() const { return name_; }

 private:
  struct Task {
    std::function<void()> fn;
    uint64_t number;
    std::chrono::steady_clock::time_point ready_at;  // delayed mode
    std::shared_ptr<const CpuQueue> after;            // a wait for after's task after_n
    uint64_t after_n = 0;
  };
  void work();
  // Runs call(fn) as task number, which this thread claimed (kBusy set by it;
  // mutex_ held by lock on entry and exit).
  void run_inline(std::unique_lock<std::mutex>& lock, uint64_t number, void (*call)(void*), void* fn);
  // The same without the mutex (run_if_idle's fast path claimed the queue).
  void run_claimed(uint64_t number, void (*call)(void*), void* fn);
  // run_if_idle when the queue did not look idle without the mutex (waits to
  // settle, or someone came between).
  bool run_if_idle_locked(void (*call)(void*), void* fn);
  bool reached_locked(uint64_t n) const;
  // Numbers a new task (mutex_ held). A task numbered while a runner runs asks
  // it to take the mutex when it is done (kNotify), to wake whoever waits for it.
  uint64_t submit_locked();
  // Numbers a new task and makes this thread its runner (kBusy), unless
  // someone runs a task: then 0, and nothing numbered (mutex_ held).
  uint64_t claim_locked();
  // Whether a task is running; when one is, asks its runner to take the mutex
  // and notify when it is done (kNotify): call with mutex_ held, before a wait
  // on work_cv_ or done_cv_ for something the runner's end may bring.
  bool busy_notify_locked() const;
  bool busy() const { return ctl_.load(std::memory_order_acquire) & kBusy; }
  // Marks task number done and clears kBusy (and kNotify) after it ran: whether
  // the runner must notify (someone set kNotify meanwhile).
  bool release(uint64_t number);
  // The same for a runner without the mutex (run_claimed): kNotify may stay set.
  bool release_unlocked(uint64_t number);
  // Completes the waits at the front whose other queue got there (mutex_ held).
  void settle_locked() const;
  void start_worker_locked();
  // Someone waits for task n: the delayed mode stops holding back tasks up to it.
  void want_locked(uint64_t n) const;

  std::string name_;
  bool delayed_;                   // never inline (the delayed mode)
  bool held_;                      // tasks held back until ready_at or a waiter
  std::chrono::microseconds spin_;
  mutable std::mutex mutex_;
  mutable std::condition_variable work_cv_, done_cv_;
  mutable std::deque<Task> tasks_;  // settle_locked pops satisfied waits from const observers
  // The number of tasks submitted so far (ctl_ >> kShift), whether a task is
  // running (kBusy: inline or on the worker; whoever set it is the runner), and
  // whether someone waits with the mutex for the runner's end (kNotify: only
  // meaningful with kBusy; a stale one is ignored). One
  // word, so that run_if_idle claims an idle queue with one compare-and-swap:
  // idle is "completed_ == submitted and nobody running", and the swap fails if
  // anyone numbered a task or started running one since it looked. Changed
  // with the mutex, except by run_if_idle's fast path (claim and release).
  static constexpr uint64_t kBusy = 1, kNotify = 2;
  static constexpr int kShift = 2;
  mutable std::atomic<uint64_t> ctl_{0};
  // Read without the mutex by queues that wait for this one (so no two queue
  // mutexes are ever held together) and by run_if_idle; written with it, or by
  // the runner that claimed the queue without it.
  mutable std::atomic<uint64_t> completed_{0};
  std::atomic<bool> failed_{false};
  mutable uint64_t wanted_ = 0; // the delayed mode holds back only tasks after this one
  bool stop_ = false;
  std::exception_ptr error_;    // the first task failure
  std::thread worker_;          // started on the first task not run inline
};

}  // namespace meshrt::detail

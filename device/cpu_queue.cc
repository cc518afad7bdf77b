#include "device/cpu_queue.h"

#include <algorithm>
#include <cstdlib>

#include "device/error.h"
#include "device/poll.h"

namespace meshrt::detail {

namespace {
// How long the delayed mode holds a task back when nobody waits for its queue:
// far longer than any read right after queuing takes.
constexpr std::chrono::milliseconds kDelay{5};
// The longest a worker yield-polls for its next task before it parks.
constexpr std::chrono::microseconds kLongestSpin{1000};
}  // namespace

bool cpu_streams_delayed() {
  static const bool delayed = [] {
    const char* mode = std::getenv("MESHRT_CPU_STREAMS");
    if (!mode || !*mode || std::string(mode) == "normal") return false;
    MESHRT_CHECK_ARG(std::string(mode) == "delayed", "MESHRT_CPU_STREAMS='", mode,
                     "': expected normal or delayed");
    return true;
  }();
  return delayed;
}

CpuQueue::CpuQueue(std::string name, bool held, std::chrono::microseconds spin)
    : name_(std::move(name)), delayed_(cpu_streams_delayed()), held_(delayed_ && held),
      // Bounded: an idle worker parks on its condition variable within 1 ms.
      spin_(std::min(spin, std::chrono::microseconds(kLongestSpin))) {}

CpuQueue::~CpuQueue() {
  // After shutdown() the worker is joined or detached. Without it (a queue
  // never given to a Stream), stop the worker here.
  if (worker_.joinable()) shutdown();
}

void CpuQueue::shutdown() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
    want_locked(UINT64_MAX);  // the delayed mode runs what is left at once
  }
  work_cv_.notify_all();
  if (!worker_.joinable()) return;
  if (worker_.get_id() == std::this_thread::get_id()) {
    worker_.detach();  // the last handle died in one of its own tasks: the worker ends by itself
  } else {
    worker_.join();
  }
}

void CpuQueue::start_worker_locked() {
  if (worker_.joinable() || stop_) return;
  // The worker keeps the queue alive until it ends.
  worker_ = std::thread([self = shared_from_this()] { self->work(); });
}

void CpuQueue::want_locked(uint64_t n) const {
  if (n > wanted_) {
    wanted_ = n;
    work_cv_.notify_all();
  }
}

uint64_t CpuQueue::submit_locked() {
  uint64_t c = ctl_.load(std::memory_order_relaxed);
  for (;;) {
    // While a runner runs, it is asked to wake the worker (and waiters) when done.
    uint64_t flags = (c & kBusy) ? (kBusy | kNotify) : 0;
    if (ctl_.compare_exchange_weak(c, (((c >> kShift) + 1) << kShift) | flags, std::memory_order_acq_rel,
                                   std::memory_order_relaxed)) {
      return (c >> kShift) + 1;
    }
  }
}

uint64_t CpuQueue::claim_locked() {
  uint64_t c = ctl_.load(std::memory_order_relaxed);
  for (;;) {
    if (c & kBusy) return 0;
    uint64_t number = (c >> kShift) + 1;
    if (ctl_.compare_exchange_weak(c, (number << kShift) | kBusy, std::memory_order_acq_rel,
                                   std::memory_order_relaxed)) {
      return number;
    }
  }
}

bool CpuQueue::busy_notify_locked() const {
  uint64_t c = ctl_.load(std::memory_order_acquire);
  for (;;) {
    if (!(c & kBusy)) return false;
    if ((c & kNotify) || ctl_.compare_exchange_weak(c, c | kNotify, std::memory_order_acq_rel,
                                                    std::memory_order_acquire)) {
      return true;
    }
  }
}

bool CpuQueue::release(uint64_t number) {
  // The count first: whoever sees kBusy clear sees the task done.
  completed_.store(number, std::memory_order_release);
  return ctl_.fetch_and(~(kBusy | kNotify), std::memory_order_acq_rel) & kNotify;
}

bool CpuQueue::release_unlocked(uint64_t number) {
  completed_.store(number, std::memory_order_release);
  // One atomic add, not a compare-and-swap loop: kBusy is ours to clear, and a
  // kNotify left behind is harmless (whoever claims next writes a new word
  // without it; submit_locked and the worker drop it).
  return ctl_.fetch_sub(kBusy, std::memory_order_acq_rel) & kNotify;
}

void CpuQueue::run_inline(std::unique_lock<std::mutex>& lock, uint64_t number, void (*call)(void*), void* fn) {
  lock.unlock();
  std::exception_ptr error;
  try {
    call(fn);
  } catch (...) {
    error = std::current_exception();
  }
  lock.lock();
  release(number);
  done_cv_.notify_all();
  if (!tasks_.empty()) work_cv_.notify_all();
  if (error) {
    lock.unlock();
    std::rethrow_exception(error);  // reported to the caller, not sticky
  }
}

void CpuQueue::run_claimed(uint64_t number, void (*call)(void*), void* fn) {
  std::exception_ptr error;
  try {
    call(fn);
  } catch (...) {
    error = std::current_exception();
  }
  if (release_unlocked(number)) {
    // Someone queued work or waits (with the mutex) meanwhile: wake them. They
    // set kNotify holding the mutex and check again before they sleep, so once
    // it is ours they sleep and hear this.
    std::lock_guard<std::mutex> lock(mutex_);
    done_cv_.notify_all();
    if (!tasks_.empty()) work_cv_.notify_all();
  }
  if (error) std::rethrow_exception(error);  // reported to the caller, not sticky
}

std::atomic<int64_t> g_cpu_work_delay_us{0};

void CpuQueue::enqueue(std::function<void()> fn, bool inline_ok) {
  std::unique_lock<std::mutex> lock(mutex_);
  settle_locked();
  if (inline_ok && !delayed_ && tasks_.empty() && g_cpu_work_delay_us.load(std::memory_order_relaxed) == 0) {
    if (uint64_t number = claim_locked()) {
      run_inline(lock, number, [](void* f) { (*static_cast<std::function<void()>*>(f))(); }, &fn);
      return;
    }
  }
  uint64_t number = submit_locked();
  tasks_.push_back({std::move(fn), number, std::chrono::steady_clock::now() + kDelay, nullptr, 0});
  start_worker_locked();
  work_cv_.notify_all();
}

bool CpuQueue::run_if_idle_locked(void (*call)(void*), void* fn) {
  std::unique_lock<std::mutex> lock(mutex_);
  settle_locked();
  if (!tasks_.empty()) return false;
  uint64_t number = claim_locked();
  if (number == 0) return false;  // someone runs a task
  run_inline(lock, number, call, fn);
  return true;
}

void CpuQueue::enqueue_wait(std::shared_ptr<const CpuQueue> other, uint64_t n) {
  std::unique_lock<std::mutex> lock(mutex_);
  settle_locked();
  if (tasks_.empty() && !busy() && other->passed(n) && !other->failed_.load()) return;  // nothing to wait for (passed, then failed_: see work())
  uint64_t number = submit_locked();
  tasks_.push_back({nullptr, number, std::chrono::steady_clock::now(), std::move(other), n});
  // The worker is not woken: the wait is settled by whoever looks next, and
  // the worker is woken when real work queues up behind it (or someone waits).
  start_worker_locked();
}

void CpuQueue::settle_locked() const {
  bool settled = false;
  while (!tasks_.empty() && tasks_.front().after && !busy()) {
    const Task& front = tasks_.front();
    // passed() before failed_: a failure is published before the count (work()).
    if (!front.after->passed(front.after_n) || front.after->failed_.load()) break;  // the worker reports failures
    completed_.store(front.number, std::memory_order_release);
    tasks_.pop_front();
    settled = true;
  }
  if (settled) done_cv_.notify_all();
}

void CpuQueue::work() {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    if (spin_.count() > 0 && tasks_.empty() && !stop_) {
      auto until = std::chrono::steady_clock::now() + spin_;
      while (tasks_.empty() && !stop_ && std::chrono::steady_clock::now() < until) {
        lock.unlock();
        std::this_thread::yield();
        lock.lock();
      }
    }
    // A runner without the mutex (run_if_idle) wakes this wait when it is done
    // if asked to (busy_notify_locked).
    work_cv_.wait(lock, [&] { return (!tasks_.empty() && !busy_notify_locked()) || (stop_ && tasks_.empty()); });
    settle_locked();
    if (tasks_.empty()) {
      if (stop_) return;  // stopped and drained
      continue;
    }
    if (held_ && tasks_.front().number > wanted_ && !tasks_.front().after &&
        std::chrono::steady_clock::now() < tasks_.front().ready_at) {
      work_cv_.wait_until(lock, tasks_.front().ready_at);
      continue;
    }
    // The worker becomes the runner. Nobody else can be: run_if_idle claims
    // without the mutex only an idle queue, and this one has a task queued.
    uint64_t c = ctl_.load(std::memory_order_relaxed);
    while (!(c & kBusy) &&
           !ctl_.compare_exchange_weak(c, (c & ~kNotify) | kBusy, std::memory_order_acq_rel,
                                       std::memory_order_relaxed)) {
    }
    if (c & kBusy) continue;  // (not reached) the wait above waits for the runner
    Task task = std::move(tasks_.front());
    tasks_.pop_front();
    lock.unlock();
    std::exception_ptr error;
    try {
      if (task.after) {
        task.after->wait(task.after_n, default_wait_timeout(), "a cpu stream waiting for an event");
      } else {
        if (int64_t delay = g_cpu_work_delay_us.load(std::memory_order_relaxed)) {
          std::this_thread::sleep_for(std::chrono::microseconds(delay));
        }
        task.fn();
      }
    } catch (...) {
      error = std::current_exception();
    }
    task.fn = nullptr;  // what it held goes before the next task
    task.after.reset();
    lock.lock();
    if (error && !error_) {  // published before the count, which other queues read without the lock
      error_ = error;
      failed_.store(true);
    }
    release(task.number);
    done_cv_.notify_all();
  }
}

bool CpuQueue::reached_locked(uint64_t n) const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!passed(n)) {
    settle_locked();
    if (!passed(n)) work_cv_.notify_all();  // a wait the worker was not woken for
  }
  if (error_) std::rethrow_exception(error_);
  return passed(n);
}

void CpuQueue::wait(uint64_t n, std::chrono::milliseconds timeout, const char* what) const {
  std::unique_lock<std::mutex> lock(mutex_);
  settle_locked();
  if (!passed(n)) {
    want_locked(n);         // the delayed mode stops holding back the tasks up to n
    work_cv_.notify_all();  // the worker runs the waits it was not woken for
    // A runner without the mutex (run_if_idle) wakes this wait when it is done
    // if asked to (busy_notify_locked, before each check).
    bool done = done_cv_.wait_for(lock, timeout, [&] {
      busy_notify_locked();
      return passed(n);
    });
    MESHRT_CHECK(done, ErrorKind::kDeadlineExceeded, what, ": work on cpu stream '", name_,
                 "' did not finish within ", timeout.count(),
                 " ms (a task ahead of it is stuck; MESHRT_COMM_TIMEOUT sets the deadline)");
  }
  if (error_) std::rethrow_exception(error_);
}

}  // namespace meshrt::detail

namespace meshrt {
void set_cpu_work_delay_for_testing(std::chrono::microseconds delay) {
  detail::g_cpu_work_delay_us.store(delay.count());
}
}  // namespace meshrt

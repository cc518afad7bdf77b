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

void CpuQueue::run_inline(std::unique_lock<std::mutex>& lock, uint64_t number, void (*call)(void*), void* fn) {
  busy_ = true;
  lock.unlock();
  std::exception_ptr error;
  try {
    call(fn);
  } catch (...) {
    error = std::current_exception();
  }
  lock.lock();
  busy_ = false;
  completed_.store(number, std::memory_order_release);
  done_cv_.notify_all();
  if (!tasks_.empty()) work_cv_.notify_all();
  if (error) {
    lock.unlock();
    std::rethrow_exception(error);  // reported to the caller, not sticky
  }
}

namespace {
std::atomic<int64_t> g_test_delay_us{0};  // set_cpu_work_delay_for_testing
}  // namespace

void CpuQueue::enqueue(std::function<void()> fn, bool inline_ok) {
  std::unique_lock<std::mutex> lock(mutex_);
  settle_locked();
  uint64_t number = submitted_.load(std::memory_order_relaxed) + 1;
  submitted_.store(number, std::memory_order_relaxed);
  if (inline_ok && !delayed_ && tasks_.empty() && !busy_ && g_test_delay_us.load(std::memory_order_relaxed) == 0) {
    run_inline(lock, number, [](void* f) { (*static_cast<std::function<void()>*>(f))(); }, &fn);
    return;
  }
  tasks_.push_back({std::move(fn), number, std::chrono::steady_clock::now() + kDelay, nullptr, 0});
  start_worker_locked();
  work_cv_.notify_all();
}

bool CpuQueue::run_if_idle(void (*call)(void*), void* fn) {
  std::unique_lock<std::mutex> lock(mutex_);
  settle_locked();
  if (delayed_ || !tasks_.empty() || busy_ || g_test_delay_us.load(std::memory_order_relaxed) != 0) return false;
  uint64_t number = submitted_.load(std::memory_order_relaxed) + 1;
  submitted_.store(number, std::memory_order_relaxed);
  run_inline(lock, number, call, fn);
  return true;
}

void CpuQueue::enqueue_wait(std::shared_ptr<const CpuQueue> other, uint64_t n) {
  std::unique_lock<std::mutex> lock(mutex_);
  settle_locked();
  if (tasks_.empty() && !busy_ && other->passed(n) && !other->failed_.load()) return;  // nothing to wait for (passed, then failed_: see work())
  uint64_t number = submitted_.load(std::memory_order_relaxed) + 1;
  submitted_.store(number, std::memory_order_relaxed);
  tasks_.push_back({nullptr, number, std::chrono::steady_clock::now(), std::move(other), n});
  // The worker is not woken: the wait is settled by whoever looks next, and
  // the worker is woken when real work queues up behind it (or someone waits).
  start_worker_locked();
}

void CpuQueue::settle_locked() const {
  bool settled = false;
  while (!busy_ && !tasks_.empty() && tasks_.front().after) {
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
    work_cv_.wait(lock, [&] { return (!tasks_.empty() && !busy_) || (stop_ && tasks_.empty()); });
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
    Task task = std::move(tasks_.front());
    tasks_.pop_front();
    busy_ = true;
    lock.unlock();
    std::exception_ptr error;
    try {
      if (task.after) {
        task.after->wait(task.after_n, default_wait_timeout(), "a cpu stream waiting for an event");
      } else {
        if (int64_t delay = g_test_delay_us.load(std::memory_order_relaxed)) {
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
    busy_ = false;
    if (error && !error_) {  // published before the count, which other queues read without the lock
      error_ = error;
      failed_.store(true);
    }
    completed_.store(task.number, std::memory_order_release);
    done_cv_.notify_all();
  }
}

uint64_t CpuQueue::submitted() const {
  // Without the mutex: a thread sees at least the tasks it queued itself.
  return submitted_.load(std::memory_order_relaxed);
}

bool CpuQueue::reached(uint64_t n) const {
  // Without the mutex when it is done and nothing failed (failed_ is published
  // before the count: work()); the common question of a small collective.
  if (passed(n) && !failed_.load()) return true;
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
    bool done = done_cv_.wait_for(lock, timeout, [&] { return passed(n); });
    MESHRT_CHECK(done, ErrorKind::kDeadlineExceeded, what, ": work on cpu stream '", name_,
                 "' did not finish within ", timeout.count(),
                 " ms (a task ahead of it is stuck; MESHRT_COMM_TIMEOUT sets the deadline)");
  }
  if (error_) std::rethrow_exception(error_);
}

}  // namespace meshrt::detail

namespace meshrt {
void set_cpu_work_delay_for_testing(std::chrono::microseconds delay) {
  detail::g_test_delay_us.store(delay.count());
}
}  // namespace meshrt

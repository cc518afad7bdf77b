#include "comm/work.h"

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>

#include "comm/backend.h"
#include "comm/world.h"
#include "device/poll.h"

namespace meshrt {

namespace detail {

WorkState::WorkState(std::string description, std::weak_ptr<CommBackend> backend)
    : text_(std::move(description)), backend_(std::move(backend)) {}

WorkState::WorkState(const OpDescription& op, const std::shared_ptr<CommBackend>& backend)
    : op_description_(op), backend_description_(backend->description()), backend_(backend),
      backend_identity_(backend.get()) {}

std::shared_ptr<WorkState> WorkState::make(const OpDescription& op, const std::shared_ptr<CommBackend>& backend) {
  thread_local std::shared_ptr<WorkState> spare;
  // use_count 1: only spare refers to it, so no other thread can reach it
  // (nobody keeps weak references to states).
  // The same backend, alive (a new backend at a dead one's address has its weak
  // reference expired), and the last operation finished.
  if (spare && spare.use_count() == 1 && spare->backend_identity_ == backend.get() && !spare->backend_.expired() &&
      spare->done_.load()) {
    WorkState& s = *spare;
    s.op_description_ = op;
    s.error_ = nullptr;
    s.poller_ = nullptr;
    s.stash_.clear();
    s.done_event_.reset();
    s.sequence_ = 0;
    s.op_ = "";
    s.done_.store(false, std::memory_order_relaxed);
    return spare;
  }
  spare = std::make_shared<WorkState>(op, backend);
  return spare;
}

std::string WorkState::description() const {
  if (!backend_description_) return text_;
  // As the tensor's own description(): "f32[1024] on cpu".
  const OpDescription& d = op_description_;
  std::string out = cat(to_string(d.kind), "(");
  if (d.has_tensor) {
    out += to_string(d.dtype);
    out += d.ndim <= OpDescription::kMaxDims ? Shape(std::vector<int64_t>(d.dims, d.dims + d.ndim)).to_string()
                                             : d.shape_text;
    out += cat(" on ", d.device);
  }
  if (d.pieces) {
    auto list = [](const std::vector<int64_t>& v) {
      std::string text = "[";
      for (size_t i = 0; i < v.size(); ++i) text += cat(i ? ", " : "", v[i]);
      return text + "]";
    };
    if (d.kind == Collective::kAllToAll) {
      out += cat(", send ", list(d.pieces->send), ", recv ", list(d.pieces->recv));
    } else {
      out += cat(", counts ", list(d.kind == Collective::kAllGather ? d.pieces->recv : d.pieces->send));
    }
  }
  if (d.has_op) out += cat(", ", to_string(d.op));
  if (d.peer >= 0) out += cat(d.kind == Collective::kBroadcast ? ", root " : ", peer ", d.peer);
  out += ") on ";
  out += *backend_description_;
  return out;
}

void WorkState::release_locked() {
  stash_.clear();
  poller_ = nullptr;
}

namespace {
// The condition variables that waits sleep on, shared by all WorkStates (a
// state's address picks one): a state is made per operation, and most are
// never waited on asleep.
struct WaitSlot {
  std::mutex mutex;
  std::condition_variable cv;
};
constexpr size_t kWaitSlots = 16;

WaitSlot& wait_slot(const void* state) {
  static WaitSlot* slots = new WaitSlot[kWaitSlots];  // lives to exit: backend threads may still complete work
  return slots[(reinterpret_cast<uintptr_t>(state) / 64) % kWaitSlots];
}
}  // namespace

void WorkState::notify_done() {
  // done_ was stored (seq_cst) before waiters_ is read, and a waiter counts
  // itself before it reads done_: one of the two sees the other.
  if (waiters_.load() == 0) return;
  WaitSlot& slot = wait_slot(this);
  std::lock_guard<std::mutex> lock(slot.mutex);  // a waiter between its check and its sleep holds it
  slot.cv.notify_all();
}

void WorkState::complete() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (done_.load(std::memory_order_relaxed)) return;  // a failure (a deadline, say) stays a failure
    release_locked();
    done_.store(true);
  }
  notify_done();
}

void WorkState::fail(std::exception_ptr error) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (done_.load(std::memory_order_relaxed)) return;
    error_ = std::move(error);
    release_locked();
    done_.store(true);
  }
  notify_done();
}

void WorkState::set_poller(std::function<bool()> poller) {
  std::lock_guard<std::mutex> lock(mutex_);
  poller_ = std::move(poller);
}

void WorkState::stash(std::shared_ptr<Storage> storage) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!done_.load(std::memory_order_relaxed)) stash_.push_back(std::move(storage));
}

bool WorkState::is_completed() {
  if (done_.load(std::memory_order_acquire)) {  // the outcome never changes once set
    if (error_) std::rethrow_exception(error_);
    return true;
  }
  std::unique_lock<std::mutex> lock(mutex_);
  if (!done_.load(std::memory_order_relaxed) && poller_) {
    try {
      if (poller_()) {
        release_locked();
        done_.store(true, std::memory_order_release);
      }
    } catch (...) {
      error_ = std::current_exception();
      release_locked();
      done_.store(true, std::memory_order_release);
    }
  }
  if (done_.load(std::memory_order_relaxed) && error_) std::rethrow_exception(error_);
  return done_.load(std::memory_order_relaxed);
}

std::chrono::milliseconds WorkState::default_timeout() const {
  auto backend = backend_.lock();
  return backend ? backend->timeout() : default_comm_timeout();
}

void WorkState::wait(std::chrono::milliseconds timeout) {
  if (is_completed()) return;  // most often: it ran on the caller's thread
  auto deadline = std::chrono::steady_clock::now() + timeout;
  bool polled;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    polled = poller_ != nullptr;
  }
  if (polled) {
    // Tight: yield for 1 ms, then sleep at most 20 us (plus the timer's slack)
    // between polls, so a GPU operation is seen done within ~0.1 ms of finishing
    // (backing off to 1 ms sleeps made NCCL work complete up to ~50% late);
    // PollPause backs off to 1 ms once the wait has lasted 10 ms.
    PollPause pause(std::chrono::microseconds(20), std::chrono::microseconds(1000));
    while (!is_completed() && std::chrono::steady_clock::now() < deadline) pause();
  } else {
    // Short operations finish within microseconds: yield-poll briefly before
    // sleeping on the condition variable (a futex wake-up costs tens of us).
    auto spin_until = std::chrono::steady_clock::now() + std::chrono::microseconds(200);
    while (!done_.load(std::memory_order_acquire) && std::chrono::steady_clock::now() < spin_until) {
      std::this_thread::yield();
    }
    WaitSlot& slot = wait_slot(this);
    waiters_.fetch_add(1);
    {
      std::unique_lock<std::mutex> lock(slot.mutex);
      slot.cv.wait_until(lock, deadline, [&] { return done_.load(); });
    }
    waiters_.fetch_sub(1);
  }
  if (is_completed()) return;
  auto backend = backend_.lock();
  std::string why = backend && sequence_ > 0 ? backend->explain_deadline(op_, sequence_) : "";
  if (is_completed()) return;  // it finished while the peers were asked
  std::string message;
  if (!why.empty()) {
    // "all_reduce #1834 on 'model' did not complete within 5000 ms: world rank 2
    // (host h1) did not answer (last seen at #1833) [...]"
    World& world = World::get();
    message = detail::cat(op_, " #", sequence_, " on '", backend->name(), "' did not complete within ", timeout.count(),
                          " ms: ", why, " [", description(), ", waited on by ", world.describe_rank(world.rank()),
                          "]; the communicator is now aborted");
  } else {
    message = detail::cat(description(), " did not complete within ", timeout.count(), " ms on rank ", error_rank(),
                          ": a peer may have failed or not issued the same operation; "
                          "the communicator is now aborted");
  }
  if (backend) backend->abort_after_failure(message);
  // The work stays failed: polled again later (its kernels may finish early once
  // the communicator is aborted, its thread may still report) it rethrows this.
  fail(std::make_exception_ptr(Error(ErrorKind::kDeadlineExceeded, message)));
  is_completed();  // rethrows it (or returns: the operation finished just before)
}

}  // namespace detail

bool Work::is_completed() const { return !state_ || state_->is_completed(); }

void Work::wait() const {
  if (state_ && !state_->is_completed()) state_->wait(state_->default_timeout());
}

void Work::block(const Stream& stream) const {
  if (state_) state_->block(stream);
}

void Work::wait(std::chrono::milliseconds timeout) const {
  if (state_) state_->wait(timeout);
}

std::string Work::description() const { return state_ ? state_->description() : "completed work"; }

}  // namespace meshrt

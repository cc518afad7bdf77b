#include "comm/work.h"

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <utility>

#include "comm/backend.h"
#include "comm/world.h"
#include "device/poll.h"

namespace meshrt {

namespace detail {

WorkState::WorkState(std::string description, std::weak_ptr<CommBackend> backend)
    : backend_(std::move(backend)), text_(std::move(description)) {}

WorkState::WorkState(const OpDescription& op, const std::shared_ptr<CommBackend>& backend)
    : holds_(op.pieces != nullptr), backend_identity_(backend.get()), backend_(backend), op_description_(op),
      backend_description_(backend->description()) {}

namespace {
// This thread's spare state and shared_ptr control block (WorkState::make): a
// loop of small collectives, each Work dropped after its wait, reuses the same
// two, with no allocation and no atomic reference counting (a shared_ptr whose
// last owner lets go with no weak references left reads its counts and
// writes none). Plain data, so that reaching it costs no initialisation check;
// SpareCleanup frees what it holds when the thread ends.
struct Spares {
  WorkState* state;
  void* block;
  size_t block_size;
  bool registered;  // SpareCleanup made for this thread
  bool ended;       // the thread is ending: no more spares kept
};
[[gnu::tls_model("initial-exec")]] thread_local Spares t_spares;

struct SpareCleanup {
  ~SpareCleanup();
};

// Gives the control block of make()'s shared_ptr this thread's spare memory.
template <class T>
struct SpareBlockAllocator {
  using value_type = T;
  SpareBlockAllocator() = default;
  template <class U>
  SpareBlockAllocator(const SpareBlockAllocator<U>&) noexcept {}
  T* allocate(size_t n) {
    Spares& t = t_spares;
    if (t.block && t.block_size == n * sizeof(T)) return static_cast<T*>(std::exchange(t.block, nullptr));
    return static_cast<T*>(::operator new(n * sizeof(T)));
  }
  void deallocate(T* p, size_t n) noexcept {
    Spares& t = t_spares;
    if (!t.block && !t.ended && t.registered) {
      t.block = p;
      t.block_size = n * sizeof(T);
      return;
    }
    ::operator delete(p);
  }
  template <class U>
  bool operator==(const SpareBlockAllocator<U>&) const noexcept {
    return true;
  }
};
}  // namespace

std::shared_ptr<WorkState> WorkState::make(const std::shared_ptr<CommBackend>& backend) {
  Spares& t = t_spares;
  if (!t.registered) {
    thread_local SpareCleanup cleanup;  // frees this thread's spares when it ends
    (void)cleanup;
    t.registered = true;
  }
  WorkState* s = std::exchange(t.state, nullptr);
  // The same backend: the same object and the same control block (a new
  // backend at a dead one's address has another one: the state's weak
  // reference keeps the dead one's allocated). The rest of the state is reset
  // as a new one's would be.
  if (s && s->backend_identity_ == backend.get() && !s->backend_.owner_before(backend) &&
      !backend.owner_before(s->backend_)) {
    s->sequence_ = 0;
    s->op_ = "";
    s->done_.store(false, std::memory_order_relaxed);
  } else {
    delete s;
    s = new WorkState(OpDescription{}, backend);
  }
  // When the last Work (or backend task) holding it lets go, the state becomes
  // the spare of the thread that let go (if it has none), emptied of what it
  // held, or is deleted.
  auto recycle = [](WorkState* state) noexcept {
    Spares& here = t_spares;
    if (here.state || here.ended || !here.registered) {
      delete state;
      return;
    }
    // (A small operation that completed at once set none of these.)
    if (state->holds_.load(std::memory_order_relaxed)) {
      state->error_ = nullptr;
      state->poller_ = nullptr;
      state->stash_.clear();
      state->done_event_.reset();
      state->op_description_.pieces.reset();
      state->holds_.store(false, std::memory_order_relaxed);
    }
    here.state = state;
  };
  return std::shared_ptr<WorkState>(s, recycle, SpareBlockAllocator<WorkState>());
}

namespace {
SpareCleanup::~SpareCleanup() {
  Spares& t = t_spares;
  t.ended = true;
  delete std::exchange(t.state, nullptr);
  ::operator delete(std::exchange(t.block, nullptr));
}
}  // namespace

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
    holds_.store(true, std::memory_order_relaxed);
    release_locked();
    done_.store(true);
  }
  notify_done();
}

void WorkState::set_poller(std::function<bool()> poller) {
  std::lock_guard<std::mutex> lock(mutex_);
  poller_ = std::move(poller);
  holds_.store(true, std::memory_order_relaxed);
}

void WorkState::stash(std::shared_ptr<Storage> storage) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!done_.load(std::memory_order_relaxed)) {
    stash_.push_back(std::move(storage));
    holds_.store(true, std::memory_order_relaxed);
  }
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
  try {
    is_completed();  // rethrows it (or returns: the operation finished just before)
  } catch (const Error& e) {
    // The communicator's own thread may have seen the abort first and failed
    // the work itself (kUnavailable, quoting this message): the deadline is the
    // cause, and what this wait reports (seen under load: comm_np2's
    // Deadlines.UnmatchedReceiveTimesOut got the other kind).
    if (e.kind() == ErrorKind::kUnavailable && e.message().find(message) != std::string::npos) {
      throw Error(ErrorKind::kDeadlineExceeded, message);
    }
    throw;
  }
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

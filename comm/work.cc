#include "comm/work.h"

#include <thread>

#include "comm/backend.h"
#include "comm/world.h"
#include "device/poll.h"

namespace meshrt {

namespace detail {

WorkState::WorkState(std::string description, std::weak_ptr<CommBackend> backend)
    : description_(std::move(description)), backend_(std::move(backend)) {}

void WorkState::release_locked() {
  stash_.clear();
  poller_ = nullptr;
}

void WorkState::complete() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (done_) return;  // a failure (a deadline, say) stays a failure
  done_ = true;
  release_locked();
  done_cv_.notify_all();
}

void WorkState::fail(std::exception_ptr error) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (done_) return;
  done_ = true;
  error_ = std::move(error);
  release_locked();
  done_cv_.notify_all();
}

void WorkState::set_poller(std::function<bool()> poller) {
  std::lock_guard<std::mutex> lock(mutex_);
  poller_ = std::move(poller);
}

void WorkState::stash(std::shared_ptr<Storage> storage) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!done_) stash_.push_back(std::move(storage));
}

bool WorkState::is_completed() {
  std::unique_lock<std::mutex> lock(mutex_);
  if (!done_ && poller_) {
    try {
      if (poller_()) {
        done_ = true;
        release_locked();
      }
    } catch (...) {
      done_ = true;
      error_ = std::current_exception();
      release_locked();
    }
  }
  if (done_ && error_) std::rethrow_exception(error_);
  return done_;
}

std::chrono::milliseconds WorkState::default_timeout() const {
  auto backend = backend_.lock();
  return backend ? backend->timeout() : default_comm_timeout();
}

void WorkState::wait(std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  bool polled;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    polled = poller_ != nullptr;
  }
  if (polled) {
    // Tight: yield for 2 ms, then sleep at most 20 us (plus the timer's slack)
    // between polls, so a GPU operation is seen done within ~0.1 ms of finishing
    // (backing off to 1 ms sleeps made NCCL work complete up to ~50% late).
    PollPause pause(std::chrono::microseconds(20), std::chrono::microseconds(2000));
    while (!is_completed() && std::chrono::steady_clock::now() < deadline) pause();
  } else {
    // Short operations finish within microseconds: yield-poll briefly before
    // sleeping on the condition variable (a futex wake-up costs tens of us).
    auto spin_until = std::chrono::steady_clock::now() + std::chrono::microseconds(200);
    std::unique_lock<std::mutex> lock(mutex_);
    while (!done_ && std::chrono::steady_clock::now() < spin_until) {
      lock.unlock();
      std::this_thread::yield();
      lock.lock();
    }
    done_cv_.wait_until(lock, deadline, [&] { return done_; });
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
                          " ms: ", why, " [", description_, ", waited on by ", world.describe_rank(world.rank()),
                          "]; the communicator is now aborted");
  } else {
    message = detail::cat(description_, " did not complete within ", timeout.count(), " ms on rank ", error_rank(),
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
  if (state_) state_->wait(state_->default_timeout());
}

void Work::wait(std::chrono::milliseconds timeout) const {
  if (state_) state_->wait(timeout);
}

std::string Work::description() const { return state_ ? state_->description() : "completed work"; }

}  // namespace meshrt

// Pauses between polls of something that finishes on its own (an MPI request, a
// CUDA event, a message from another rank): yield for the first `spin`, then
// sleep, twice as long each time from 1 us up to `longest`. Short waits end
// promptly; long ones cost little CPU (ranks often share cores).
#pragma once

#include <algorithm>
#include <chrono>
#include <thread>

namespace meshrt {

// The deadline of every wait in meshrt that has no other: MESHRT_COMM_TIMEOUT
// seconds, 300 when unset (collectives, messages, stream and event waits).
// Throws Error(kInvalidArgument) when the variable is not a positive number.
std::chrono::milliseconds default_wait_timeout();

class PollPause {
 public:
  explicit PollPause(std::chrono::microseconds longest,
                     std::chrono::microseconds spin = std::chrono::microseconds(0))
      : longest_(longest), spin_until_(std::chrono::steady_clock::now() + spin) {}

  void operator()() {
    if (std::chrono::steady_clock::now() < spin_until_) {
      std::this_thread::yield();
      return;
    }
    std::this_thread::sleep_for(next_);
    next_ = std::min(next_ * 2, longest_);
  }

 private:
  std::chrono::microseconds longest_, next_{1};
  std::chrono::steady_clock::time_point spin_until_;
};

}  // namespace meshrt

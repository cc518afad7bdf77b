// Pauses between polls of something that finishes on its own (an MPI request, a
// CUDA event, a message from another rank): yield for the first `spin` (at most
// 1 ms), then sleep, twice as long each time from 1 us up to `longest`, and up
// to 1 ms once the wait has lasted 10 ms. Short waits end promptly; a long one
// wakes its thread at most about a thousand times a second (ranks often share
// cores, and an idle server should cost no CPU).
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
  // The longest yield-polling phase: past it a waiting thread sleeps.
  static constexpr std::chrono::microseconds kLongestSpin{1000};
  // How long a wait polls at its own pace before its sleeps grow to 1 ms.
  static constexpr std::chrono::milliseconds kPatience{10};

  explicit PollPause(std::chrono::microseconds longest,
                     std::chrono::microseconds spin = std::chrono::microseconds(0))
      : longest_(longest),
        start_(std::chrono::steady_clock::now()),
        spin_until_(start_ + std::min(spin, kLongestSpin)) {}

  void operator()() {
    auto now = std::chrono::steady_clock::now();
    if (now < spin_until_) {
      std::this_thread::yield();
      return;
    }
    std::this_thread::sleep_for(next_);
    auto cap = now - start_ < kPatience ? longest_ : std::max(longest_, std::chrono::microseconds(1000));
    next_ = std::min(next_ * 2, cap);
  }

 private:
  std::chrono::microseconds longest_, next_{1};
  std::chrono::steady_clock::time_point start_, spin_until_;
};

}  // namespace meshrt

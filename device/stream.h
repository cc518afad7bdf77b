// Streams and events. On a CUDA device a Stream is a cudaStream_t and an Event a
// cudaEvent_t. On the cpu device a Stream is a queue of host work with CUDA's
// semantics: kernels, copies and collectives queued on it run in order on a
// worker thread, asynchronously to whoever queued them (small work may run at
// once when the stream is idle); an Event records a point of a stream, and
// waits and queries as CUDA's do. Handles are shared: copies refer to the same
// stream or event. Every host wait has a deadline.
//
// MESHRT_CPU_STREAMS=delayed is a test mode: cpu work is never run at once and
// is held back a while unless someone waits for it, and new cpu device memory
// reads as 0xff bytes (NaN), so a missing synchronisation reads unwritten
// memory every time instead of passing on the cpu and failing on a GPU.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>

#include "device/device.h"

namespace meshrt {

// Work on this many bytes or fewer may run at once on the calling thread when
// its cpu stream is idle (never in the delayed mode): the serving path's small
// kernels pay no thread hop.
inline constexpr size_t kSmallCpuWork = size_t{1} << 20;

// How a cpu stream's worker runs.
struct CpuStreamOptions {
  std::string name;  // in errors ("work on cpu stream '<name>' did not finish ...")
  // Whether the delayed test mode holds this stream's work back. A
  // communicator's stream is not held: its operations wait for their inputs on
  // the compute stream, which releases that stream's held work, and holding
  // them too would only add the delay to every collective.
  bool held_in_delayed_mode = true;
  // Yield-poll this long for the next task before sleeping, so back-to-back
  // operations start without a futex wake-up.
  std::chrono::microseconds spin{0};
};

class Stream {
 public:
  // A new stream on device (non-blocking with respect to the legacy default
  // stream). When the last handle of a cpu stream goes, it waits for the
  // stream's queued work (unless it goes inside that work).
  static Stream create(const Device& device);
  // A new cpu stream with options.
  static Stream create_cpu(CpuStreamOptions options);
  // The per-process stream meshrt uses by default on device; made on first use.
  static Stream default_for(const Device& device);

  const Device& device() const { return device_; }
  // The cudaStream_t; on the cpu device, the stream's queue (an identity only).
  void* native_handle() const;
  // Blocks until all work queued on the stream is done, at most timeout
  // (default_wait_timeout() without one): past it, Error(kDeadlineExceeded).
  void synchronize() const;
  void synchronize(std::chrono::milliseconds timeout) const;
  // True when all work queued on the stream is done.
  bool query() const;
  // Host work in stream order (cpu streams only, as cudaLaunchHostFunc): fn runs
  // after all work queued before it. small: fn may run at once on this thread
  // when the stream is idle (never in the delayed mode). An exception of fn is
  // reported by the next wait on the stream (sticky, as CUDA's errors), or
  // thrown here when fn ran at once. Throws Error(kInvalidArgument) on a CUDA stream.
  void enqueue(std::function<void()> fn, bool small = false) const;
  // Runs fn() at once on this thread, in stream order, when the stream is idle
  // (nothing queued or running; cpu streams only, never in the delayed mode)
  // and returns true; work queued on the stream meanwhile runs after fn.
  // Returns false without running fn when the stream is busy (or not a cpu
  // stream). An exception of fn propagates here (it is not sticky). fn is
  // called through a pointer: nothing is copied or allocated.
  template <class F>
  bool run_if_idle(F&& fn) const {
    return run_if_idle_impl([](void* f) { (*static_cast<std::remove_reference_t<F>*>(f))(); },
                            const_cast<void*>(static_cast<const void*>(std::addressof(fn))));
  }

 private:
  friend class Event;
  struct Impl;
  bool run_if_idle_impl(void (*call)(void*), void* fn) const;
  Stream(Device device, std::shared_ptr<Impl> impl) : device_(device), impl_(std::move(impl)) {}
  Device device_;
  std::shared_ptr<Impl> impl_;
};

class Event {
 public:
  // timing: whether elapsed_ms() may be used (CUDA events without timing are cheaper).
  explicit Event(const Device& device, bool timing = false);

  const Device& device() const { return device_; }
  // Captures the work queued so far on stream.
  void record(const Stream& stream);
  // Makes stream wait (on the device; on the cpu, on the stream's worker) for
  // this event; the caller does not wait.
  void block(const Stream& stream) const;
  bool query() const;
  // Whether the recorded work has finished, successfully or not; never throws
  // (the allocator asks it: work that failed is still done with its memory).
  bool passed() const noexcept;
  // Waits for the recorded work, at most timeout (default_wait_timeout() without
  // one): past it, Error(kDeadlineExceeded).
  void synchronize() const;
  void synchronize(std::chrono::milliseconds timeout) const;
  // Milliseconds between this event and end; both must have been recorded with timing.
  float elapsed_ms(const Event& end) const;

 private:
  struct Impl;
  Device device_;
  std::shared_ptr<Impl> impl_;
};

// Whether the cpu streams run in the delayed test mode (MESHRT_CPU_STREAMS=delayed).
bool cpu_streams_delayed();

// Test hook: every task a cpu stream's worker runs from now on first sleeps
// for delay (a kernel that takes that long), and no work runs at once on the
// calling thread; zero turns it off. Proves in tests that ops return before
// their work is done (asynchronous dispatch).
void set_cpu_work_delay_for_testing(std::chrono::microseconds delay);

}  // namespace meshrt

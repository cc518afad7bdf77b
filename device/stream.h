// Streams and events. On a CUDA device a Stream is a cudaStream_t and an Event a
// cudaEvent_t; on the cpu device work runs synchronously on the calling thread,
// so a Stream is a no-op and an Event is a timestamp. Handles are shared: copies
// refer to the same stream or event. Every host wait has a deadline.
#pragma once

#include <chrono>
#include <memory>

#include "device/device.h"

namespace meshrt {

class Stream {
 public:
  // A new stream on device (non-blocking with respect to the legacy default stream).
  static Stream create(const Device& device);
  // The per-process stream meshrt uses by default on device; made on first use.
  static Stream default_for(const Device& device);

  const Device& device() const { return device_; }
  // The cudaStream_t, or nullptr on the cpu device.
  void* native_handle() const;
  // Blocks until all work queued on the stream is done, at most timeout
  // (default_wait_timeout() without one): past it, Error(kDeadlineExceeded).
  void synchronize() const;
  void synchronize(std::chrono::milliseconds timeout) const;
  // True when all work queued on the stream is done.
  bool query() const;

 private:
  struct Impl;
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
  // Makes stream wait (on the device) for this event.
  void block(const Stream& stream) const;
  bool query() const;
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

}  // namespace meshrt

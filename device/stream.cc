#include "device/stream.h"

#include <chrono>
#include <cstdlib>
#include <atomic>
#include <map>
#include <mutex>
#include <string>

#include "device/cpu_queue.h"
#include "device/error.h"
#include "device/poll.h"

#if MESHRT_WITH_CUDA
#include "device/cuda_check.h"
#endif

namespace meshrt {

std::chrono::milliseconds default_wait_timeout() {
  const char* value = std::getenv("MESHRT_COMM_TIMEOUT");
  if (value && *value) {
    char* end = nullptr;
    double seconds = std::strtod(value, &end);
    MESHRT_CHECK_ARG(end && *end == '\0' && seconds > 0, "MESHRT_COMM_TIMEOUT='", value,
                     "' is not a positive number of seconds");
    return std::chrono::milliseconds(static_cast<long long>(seconds * 1000));
  }
  return std::chrono::seconds(300);
}

bool cpu_streams_delayed() { return detail::cpu_streams_delayed(); }

struct Stream::Impl {
  void* handle = nullptr;  // cudaStream_t
  bool owned = false;
  Device device;
  std::shared_ptr<detail::CpuQueue> queue;  // cpu streams
  ~Impl() {
    if (queue) queue->shutdown();  // no handle can queue work any more: run what is queued, stop
#if MESHRT_WITH_CUDA
    if (owned && handle) cudaStreamDestroy(static_cast<cudaStream_t>(handle));
#endif
  }
};

Stream Stream::create_cpu(CpuStreamOptions options) {
  auto impl = std::make_shared<Impl>();
  impl->device = Device::cpu();
  impl->queue = std::make_shared<detail::CpuQueue>(std::move(options.name), options.held_in_delayed_mode,
                                                   options.spin);
  impl->handle = impl->queue.get();
  return Stream(Device::cpu(), std::move(impl));
}

Stream Stream::create(const Device& device) {
  static std::atomic<int> cpu_streams{0};
  if (device.is_cpu()) return create_cpu({"cpu stream " + std::to_string(cpu_streams++)});
  auto impl = std::make_shared<Impl>();
  impl->device = device;
  if (device.is_cuda()) {
    set_current_device(device);
#if MESHRT_WITH_CUDA
    cudaStream_t s = nullptr;
    MESHRT_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    impl->handle = s;
    impl->owned = true;
#endif
  }
  return Stream(device, std::move(impl));
}

Stream Stream::default_for(const Device& device) {
  static std::mutex mutex;
  static std::map<int, Stream>* streams = new std::map<int, Stream>();  // lives to exit
  if (device.is_cpu()) {
    // Lives to exit too: work still queued then is dropped, not run during
    // static destruction.
    static const Stream* cpu_stream = new Stream(create_cpu({"cpu default stream"}));
    return *cpu_stream;
  }
  std::lock_guard<std::mutex> lock(mutex);
  auto it = streams->find(device.index());
  if (it == streams->end()) it = streams->emplace(device.index(), create(device)).first;
  return it->second;
}

void* Stream::native_handle() const { return impl_ ? impl_->handle : nullptr; }

void Stream::synchronize() const { synchronize(default_wait_timeout()); }

void Stream::synchronize(std::chrono::milliseconds timeout) const {
  Event done(device_);
  done.record(*this);
  done.synchronize(timeout);
}

void Stream::enqueue(std::function<void()> fn, bool small) const {
  MESHRT_CHECK_ARG(device_.is_cpu() && impl_ && impl_->queue, "Stream::enqueue takes cpu streams; this one is on ",
                   device_);
  impl_->queue->enqueue(std::move(fn), small);
}

bool Stream::run_if_idle_impl(void (*call)(void*), void* fn) const {
  if (!device_.is_cpu() || !impl_ || !impl_->queue) return false;
  return impl_->queue->run_if_idle(call, fn);
}

bool Stream::query() const {
  if (device_.is_cpu()) return impl_->queue->reached(impl_->queue->submitted());
#if MESHRT_WITH_CUDA
  if (device_.is_cuda()) {
    cudaError_t status = cudaStreamQuery(static_cast<cudaStream_t>(native_handle()));
    if (status == cudaErrorNotReady) return false;
    MESHRT_CUDA_CHECK(status);
  }
#endif
  return true;
}

struct Event::Impl {
  void* handle = nullptr;  // cudaEvent_t
  bool timing = false;
  bool recorded = false;
  std::shared_ptr<detail::CpuQueue> queue;  // cpu: the stream recorded on ...
  uint64_t number = 0;                      // ... and the task it completes after
  // cpu timing: when the point was reached (its own object: the task that sets
  // it must not hold the event, and with it the queue, from inside the queue).
  std::shared_ptr<std::chrono::steady_clock::time_point> cpu_time;
  ~Impl() {
#if MESHRT_WITH_CUDA
    if (handle) cudaEventDestroy(static_cast<cudaEvent_t>(handle));
#endif
  }
};

Event::Event(const Device& device, bool timing) : device_(device), impl_(std::make_shared<Impl>()) {
  impl_->timing = timing;
  if (device.is_cuda()) {
    set_current_device(device);
#if MESHRT_WITH_CUDA
    cudaEvent_t e = nullptr;
    MESHRT_CUDA_CHECK(cudaEventCreateWithFlags(&e, timing ? cudaEventDefault : cudaEventDisableTiming));
    impl_->handle = e;
#endif
  }
}

void Event::record(const Stream& stream) {
  MESHRT_CHECK_ARG(stream.device() == device_, "Event on ", device_, " recorded on a stream of ",
                   stream.device());
  impl_->recorded = true;
  if (device_.is_cpu()) {
    // The point in the stream; with timing, a task that notes when it is reached.
    impl_->queue = stream.impl_->queue;
    if (impl_->timing) {
      auto when = std::make_shared<std::chrono::steady_clock::time_point>();
      impl_->cpu_time = when;
      stream.enqueue([when] { *when = std::chrono::steady_clock::now(); }, true);
    }
    impl_->number = impl_->queue->submitted();
    return;
  }
#if MESHRT_WITH_CUDA
  if (device_.is_cuda()) {
    MESHRT_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(impl_->handle),
                                      static_cast<cudaStream_t>(stream.native_handle())));
  }
#endif
}

void Event::block(const Stream& stream) const {
  if (device_.is_cpu() && stream.device().is_cpu()) {
    if (!impl_->recorded || impl_->queue.get() == stream.impl_->queue.get()) return;  // stream order holds
    // A wait in the stream's order; the caller does not wait.
    stream.impl_->queue->enqueue_wait(impl_->queue, impl_->number);
    return;
  }
#if MESHRT_WITH_CUDA
  if (device_.is_cuda() && stream.device().is_cuda()) {
    MESHRT_CUDA_CHECK(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream.native_handle()),
                                          static_cast<cudaEvent_t>(impl_->handle), 0));
  }
#endif
}

bool Event::query() const {
  if (device_.is_cpu()) return !impl_->recorded || impl_->queue->reached(impl_->number);
#if MESHRT_WITH_CUDA
  if (device_.is_cuda() && impl_->recorded) {
    cudaError_t status = cudaEventQuery(static_cast<cudaEvent_t>(impl_->handle));
    if (status == cudaErrorNotReady) return false;
    MESHRT_CUDA_CHECK(status);
  }
#endif
  return true;
}

bool Event::passed() const noexcept {
  if (!impl_->recorded) return true;
  if (device_.is_cpu()) return impl_->queue->passed(impl_->number);
#if MESHRT_WITH_CUDA
  if (device_.is_cuda()) return cudaEventQuery(static_cast<cudaEvent_t>(impl_->handle)) != cudaErrorNotReady;
#endif
  return true;
}

void Event::synchronize() const { synchronize(default_wait_timeout()); }

void Event::synchronize(std::chrono::milliseconds timeout) const {
  if (device_.is_cpu()) {
    if (impl_->recorded) impl_->queue->wait(impl_->number, timeout, "waiting for an event");
    return;
  }
  // Polled, not cudaEventSynchronize: a stuck kernel or collective ahead of the
  // event must end in an error at the deadline, not a hang.
  auto deadline = std::chrono::steady_clock::now() + timeout;
  PollPause pause(std::chrono::microseconds(50), std::chrono::microseconds(500));
  while (!query()) {
    MESHRT_CHECK(std::chrono::steady_clock::now() < deadline, ErrorKind::kDeadlineExceeded, "work on ", device_,
                 " did not finish within ", timeout.count(),
                 " ms (a kernel or a collective ahead of it is stuck; MESHRT_COMM_TIMEOUT sets the deadline)");
    pause();
  }
}

float Event::elapsed_ms(const Event& end) const {
  MESHRT_CHECK_ARG(impl_->recorded && end.impl_->recorded,
                   "Event::elapsed_ms needs both events recorded");
  MESHRT_CHECK_ARG(impl_->timing && end.impl_->timing,
                   "Event::elapsed_ms needs events created with timing = true");
#if MESHRT_WITH_CUDA
  if (device_.is_cuda()) {
    float ms = 0;
    MESHRT_CUDA_CHECK(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(impl_->handle),
                                           static_cast<cudaEvent_t>(end.impl_->handle)));
    return ms;
  }
#endif
  MESHRT_CHECK_ARG(query() && end.query(), "Event::elapsed_ms: the events' work is not done yet");
  return std::chrono::duration<float, std::milli>(*end.impl_->cpu_time - *impl_->cpu_time).count();
}

}  // namespace meshrt

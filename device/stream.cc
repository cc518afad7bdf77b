#include "device/stream.h"

#include <chrono>
#include <cstdlib>
#include <map>
#include <mutex>

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

struct Stream::Impl {
  void* handle = nullptr;  // cudaStream_t
  bool owned = false;
  Device device;
  ~Impl() {
#if MESHRT_WITH_CUDA
    if (owned && handle) cudaStreamDestroy(static_cast<cudaStream_t>(handle));
#endif
  }
};

Stream Stream::create(const Device& device) {
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
    static const Stream cpu_stream = create(Device::cpu());
    return cpu_stream;
  }
  std::lock_guard<std::mutex> lock(mutex);
  auto it = streams->find(device.index());
  if (it == streams->end()) it = streams->emplace(device.index(), create(device)).first;
  return it->second;
}

void* Stream::native_handle() const { return impl_ ? impl_->handle : nullptr; }

void Stream::synchronize() const { synchronize(default_wait_timeout()); }

void Stream::synchronize(std::chrono::milliseconds timeout) const {
  if (!device_.is_cuda()) return;
  Event done(device_);
  done.record(*this);
  done.synchronize(timeout);
}

bool Stream::query() const {
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
  std::chrono::steady_clock::time_point cpu_time;
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
  impl_->cpu_time = std::chrono::steady_clock::now();
#if MESHRT_WITH_CUDA
  if (device_.is_cuda()) {
    MESHRT_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(impl_->handle),
                                      static_cast<cudaStream_t>(stream.native_handle())));
  }
#endif
}

void Event::block(const Stream& stream) const {
#if MESHRT_WITH_CUDA
  if (device_.is_cuda() && stream.device().is_cuda()) {
    MESHRT_CUDA_CHECK(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream.native_handle()),
                                          static_cast<cudaEvent_t>(impl_->handle), 0));
  }
#endif
}

bool Event::query() const {
#if MESHRT_WITH_CUDA
  if (device_.is_cuda() && impl_->recorded) {
    cudaError_t status = cudaEventQuery(static_cast<cudaEvent_t>(impl_->handle));
    if (status == cudaErrorNotReady) return false;
    MESHRT_CUDA_CHECK(status);
  }
#endif
  return true;
}

void Event::synchronize() const { synchronize(default_wait_timeout()); }

void Event::synchronize(std::chrono::milliseconds timeout) const {
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
  return std::chrono::duration<float, std::milli>(end.impl_->cpu_time - impl_->cpu_time).count();
}

}  // namespace meshrt

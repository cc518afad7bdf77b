// Internal: picks the backend for a call and checks what all kernels check.
#pragma once

#include <initializer_list>
#include <optional>
#include <span>
#include <tuple>

#include "device/tensor.h"

namespace meshrt::kernels::detail {

struct Launch {
  bool cuda = false;
  int device = 0;
  void* stream = nullptr;             // cudaStream_t
  std::optional<Stream> cpu_stream;   // the cpu stream the work is queued on
  size_t bytes = 0;                   // of the tensors: small work may run at once
};

// Queues a cpu kernel (a callable holding its arguments: raw pointers and
// values, never tensors, so that memory follows the allocator's stream rules
// as on a GPU) on the launch's cpu stream.
template <class Kernel>
void run_on_cpu(const Launch& launch, Kernel kernel) {
  launch.cpu_stream->enqueue(std::move(kernel), launch.bytes <= kSmallCpuWork);
}

// The backend for tensors on `device`. Throws Error(kUnavailable) for a CUDA
// device when meshrt was built without CUDA, and Error(kInvalidArgument) when
// stream belongs to another device. For a non-default stream, orders it after
// the default stream and records it on the tensors' storage (prepare_stream_use).
Launch launch_for(const char* op, const Device& device, const Stream* stream,
                  std::initializer_list<const DeviceTensor*> tensors);

// All tensors defined and on the same device as the first.
void check_same_device(const char* op, std::initializer_list<const DeviceTensor*> tensors);
// Throws Error(kShape) unless dtype is in allowed, naming op and the accepted list.
void check_dtype(const char* op, const DeviceTensor& t, std::span<const DType> allowed);

}  // namespace meshrt::kernels::detail

// Runs backend function fn on the backend launch chose: cuda::fn(args..., device,
// stream), or cpu::fn(args...) queued on the cpu stream (the arguments are
// evaluated now, and the call made in stream order).
#define MESHRT_CPU_DISPATCH(launch, fn, ...)                                                      \
  ::meshrt::kernels::detail::run_on_cpu(                                                          \
      (launch), [meshrt_args_ = std::make_tuple(__VA_ARGS__)] {                                   \
        std::apply([](const auto&... a) { ::meshrt::kernels::cpu::fn(a...); }, meshrt_args_);    \
      })
#if MESHRT_WITH_CUDA
#define MESHRT_DISPATCH(launch, fn, ...)                                                          \
  ((launch).cuda ? ::meshrt::kernels::cuda::fn(__VA_ARGS__, (launch).device, (launch).stream)    \
                 : MESHRT_CPU_DISPATCH(launch, fn, __VA_ARGS__))
#else
#define MESHRT_DISPATCH(launch, fn, ...) MESHRT_CPU_DISPATCH(launch, fn, __VA_ARGS__)
#endif

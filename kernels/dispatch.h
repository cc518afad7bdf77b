// Internal: picks the backend for a call and checks what all kernels check.
#pragma once

#include <initializer_list>
#include <span>

#include "device/tensor.h"

namespace meshrt::kernels::detail {

struct Launch {
  bool cuda = false;
  int device = 0;
  void* stream = nullptr;  // cudaStream_t
};

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
// stream) or cpu::fn(args...).
#if MESHRT_WITH_CUDA
#define MESHRT_DISPATCH(launch, fn, ...)                                               \
  ((launch).cuda ? ::meshrt::kernels::cuda::fn(__VA_ARGS__, (launch).device, (launch).stream) \
                 : ::meshrt::kernels::cpu::fn(__VA_ARGS__))
#else
#define MESHRT_DISPATCH(launch, fn, ...) ((void)(launch), ::meshrt::kernels::cpu::fn(__VA_ARGS__))
#endif

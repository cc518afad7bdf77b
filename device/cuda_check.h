// MESHRT_CUDA_CHECK: the check macro for the CUDA runtime. Only for sources
// built with CUDA (MESHRT_WITH_CUDA); include it from .cc/.cu files, never from
// a public header, so consumers of meshrt do not need the CUDA headers.
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "device/error.h"

namespace meshrt::detail {
inline std::string cuda_message(cudaError_t status) {
  return std::string(cudaGetErrorString(status)) + " (" + cudaGetErrorName(status) + ")";
}
}  // namespace meshrt::detail

#define MESHRT_CUDA_CHECK(expr)                                                      \
  do {                                                                               \
    cudaError_t meshrt_status_ = (expr);                                             \
    if (meshrt_status_ != cudaSuccess) {                                             \
      ::meshrt::throw_library_error(::meshrt::ErrorKind::kCuda, #expr, __FILE__,     \
                                    __LINE__,                                        \
                                    ::meshrt::detail::cuda_message(meshrt_status_)); \
    }                                                                                \
  } while (0)

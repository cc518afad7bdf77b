// MESHRT_NCCL_CHECK: the check macro for NCCL (CUDA builds only; not installed).
// ncclInProgress is not an error: a non-blocking communicator returns it while
// the call is still being set up, and the caller then polls
// ncclCommGetAsyncError (see nccl_backend.cc).
#pragma once

#include <nccl.h>

#include <string>

#include "device/error.h"

namespace meshrt::detail {
inline std::string nccl_message(ncclResult_t status) {
  std::string message = ncclGetErrorString(status);
  const char* last = ncclGetLastError(nullptr);
  if (last && *last) message += std::string(": ") + last;
  return message;
}
}  // namespace meshrt::detail

#define MESHRT_NCCL_CHECK(expr)                                                              \
  do {                                                                                       \
    ncclResult_t meshrt_status_ = (expr);                                                    \
    if (meshrt_status_ != ncclSuccess && meshrt_status_ != ncclInProgress) {                 \
      ::meshrt::throw_library_error(::meshrt::ErrorKind::kNccl, #expr, __FILE__, __LINE__,   \
                                    ::meshrt::detail::nccl_message(meshrt_status_));         \
    }                                                                                        \
  } while (0)

// MESHRT_CUBLAS_CHECK: the check macro for cuBLAS (CUDA builds only).
#pragma once

#include <cublas_v2.h>

#include <string>

#include "device/error.h"

#define MESHRT_CUBLAS_CHECK(expr)                                                            \
  do {                                                                                       \
    cublasStatus_t meshrt_status_ = (expr);                                                  \
    if (meshrt_status_ != CUBLAS_STATUS_SUCCESS) {                                           \
      ::meshrt::throw_library_error(::meshrt::ErrorKind::kCublas, #expr, __FILE__, __LINE__, \
                                    std::string(cublasGetStatusString(meshrt_status_)) +     \
                                        " (" + cublasGetStatusName(meshrt_status_) + ")");   \
    }                                                                                        \
  } while (0)

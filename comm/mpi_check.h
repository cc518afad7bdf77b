// MESHRT_MPI_CHECK: the check macro for MPI calls. Internal to meshrt (comm and
// apps); public headers do not include mpi.h.
#pragma once

#include <mpi.h>

#include <string>

#include "device/error.h"

namespace meshrt::detail {
inline std::string mpi_message(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) return "MPI error " + std::to_string(code);
  return std::string(text, static_cast<size_t>(length)) + " (MPI error " + std::to_string(code) + ")";
}
}  // namespace meshrt::detail

#define MESHRT_MPI_CHECK(expr)                                                                \
  do {                                                                                        \
    int meshrt_status_ = (expr);                                                              \
    if (meshrt_status_ != MPI_SUCCESS) {                                                      \
      ::meshrt::throw_library_error(::meshrt::ErrorKind::kMpi, #expr, __FILE__, __LINE__,     \
                                    ::meshrt::detail::mpi_message(meshrt_status_));           \
    }                                                                                         \
  } while (0)

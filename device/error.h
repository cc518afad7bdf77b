// meshrt errors: one exception type with a kind, and the check helpers every
// module uses. Library return codes (CUDA, cuBLAS, NCCL, MPI) are turned into
// meshrt::Error by one macro per library, each carrying the failed call, the
// file:line, the rank and the library's own message.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

namespace meshrt {

enum class ErrorKind {
  kInvalidArgument,   // the caller passed something wrong (bad option, bad pointer)
  kShape,             // shapes, dtypes or layouts that do not fit together
  kUnavailable,       // a resource is missing (no GPU, not built with CUDA, peer lost)
  kDeadlineExceeded,  // a wait ran past its deadline
  kInternal,          // a bug in meshrt
  kCuda,              // the CUDA runtime reported an error
  kCublas,            // cuBLAS reported an error
  kNccl,              // NCCL reported an error
  kMpi,               // MPI reported an error
};

// "invalid argument", "shape", ...
const char* to_string(ErrorKind kind);

// The one exception type of meshrt. what() reads "meshrt <kind> error: <message>".
class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message);
  ErrorKind kind() const noexcept { return kind_; }
  // The message without the "meshrt <kind> error: " prefix.
  const std::string& message() const noexcept { return message_; }

 private:
  ErrorKind kind_;
  std::string message_;
};

// The rank and host name printed in library errors. comm::World sets them at
// start-up; before that they read -1 and the empty string.
void set_error_context(int rank, std::string host);
int error_rank();

// Throws Error(kind) with "<expr> failed at <file>:<line> on rank <r> (<host>): <library_message>".
[[noreturn]] void throw_library_error(ErrorKind kind, const char* expr, const char* file,
                                      int line, std::string_view library_message);

namespace detail {
template <class... Parts>
std::string cat(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}
}  // namespace detail

}  // namespace meshrt

// MESHRT_CHECK(condition, kind, message parts...): throws Error(kind, parts...) when
// the condition is false. The parts are streamed, so numbers and shapes can be mixed in.
#define MESHRT_CHECK(condition, kind, ...)                                  \
  do {                                                                      \
    if (!(condition)) {                                                     \
      throw ::meshrt::Error((kind), ::meshrt::detail::cat(__VA_ARGS__));    \
    }                                                                       \
  } while (0)

#define MESHRT_CHECK_ARG(condition, ...) \
  MESHRT_CHECK(condition, ::meshrt::ErrorKind::kInvalidArgument, __VA_ARGS__)
#define MESHRT_CHECK_SHAPE(condition, ...) \
  MESHRT_CHECK(condition, ::meshrt::ErrorKind::kShape, __VA_ARGS__)

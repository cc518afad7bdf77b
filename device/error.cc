#include "device/error.h"

#include <atomic>
#include <mutex>

namespace meshrt {
namespace {
std::atomic<int> g_rank{-1};
std::mutex g_host_mutex;
std::string g_host;
}  // namespace

const char* to_string(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kInvalidArgument: return "invalid argument";
    case ErrorKind::kShape: return "shape";
    case ErrorKind::kUnavailable: return "unavailable";
    case ErrorKind::kDeadlineExceeded: return "deadline exceeded";
    case ErrorKind::kInternal: return "internal";
    case ErrorKind::kCuda: return "CUDA";
    case ErrorKind::kCublas: return "cuBLAS";
    case ErrorKind::kNccl: return "NCCL";
    case ErrorKind::kMpi: return "MPI";
  }
  return "unknown";
}

Error::Error(ErrorKind kind, const std::string& message)
    : std::runtime_error(std::string("meshrt ") + to_string(kind) + " error: " + message),
      kind_(kind),
      message_(message) {}

void set_error_context(int rank, std::string host) {
  g_rank.store(rank);
  std::lock_guard<std::mutex> lock(g_host_mutex);
  g_host = std::move(host);
}

int error_rank() { return g_rank.load(); }

void throw_library_error(ErrorKind kind, const char* expr, const char* file, int line,
                         std::string_view library_message) {
  std::string host;
  {
    std::lock_guard<std::mutex> lock(g_host_mutex);
    host = g_host;
  }
  std::ostringstream out;
  out << expr << " failed at " << file << ":" << line;
  if (g_rank.load() >= 0) out << " on rank " << g_rank.load();
  if (!host.empty()) out << " (" << host << ")";
  out << ": " << library_message;
  throw Error(kind, out.str());
}

}  // namespace meshrt

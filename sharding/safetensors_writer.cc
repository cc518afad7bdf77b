// Writing whole safetensors files (kept apart from the reader, which the fuzz
// target compiles on its own).
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "device/error.h"
#include "sharding/safetensors.h"

namespace meshrt::sharding {

void write_safetensors_file(const std::string& path, const std::vector<std::pair<std::string, HostTensor>>& tensors,
                            const std::map<std::string, std::string>& metadata) {
  std::vector<SafetensorsEntry> entries;
  uint64_t at = 0;
  for (const auto& [name, t] : tensors) {
    MESHRT_CHECK_ARG(t.defined(), "write_safetensors_file: tensor '", name, "' is undefined");
    entries.push_back({name, t.dtype(), t.shape(), at, at + t.nbytes()});
    at += t.nbytes();
  }
  std::vector<uint8_t> header = make_safetensors_header(entries, metadata);
  std::string temp = path + ".partial";
  int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw Error(ErrorKind::kUnavailable, detail::cat("cannot create ", temp, ": ", std::strerror(errno)));
  auto write_all = [&](const void* data, size_t bytes) {
    const char* p = static_cast<const char*>(data);
    while (bytes > 0) {
      ssize_t n = ::write(fd, p, bytes);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        std::string why = std::strerror(errno);
        ::close(fd);
        throw Error(ErrorKind::kUnavailable, detail::cat("cannot write ", temp, ": ", why));
      }
      p += n;
      bytes -= static_cast<size_t>(n);
    }
  };
  write_all(header.data(), header.size());
  for (const auto& [name, t] : tensors) write_all(t.raw_data(), t.nbytes());
  bool synced = ::fsync(fd) == 0;
  ::close(fd);
  if (!synced || ::rename(temp.c_str(), path.c_str()) != 0) {
    throw Error(ErrorKind::kUnavailable, detail::cat("cannot commit ", path, ": ", std::strerror(errno)));
  }
}

}  // namespace meshrt::sharding

// A file descriptor with whole reads and writes at
// offsets, fsync and size, whose errors are meshrt::Errors naming the path
// (I/O errors: kUnavailable; a file shorter than its header says: kInvalidArgument).
#pragma once

#include <fcntl.h>
#include <sys/types.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>

#include "device/error.h"

namespace meshrt::io {

[[noreturn]] inline void io_error(const std::string& what, const std::string& path) {
  throw Error(ErrorKind::kUnavailable, detail::cat(what, " ", path, ": ", std::strerror(errno)));
}

class File {
 public:
  File(const std::string& path, int flags, mode_t mode = 0644) : path_(path) {
    fd_ = ::open(path.c_str(), flags | O_CLOEXEC, mode);
    if (fd_ < 0) io_error("cannot open", path);
  }
  ~File() {
    if (fd_ >= 0) ::close(fd_);
  }
  File(const File&) = delete;
  File& operator=(const File&) = delete;
  void write_at(const void* data, size_t bytes, uint64_t offset) {
    const char* p = static_cast<const char*>(data);
    while (bytes > 0) {
      ssize_t n = ::pwrite(fd_, p, bytes, static_cast<off_t>(offset));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) io_error("cannot write", path_);
      p += n;
      bytes -= static_cast<size_t>(n);
      offset += static_cast<uint64_t>(n);
    }
  }
  void read_at(void* data, size_t bytes, uint64_t offset) {
    char* p = static_cast<char*>(data);
    while (bytes > 0) {
      ssize_t n = ::pread(fd_, p, bytes, static_cast<off_t>(offset));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) io_error("cannot read", path_);
      if (n == 0) {
        throw Error(ErrorKind::kInvalidArgument, detail::cat("safetensors file ", path_, " ends early (truncated?)"));
      }
      p += n;
      bytes -= static_cast<size_t>(n);
      offset += static_cast<uint64_t>(n);
    }
  }
  void resize(uint64_t bytes) {
    if (::ftruncate(fd_, static_cast<off_t>(bytes)) != 0) io_error("cannot size", path_);
  }
  void sync() {
    if (::fsync(fd_) != 0) io_error("cannot fsync", path_);
  }

 private:
  std::string path_;
  int fd_ = -1;
};

inline void sync_directory(const std::string& dir) {
  File d(dir, O_RDONLY | O_DIRECTORY);
  d.sync();
}

}  // namespace meshrt::io

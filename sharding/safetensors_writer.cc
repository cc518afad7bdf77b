// Writing whole safetensors files (kept apart from the reader, which the fuzz
// target compiles on its own).
#include <cstdio>

#include "sharding/file.h"
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
  {
    File f(temp, O_WRONLY | O_CREAT | O_TRUNC);
    f.write_at(header.data(), header.size(), 0);
    uint64_t offset = header.size();
    for (const auto& [name, t] : tensors) {
      f.write_at(t.raw_data(), t.nbytes(), offset);
      offset += t.nbytes();
    }
    f.sync();
  }
  if (::rename(temp.c_str(), path.c_str()) != 0) io_error("cannot commit", path);
}

}  // namespace meshrt::sharding

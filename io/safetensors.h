// The safetensors format (https://github.com/huggingface/safetensors): an 8-byte
// little-endian header length N, N bytes of JSON
//   {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"key": "value"}}
// then the data: every tensor row-major, at [begin, end) from the start of the data.
//
// The reader validates everything before any byte is used: the header length
// against a bound and the file size, the JSON, every dtype, shape x dtype size =
// byte range, every range inside the file, the ranges contiguous and
// non-overlapping. A bad file is refused with Error(kInvalidArgument) that names
// the file and says what is wrong.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "device/dtype.h"
#include "device/shape.h"
#include "device/tensor.h"

namespace meshrt::io {

// Headers larger than this are refused (the reference implementation's bound).
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100ull << 20;

struct SafetensorsEntry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin = 0, end = 0;  // from the start of the data
};

struct SafetensorsHeader {
  uint64_t header_bytes = 0;  // N
  uint64_t data_start = 0;    // 8 + N
  uint64_t data_bytes = 0;
  std::vector<SafetensorsEntry> tensors;  // in data order
  std::map<std::string, std::string> metadata;

  // The entry called name; throws Error(kInvalidArgument) listing a few names.
  const SafetensorsEntry& find(const std::string& name) const;
};

// "F32" <-> DType. Throws Error(kInvalidArgument) for names meshrt does not support.
const char* safetensors_dtype_name(DType dtype);
DType parse_safetensors_dtype(const std::string& name);

// Validates the first bytes of a file (the 8-byte length and the JSON header;
// more bytes may follow) given the whole file's size. source names the file in errors.
SafetensorsHeader parse_safetensors_header(std::span<const uint8_t> prefix, uint64_t file_size,
                                           const std::string& source);
// Reads and validates the header of the file at path (reads 8 + N bytes only).
SafetensorsHeader read_safetensors_header(const std::string& path);

// The JSON header for entries (their begin/end must already be laid out
// contiguously from 0) padded with spaces to a multiple of 8 bytes, preceded by
// its 8-byte length: the first bytes of the file.
std::vector<uint8_t> make_safetensors_header(const std::vector<SafetensorsEntry>& entries,
                                             const std::map<std::string, std::string>& metadata);

// Writes whole host tensors (in the given order) to one safetensors file at path,
// atomically (a temporary file, fsync, rename). Throws Error(kUnavailable) on I/O errors.
void write_safetensors_file(const std::string& path, const std::vector<std::pair<std::string, HostTensor>>& tensors,
                            const std::map<std::string, std::string>& metadata = {});

}  // namespace meshrt::io

// Fuzz target for the safetensors header reader (io/safetensors.h). Any input
// must either parse or throw meshrt::Error; anything else (a crash, a sanitizer
// report, another exception) fails, and a header that parses must describe the
// input consistently, and what make_safetensors_header writes for it must read
// back the same (the writer and the reader agree). Built as a libFuzzer target (MESHRT_FUZZ=ON, clang) or
// with the small driver fuzz_main.cc; seeds in corpus/safetensors.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <span>
#include <vector>

#include "device/error.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    std::span<const uint8_t> bytes(data, size);
    auto header = meshrt::io::parse_safetensors_header(bytes, size, "fuzz");
    uint64_t covered = 0;
    for (const auto& t : header.tensors) {
      if (t.begin > t.end) std::abort();
      covered = std::max(covered, t.end);
    }
    if (header.data_start > size || covered > size - header.data_start) std::abort();
    // Round trip: written again, the header reads back the same (any error here is a failure).
    try {
      std::vector<uint8_t> again = meshrt::io::make_safetensors_header(header.tensors, header.metadata);
      auto back = meshrt::io::parse_safetensors_header(again, again.size() + header.data_bytes, "fuzz (written again)");
      if (back.metadata != header.metadata || back.tensors.size() != header.tensors.size()) std::abort();
      for (size_t i = 0; i < back.tensors.size(); ++i) {
        const auto &a = header.tensors[i], &b = back.tensors[i];
        if (a.name != b.name || a.dtype != b.dtype || a.shape != b.shape || a.begin != b.begin || a.end != b.end) std::abort();
      }
    } catch (const meshrt::Error& e) {
      std::fprintf(stderr, "a header that was read could not be written and read back: %s\n", e.what());
      std::abort();
    }
  } catch (const meshrt::Error&) {
    // refused: fine
  }
  return 0;
}

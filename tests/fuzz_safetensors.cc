// Fuzz target for the safetensors header reader. Two ways to run it:
// - libFuzzer (clang): build with -fsanitize=fuzzer -DMESHRT_LIBFUZZER and run it;
// - this file's own driver (any compiler, used by CTest under AddressSanitizer and
//   UBSan): mutates valid files at random for a bounded time
//   (fuzz_safetensors [seconds] [seed]).
// Any input must either parse or throw meshrt::Error; anything else (a crash, a
// sanitizer report, another exception) fails.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "device/error.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    std::span<const uint8_t> bytes(data, size);
    auto header = meshrt::io::parse_safetensors_header(bytes, size, "fuzz");
    // A header that parses must describe the input consistently.
    uint64_t covered = 0;
    for (const auto& t : header.tensors) covered = std::max(covered, t.end);
    if (header.data_start + covered > size) std::abort();
  } catch (const meshrt::Error&) {
    // refused: fine
  }
  return 0;
}

#ifndef MESHRT_LIBFUZZER
namespace {
std::vector<uint8_t> file_of(const std::string& json, size_t data) {
  std::vector<uint8_t> out(8 + json.size() + data, 0x5a);
  uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<uint8_t>(n >> (8 * i));
  std::memcpy(out.data() + 8, json.data(), json.size());
  return out;
}
}  // namespace

int main(int argc, char** argv) {
  double seconds = argc > 1 ? std::atof(argv[1]) : 10.0;
  uint64_t seed = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 1;
  std::vector<std::vector<uint8_t>> seeds = {
      file_of(R"({"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"__metadata__":{"format":"pt"}})", 24),
      file_of(R"({"w":{"dtype":"BF16","shape":[4],"data_offsets":[0,8]},"b":{"dtype":"I64","shape":[1],"data_offsets":[8,16]}})", 16),
      file_of(R"({})", 0),
  };
  const char* fragments[] = {"{", "}", "[", "]", ",", ":", "\"", "0", "-1", "1e400", "18446744073709551615",
                             "\"F16\"", "\"data_offsets\"", "\"shape\"", "null", "true", "\\u0000", "\xff"};
  std::mt19937_64 rng(seed);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  uint64_t runs = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    std::vector<uint8_t> input = seeds[rng() % seeds.size()];
    int mutations = 1 + static_cast<int>(rng() % 4);
    for (int m = 0; m < mutations && !input.empty(); ++m) {
      size_t at = rng() % input.size();
      switch (rng() % 6) {
        case 0: input[at] ^= static_cast<uint8_t>(1u << (rng() % 8)); break;          // flip a bit
        case 1: input[at] = static_cast<uint8_t>(rng()); break;                         // set a byte
        case 2: input.resize(at); break;                                                // truncate
        case 3: input.erase(input.begin() + static_cast<long>(at)); break;             // drop a byte
        case 4: {                                                                       // insert a fragment
          const char* f = fragments[rng() % (sizeof fragments / sizeof *fragments)];
          input.insert(input.begin() + static_cast<long>(at), f, f + std::strlen(f));
          break;
        }
        case 5:                                                                         // change the length field
          if (input.size() >= 8) input[rng() % 8] = static_cast<uint8_t>(rng());
          break;
      }
    }
    LLVMFuzzerTestOneInput(input.data(), input.size());
    ++runs;
  }
  std::printf("fuzz_safetensors: %llu inputs in %.1f s, no crash\n", static_cast<unsigned long long>(runs), seconds);
  return 0;
}
#endif

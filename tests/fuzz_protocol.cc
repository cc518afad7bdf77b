// Fuzz target for KServe v2 request parsing (JSON and binary tensor data). As
// fuzz_safetensors.cc: libFuzzer with -DMESHRT_LIBFUZZER, or this file's own
// driver under AddressSanitizer and UBSan for a bounded time. Any body must parse
// or throw RequestError; nothing else is allowed.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "serving/protocol.h"

namespace {
meshrt::serving::ModelSignature model() {
  meshrt::serving::ModelSignature s;
  s.name = "m";
  s.inputs = {{"x", meshrt::DType::kF32, {-1, 4}}};
  s.outputs = {{"y", meshrt::DType::kF32, {-1, 2}}};
  return s;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const meshrt::serving::ModelSignature m = model();
  std::string_view body(reinterpret_cast<const char*>(data), size);
  // The first byte picks the header length mode: none, or a length from the body.
  std::optional<size_t> header_length;
  if (size > 0 && data[0] % 2 == 1) header_length = data[0] < size ? size - data[0] : size / 2;
  try {
    meshrt::serving::InferRequest r = meshrt::serving::parse_infer_request(body, header_length, m, 8);
    const meshrt::HostTensor& x = r.inputs.at(0);
    if (r.inputs.size() != 1 || x.dim(1) != 4 || x.dim(0) < 1 || x.dim(0) > 8) std::abort();
  } catch (const meshrt::serving::RequestError&) {
  }
  return 0;
}

#ifndef MESHRT_LIBFUZZER
int main(int argc, char** argv) {
  double seconds = argc > 1 ? std::atof(argv[1]) : 10.0;
  std::mt19937_64 rng(argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 1);
  std::string binary_header = R"({"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"parameters":{"binary_data_size":16}}]})";
  std::vector<std::string> seeds = {
      R"({"id":"a","inputs":[{"name":"x","datatype":"FP32","shape":[2,4],"data":[[1,2,3,4],[5,6,7,8]]}],"outputs":[{"name":"y","parameters":{"binary_data":true}}]})",
      R"({"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"data":[1.5,-2,3e10,0]}],"parameters":{"binary_data_output":true}})",
      binary_header + std::string(16, '\x01'),
  };
  const char* fragments[] = {"{", "}", "[", "]", ",", ":", "\"", "-1", "0", "1e999", "null", "true", "\"x\"", "\"FP32\"",
                             "\"shape\"", "\"data\"", "\"binary_data_size\"", "9999999999999999999", "[[[[[[", "\xc3"};
  auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  unsigned long long runs = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    std::string input = seeds[rng() % seeds.size()];
    int mutations = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < mutations && !input.empty(); ++k) {
      size_t at = rng() % input.size();
      switch (rng() % 5) {
        case 0: input[at] = static_cast<char>(input[at] ^ (1 << (rng() % 8))); break;
        case 1: input[at] = static_cast<char>(rng()); break;
        case 2: input.resize(at); break;
        case 3: input.erase(at, 1 + rng() % 4); break;
        case 4: input.insert(at, fragments[rng() % (sizeof fragments / sizeof *fragments)]); break;
      }
    }
    std::string framed = std::string(1, static_cast<char>(rng())) + input;
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(framed.data()), framed.size());
    ++runs;
  }
  std::printf("fuzz_protocol: %llu inputs in %.1f s, no crash\n", runs, seconds);
  return 0;
}
#endif

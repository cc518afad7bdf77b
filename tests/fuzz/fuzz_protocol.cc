// Fuzz target for KServe v2 request parsing (serving/protocol.h): JSON tensors
// and the binary tensor data extension. An input is
//
//   [HEADER-LENGTH-VALUE] "\n" BODY      or      BODY (no newline at all)
//
// The text before the first newline is the Inference-Header-Content-Length
// header's value (an empty line: no such header), parsed by
// parse_header_length; the rest is the body. Every body is parsed for several
// models (one input of FP32, FP16, BF16, INT64 or BOOL, and one of two inputs).
// Each must parse or throw RequestError(400) (protocol.h: every problem with a
// request is one; anything else fails); a request that parses must fit the
// model, and its answer (make_infer_response) must read back
// (parse_infer_response) with the request's rows. Built as a libFuzzer target
// (MESHRT_FUZZ=ON, clang) or with the driver fuzz_main.cc; seeds in corpus/protocol.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "device/error.h"
#include "serving/protocol.h"

namespace {
using meshrt::DType;
using meshrt::serving::ModelSignature;

ModelSignature model(const char* name, std::vector<meshrt::serving::TensorSpec> inputs) {
  ModelSignature s;
  s.name = name;
  s.inputs = std::move(inputs);
  s.outputs = {{"y", s.inputs[0].dtype, {-1, 2}}};
  return s;
}

const std::vector<ModelSignature>& models() {
  static const std::vector<ModelSignature> m = {
      model("m", {{"x", DType::kF32, {-1, 4}}}),
      model("half", {{"x", DType::kF16, {-1, 4}}}),
      model("bf", {{"x", DType::kBF16, {-1, 4}}}),
      model("long", {{"x", DType::kI64, {-1, 4}}}),
      model("flags", {{"x", DType::kBool, {-1, 4}}}),
      model("two", {{"a", DType::kF32, {-1, 2}}, {"b", DType::kI32, {-1, 3}}}),
  };
  return m;
}

void check(std::string_view body, std::optional<size_t> header_length, const ModelSignature& m) {
  constexpr int64_t kMaxRows = 8;
  meshrt::serving::InferRequest r;
  try {
    r = meshrt::serving::parse_infer_request(body, header_length, m, kMaxRows);
  } catch (const meshrt::serving::RequestError& e) {
    if (e.status() != 400) std::abort();
    return;
  }
  if (r.inputs.size() != m.inputs.size()) std::abort();
  int64_t rows = r.inputs[0].dim(0);
  for (size_t i = 0; i < r.inputs.size(); ++i) {
    const meshrt::HostTensor& x = r.inputs[i];
    if (x.dtype() != m.inputs[i].dtype || x.ndim() != 2 || x.dim(0) != rows || x.dim(1) != m.inputs[i].shape[1]) std::abort();
  }
  if (rows < 1 || rows > kMaxRows) std::abort();
  // The answer (zeros), written and read back as a client would.
  meshrt::HostTensor y = meshrt::HostTensor::zeros(meshrt::Shape({rows, 2}), m.outputs[0].dtype);
  meshrt::serving::HttpPayload payload = meshrt::serving::make_infer_response(m, r, {y});
  if (payload.header_length.has_value() != r.binary_output) std::abort();
  try {
    meshrt::HostTensor back = meshrt::serving::parse_infer_response(payload.body, payload.header_length);
    if (back.shape() != y.shape() || back.dtype() != y.dtype()) std::abort();
  } catch (const meshrt::Error& e) {
    std::fprintf(stderr, "the answer to a request that parsed does not read back: %s\n", e.what());
    std::abort();
  }
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  std::string_view body = input;
  std::optional<size_t> header_length;
  size_t newline = input.find('\n');
  if (newline != std::string_view::npos) {
    body = input.substr(newline + 1);
    if (newline > 0) {
      try {
        header_length = meshrt::serving::parse_header_length(std::string(input.substr(0, newline)));
      } catch (const meshrt::serving::RequestError& e) {
        if (e.status() != 400) std::abort();
        return 0;
      }
    }
  }
  for (const ModelSignature& m : models()) check(body, header_length, m);
  return 0;
}

// A model as the wire sees it: the names, dtypes and shapes of its inputs and
// outputs, its version, and the parameters its metadata shows. The KServe v2
// protocol (protocol.h) needs nothing else of a model.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "device/dtype.h"

namespace meshrt::serving {

// KServe v2 / Open Inference Protocol datatype names: "FP32", "INT64", "BOOL", ...
const char* kserve_datatype(DType dtype);
// Throws Error(kInvalidArgument) naming the accepted names.
DType parse_kserve_datatype(const std::string& name);

struct TensorSpec {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;  // -1 marks the batch axis (the first), and elsewhere any extent
  bool optional = false;       // an input a request may leave out (shown as "optional": true)
};

// "[-1, 96]": a spec's shape as the errors show it (-1 is any extent).
inline std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

struct ModelSignature {
  std::string name, version = "1";
  std::vector<TensorSpec> inputs, outputs;
  // Shown under "parameters" in the model metadata (rank_size, max_batch_size, ...).
  std::vector<std::pair<std::string, std::variant<int64_t, bool, std::string>>> parameters;
};

}  // namespace meshrt::serving

// A servable written in C++ and loaded by meshrt-serve from a shared library
// (serving/servable_plugin.h): every pipeline stage multiplies its input by the
// config's parameter "factor", so the output is x * factor^stage_size. It takes
// any floating input shape the config declares ([-1, ...]) and gives the same.
//
// Its model folder's config.json:
//
//   {"name": "scaled", "rank_size": 2, "stage_size": 2,
//    "servable_library": "libscale_servable.so",
//    "inputs":  [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
//    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
//    "parameters": {"factor": 2.5}}
//
// Build it against an installed meshrt with this folder's CMakeLists.txt; the
// meshrt tree builds it as the target scale_servable (tests/CMakeLists.txt).
#include <cmath>
#include <cstdlib>
#include <memory>

#include "kernels/elementwise_ops.h"
#include "serving/servable_plugin.h"
#include "sharding/ops.h"

namespace {

using meshrt::DType;
using meshrt::Error;
using meshrt::ErrorKind;
using meshrt::sharding::DTensor;
using meshrt::sharding::Mesh;
namespace serving = meshrt::serving;

class ScaleStage : public serving::StageModule {
 public:
  explicit ScaleStage(double factor) : factor_(factor) {}
  // x is replicated on the stage's ranks; so is the result.
  DTensor forward(const DTensor& x) override {
    return meshrt::sharding::unary(meshrt::kernels::UnaryOp::kScale, x, factor_);
  }

 private:
  double factor_;
};

serving::ServableDefinition define(const serving::ModelConfig& config, const meshrt::Device&) {
  auto fail = [&](const std::string& what) {
    throw Error(ErrorKind::kInvalidArgument, config.config_path + ": " + what);
  };
  auto factor_text = config.parameters.find("factor");
  if (factor_text == config.parameters.end()) fail("parameters.factor: missing (the number to scale by)");
  char* end = nullptr;
  double factor = std::strtod(factor_text->second.c_str(), &end);
  if (end == factor_text->second.c_str() || *end != '\0' || !std::isfinite(factor)) {
    fail("parameters.factor: expected a number, got \"" + factor_text->second + "\"");
  }
  if (config.input.shape.empty()) fail("inputs: missing (this servable scales the input the config declares)");
  DType dtype = config.input.dtype;
  if (dtype != DType::kF32 && dtype != DType::kF64 && dtype != DType::kF16 && dtype != DType::kBF16) {
    fail("inputs[0].datatype: expected a floating type (FP32, FP64, FP16, BF16)");
  }
  if (config.output.shape != config.input.shape || config.output.dtype != dtype) {
    fail("outputs[0]: expected the input's datatype and shape");
  }

  // name, version, rank_size, stage_size and batching as the config says.
  serving::ServableDefinition s = serving::servable_shell(config);
  s.input = config.input;
  s.output = config.output;
  for (int i = 0; i < config.stage_size; ++i) {
    serving::StageDefinition stage;
    stage.build = [factor](const Mesh&) -> std::unique_ptr<serving::StageModule> {
      return std::make_unique<ScaleStage>(factor);
    };
    // The stage gives what it takes: the batch input's extents and dtype.
    stage.outputs = [dtype](const std::vector<int64_t>& input_dims, const serving::BatchParams&) {
      return std::vector<serving::ActivationSpec>{{dtype, input_dims}};
    };
    s.stages.push_back(std::move(stage));
  }
  return s;
}

}  // namespace

MESHRT_SERVABLE_PLUGIN(define)

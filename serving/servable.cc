#include "serving/servable.h"

#include <algorithm>

#include "models/layers.h"
#include "serving/hf_servable.h"
#include "serving/servable_plugin.h"
#include "sharding/redistribute.h"

namespace meshrt::serving {

using sharding::Layout;

DTensor StageModule::forward(const DTensor&) {
  throw Error(ErrorKind::kInternal, "this stage takes several tensors: call forward_tensors()");
}

std::vector<DTensor> StageModule::forward_tensors(const std::vector<DTensor>& inputs, const BatchParams&) {
  MESHRT_CHECK(inputs.size() == 1, ErrorKind::kInternal, "this stage takes one tensor, got ", inputs.size());
  return {forward(inputs[0])};
}

bool fits_spec(const TensorSpec& spec, const std::vector<int64_t>& dims) {
  if (dims.size() + 1 != spec.shape.size()) return false;
  for (size_t d = 0; d < dims.size(); ++d) {
    if (spec.shape[d + 1] >= 0 && dims[d] != spec.shape[d + 1]) return false;
  }
  return true;
}

std::vector<ActivationSpec> stage_inputs(const ServableDefinition& s, int stage, const std::vector<int64_t>& input_dims,
                                         const BatchParams& params) {
  if (stage == 0) return {{s.input.dtype, input_dims}};
  return s.stages.at(static_cast<size_t>(stage - 1)).outputs(input_dims, params);
}

void complete_servable(ServableDefinition& s) {
  auto fail = [&](const std::string& what) {
    throw Error(ErrorKind::kInvalidArgument, "servable '" + s.name + "': " + what);
  };
  if (s.name.empty()) throw Error(ErrorKind::kInvalidArgument, "a servable needs a name");
  if (s.rank_size < 1 || s.stage_size < 1 || s.rank_size % s.stage_size != 0) {
    fail(detail::cat("stage_size (", s.stage_size, ") must divide rank_size (", s.rank_size, ")"));
  }
  if (static_cast<int>(s.stages.size()) != s.stage_size) {
    fail(detail::cat("has ", s.stages.size(), " stages but stage_size is ", s.stage_size));
  }
  for (const TensorSpec* t : {&s.input, &s.output}) {
    if (t->shape.size() < 2 || t->shape[0] != -1) fail("input and output must be [-1, ...] (the batch axis first)");
    for (size_t d = 1; d < t->shape.size(); ++d) {
      if (t->shape[d] == 0 || t->shape[d] < -1) fail("'" + t->name + "' has an extent that is neither -1 nor positive");
    }
  }
  if (!s.wire_inputs.empty() && !s.pack_inputs) fail("wire_inputs need a pack_inputs function");
  // One fixed-width activation per stage: the widths chain from the input to the output.
  bool widths = std::none_of(s.stages.begin(), s.stages.end(), [](const StageDefinition& d) { return bool(d.outputs); });
  for (size_t i = 0; i < s.stages.size(); ++i) {
    StageDefinition& stage = s.stages[i];
    if (!stage.build) fail(detail::cat("stage ", i, " has no build function"));
    if (stage.outputs) continue;
    if (stage.output_width < 1) fail(detail::cat("stage ", i, " has neither outputs nor an output width"));
    stage.outputs = [dtype = s.input.dtype, width = stage.output_width](const std::vector<int64_t>&, const BatchParams&) {
      return std::vector<ActivationSpec>{{dtype, {width}}};
    };
  }
  if (widths) {
    if (s.input.shape.size() != 2 || s.output.shape.size() != 2 || s.output.shape[1] < 1) {
      fail("stages given by output widths take and give [-1, width]: set the stages' outputs for other shapes");
    }
    if (s.stages.back().output_width != s.output.shape[1]) {
      fail(detail::cat("the last stage produces width ", s.stages.back().output_width, " but output '", s.output.name,
                       "' is [-1, ", s.output.shape[1], "]"));
    }
  }
  if (s.batching.max_batch_size < 1 || s.batching.micro_batches < 1 || s.batching.max_queue_size < 1) {
    fail("batching sizes must be >= 1");
  }
  if (!s.hooks.distributed_preprocessing) s.hooks.distributed_preprocessing = [](const HostTensor& x) { return x; };
  if (!s.hooks.client_preprocessing) s.hooks.client_preprocessing = [](const DTensor& x) { return x; };
  if (!s.hooks.client_postprocessing) s.hooks.client_postprocessing = [](const DTensor& x) { return x; };
  if (!s.hooks.distributed_postprocessing) {
    s.hooks.distributed_postprocessing = [](const DTensor& x) { return x.gather(); };
  }
}

ModelSignature signature_of(const ServableDefinition& s) {
  ModelSignature m;
  m.name = s.name;
  m.version = s.version;
  m.inputs = s.wire_inputs.empty() ? std::vector<TensorSpec>{s.input} : s.wire_inputs;
  m.outputs = {s.output};
  m.parameters = {{"rank_size", int64_t{s.rank_size}},
                  {"stage_size", int64_t{s.stage_size}},
                  {"max_batch_size", s.batching.max_batch_size},
                  {"dynamic_batching", s.batching.enabled}};
  return m;
}

namespace {
// A stage built from config layers.
class ConfigStage : public StageModule {
 public:
  ConfigStage(const std::vector<LayerConfig>& layers, const models::Weights& weights, const Mesh& mesh)
      : stack_(layers, weights, mesh) {}
  DTensor forward(const DTensor& x) override {
    if (x.ndim() == 2) return stack_.forward(x);
    // [rows, ..., width]: the layers act on the last axis, every other one is rows to them.
    const std::vector<int64_t>& dims = x.global_shape().dims();
    int64_t width = dims.back(), rows = x.global_shape().numel() / std::max<int64_t>(width, 1);
    DTensor flat(x.local().reshape({rows, width}), Shape{rows, width}, x.mesh(), Layout::replicated(2), x.name());
    DTensor y = stack_.forward(flat.after(x));
    if (!y.layout().is_replicated()) y = sharding::redistribute(y, Layout::replicated(2));
    std::vector<int64_t> out(dims.begin(), dims.end() - 1);
    out.push_back(y.global_shape()[1]);
    return DTensor(y.local().reshape(Shape(out)), Shape(out), y.mesh(), Layout::replicated(static_cast<int>(out.size())), y.name()).after(y);
  }

 private:
  models::LayerStack stack_;
};
}  // namespace

ServableDefinition servable_shell(const ModelConfig& c) {
  ServableDefinition s;
  s.name = c.name;
  s.version = c.version;
  s.rank_size = c.rank_size;
  s.stage_size = c.stage_size;
  s.batching = c.batching;
  s.version_policy = c.version_policy;
  return s;
}

ServableDefinition servable_from_config(const ModelConfig& c, const Device& device) {
  if (c.format == ModelFormat::kHuggingFace) return servable_from_hf(c, device);
  if (!c.servable_library.empty()) return load_servable_library(c.servable_library, c, device);
  auto weights = std::make_shared<models::Weights>(c.weights_path, c.config_path);
  int tp = c.rank_size / c.stage_size;
  ServableDefinition s = servable_shell(c);
  s.input = c.input;
  s.output = c.output;

  // Follow the activation's width (its last axis) through every layer, checking the weights.
  int64_t width = c.input.shape.back();
  for (const StageConfig& stage : c.stages) {
    width = models::LayerStack::check(stage.layers, *weights, c.input.dtype, tp, width);
    StageDefinition def;
    def.output_width = width;
    def.outputs = [dtype = c.input.dtype, width](const std::vector<int64_t>& input_dims, const BatchParams&) {
      std::vector<int64_t> dims = input_dims;
      dims.back() = width;  // the other axes pass through
      return std::vector<ActivationSpec>{{dtype, dims}};
    };
    std::vector<LayerConfig> layers = stage.layers;
    def.build = [layers, weights](const Mesh& mesh) -> std::unique_ptr<StageModule> {
      return std::make_unique<ConfigStage>(layers, *weights, mesh);
    };
    s.stages.push_back(std::move(def));
  }
  if (width != c.output.shape.back()) {
    throw Error(ErrorKind::kInvalidArgument,
                detail::cat(c.config_path, ": outputs[0].shape: the layers produce width ", width,
                            " but the output is declared ", shape_text(c.output.shape)));
  }
  complete_servable(s);
  return s;
}

}  // namespace meshrt::serving

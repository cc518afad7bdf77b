#include "serving/servable.h"

#include "models/layers.h"

namespace meshrt::serving {

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
  if (s.input.shape.size() != 2 || s.input.shape[0] != -1 || s.output.shape.size() != 2 || s.output.shape[0] != -1) {
    fail("input and output must be [-1, width]");
  }
  for (size_t i = 0; i < s.stages.size(); ++i) {
    if (!s.stages[i].build) fail(detail::cat("stage ", i, " has no build function"));
    if (s.stages[i].output_width < 1) fail(detail::cat("stage ", i, " has no output width"));
  }
  if (s.stages.back().output_width != s.output.shape[1]) {
    fail(detail::cat("the last stage produces width ", s.stages.back().output_width, " but output '", s.output.name,
                     "' is [-1, ", s.output.shape[1], "]"));
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
  m.inputs = {s.input};
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
  DTensor forward(const DTensor& x) override { return stack_.forward(x); }

 private:
  models::LayerStack stack_;
};
}  // namespace

ServableDefinition servable_from_config(const ModelConfig& c) {
  auto weights = std::make_shared<models::Weights>(c.weights_path, c.config_path);
  int tp = c.rank_size / c.stage_size;
  ServableDefinition s;
  s.name = c.name;
  s.version = c.version;
  s.input = c.input;
  s.output = c.output;
  s.rank_size = c.rank_size;
  s.stage_size = c.stage_size;
  s.batching = c.batching;

  // Follow the activation's width through every layer, checking the weights.
  int64_t width = c.input.shape[1];
  for (const StageConfig& stage : c.stages) {
    width = models::LayerStack::check(stage.layers, *weights, c.input.dtype, tp, width);
    StageDefinition def;
    def.output_width = width;
    std::vector<LayerConfig> layers = stage.layers;
    def.build = [layers, weights](const Mesh& mesh) -> std::unique_ptr<StageModule> {
      return std::make_unique<ConfigStage>(layers, *weights, mesh);
    };
    s.stages.push_back(std::move(def));
  }
  if (width != c.output.shape[1]) {
    throw Error(ErrorKind::kInvalidArgument,
                detail::cat(c.config_path, ": outputs[0].shape: the layers produce width ", width,
                            " but the output is declared [-1, ", c.output.shape[1], "]"));
  }
  complete_servable(s);
  return s;
}

}  // namespace meshrt::serving

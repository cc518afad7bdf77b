#include "serving/servable.h"

#include <map>

#include "sharding/checkpoint.h"
#include "sharding/ops.h"
#include "sharding/redistribute.h"
#include "models/tensor_parallel.h"

namespace meshrt::serving {

using sharding::Layout;

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

namespace {

using Dims = std::vector<std::vector<std::string>>;
constexpr const char* kModelAxis = "model";

// The weights of a model (one safetensors file or a checkpoint folder), with
// the config's view of them: errors name the config field that asked.
class Weights {
 public:
  explicit Weights(const std::string& path) : store_(path) {}
  const Shape& shape(const std::string& name, DType dtype, const std::string& config, const std::string& field) const {
    const sharding::CheckpointEntry* e = store_.find(name);
    if (!e) throw Error(ErrorKind::kInvalidArgument, config + ": " + field + ": no tensor '" + name + "' in " + store_.path());
    if (e->dtype != dtype) {
      throw Error(ErrorKind::kInvalidArgument,
                  detail::cat(config, ": ", field, ": tensor '", name, "' in ", store_.path(), " is ",
                              kserve_datatype(e->dtype), " but the model runs in ", kserve_datatype(dtype)));
    }
    return e->shape;
  }
  DTensor load(const std::string& name, const Mesh& mesh, const Layout& layout) const {
    return store_.load(name, mesh, layout);
  }

 private:
  sharding::TensorStore store_;
};

// A stage built from config layers.
class ConfigStage : public StageModule {
 public:
  ConfigStage(const std::vector<LayerConfig>& layers, const Weights& weights, const Mesh& mesh) {
    for (const LayerConfig& l : layers) {
      Built b;
      b.config = l;
      if (l.type == "linear") {
        DTensor w, bias;
        if (l.parallel == "column") {
          w = weights.load(l.weight, mesh, Layout(Dims{{}, {kModelAxis}}));
          if (!l.bias.empty()) bias = weights.load(l.bias, mesh, Layout(Dims{{kModelAxis}}));
          b.column = models::ColumnParallelLinear(kModelAxis, w, bias);
        } else if (l.parallel == "row") {
          w = weights.load(l.weight, mesh, Layout(Dims{{kModelAxis}, {}}));
          if (!l.bias.empty()) bias = weights.load(l.bias, mesh, Layout::replicated(1));
          b.row = models::RowParallelLinear(kModelAxis, w, bias);
        } else {
          b.weight = weights.load(l.weight, mesh, Layout::replicated(2));
          if (!l.bias.empty()) b.bias = weights.load(l.bias, mesh, Layout::replicated(1));
        }
      } else if (l.type == "bias_add") {
        b.bias = weights.load(l.bias, mesh, Layout::replicated(1));
      } else if (l.type == "layernorm") {
        b.gamma = weights.load(l.gamma, mesh, Layout::replicated(1));
        b.beta = weights.load(l.beta, mesh, Layout::replicated(1));
      } else if (l.type == "rmsnorm") {
        b.gamma = weights.load(l.gamma, mesh, Layout::replicated(1));
      }
      layers_.push_back(std::move(b));
    }
  }

  DTensor forward(const DTensor& input) override {
    std::map<std::string, DTensor> saved;
    DTensor x = input;
    for (Built& b : layers_) {
      const std::string& type = b.config.type;
      if (type == "linear") {
        if (b.config.parallel == "column") {
          x = b.column.forward(x);
        } else if (b.config.parallel == "row") {
          x = b.row.forward(x);
        } else {
          x = sharding::matmul(x, b.weight);
          if (b.bias.defined()) x = sharding::bias_add(x, b.bias);
        }
      } else if (type == "bias_add") {
        x = sharding::bias_add(x, b.bias);
      } else if (type == "neg") {
        x = sharding::neg(x);
      } else if (type == "relu") {
        x = sharding::relu(x);
      } else if (type == "gelu") {
        x = sharding::gelu(x);
      } else if (type == "silu") {
        x = sharding::silu(x);
      } else if (type == "softmax") {
        x = sharding::softmax(x);
      } else if (type == "layernorm") {
        x = sharding::layernorm(x, b.gamma, b.beta, b.config.eps);
      } else if (type == "rmsnorm") {
        x = sharding::rmsnorm(x, b.gamma, b.config.eps);
      } else if (type == "residual_add") {
        x = sharding::add(x, saved.at(b.config.from));
      }
      if (!b.config.save.empty()) saved[b.config.save] = x;
    }
    return x;
  }

 private:
  struct Built {
    LayerConfig config;
    models::ColumnParallelLinear column;
    models::RowParallelLinear row;
    DTensor weight, bias, gamma, beta;
  };
  std::vector<Built> layers_;
};

}  // namespace

ServableDefinition servable_from_config(const ModelConfig& c) {
  auto weights = std::make_shared<Weights>(c.weights_path);
  int tp = c.rank_size / c.stage_size;
  DType dtype = c.input.dtype;
  auto fail = [&](const std::string& field, const std::string& what) {
    throw Error(ErrorKind::kInvalidArgument, c.config_path + ": " + field + ": " + what);
  };
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
    std::map<std::string, int64_t> saved_widths;
    for (const LayerConfig& l : stage.layers) {
      auto vector_of_width = [&](const std::string& name, const char* key) {
        const Shape& shape = weights->shape(name, dtype, c.config_path, l.where + "." + key);
        if (shape.ndim() != 1 || shape[0] != width) {
          fail(l.where + "." + key, detail::cat("tensor '", name, "' in ", c.weights_path, " has shape ", shape,
                                                " but the activation entering this layer has width ", width,
                                                " (expected [", width, "])"));
        }
      };
      if (l.type == "linear") {
        const Shape& shape = weights->shape(l.weight, dtype, c.config_path, l.where + ".weight");
        if (shape.ndim() != 2 || shape[0] != width) {
          fail(l.where + ".weight", detail::cat("tensor '", l.weight, "' in ", c.weights_path, " has shape ", shape,
                                                " but a linear layer entered by width ", width, " needs [", width, ", out]"));
        }
        int64_t out = shape[1];
        if (l.parallel == "column" && out % tp != 0) {
          fail(l.where + ".parallel", detail::cat("a column-parallel weight ", shape, " needs its ", out,
                                                  " columns divisible by the ", tp, " ranks of a stage"));
        }
        if (l.parallel == "row" && width % tp != 0) {
          fail(l.where + ".parallel", detail::cat("a row-parallel weight ", shape, " needs its ", width,
                                                  " rows divisible by the ", tp, " ranks of a stage"));
        }
        width = out;
        if (!l.bias.empty()) vector_of_width(l.bias, "bias");
      } else if (l.type == "bias_add") {
        vector_of_width(l.bias, "bias");
      } else if (l.type == "layernorm") {
        vector_of_width(l.gamma, "gamma");
        vector_of_width(l.beta, "beta");
      } else if (l.type == "rmsnorm") {
        vector_of_width(l.gamma, "gamma");
      } else if (l.type == "residual_add" && saved_widths.at(l.from) != width) {
        fail(l.where + ".from", detail::cat("the saved activation '", l.from, "' has width ", saved_widths.at(l.from),
                                            " but this one has width ", width));
      }
      if (!l.save.empty()) saved_widths[l.save] = width;
    }
    StageDefinition def;
    def.output_width = width;
    std::vector<LayerConfig> layers = stage.layers;
    def.build = [layers, weights](const Mesh& mesh) -> std::unique_ptr<StageModule> {
      return std::make_unique<ConfigStage>(layers, *weights, mesh);
    };
    s.stages.push_back(std::move(def));
  }
  if (width != c.output.shape[1]) {
    fail("outputs[0].shape", detail::cat("the layers produce width ", width, " but the output is declared [-1, ",
                                         c.output.shape[1], "]"));
  }
  complete_servable(s);
  return s;
}

}  // namespace meshrt::serving

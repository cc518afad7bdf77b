#include "models/layers.h"

#include <algorithm>
#include <chrono>
#include <mutex>
#include <thread>

#include "kernels/elementwise.h"
#include "models/tensor_parallel.h"
#include "sharding/ops.h"

namespace meshrt::models {

std::string LayerConfig::value(const std::string& field) const {
  auto it = text.find(field);
  return it == text.end() ? "" : it->second;
}

double LayerConfig::number(const std::string& field) const {
  auto it = numbers.find(field);
  MESHRT_CHECK(it != numbers.end(), ErrorKind::kInternal, where, ": number field '", field, "' was not read");
  return it->second;
}

Weights::Weights(const std::string& path, std::string config_path)
    : store_(path), config_path_(std::move(config_path)) {}

const Shape& Weights::shape(const LayerConfig& layer, const std::string& field, DType dtype) const {
  std::string name = layer.value(field);
  auto fail = [&](const std::string& what) {
    throw Error(ErrorKind::kInvalidArgument, config_path_ + ": " + layer.where + "." + field + ": " + what);
  };
  const sharding::CheckpointEntry* e = store_.find(name);
  if (!e) fail("no tensor '" + name + "' in " + store_.path());
  if (e->dtype != dtype) {
    fail(detail::cat("tensor '", name, "' in ", store_.path(), " is ", to_string(e->dtype), " but the model runs in ",
                     to_string(dtype)));
  }
  return e->shape;
}

DTensor Weights::load(const LayerConfig& layer, const std::string& field, const Mesh& mesh,
                      const Layout& layout) const {
  return store_.load(layer.value(field), mesh, layout);
}

void StackCheck::fail(const LayerConfig& layer, const std::string& field, const std::string& what) const {
  throw Error(ErrorKind::kInvalidArgument, weights.config_path() + ": " + layer.where + "." + field + ": " + what);
}

void StackCheck::expect_vector(const LayerConfig& layer, const std::string& field, int64_t width) const {
  const Shape& shape = weights.shape(layer, field, dtype);
  if (shape.ndim() != 1 || shape[0] != width) {
    fail(layer, field,
         detail::cat("tensor '", layer.value(field), "' in ", weights.path(), " has shape ", shape,
                     " but the activation entering this layer has width ", width, " (expected [", width, "])"));
  }
}

namespace {

using Dims = std::vector<std::vector<std::string>>;

// A layer that is one function of its input.
class FunctionLayer : public Layer {
 public:
  explicit FunctionLayer(std::function<DTensor(const DTensor&)> f) : f_(std::move(f)) {}
  DTensor forward(const DTensor& x, const std::map<std::string, DTensor>&) const override { return f_(x); }

 private:
  std::function<DTensor(const DTensor&)> f_;
};

std::unique_ptr<Layer> function_layer(std::function<DTensor(const DTensor&)> f) {
  return std::make_unique<FunctionLayer>(std::move(f));
}

int64_t same_width(const LayerConfig&, const StackCheck&, int64_t width) { return width; }

FieldSpec tensor_field(std::string name, bool required = true) {
  FieldSpec f;
  f.name = std::move(name);
  f.kind = FieldKind::kTensor;
  f.required = required;
  return f;
}

FieldSpec eps_field(double fallback) {
  FieldSpec f;
  f.name = "eps";
  f.kind = FieldKind::kNumber;
  f.minimum = 0;
  f.default_number = fallback;
  return f;
}

LayerType linear_type() {
  LayerType t;
  t.name = "linear";
  FieldSpec parallel;
  parallel.name = "parallel";
  parallel.kind = FieldKind::kChoice;
  parallel.choices = {"column", "row", "none"};
  parallel.default_choice = "none";
  // How the weight is stored: [in, out] (x @ W, GPT-2's Conv1D) or [out, in]
  // (x @ W^T, torch.nn.Linear as Hugging Face checkpoints hold it).
  FieldSpec layout;
  layout.name = "weight_layout";
  layout.kind = FieldKind::kChoice;
  layout.choices = {"in_out", "out_in"};
  layout.default_choice = "in_out";
  t.fields = {tensor_field("weight"), tensor_field("bias", false), parallel, layout};
  t.output_width = [](const LayerConfig& l, const StackCheck& c, int64_t width) {
    const Shape& shape = c.weights.shape(l, "weight", c.dtype);
    bool out_in = l.value("weight_layout") == "out_in";
    if (shape.ndim() != 2 || shape[out_in ? 1 : 0] != width) {
      c.fail(l, "weight", detail::cat("tensor '", l.value("weight"), "' in ", c.weights.path(), " has shape ", shape,
                                      " but a linear layer entered by width ", width, " needs ",
                                      out_in ? "[out, " : "[", width, out_in ? "]" : ", out]", " (weight_layout ",
                                      out_in ? "out_in" : "in_out", ")"));
    }
    int64_t out = shape[out_in ? 0 : 1];
    // Column and row parallel weights need not divide over the stage's ranks:
    // blocks follow torch.chunk's sizes (sharding/layout.h).
    if (!l.value("bias").empty()) c.expect_vector(l, "bias", out);
    return out;
  };
  t.build = [](const LayerConfig& l, const Weights& w, const Mesh& mesh) -> std::unique_ptr<Layer> {
    bool has_bias = !l.value("bias").empty();
    std::string parallel = l.value("parallel");
    bool out_in = l.value("weight_layout") == "out_in";
    // The weight as [in, out] with layout (of [in, out]): an [out, in] one is
    // loaded with the transposed layout (each rank reads its block) and
    // transposed on each rank, the layout moving with the dimensions.
    auto weight_as = [&](const Layout& layout) {
      if (!out_in) return w.load(l, "weight", mesh, layout);
      return sharding::transpose(w.load(l, "weight", mesh, Layout(Dims{layout.dim(1), layout.dim(0)})), 0, 1);
    };
    if (parallel == "column") {
      ColumnParallelLinear layer(kModelAxis, weight_as(Layout(Dims{{}, {kModelAxis}})),
                                 has_bias ? w.load(l, "bias", mesh, Layout(Dims{{kModelAxis}})) : DTensor());
      return function_layer([layer](const DTensor& x) { return layer.forward(x); });
    }
    if (parallel == "row") {
      RowParallelLinear layer(kModelAxis, weight_as(Layout(Dims{{kModelAxis}, {}})),
                              has_bias ? w.load(l, "bias", mesh, Layout::replicated(1)) : DTensor());
      return function_layer([layer](const DTensor& x) { return layer.forward(x); });
    }
    DTensor weight = weight_as(Layout::replicated(2));
    DTensor bias = has_bias ? w.load(l, "bias", mesh, Layout::replicated(1)) : DTensor();
    return function_layer([weight, bias](const DTensor& x) {
      DTensor y = sharding::matmul(x, weight);
      return bias.defined() ? sharding::bias_add(y, bias) : y;
    });
  };
  return t;
}

// Layers whose tensors are vectors of the activation's width, replicated.
LayerType vector_layer(std::string name, std::vector<FieldSpec> fields,
                       std::function<DTensor(const DTensor& x, const std::vector<DTensor>& vectors, const LayerConfig&)> f) {
  LayerType t;
  t.name = std::move(name);
  t.fields = std::move(fields);
  std::vector<std::string> tensors;
  for (const FieldSpec& s : t.fields) {
    if (s.kind == FieldKind::kTensor) tensors.push_back(s.name);
  }
  t.output_width = [tensors](const LayerConfig& l, const StackCheck& c, int64_t width) {
    for (const std::string& field : tensors) c.expect_vector(l, field, width);
    return width;
  };
  t.build = [tensors, f](const LayerConfig& l, const Weights& w, const Mesh& mesh) {
    std::vector<DTensor> vectors;
    for (const std::string& field : tensors) vectors.push_back(w.load(l, field, mesh, Layout::replicated(1)));
    return function_layer([f, vectors, l](const DTensor& x) { return f(x, vectors, l); });
  };
  return t;
}

class ResidualAdd : public Layer {
 public:
  explicit ResidualAdd(std::string from) : from_(std::move(from)) {}
  DTensor forward(const DTensor& x, const std::map<std::string, DTensor>& saved) const override {
    return sharding::add(x, saved.at(from_));
  }

 private:
  std::string from_;
};

LayerType residual_add_type() {
  LayerType t;
  t.name = "residual_add";
  FieldSpec from;
  from.name = "from";
  from.kind = FieldKind::kSaved;
  from.required = true;
  t.fields = {from};
  t.output_width = [](const LayerConfig& l, const StackCheck& c, int64_t width) {
    int64_t saved = c.saved_widths.at(l.value("from"));
    if (saved != width) {
      c.fail(l, "from", detail::cat("the saved activation '", l.value("from"), "' has width ", saved,
                                    " but this one has width ", width));
    }
    return width;
  };
  t.build = [](const LayerConfig& l, const Weights&, const Mesh&) -> std::unique_ptr<Layer> {
    return std::make_unique<ResidualAdd>(l.value("from"));
  };
  return t;
}

// sleep {us, us_per_row}: passes the activation on unchanged after waiting
// us + us_per_row * rows microseconds. It stands in for a device kernel of a
// known duration (the pipeline benchmark, tests): the wait takes no CPU, so the
// overlap of stages is measurable on a machine with fewer cores than ranks.
LayerType sleep_type() {
  LayerType t;
  t.name = "sleep";
  FieldSpec fixed;
  fixed.name = "us";
  fixed.kind = FieldKind::kNumber;
  fixed.minimum = 0;
  FieldSpec per_row = fixed;
  per_row.name = "us_per_row";
  t.fields = {fixed, per_row};
  t.output_width = same_width;
  t.build = [](const LayerConfig& l, const Weights&, const Mesh&) {
    double fixed_us = l.number("us"), per_row_us = l.number("us_per_row");
    return function_layer([fixed_us, per_row_us](const DTensor& x) {
      double us = fixed_us + per_row_us * static_cast<double>(x.global_shape()[0]);
      std::this_thread::sleep_for(std::chrono::duration<double, std::micro>(us));
      return x;
    });
  };
  return t;
}

// One weightless type per unary op of the elementwise table that takes no parameter.
LayerType elementwise_type(kernels::UnaryOp op) {
  LayerType t;
  t.name = kernels::to_string(op);
  t.output_width = same_width;
  t.build = [op](const LayerConfig&, const Weights&, const Mesh&) {
    return function_layer([op](const DTensor& x) { return sharding::unary(op, x); });
  };
  return t;
}

std::vector<LayerType> built_in_types() {
  std::vector<LayerType> types;
  types.push_back(linear_type());
  types.push_back(vector_layer("bias_add", {tensor_field("bias")},
                               [](const DTensor& x, const auto& v, const LayerConfig&) { return sharding::bias_add(x, v[0]); }));
  for (kernels::UnaryOp op : kernels::unary_ops()) {
    if (!kernels::info(op).takes_alpha) types.push_back(elementwise_type(op));
  }
  LayerType scale;  // y = alpha * x, e.g. attention's 1 / sqrt(head size)
  scale.name = "scale";
  FieldSpec alpha;
  alpha.name = "alpha";
  alpha.kind = FieldKind::kNumber;
  alpha.required = true;
  scale.fields = {alpha};
  scale.output_width = same_width;
  scale.build = [](const LayerConfig& l, const Weights&, const Mesh&) {
    double a = l.number("alpha");
    return function_layer([a](const DTensor& x) { return sharding::scale(x, a); });
  };
  types.push_back(scale);
  LayerType softmax;
  softmax.name = "softmax";
  softmax.output_width = same_width;
  softmax.build = [](const LayerConfig&, const Weights&, const Mesh&) {
    return function_layer([](const DTensor& x) { return sharding::softmax(x); });
  };
  types.push_back(softmax);
  types.push_back(vector_layer("layernorm", {tensor_field("gamma"), tensor_field("beta"), eps_field(1e-5)},
                               [](const DTensor& x, const auto& v, const LayerConfig& l) {
                                 return sharding::layernorm(x, v[0], v[1], l.number("eps"));
                               }));
  types.push_back(vector_layer("rmsnorm", {tensor_field("gamma"), eps_field(1e-6)},
                               [](const DTensor& x, const auto& v, const LayerConfig& l) {
                                 return sharding::rmsnorm(x, v[0], l.number("eps"));
                               }));
  types.push_back(residual_add_type());
  types.push_back(sleep_type());
  return types;
}

struct Registry {
  std::mutex mutex;
  std::vector<std::unique_ptr<LayerType>> types;  // stable addresses
};

Registry& registry() {
  static Registry* r = [] {
    auto* made = new Registry;
    for (LayerType& t : built_in_types()) made->types.push_back(std::make_unique<LayerType>(std::move(t)));
    return made;
  }();
  return *r;
}

}  // namespace

const LayerType* find_layer_type(std::string_view name) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  for (const auto& t : r.types) {
    if (t->name == name) return t.get();
  }
  return nullptr;
}

std::vector<std::string> layer_type_names() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  std::vector<std::string> names;
  for (const auto& t : r.types) names.push_back(t->name);
  return names;
}

void register_layer_type(LayerType type) {
  MESHRT_CHECK_ARG(!type.name.empty() && type.output_width && type.build,
                   "a layer type needs a name, an output_width and a build function");
  MESHRT_CHECK_ARG(!find_layer_type(type.name), "layer type '", type.name, "' is registered already");
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  r.types.push_back(std::make_unique<LayerType>(std::move(type)));
}

int64_t LayerStack::check(const std::vector<LayerConfig>& layers, const Weights& weights, DType dtype,
                          int tensor_parallel, int64_t width) {
  StackCheck c{weights, dtype, tensor_parallel, {}};
  for (const LayerConfig& l : layers) {
    const LayerType* type = find_layer_type(l.type);
    MESHRT_CHECK(type, ErrorKind::kInternal, l.where, ": layer type '", l.type, "' is not registered");
    width = type->output_width(l, c, width);
    if (!l.save.empty()) c.saved_widths[l.save] = width;
  }
  return width;
}

LayerStack::LayerStack(const std::vector<LayerConfig>& layers, const Weights& weights, const Mesh& mesh) {
  for (const LayerConfig& l : layers) {
    const LayerType* type = find_layer_type(l.type);
    MESHRT_CHECK(type, ErrorKind::kInternal, l.where, ": layer type '", l.type, "' is not registered");
    layers_.push_back({type->build(l, weights, mesh), l.save});
  }
}

DTensor LayerStack::forward(const DTensor& input) const {
  std::map<std::string, DTensor> saved;
  DTensor x = input;
  for (const Entry& e : layers_) {
    x = e.layer->forward(x, saved);
    if (!e.save.empty()) saved[e.save] = x;
  }
  return x;
}

}  // namespace meshrt::models

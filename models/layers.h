// Layer types of model configs: one registry, one entry per type.
//
// An entry says what a config's layer of that type reads (its fields), how the
// layer changes the width of the activation (checking its tensors against the
// weights), and how it builds the layer on a stage's mesh. The config reader
// (serving/model_config.cc) validates every layer's fields from the entry; the
// servable (serving/servable.cc) asks the entry for widths and layers. Nothing
// else knows the types.
//
// Built in:
//   linear {weight, bias?, parallel: none | column | row, weight_layout: in_out | out_in}
//          x @ W (+ b) with W [in, out], or x @ W^T with W stored [out, in]
//          (out_in: torch.nn.Linear's layout, as Hugging Face checkpoints hold it)
//   bias_add {bias}          softmax        layernorm {gamma, beta, eps = 1e-5}
//   rmsnorm {gamma, eps = 1e-6}             residual_add {from}: x + a saved activation
//   sleep {us = 0, us_per_row = 0}: x unchanged, after a wait of us + us_per_row * rows
//   microseconds (a stand-in for a kernel of known duration: benchmarks, tests)
//   and one weightless type per unary op of the elementwise table
//   (kernels/elementwise_ops.h): neg, relu, gelu, silu, ...
// Any layer may carry "save": NAME, keeping its output for a later residual_add
// of the same stage.
//
// Tensor parallelism is over the stage mesh's axis "model" (kModelAxis): a
// column-parallel linear keeps W as [R, S(model)] and b as [S(model)], a
// row-parallel one W as [S(model), R] and b replicated (models/tensor_parallel.h).
#pragma once

#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "sharding/checkpoint.h"
#include "sharding/dtensor.h"

namespace meshrt::models {

using sharding::DTensor;
using sharding::Layout;
using sharding::Mesh;

inline constexpr const char* kModelAxis = "model";

enum class FieldKind {
  kTensor,  // the name of a tensor in the model's weights
  kChoice,  // one of choices (default_choice when absent)
  kNumber,  // a number, >= minimum
  kSaved,   // the "save" name of an earlier layer of the same stage
};

struct FieldSpec {
  std::string name;
  FieldKind kind = FieldKind::kTensor;
  bool required = false;
  std::vector<std::string> choices;  // kChoice
  std::string default_choice;        // kChoice, when absent
  double minimum = -std::numeric_limits<double>::infinity();  // kNumber
  double default_number = 0;         // kNumber, when absent
};

// A layer as a config gives it: its type and the values of its fields.
struct LayerConfig {
  std::string type;
  std::map<std::string, std::string> text;  // tensor names, choices, saved names
  std::map<std::string, double> numbers;
  std::string save;   // keep the output under this name ("": do not)
  std::string where;  // the config field, e.g. "stages[0].layers[1]", for messages

  // A text field's value, "" when absent.
  std::string value(const std::string& field) const;
  // A number field's value (its default when the config leaves it out).
  double number(const std::string& field) const;
};

// The tensors of a model: one safetensors file or a checkpoint folder. Errors
// name config_path and the layer's field that asked.
class Weights {
 public:
  Weights(const std::string& path, std::string config_path);
  const std::string& path() const { return store_.path(); }
  const std::string& config_path() const { return config_path_; }
  // The shape of the tensor that layer's field names; it must have dtype.
  const Shape& shape(const LayerConfig& layer, const std::string& field, DType dtype) const;
  // That tensor on mesh with layout (each rank reads only its block's bytes).
  DTensor load(const LayerConfig& layer, const std::string& field, const Mesh& mesh, const Layout& layout) const;

 private:
  sharding::TensorStore store_;
  std::string config_path_;
};

// What checking a stack of layers knows while it walks the layers.
struct StackCheck {
  const Weights& weights;
  DType dtype;                // of the activations (and the weights)
  int tensor_parallel = 1;    // ranks of a stage
  std::map<std::string, int64_t> saved_widths;

  // Throws Error(kInvalidArgument) "<config>: <layer.where>.<field>: <what>".
  [[noreturn]] void fail(const LayerConfig& layer, const std::string& field, const std::string& what) const;
  // Checks that layer's field names a tensor [width].
  void expect_vector(const LayerConfig& layer, const std::string& field, int64_t width) const;
};

// A layer on a stage's mesh. x is [rows, width], in any layout; saved holds the
// stage's saved activations.
class Layer {
 public:
  virtual ~Layer() = default;
  virtual DTensor forward(const DTensor& x, const std::map<std::string, DTensor>& saved) const = 0;
};

struct LayerType {
  std::string name;
  std::vector<FieldSpec> fields;
  // The width leaving the layer for `width` entering it; checks the layer's tensors.
  std::function<int64_t(const LayerConfig&, const StackCheck&, int64_t width)> output_width;
  // Builds the layer on a stage's mesh, loading its tensors (collective over the stage).
  std::function<std::unique_ptr<Layer>(const LayerConfig&, const Weights&, const Mesh&)> build;
};

// The registry. find_layer_type: the entry called name, or null.
const LayerType* find_layer_type(std::string_view name);
// Every registered type's name, in registration order (the built-in ones first).
std::vector<std::string> layer_type_names();
// Adds a type; throws Error(kInvalidArgument) if the name is taken.
void register_layer_type(LayerType type);

// A stage's layers, in order, with their saves.
class LayerStack {
 public:
  // Checks the layers against the weights for an activation entering with
  // `width`, and returns the width leaving the last one. Errors name the config
  // file, the layer's field and what was expected.
  static int64_t check(const std::vector<LayerConfig>& layers, const Weights& weights, DType dtype,
                       int tensor_parallel, int64_t width);
  // Builds every layer on the stage's mesh (collective over it).
  LayerStack(const std::vector<LayerConfig>& layers, const Weights& weights, const Mesh& mesh);
  DTensor forward(const DTensor& x) const;

 private:
  struct Entry {
    std::unique_ptr<Layer> layer;
    std::string save;
  };
  std::vector<Entry> layers_;
};

}  // namespace meshrt::models

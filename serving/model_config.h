// Model repositories and model configs.
//
// A model repository is a folder with one folder per model; each holds
// config.json and its weights in safetensors (one file, or a checkpoint folder
// with model.safetensors.index.json). A config:
//
// {
//   "name": "matmul_neg", "version": "1",
//   "rank_size": 4, "stage_size": 2,                 // ranks in all; pipeline stages
//   "inputs":  [{"name": "x", "datatype": "FP32", "shape": [-1, 96]}],   // -1: the batch axis
//   "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 16]}],
//   "weights": "weights.safetensors",
//   "stages": [                                      // stage_size entries
//     {"layers": [{"type": "linear", "weight": "w", "parallel": "row"}]},
//     {"layers": [{"type": "neg"}]}
//   ],
//   "batching": {"max_batch_size": 64, "max_queue_delay_us": 2000,
//                "preferred_batch_sizes": [32], "micro_batches": 2, "max_queue_size": 256,
//                "start_when_idle": true}
// }
//
// Layers: {"type": T, ...the fields of T}, T a registered layer type
// (models/layers.h: linear {weight, bias?, parallel: column | row | none, weight_layout: in_out | out_in},
// bias_add {bias}, neg, relu, gelu, silu, softmax, layernorm {gamma, beta, eps?},
// rmsnorm {gamma, eps?}, residual_add {from}, ...). The reader checks each
// layer's fields against its type's entry. Any layer may carry "save": NAME to
// keep its output for a later residual_add {"from": NAME} in the same stage.
// Configs carry one input and one output of one dtype (floating or integer,
// as the layers' kernels take it), [-1, width] or with more axes, [-1, ...,
// width] (-1 between: any extent): the layers act on the last axis and keep
// the others, so the output has the input's shape but for its width. The C++
// API (servable.h) defines other servables.
//
// A model written in C++ (serving/servable_plugin.h) names its shared library
// instead of stages; inputs, outputs and weights are then optional (the
// library reads those given and defines the servable), and "parameters" are
// the library's own settings (strings, numbers or booleans; it gets them as
// text):
//
// {
//   "name": "scaled", "rank_size": 2, "stage_size": 2,
//   "servable_library": "libscale_servable.so",     // in the model folder, or an absolute path
//   "inputs":  [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
//   "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
//   "parameters": {"factor": 2.5}
// }
//
// meshrt-serve --servable-library <model>=<path> sets or replaces it (a path
// relative to the working directory), also for a config with stages, which
// are then not used.
//
// A folder that holds meshrt.json is a Hugging Face model instead: the rest of
// the folder is a checkpoint as save_pretrained writes it (config.json of
// model_type gpt2 or llama, model.safetensors or the sharded files of
// model.safetensors.index.json), served by serving/hf_servable.h. meshrt.json:
//
// {"rank_size": 4, "stage_size": 2,        // required
//  "compute_dtype": "bfloat16",            // optional: float32 | bfloat16 | float16;
//                                          //   default bf16 on GPUs, f32 on the cpu
//  "batching": {...as above...},           // optional; max_batch_size defaults to 16 sequences
//  "kv_cache": {"block_size": 16, "num_blocks": 256},   // optional: each rank's pool (generation)
//  "name": "<the folder's name>", "version": "1", "description": "..."}
//
// Everything is checked when the config is read; an error names the file, the
// field and what was expected, e.g. "models/m/config.json: stages[0].layers[1].type:
// expected one of linear, bias_add, ..., got \"conv\"".
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "device/dtype.h"
#include "models/layers.h"
#include "serving/signature.h"

namespace meshrt::serving {

using models::LayerConfig;

struct StageConfig {
  std::vector<LayerConfig> layers;
};

struct BatchingConfig {
  bool enabled = true;
  int64_t max_batch_size = 32;       // rows per batch
  int64_t max_queue_delay_us = 1000; // how long the oldest request may wait for company
  // True: an idle engine starts a batch at once with whatever is queued, and
  // requests collect for the next batch only while one runs (so a lone request
  // never waits max_queue_delay_us). False: a batch waits for max_batch_size, a
  // preferred size or max_queue_delay_us, as Triton's dynamic batcher does.
  bool start_when_idle = true;
  std::vector<int64_t> preferred_batch_sizes;
  int micro_batches = 1;             // pipeline micro-batches per batch
  int64_t max_queue_size = 128;      // requests waiting; more get 503 at once
};

// How a model folder describes its model.
enum class ModelFormat {
  kLayers,       // config.json: meshrt's layer config (above)
  kHuggingFace,  // meshrt.json beside a Hugging Face checkpoint
};

inline constexpr const char* kHfServingConfig = "meshrt.json";
inline constexpr int64_t kHfDefaultMaxBatchSize = 16;

// A Hugging Face model's KV cache (meshrt.json "kv_cache"): every rank of the
// model holds num_blocks blocks of block_size tokens for its layers and heads.
struct KvCacheConfig {
  int64_t block_size = 16;
  int64_t num_blocks = 256;
};

// Which numeric version folders of a model are served (Triton's
// version_policy): the latest num_versions (the default, 1), all, or the
// listed ones.
struct VersionPolicy {
  enum class Kind { kLatest, kAll, kSpecific };
  Kind kind = Kind::kLatest;
  int num_versions = 1;
  std::vector<int64_t> versions;  // kSpecific
};

struct ModelConfig {
  ModelFormat format = ModelFormat::kLayers;
  std::string name, version = "1";
  // config_path: config.json or meshrt.json; weights_path: the safetensors
  // file or checkpoint folder (the model folder itself for kHuggingFace).
  std::string directory, config_path, weights_path;
  int rank_size = 1, stage_size = 1;
  TensorSpec input, output;          // kLayers
  std::vector<StageConfig> stages;   // kLayers, unless servable_library is set
  // kLayers: the shared library that defines the servable (serving/servable_plugin.h),
  // its path resolved ("" for a layer config); its "parameters", as text.
  std::string servable_library;
  std::map<std::string, std::string> parameters;
  std::string compute_dtype;         // kHuggingFace: "" (the device's default) or torch_dtype's name
  KvCacheConfig kv_cache;            // kHuggingFace
  BatchingConfig batching;
  VersionPolicy version_policy;
};

// Reads and checks model_dir/meshrt.json when there is one, else
// model_dir/config.json (not the weights: those are checked when the model is
// built, against the config).
ModelConfig load_model_config(const std::string& model_dir);
// The same for the text of a Hugging Face folder's meshrt.json. files_dir:
// where the checkpoint is (a version folder; "" : model_dir itself).
ModelConfig parse_hf_serving_config(std::string_view text, const std::string& model_dir,
                                    const std::string& files_dir = "");
// The same for the text of model_dir/config.json (at most kMaxModelConfigBytes):
// the checks that need the folder look at model_dir (its name) and files_dir
// (the weights file; "": model_dir).
inline constexpr size_t kMaxModelConfigBytes = 1 << 20;
// servable_library, when not empty, is used as if config.json named it (a path
// as given, not relative to model_dir): the config may then lack stages.
ModelConfig parse_model_config(std::string_view text, const std::string& model_dir, const std::string& files_dir = "",
                               const std::string& servable_library = "");

// Versions as Triton lays them out: the model's config (config.json, or
// meshrt.json for a Hugging Face model) in model_dir beside numeric version
// folders (1/, 2/, ...) holding the weights (or the checkpoint) of each; the
// config's "version_policy" ({"latest": {"num_versions": N}}, {"all": {}},
// {"specific": {"versions": [1, 3]}}; default latest 1) picks the ones served,
// one ModelConfig each (version = the folder's number), in ascending order.
// A folder without numeric subfolders is one version: its config's "version"
// ("1" unless it says), as before. Throws Error(kInvalidArgument) naming the
// folder: a "version" key beside version folders, a policy naming a version
// that has no folder, or a policy that selects none. servable_library: as
// parse_model_config's, for every version.
std::vector<ModelConfig> load_model_versions(const std::string& model_dir, const std::string& servable_library = "");
// Every model of the repository (folders with a config.json or a meshrt.json),
// sorted by name, each version of it (load_model_versions) in ascending order.
// servable_libraries: model name -> the library it is served by, over what its
// config.json says (meshrt-serve --servable-library). Throws
// Error(kInvalidArgument) if the folder is missing or holds no model, or a
// servable_libraries entry names a model that is not there or a Hugging Face one.
std::vector<ModelConfig> load_repository(const std::string& repository_dir,
                                         const std::map<std::string, std::string>& servable_libraries = {});
// The names of the repository's models (its folders with a config.json or a
// meshrt.json), sorted; empty when it holds none. Throws
// Error(kInvalidArgument) if the folder is missing.
std::vector<std::string> repository_models(const std::string& repository_dir);

}  // namespace meshrt::serving

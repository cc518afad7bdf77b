// Servables: models as pipeline stages, each stage tensor-parallel on its slice
// of the mesh {stage: stage_size, model: rank_size / stage_size}.
//
// A servable comes from a config (servable_from_config: a layer config, or a
// Hugging Face folder) or is written in C++: fill a ServableDefinition with
// StageDefinitions whose build() makes a StageModule on the stage's mesh.
//
// The engine's input is one tensor [rows, ...] (rows: the batch axis that
// requests are stacked along); the first stage gets it, replicated on its
// ranks. Between stages travel one or more tensors [rows, ...] (a stage's
// `outputs` says which, from the batch input's shape); the last stage returns
// the output [rows, ...]. What a stage returns is replicated before it leaves.
// A model whose wire inputs are several tensors (input_ids and an optional
// attention_mask) packs them into the engine's input per request (pack_inputs).
//
// Hooks run in this order for each batch:
//   distributed_preprocessing  rank 0, on the stacked batch before it leaves (host tensors)
//   client_preprocessing       first stage, on the batch once it arrived (device)
//   the stages
//   client_postprocessing      last stage (device)
//   distributed_postprocessing last stage, before the result goes to rank 0:
//                              device -> host. The default gathers and copies to
//                              the host; a replacement must return a HostTensor
//                              too, so the move to host cannot be forgotten.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "models/tokenizer.h"
#include "serving/model_config.h"
#include "serving/signature.h"
#include "sharding/dtensor.h"

namespace meshrt::serving {

using sharding::DTensor;
using sharding::Mesh;

// Small integers that come with a batch to every rank (in the engine's run
// command), for stages whose work depends on more than the input's shape (a
// generation step's query and key lengths). Empty for plain batches.
using BatchParams = std::vector<int64_t>;

class StageModule {
 public:
  virtual ~StageModule() = default;
  // A stage of one tensor in and one out: x [rows, input width], replicated on
  // the stage's mesh.
  virtual DTensor forward(const DTensor& x);
  // The general form: the tensors entering the stage (the batch input on the
  // first stage; the previous stage's outputs after it) to the tensors leaving
  // it; params: the batch's parameters (Engine::start), the same on every
  // rank. The default calls forward() on the one tensor.
  virtual std::vector<DTensor> forward_tensors(const std::vector<DTensor>& inputs, const BatchParams& params);
};

// A tensor crossing from one stage to the next: its dtype and its extents after
// the rows axis.
struct ActivationSpec {
  DType dtype = DType::kF32;
  std::vector<int64_t> dims;
};

struct StageDefinition {
  // One [rows, output_width] activation of the servable's input dtype (layer
  // configs and most C++ stages); ignored when `outputs` is set.
  int64_t output_width = 0;
  // Builds the stage on its mesh (the mesh's one axis is "model"); collective
  // over the stage's ranks (it may load weights with sharding's collectives).
  std::function<std::unique_ptr<StageModule>(const Mesh& stage_mesh)> build;
  // The tensors leaving the stage, given the batch input's extents after its
  // rows axis and the batch's parameters (every rank computes them alike from
  // the batch it is told of). The last stage's one tensor is the servable's output.
  std::function<std::vector<ActivationSpec>(const std::vector<int64_t>& input_dims, const BatchParams& params)> outputs;
};

struct Hooks {
  std::function<HostTensor(const HostTensor&)> distributed_preprocessing;
  std::function<DTensor(const DTensor&)> client_preprocessing;
  std::function<DTensor(const DTensor&)> client_postprocessing;
  std::function<HostTensor(const DTensor&)> distributed_postprocessing;
};

// What a servable that generates tokens (a decoder-only transformer) tells
// the generator (serving/generator.h), and the step it runs. A generation step
// is a batch with params {kGenerationStep, q, kv} and the input i64
// [rows, 3q + 2kv + 1], per row: q token ids, their q positions in the
// sequence, their q KV-cache slots (-1: padding, not kept), kv slots to attend
// (-1: none), the kv key mask (1 attend, 0 not), and the index in [0, q) of
// the row's last real token. Its output: f32 [rows, vocab_size], that token's
// logits. A step is a prefill (the rows' first tokens, right-padded to q;
// their read slots are their write slots) or a decode (q = 1).
inline constexpr int64_t kGenerationStep = 1;
struct GenerationSpec {
  int64_t vocab_size = 0;
  int64_t max_positions = 0;           // tokens a sequence may reach (prompt and generated)
  std::vector<int64_t> eos_token_ids;  // generation_config.json's, else config.json's
  int64_t block_size = 16;             // KV-cache slots per block
  int64_t num_blocks = 0;              // blocks in every rank's pool
  // The folder's tokenizer.json (text_input / text_output: seed 000's client
  // pre- and post-processing), or null with why (no file, or a kind meshrt
  // refuses, such as SentencePiece).
  std::shared_ptr<const models::Tokenizer> tokenizer;
  std::string no_tokenizer;
};

struct ServableDefinition {
  // A servable from a shared library (serving/servable_plugin.h): the open
  // library, first so that it is released after everything else here. Every
  // function of the definition and every stage it builds hold it too.
  std::shared_ptr<void> library;
  std::string name, version = "1";
  // The engine's input and output, [-1, ...] (-1 after the batch axis: any
  // extent; requests stacked into one batch share their extents).
  TensorSpec input, output;
  // The wire's inputs when they are not just `input` (in request order;
  // optional ones may be missing), and how one request's inputs (undefined
  // where a missing optional one was) become its rows of the engine input.
  // pack_inputs throws Error(kInvalidArgument) for inputs that do not go
  // together (the request gets 400 with the message).
  std::vector<TensorSpec> wire_inputs;
  std::function<HostTensor(const std::vector<HostTensor>& inputs)> pack_inputs;
  int rank_size = 1, stage_size = 1;
  std::vector<StageDefinition> stages;  // stage_size of them
  Hooks hooks;
  BatchingConfig batching;
  VersionPolicy version_policy;  // of its model's versions (the config's; reported by /config)
  // Set when the servable generates (POST .../generate): its stages take generation steps.
  std::shared_ptr<const GenerationSpec> generation;
};

// Checks a definition (stage count, widths chaining from the input to the
// output, batching) and fills unset hooks and stage outputs with the defaults.
// Throws Error(kInvalidArgument) naming the servable and what is wrong.
void complete_servable(ServableDefinition& servable);

// The tensors entering stage `stage` of a batch whose input has extents
// input_dims after its rows axis: the input itself for stage 0, else the
// previous stage's outputs.
std::vector<ActivationSpec> stage_inputs(const ServableDefinition& servable, int stage,
                                         const std::vector<int64_t>& input_dims, const BatchParams& params = {});
// Whether extents fit a spec's shape after its batch axis (-1 fits any extent).
bool fits_spec(const TensorSpec& spec, const std::vector<int64_t>& dims_after_rows);

// What the wire sees of a servable: its inputs (wire_inputs, else input) and
// output, version, and as metadata parameters rank_size, stage_size,
// max_batch_size and dynamic_batching.
ModelSignature signature_of(const ServableDefinition& servable);

// A servable with what every kind takes from its config as it is: name,
// version, rank_size, stage_size, batching (the kinds fill in the rest).
ServableDefinition servable_shell(const ModelConfig& config);

// The servable a model config describes. Reads the weights' headers and checks
// every layer against them (tensor names, dtypes, shapes, divisibility by the
// tensor-parallel width); errors name the config file, the field and the
// weights file. Weights are read when a stage is built, each rank reading only
// the bytes of its shard.
// A config with servable_library is defined by that shared library
// (serving/servable_plugin.h: load_servable_library).
// A Hugging Face folder (config.format == kHuggingFace) becomes a transformer
// servable (serving/hf_servable.h) whose compute dtype, unless meshrt.json
// names one, is bf16 on a CUDA device and f32 on the cpu.
ServableDefinition servable_from_config(const ModelConfig& config, const Device& device = Device::cpu());

}  // namespace meshrt::serving

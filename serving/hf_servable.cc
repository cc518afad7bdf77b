#include "serving/hf_servable.h"

#include <algorithm>

#include "kernels/movement.h"
#include "models/hf_config.h"
#include "models/transformer.h"
#include "sharding/layout.h"

namespace meshrt::serving {

namespace {

using models::Transformer;
using models::TransformerPart;
using models::hf::HfConfig;
using sharding::Layout;

DType compute_dtype_of(const ModelConfig& c, const Device& device) {
  if (c.compute_dtype == "float32") return DType::kF32;
  if (c.compute_dtype == "bfloat16") return DType::kBF16;
  if (c.compute_dtype == "float16") return DType::kF16;
  return device.is_cuda() ? DType::kBF16 : DType::kF32;
}

// One pipeline stage: a part of the model's layers.
class TransformerStage : public StageModule {
 public:
  TransformerStage(const std::string& folder, const HfConfig& config, const Mesh& mesh, TransformerPart part,
                   DType compute)
      : model_(folder, config, mesh, part, compute), mesh_(mesh) {}

  std::vector<DTensor> forward_tensors(const std::vector<DTensor>& in) override {
    const TransformerPart& part = model_.part();
    int64_t rows = in.at(0).global_shape()[0], hidden = model_.config().hidden_size;
    int64_t seq = 0;
    DTensor input;
    DeviceTensor mask;
    if (part.embeds) {  // "tokens" [rows, 2, seq]: the ids, then the mask
      DeviceTensor tokens = in[0].local();
      seq = tokens.dim(2);
      DeviceTensor ids = kernels::narrow(tokens, 1, 0, 1).reshape({rows, seq});
      mask = kernels::narrow(tokens, 1, 1, 1).reshape({rows, seq});
      input = DTensor(ids, Shape{rows, seq}, mesh_, Layout::replicated(2), "input_ids").after(in[0]);
    } else {  // hidden [rows, seq, hidden] and the mask [rows, seq]
      MESHRT_CHECK(in.size() == 2, ErrorKind::kInternal, "a later transformer stage takes hidden states and a mask");
      seq = in[0].global_shape()[1];
      input = DTensor(in[0].local().reshape({rows * seq, hidden}), Shape{rows * seq, hidden}, mesh_,
                      Layout::replicated(2), "hidden")
                  .after(in[0]);
      mask = in[1].local();
    }
    models::TokenBatch batch = models::TokenBatch::make(rows, seq, mask, mesh_.device());
    DTensor out = model_.forward(input, batch);
    int64_t width = out.global_shape()[1];
    DTensor shaped(out.local().reshape({rows, seq, width}), Shape{rows, seq, width}, mesh_, Layout::replicated(3),
                   part.has_head ? "logits" : "hidden");
    shaped = shaped.after(out);
    if (part.has_head) return {shaped};
    return {shaped, DTensor(mask, Shape{rows, seq}, mesh_, Layout::replicated(2), "attention_mask")};
  }

 private:
  Transformer model_;
  Mesh mesh_;
};

// One request's input_ids and attention_mask (undefined: all ones) as its rows
// of "tokens" [rows, 2, seq], after checking them.
HostTensor pack_tokens(const std::vector<HostTensor>& inputs, const HfConfig& config) {
  const HostTensor& ids = inputs.at(0);
  const HostTensor& mask = inputs.at(1);
  MESHRT_CHECK_ARG(ids.ndim() == 2 && ids.dim(1) >= 1, "input 'input_ids' must be [batch, seq] with seq >= 1, got ",
                   ids.description());
  int64_t rows = ids.dim(0), seq = ids.dim(1);
  if (mask.defined()) {
    MESHRT_CHECK_ARG(mask.shape() == ids.shape(), "input 'attention_mask' must have the shape of 'input_ids' (",
                     ids.shape().to_string(), "), got ", mask.description());
  }
  if (config.architecture == models::hf::Architecture::kGpt2) {
    MESHRT_CHECK_ARG(seq <= config.max_positions, "input 'input_ids': a sequence of ", seq,
                     " tokens is longer than the model's ", config.max_positions, " positions (n_positions)");
  }
  HostTensor out = HostTensor::empty({rows, 2, seq}, DType::kI64);
  const int64_t* id = ids.data<int64_t>();
  const int64_t* m = mask.defined() ? mask.data<int64_t>() : nullptr;
  int64_t* o = out.data<int64_t>();
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t s = 0; s < seq; ++s) {
      int64_t token = id[r * seq + s];
      MESHRT_CHECK_ARG(token >= 0 && token < config.vocab_size, "input 'input_ids'[", r, "][", s, "] is ", token,
                       ": token ids are 0 to ", config.vocab_size - 1, " (vocab_size ", config.vocab_size, ")");
      o[(r * 2) * seq + s] = token;
      o[(r * 2 + 1) * seq + s] = m ? (m[r * seq + s] != 0 ? 1 : 0) : 1;
    }
  }
  return out;
}

}  // namespace

ServableDefinition servable_from_hf(const ModelConfig& c, const Device& device) {
  HfConfig config = models::hf::read_config(c.directory);
  int tp = c.rank_size / c.stage_size;
  try {
    models::check_tensor_parallel(c.directory, config, tp);
    MESHRT_CHECK_ARG(config.num_layers >= c.stage_size, c.directory, " has ", config.num_layers,
                     " layers: too few for ", c.stage_size, " pipeline stages (stage_size)");
  } catch (const Error& e) {
    throw Error(ErrorKind::kInvalidArgument, c.config_path + ": rank_size " + std::to_string(c.rank_size) +
                                                 ", stage_size " + std::to_string(c.stage_size) + ": " + e.message());
  }
  DType compute = compute_dtype_of(c, device);
  ServableDefinition s;
  s.name = c.name;
  s.version = c.version;
  s.rank_size = c.rank_size;
  s.stage_size = c.stage_size;
  s.batching = c.batching;
  s.input = {"tokens", DType::kI64, {-1, 2, -1}};
  s.output = {"logits", DType::kF32, {-1, -1, config.vocab_size}};
  TensorSpec mask{"attention_mask", DType::kI64, {-1, -1}};
  mask.optional = true;
  s.wire_inputs = {{"input_ids", DType::kI64, {-1, -1}}, mask};
  s.pack_inputs = [config](const std::vector<HostTensor>& inputs) { return pack_tokens(inputs, config); };
  std::vector<TransformerPart> parts = models::split_layers(config.num_layers, c.stage_size);
  for (const TransformerPart& part : parts) {
    StageDefinition stage;
    int64_t hidden = config.hidden_size, vocab = config.vocab_size;
    stage.outputs = [part, hidden, vocab, compute](const std::vector<int64_t>& input_dims) {
      int64_t seq = input_dims.at(1);
      if (part.has_head) return std::vector<ActivationSpec>{{DType::kF32, {seq, vocab}}};
      return std::vector<ActivationSpec>{{compute, {seq, hidden}}, {DType::kI64, {seq}}};
    };
    std::string folder = c.directory;
    stage.build = [folder, config, part, compute](const Mesh& mesh) -> std::unique_ptr<StageModule> {
      return std::make_unique<TransformerStage>(folder, config, mesh, part, compute);
    };
    s.stages.push_back(std::move(stage));
  }
  complete_servable(s);
  return s;
}

}  // namespace meshrt::serving

#include "serving/hf_servable.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>

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
                   DType compute, int64_t cache_slots)
      : model_(folder, config, mesh, part, compute), mesh_(mesh) {
    if (cache_slots > 0) model_.enable_cache(cache_slots);
  }

  std::vector<DTensor> forward_tensors(const std::vector<DTensor>& in, const BatchParams& params) override {
    if (!params.empty()) return step(in, params);
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
  // A generation step (GenerationSpec): the step tensor enters every stage
  // (the first with the ids, the later ones beside the hidden states).
  std::vector<DTensor> step(const std::vector<DTensor>& in, const BatchParams& params) {
    MESHRT_CHECK(params.size() == 3 && params[0] == kGenerationStep, ErrorKind::kInternal, "unknown batch parameters");
    const TransformerPart& part = model_.part();
    int64_t q = params[1], kv = params[2], hidden = model_.config().hidden_size;
    const DTensor& step = part.embeds ? in.at(0) : in.at(1);
    int64_t rows = step.global_shape()[0];
    DeviceTensor s = step.local();
    auto column = [&](int64_t start, int64_t width) { return kernels::narrow(s, 1, start, width); };
    models::TokenBatch batch;
    batch.batch = rows;
    batch.seq = q;
    batch.positions = column(q, q).reshape({rows * q});
    batch.write_slots = column(2 * q, q).reshape({rows * q});
    batch.read_slots = column(3 * q, kv);
    batch.key_mask = column(3 * q + kv, kv);
    DTensor input;
    if (part.embeds) {
      input = DTensor(column(0, q), Shape{rows, q}, mesh_, Layout::replicated(2), "input_ids").after(step);
    } else {
      input = DTensor(in[0].local().reshape({rows * q, hidden}), Shape{rows * q, hidden}, mesh_, Layout::replicated(2),
                      "hidden")
                  .after(in[0]);
    }
    if (part.has_head) {
      // Each row's last real token: row r's token last_r of [rows * q].
      HostTensor last = to_host(column(3 * q + 2 * kv, 1));
      HostTensor flat = HostTensor::empty({rows}, DType::kI64);
      for (int64_t r = 0; r < rows; ++r) flat.data<int64_t>()[r] = r * q + last.data<int64_t>()[r];
      batch.logit_rows = to_device(flat, mesh_.device());
    }
    DTensor out = model_.forward(input, batch);
    if (part.has_head) return {out};  // [rows, vocab]
    DTensor shaped(out.local().reshape({rows, q, hidden}), Shape{rows, q, hidden}, mesh_, Layout::replicated(3), "hidden");
    return {shaped.after(out), step};
  }

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

// generation_config.json's eos_token_id (one id or a list) when the folder has
// one, else config.json's.
std::vector<int64_t> eos_token_ids(const std::string& folder, const HfConfig& config) {
  std::ifstream in(folder + "/generation_config.json");
  if (!in) return config.eos_token_ids;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorKind::kInvalidArgument, folder + "/generation_config.json: not valid JSON: " + e.what());
  }
  if (!j.is_object() || !j.contains("eos_token_id") || j["eos_token_id"].is_null()) return config.eos_token_ids;
  std::vector<int64_t> ids;
  const nlohmann::json& e = j["eos_token_id"];
  for (const nlohmann::json& id : e.is_array() ? e : nlohmann::json::array({e})) {
    MESHRT_CHECK_ARG(id.is_number_integer(), folder, "/generation_config.json: eos_token_id: expected token ids, got ",
                     e.dump());
    ids.push_back(id.get<int64_t>());
  }
  return ids;
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
  ServableDefinition s = servable_shell(c);
  s.input = {"tokens", DType::kI64, {-1, 2, -1}};
  s.output = {"logits", DType::kF32, {-1, -1, config.vocab_size}};
  TensorSpec mask{"attention_mask", DType::kI64, {-1, -1}};
  mask.optional = true;
  s.wire_inputs = {{"input_ids", DType::kI64, {-1, -1}}, mask};
  s.pack_inputs = [config](const std::vector<HostTensor>& inputs) { return pack_tokens(inputs, config); };
  auto generation = std::make_shared<GenerationSpec>();
  generation->vocab_size = config.vocab_size;
  generation->max_positions = config.max_positions;
  generation->eos_token_ids = eos_token_ids(c.directory, config);
  generation->block_size = c.kv_cache.block_size;
  generation->num_blocks = c.kv_cache.num_blocks;
  std::string tokenizer_path = c.directory + "/tokenizer.json";
  if (std::ifstream(tokenizer_path).good()) {
    try {
      generation->tokenizer = std::make_shared<const models::Tokenizer>(models::Tokenizer::load(tokenizer_path));
    } catch (const Error& e) {
      // The model still serves token ids; text is refused with this reason.
      generation->no_tokenizer = e.message();
    }
  } else {
    generation->no_tokenizer = c.directory + " has no tokenizer.json";
  }
  s.generation = generation;
  std::vector<TransformerPart> parts = models::split_layers(config.num_layers, c.stage_size);
  for (const TransformerPart& part : parts) {
    StageDefinition stage;
    int64_t hidden = config.hidden_size, vocab = config.vocab_size;
    stage.outputs = [part, hidden, vocab, compute](const std::vector<int64_t>& input_dims, const BatchParams& params) {
      if (!params.empty()) {  // a generation step: input_dims is the step's row width
        if (part.has_head) return std::vector<ActivationSpec>{{DType::kF32, {vocab}}};
        return std::vector<ActivationSpec>{{compute, {params.at(1), hidden}}, {DType::kI64, {input_dims.at(0)}}};
      }
      int64_t seq = input_dims.at(1);
      if (part.has_head) return std::vector<ActivationSpec>{{DType::kF32, {seq, vocab}}};
      return std::vector<ActivationSpec>{{compute, {seq, hidden}}, {DType::kI64, {seq}}};
    };
    std::string folder = c.directory;
    int64_t slots = generation->num_blocks * generation->block_size;
    stage.build = [folder, config, part, compute, slots](const Mesh& mesh) -> std::unique_ptr<StageModule> {
      return std::make_unique<TransformerStage>(folder, config, mesh, part, compute, slots);
    };
    s.stages.push_back(std::move(stage));
  }
  complete_servable(s);
  return s;
}

}  // namespace meshrt::serving

// Decoder-only transformers from Hugging Face folders (GPT-2 and Llama, see
// hf_config.h), run with tensor parallelism over a stage mesh's "model" axis
// and split into pipeline parts by layer.
//
// Weights are read as transformers saves them: GPT-2's Conv1D [in, out]
// (fused c_attn split into q, k and v), Llama's Linear [out, in] (transposed
// once at load); names with or without GPT-2's "transformer." prefix (the
// hub's original files), the attention-mask buffers (attn.bias, masked_bias)
// ignored; one model.safetensors or the sharded files of an index. Each rank
// reads only the bytes of its shards (TensorStore::read_block), and weights
// are converted once to the compute dtype.
//
// Tensor parallelism (Megatron-LM's): q, k, v, and the MLP's up (and gate)
// projections column-parallel, attention's output and the MLP's down
// projection row-parallel (one all_reduce each), heads split over the ranks
// (TP must divide num_attention_heads; with TP above num_key_value_heads, a
// multiple of it, each rank keeps the one kv head its query heads use), the
// token embedding and the LM head vocabulary-parallel (torch.chunk blocks:
// the vocabulary need not divide). The MLP's inner width need not divide
// either.
//
// Activations between parts are [tokens, hidden] (tokens = batch x seq, row
// major), replicated over the stage. Positions are 0..seq-1 in every row, as
// Hugging Face's forward without position_ids; the attention mask [batch,
// seq] (nonzero: attend) masks keys.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "models/hf_config.h"
#include "sharding/checkpoint.h"
#include "sharding/dtensor.h"

namespace meshrt::models {

using sharding::DTensor;
using sharding::Mesh;

// The layers [first_layer, last_layer) of a model, and whether the part
// embeds the tokens (the first) and applies the final norm and the LM head
// (the last).
struct TransformerPart {
  int64_t first_layer = 0, last_layer = 0;
  bool embeds = true, has_head = true;
};

// The parts of num_layers layers over stages pipeline stages: consecutive,
// sizes differing by at most one (the earlier stages one larger).
std::vector<TransformerPart> split_layers(int64_t num_layers, int stages);

// One micro-batch's shape and masks, shared by the layers of a part.
//
// With a KV cache (Transformer::enable_cache; generation): the new tokens'
// keys and values are written to write_slots, and each row attends the keys
// at its read_slots (its earlier tokens' and the new ones', in order), with
// key_mask [batch, kv_len] saying which read slots hold a key. A batch is
// either a prefill (no earlier tokens; read_slots are the write slots, rows
// right-padded) or a decode step (seq 1; rows of different lengths padded
// with -1 slots); positions then give each token's place in its sequence.
struct TokenBatch {
  int64_t batch = 0, seq = 0;
  DeviceTensor positions;  // i64 [batch * seq]: 0..seq-1 per row, or given
  DeviceTensor key_mask;   // i64 [batch, seq] (or [batch, kv_len] with a cache), or undefined (every key)
  DeviceTensor write_slots;  // i64 [batch * seq], -1: not kept (padding); undefined: no cache
  DeviceTensor read_slots;   // i64 [batch, kv_len], -1: no key
  // The tokens (rows of [batch * seq]) whose logits the head returns; undefined: all.
  DeviceTensor logit_rows;
  // From the model input (attention_mask optional), on device.
  static TokenBatch make(int64_t batch, int64_t seq, const HostTensor& attention_mask, const Device& device);
  // With a key mask already on the device (i64 [batch, seq], or undefined).
  static TokenBatch make(int64_t batch, int64_t seq, const DeviceTensor& key_mask, const Device& device);
};

// Keys and values of the layers of a part, per rank: each layer's
// [slots, kv_heads_here, head_dim] in the compute dtype, allocated once
// (slots = blocks x block size; the block tables are the caller's).
struct KvCache {
  std::vector<DeviceTensor> keys, values;
  int64_t slots = 0;
};

// Throws Error(kInvalidArgument) naming the counts (and folder) when tp ranks
// of tensor parallelism do not fit the model's heads: tp must divide
// num_attention_heads, and divide num_key_value_heads or be a multiple of it.
void check_tensor_parallel(const std::string& folder, const hf::HfConfig& config, int tp);

class Transformer {
 public:
  // Loads part of the model in folder on a stage mesh (collective over it: its
  // communicators are made). compute: the activations' and weights' dtype.
  // Throws Error(kInvalidArgument) naming the counts when the mesh's "model"
  // axis does not fit the heads, and naming the tensor when a weight is
  // missing or has the wrong shape.
  Transformer(const std::string& folder, const hf::HfConfig& config, const Mesh& stage, TransformerPart part,
              DType compute);

  const hf::HfConfig& config() const { return config_; }
  const TransformerPart& part() const { return part_; }
  DType compute_dtype() const { return dtype_; }
  // Allocates this rank's KV cache of `slots` tokens for the part's layers
  // (zeroed); batches with write_slots then use it.
  void enable_cache(int64_t slots);
  // Bytes of the cache of `slots` tokens on one rank of a stage mesh of tp
  // ranks running `layers` layers (for sizing it).
  static int64_t cache_bytes(const hf::HfConfig& config, int tp, int64_t layers, int64_t slots, DType compute);

  // input_ids i64 [batch, seq] (replicated) -> hidden [tokens, hidden].
  DTensor embed(const DTensor& input_ids, const TokenBatch& batch) const;
  // The part's layers on hidden [tokens, hidden].
  DTensor layers(const DTensor& hidden, const TokenBatch& batch) const;
  // The final norm and the LM head: logits [tokens, vocab] in f32, replicated.
  DTensor head(const DTensor& hidden) const;
  // embed (if the part embeds) / layers / head (if it has it) in one call:
  // input is input_ids for a first part, hidden states otherwise.
  DTensor forward(const DTensor& input, const TokenBatch& batch) const;

 private:
  struct Layer {
    DeviceTensor norm1_w, norm1_b, norm2_w, norm2_b;  // b: GPT-2's LayerNorm only
    DeviceTensor wq, wk, wv, bq, bk, bv;              // [hidden, heads_here * head_dim] (b: GPT-2)
    DeviceTensor wo, bo;                              // [heads_here * head_dim, hidden], bo (GPT-2) whole
    DeviceTensor w_up, b_up, w_gate, w_down, b_down;  // up/gate [hidden, inner_here], down [inner_here, hidden]
  };
  // The stored tensor called name, checked to be whole-shaped and of a float dtype.
  const sharding::CheckpointEntry& entry(const std::string& name, const Shape& whole) const;
  // A block of it (offsets, block), or all of it, converted to the compute dtype (and transposed).
  DeviceTensor load(const std::string& name, const Shape& whole, std::vector<int64_t> offsets, Shape block,
                    bool transpose) const;
  DeviceTensor load(const std::string& name, const Shape& whole) const;
  // All of it on the stage mesh with layout (each rank reads its block), converted.
  DTensor load_sharded(const std::string& name, const Shape& whole, const sharding::Layout& layout) const;
  std::string name_of(const std::string& gpt2, const std::string& llama) const;
  void load_layer(int64_t index, Layer& layer) const;
  DTensor attention(size_t layer, const DTensor& x, const TokenBatch& batch) const;
  DTensor mlp(const Layer& l, const DTensor& x) const;
  DTensor reduced(const DeviceTensor& partial, const Shape& shape, const std::string& name) const;
  DeviceTensor norm(const DeviceTensor& x, const DeviceTensor& w, const DeviceTensor& b) const;

  hf::HfConfig config_;
  Mesh mesh_;
  TransformerPart part_;
  DType dtype_;
  sharding::TensorStore store_;
  std::string prefix_;  // GPT-2: "transformer." or "" (the hub's files)
  int tp_ = 1, rank_ = 0;
  int64_t heads_here_ = 0, kv_heads_here_ = 0, first_head_ = 0, first_kv_head_ = 0;
  DTensor embedding_;   // [vocab, hidden], vocabulary-parallel (the first part, and a tied head)
  DTensor positions_;   // GPT-2's wpe [n_positions, hidden], replicated
  DTensor lm_head_;     // [vocab, hidden] vocabulary-parallel (the last part)
  DeviceTensor final_w_, final_b_;
  std::vector<Layer> layers_;
  std::shared_ptr<KvCache> cache_;  // enable_cache; written by attention
};

}  // namespace meshrt::models

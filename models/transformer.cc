#include "models/transformer.h"

#include <sys/stat.h>

#include "kernels/attention.h"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"
#include "kernels/movement.h"
#include "kernels/reduction.h"
#include "sharding/ops.h"
#include "sharding/redistribute.h"

namespace meshrt::models {

namespace {
using detail::cat;
using Dims = std::vector<std::vector<std::string>>;
constexpr const char* kAxis = "model";

bool exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

// A Hugging Face folder's weights: the sharded files of an index, or one file.
std::string weights_path(const std::string& folder) {
  if (exists(folder + "/" + sharding::kCheckpointIndex)) return folder;
  std::string single = folder + "/model.safetensors";
  MESHRT_CHECK_ARG(exists(single), folder, " holds neither ", sharding::kCheckpointIndex,
                   " nor model.safetensors: a Hugging Face model folder as save_pretrained writes it is expected");
  return single;
}

DeviceTensor converted(const DeviceTensor& t, DType dtype) { return t.dtype() == dtype ? t : kernels::cast(t, dtype); }

DTensor converted(const DTensor& t, DType dtype) {
  if (t.dtype() == dtype) return t;
  return DTensor(kernels::cast(t.local(), dtype), t.global_shape(), t.mesh(), t.layout(), t.name()).after(t);
}

}  // namespace

std::vector<TransformerPart> split_layers(int64_t num_layers, int stages) {
  MESHRT_CHECK_ARG(stages >= 1 && num_layers >= stages, "cannot split ", num_layers, " layers over ", stages,
                   " pipeline stages: every stage needs a layer");
  std::vector<TransformerPart> parts;
  int64_t first = 0;
  for (int s = 0; s < stages; ++s) {
    int64_t count = num_layers / stages + (s < num_layers % stages ? 1 : 0);
    parts.push_back({first, first + count, s == 0, s == stages - 1});
    first += count;
  }
  return parts;
}

void check_tensor_parallel(const std::string& folder, const hf::HfConfig& config, int tp) {
  int64_t hq = config.num_heads, hkv = config.num_kv_heads;
  MESHRT_CHECK_ARG(tp >= 1 && hq % tp == 0, folder, ": tensor parallelism of ", tp,
                   " ranks must divide num_attention_heads (", hq, ")");
  if (tp <= hkv) {
    MESHRT_CHECK_ARG(hkv % tp == 0, folder, ": tensor parallelism of ", tp, " ranks must divide num_key_value_heads (",
                     hkv, "), or be a multiple of it");
  } else {
    MESHRT_CHECK_ARG(tp % hkv == 0, folder, ": tensor parallelism of ", tp, " ranks exceeds num_key_value_heads (", hkv,
                     ") and is not a multiple of it (the kv heads would have to be split)");
  }
}

TokenBatch TokenBatch::make(int64_t batch, int64_t seq, const DeviceTensor& key_mask, const Device& device) {
  TokenBatch b;
  b.batch = batch;
  b.seq = seq;
  HostTensor positions = HostTensor::empty({batch * seq}, DType::kI64);
  for (int64_t i = 0; i < batch * seq; ++i) positions.data<int64_t>()[i] = i % seq;
  b.positions = to_device(positions, device);
  if (key_mask.defined()) {
    MESHRT_CHECK_SHAPE(key_mask.shape() == (Shape{batch, seq}) && key_mask.dtype() == DType::kI64,
                       "the attention mask must be i64[", batch, ", ", seq, "], got ", key_mask.description());
    b.key_mask = key_mask;
  }
  return b;
}

TokenBatch TokenBatch::make(int64_t batch, int64_t seq, const HostTensor& attention_mask, const Device& device) {
  if (attention_mask.defined()) {
    MESHRT_CHECK_SHAPE(attention_mask.shape() == (Shape{batch, seq}), "attention_mask must be [", batch, ", ", seq,
                       "] like input_ids, got ", attention_mask.description());
    return make(batch, seq, to_device(cast_host(attention_mask, DType::kI64), device), device);
  }
  return make(batch, seq, DeviceTensor(), device);
}

Transformer::Transformer(const std::string& folder, const hf::HfConfig& config, const Mesh& stage,
                         TransformerPart part, DType compute)
    : config_(config), mesh_(stage), part_(part), dtype_(compute), store_(weights_path(folder)) {
  MESHRT_CHECK_ARG(part.first_layer >= 0 && part.first_layer <= part.last_layer && part.last_layer <= config.num_layers,
                   "layers [", part.first_layer, ", ", part.last_layer, ") of a model of ", config.num_layers);
  MESHRT_CHECK_ARG(is_floating(compute) && compute != DType::kF64, "the compute dtype must be f32, f16 or bf16, got ",
                   to_string(compute));
  tp_ = mesh_.axis_size(kAxis);
  rank_ = mesh_.coordinate(kAxis);
  int64_t hq = config.num_heads, hkv = config.num_kv_heads;
  check_tensor_parallel(folder, config, tp_);
  heads_here_ = hq / tp_;
  first_head_ = rank_ * heads_here_;
  if (tp_ <= hkv) {
    kv_heads_here_ = hkv / tp_;
    first_kv_head_ = rank_ * kv_heads_here_;
  } else {
    kv_heads_here_ = 1;  // replicated: the one kv head this rank's query heads use
    first_kv_head_ = rank_ / (tp_ / hkv);
  }
  if (config.architecture == hf::Architecture::kGpt2) {
    prefix_ = store_.find("transformer.wte.weight") ? "transformer." : "";
  }
  bool need_embedding = part.embeds || (part.has_head && config.tied_embeddings);
  Shape table{config.vocab_size, config.hidden_size};
  sharding::Layout vocabulary_parallel(Dims{{kAxis}, {}});
  if (need_embedding) embedding_ = load_sharded(name_of("wte.weight", "model.embed_tokens.weight"), table, vocabulary_parallel);
  if (part.embeds && config.architecture == hf::Architecture::kGpt2) {
    positions_ = load_sharded(name_of("wpe.weight", ""), Shape{config.max_positions, config.hidden_size},
                              sharding::Layout::replicated(2));
  }
  if (part.has_head) {
    if (config.tied_embeddings) {
      lm_head_ = embedding_;
    } else {
      MESHRT_CHECK_ARG(store_.find("lm_head.weight"), folder,
                       " has no tensor 'lm_head.weight' and the config does not tie it to the embedding");
      lm_head_ = load_sharded("lm_head.weight", table, vocabulary_parallel);
    }
    Shape h{config.hidden_size};
    final_w_ = load(name_of("ln_f.weight", "model.norm.weight"), h);
    if (config.architecture == hf::Architecture::kGpt2) final_b_ = load(name_of("ln_f.bias", ""), h);
  }
  layers_.resize(static_cast<size_t>(part.last_layer - part.first_layer));
  for (int64_t i = part.first_layer; i < part.last_layer; ++i) load_layer(i, layers_[static_cast<size_t>(i - part.first_layer)]);
}

std::string Transformer::name_of(const std::string& gpt2, const std::string& llama) const {
  return config_.architecture == hf::Architecture::kGpt2 ? prefix_ + gpt2 : llama;
}

const sharding::CheckpointEntry& Transformer::entry(const std::string& name, const Shape& whole) const {
  const sharding::CheckpointEntry* e = store_.find(name);
  MESHRT_CHECK_ARG(e != nullptr, store_.path(), " has no tensor '", name, "' (a ",
                   hf::to_string(config_.architecture), " checkpoint of this config has it)");
  MESHRT_CHECK_SHAPE(e->shape == whole, store_.path(), ": '", name, "' is ", e->shape, ", the config says ", whole);
  MESHRT_CHECK_ARG(is_floating(e->dtype), store_.path(), ": '", name, "' is ", to_string(e->dtype),
                   ": weights must be f32, f16 or bf16");
  return *e;
}

DeviceTensor Transformer::load(const std::string& name, const Shape& whole, std::vector<int64_t> offsets, Shape block,
                               bool transpose) const {
  entry(name, whole);
  DeviceTensor t = converted(to_device(store_.read_block(name, offsets, block), mesh_.device()), dtype_);
  return transpose ? kernels::transpose(t, 0, 1) : t;
}

DeviceTensor Transformer::load(const std::string& name, const Shape& whole) const {
  return load(name, whole, std::vector<int64_t>(static_cast<size_t>(whole.ndim()), 0), whole, false);
}

DTensor Transformer::load_sharded(const std::string& name, const Shape& whole, const sharding::Layout& layout) const {
  entry(name, whole);
  return converted(store_.load(name, mesh_, layout), dtype_);
}

void Transformer::load_layer(int64_t i, Layer& l) const {
  const hf::HfConfig& c = config_;
  int64_t h = c.hidden_size, d = c.head_dim, q_cols = heads_here_ * d, kv_cols = kv_heads_here_ * d;
  int64_t inner_all = c.intermediate_size;
  sharding::Extent inner = sharding::chunk_extent(inner_all, tp_, rank_);
  Shape vector{h};
  if (c.architecture == hf::Architecture::kGpt2) {
    std::string p = cat(prefix_, "h.", i, ".");
    l.norm1_w = load(p + "ln_1.weight", vector);
    l.norm1_b = load(p + "ln_1.bias", vector);
    l.norm2_w = load(p + "ln_2.weight", vector);
    l.norm2_b = load(p + "ln_2.bias", vector);
    // Conv1D [in, out]: q, k and v are column blocks of the fused c_attn.
    int64_t col = first_head_ * d;
    Shape qkv{h, 3 * h}, qkv_bias{3 * h};
    l.wq = load(p + "attn.c_attn.weight", qkv, {0, col}, Shape{h, q_cols}, false);
    l.wk = load(p + "attn.c_attn.weight", qkv, {0, h + col}, Shape{h, q_cols}, false);
    l.wv = load(p + "attn.c_attn.weight", qkv, {0, 2 * h + col}, Shape{h, q_cols}, false);
    l.bq = load(p + "attn.c_attn.bias", qkv_bias, {col}, Shape{q_cols}, false);
    l.bk = load(p + "attn.c_attn.bias", qkv_bias, {h + col}, Shape{q_cols}, false);
    l.bv = load(p + "attn.c_attn.bias", qkv_bias, {2 * h + col}, Shape{q_cols}, false);
    l.wo = load(p + "attn.c_proj.weight", Shape{h, h}, {col, 0}, Shape{q_cols, h}, false);
    l.bo = load(p + "attn.c_proj.bias", vector);
    l.w_up = load(p + "mlp.c_fc.weight", Shape{h, inner_all}, {0, inner.offset}, Shape{h, inner.size}, false);
    l.b_up = load(p + "mlp.c_fc.bias", Shape{inner_all}, {inner.offset}, Shape{inner.size}, false);
    l.w_down = load(p + "mlp.c_proj.weight", Shape{inner_all, h}, {inner.offset, 0}, Shape{inner.size, h}, false);
    l.b_down = load(p + "mlp.c_proj.bias", vector);
  } else {
    std::string p = cat("model.layers.", i, ".");
    int64_t hq = c.num_heads * d, hkv = c.num_kv_heads * d;
    l.norm1_w = load(p + "input_layernorm.weight", vector);
    l.norm2_w = load(p + "post_attention_layernorm.weight", vector);
    // Linear [out, in]: row blocks, transposed once to [in, out].
    l.wq = load(p + "self_attn.q_proj.weight", Shape{hq, h}, {first_head_ * d, 0}, Shape{q_cols, h}, true);
    l.wk = load(p + "self_attn.k_proj.weight", Shape{hkv, h}, {first_kv_head_ * d, 0}, Shape{kv_cols, h}, true);
    l.wv = load(p + "self_attn.v_proj.weight", Shape{hkv, h}, {first_kv_head_ * d, 0}, Shape{kv_cols, h}, true);
    l.wo = load(p + "self_attn.o_proj.weight", Shape{h, hq}, {0, first_head_ * d}, Shape{h, q_cols}, true);
    l.w_gate = load(p + "mlp.gate_proj.weight", Shape{inner_all, h}, {inner.offset, 0}, Shape{inner.size, h}, true);
    l.w_up = load(p + "mlp.up_proj.weight", Shape{inner_all, h}, {inner.offset, 0}, Shape{inner.size, h}, true);
    l.w_down = load(p + "mlp.down_proj.weight", Shape{h, inner_all}, {0, inner.offset}, Shape{h, inner.size}, true);
  }
}

DeviceTensor Transformer::norm(const DeviceTensor& x, const DeviceTensor& w, const DeviceTensor& b) const {
  if (config_.architecture == hf::Architecture::kGpt2) return kernels::layernorm(x, w, b, config_.norm_eps);
  return kernels::rmsnorm(x, w, config_.norm_eps);
}

DTensor Transformer::reduced(const DeviceTensor& partial, const Shape& shape, const std::string& name) const {
  DTensor p(partial, shape, mesh_, sharding::Layout::replicated(2).with_partial({kAxis}), name);
  return sharding::redistribute(p, sharding::Layout::replicated(2));
}

DTensor Transformer::embed(const DTensor& input_ids, const TokenBatch& batch) const {
  MESHRT_CHECK_ARG(part_.embeds, "embed on a part without the embedding (layers ", part_.first_layer, "..)");
  MESHRT_CHECK_SHAPE(input_ids.global_shape() == (Shape{batch.batch, batch.seq}), "input_ids must be [", batch.batch,
                     ", ", batch.seq, "], got ", input_ids.description());
  int64_t tokens = batch.batch * batch.seq, h = config_.hidden_size;
  if (config_.architecture == hf::Architecture::kGpt2) {
    MESHRT_CHECK_ARG(batch.seq <= config_.max_positions, "a sequence of ", batch.seq, " tokens is longer than the ",
                     config_.max_positions, " positions of this GPT-2 model (n_positions)");
  }
  DTensor e = sharding::embedding(embedding_, input_ids);  // vocabulary-parallel: one all_reduce
  DeviceTensor x = e.local().reshape({tokens, h});
  if (positions_.defined()) {
    x = kernels::add(x, kernels::index_select(positions_.local(), 0, batch.positions));
  }
  return DTensor(x, Shape{tokens, h}, mesh_, sharding::Layout::replicated(2), "hidden").after(e);
}

void Transformer::enable_cache(int64_t slots) {
  MESHRT_CHECK_ARG(slots >= 1, "a KV cache needs at least one slot, got ", slots);
  auto cache = std::make_shared<KvCache>();
  cache->slots = slots;
  for (size_t i = 0; i < layers_.size(); ++i) {
    for (auto* pool : {&cache->keys, &cache->values}) {
      pool->push_back(DeviceTensor::empty({slots, kv_heads_here_, config_.head_dim}, dtype_, mesh_.device()));
      fill_zero(pool->back());
    }
  }
  cache_ = std::move(cache);
}

int64_t Transformer::cache_bytes(const hf::HfConfig& config, int tp, int64_t layers, int64_t slots, DType compute) {
  int64_t kv_here = tp <= config.num_kv_heads ? config.num_kv_heads / tp : 1;
  return 2 * layers * slots * kv_here * config.head_dim * static_cast<int64_t>(size_of(compute));
}

DTensor Transformer::attention(size_t layer, const DTensor& x_in, const TokenBatch& batch) const {
  const Layer& l = layers_[layer];
  const hf::HfConfig& c = config_;
  int64_t tokens = batch.batch * batch.seq, d = c.head_dim;
  DeviceTensor x = x_in.local();
  DeviceTensor q = kernels::matmul(x, l.wq), k = kernels::matmul(x, l.wk), v = kernels::matmul(x, l.wv);
  if (l.bq.defined()) {
    q = kernels::bias_add(q, l.bq);
    k = kernels::bias_add(k, l.bk);
    v = kernels::bias_add(v, l.bv);
  }
  q = q.reshape({tokens, heads_here_, d});
  k = k.reshape({tokens, kv_heads_here_, d});
  v = v.reshape({tokens, kv_heads_here_, d});
  if (c.architecture == hf::Architecture::kLlama) {
    q = kernels::rope(q, batch.positions, c.rope_theta, c.rope_scaling);
    k = kernels::rope(k, batch.positions, c.rope_theta, c.rope_scaling);
  }
  double scale = c.scale_attention ? 0.0 : 1.0;  // 0: 1/sqrt(head_dim)
  DeviceTensor keys = k.reshape({batch.batch, batch.seq, kv_heads_here_, d});
  DeviceTensor values = v.reshape({batch.batch, batch.seq, kv_heads_here_, d});
  if (batch.write_slots.defined()) {
    // Keep the new keys and values, then attend every key of each row's sequence.
    MESHRT_CHECK(cache_ != nullptr, ErrorKind::kInternal, "a batch with cache slots on a transformer without a cache");
    const DeviceTensor& pool_k = cache_->keys[layer];
    const DeviceTensor& pool_v = cache_->values[layer];
    kernels::index_copy(pool_k, 0, batch.write_slots, k);
    kernels::index_copy(pool_v, 0, batch.write_slots, v);
    int64_t kv_len = batch.read_slots.dim(1), width = kv_heads_here_ * d;
    // A -1 slot reads zeros (masked anyway).
    keys = kernels::embedding(pool_k.reshape({cache_->slots, width}), batch.read_slots)
               .reshape({batch.batch, kv_len, kv_heads_here_, d});
    values = kernels::embedding(pool_v.reshape({cache_->slots, width}), batch.read_slots)
                 .reshape({batch.batch, kv_len, kv_heads_here_, d});
  }
  DeviceTensor o = kernels::attention(q.reshape({batch.batch, batch.seq, heads_here_, d}), keys, values, batch.key_mask,
                                      /*causal=*/true, scale);
  DeviceTensor partial = kernels::matmul(o.reshape({tokens, heads_here_ * d}), l.wo);
  DTensor y = reduced(partial, Shape{tokens, c.hidden_size}, "attention").after(x_in);
  if (l.bo.defined()) {
    y = DTensor(kernels::bias_add(y.local(), l.bo), y.global_shape(), mesh_, y.layout(), y.name()).after(y);
  }
  return y;
}

DTensor Transformer::mlp(const Layer& l, const DTensor& x_in) const {
  int64_t tokens = x_in.global_shape()[0];
  DeviceTensor x = x_in.local();
  DeviceTensor inner;
  if (config_.architecture == hf::Architecture::kGpt2) {
    DeviceTensor up = kernels::bias_add(kernels::matmul(x, l.w_up), l.b_up);
    inner = config_.activation == "gelu" ? kernels::gelu(up) : kernels::gelu_tanh(up);
  } else {
    inner = kernels::mul(kernels::silu(kernels::matmul(x, l.w_gate)), kernels::matmul(x, l.w_up));
  }
  DTensor y = reduced(kernels::matmul(inner, l.w_down), Shape{tokens, config_.hidden_size}, "mlp").after(x_in);
  if (l.b_down.defined()) {
    y = DTensor(kernels::bias_add(y.local(), l.b_down), y.global_shape(), mesh_, y.layout(), y.name()).after(y);
  }
  return y;
}

DTensor Transformer::layers(const DTensor& hidden, const TokenBatch& batch) const {
  MESHRT_CHECK_SHAPE(hidden.global_shape() == (Shape{batch.batch * batch.seq, config_.hidden_size}),
                     "hidden states must be [", batch.batch * batch.seq, ", ", config_.hidden_size, "], got ",
                     hidden.description());
  DTensor x = converted(hidden, dtype_);
  for (size_t i = 0; i < layers_.size(); ++i) {
    const Layer& l = layers_[i];
    DTensor a(norm(x.local(), l.norm1_w, l.norm1_b), x.global_shape(), mesh_, x.layout(), "attention input");
    x = sharding::add(x, attention(i, a.after(x), batch));
    DTensor m(norm(x.local(), l.norm2_w, l.norm2_b), x.global_shape(), mesh_, x.layout(), "mlp input");
    x = sharding::add(x, mlp(l, m.after(x)));
  }
  return x;
}

DTensor Transformer::head(const DTensor& hidden) const {
  MESHRT_CHECK_ARG(part_.has_head, "head on a part without the LM head (layers ..", part_.last_layer, ")");
  int64_t tokens = hidden.global_shape()[0];
  DeviceTensor h = norm(converted(hidden, dtype_).local(), final_w_, final_b_);
  // Vocabulary-parallel: this rank's rows of the [vocab, hidden] head.
  DeviceTensor local = kernels::matmul(h, lm_head_.local(), kernels::GemmOptions{.transpose_b = true});
  DTensor logits(converted(local, DType::kF32), Shape{tokens, config_.vocab_size}, mesh_,
                 sharding::Layout(Dims{{}, {kAxis}}), "logits");
  return sharding::redistribute(logits.after(hidden).after(lm_head_), sharding::Layout::replicated(2));
}

DTensor Transformer::forward(const DTensor& input, const TokenBatch& batch) const {
  DTensor x = part_.embeds ? embed(input, batch) : input;
  x = layers(x, batch);
  if (!part_.has_head) return x;
  if (batch.logit_rows.defined()) {  // only the tokens whose logits are wanted (generation: each row's last)
    int64_t rows = batch.logit_rows.numel();
    x = DTensor(kernels::index_select(x.local(), 0, batch.logit_rows), Shape{rows, x.global_shape()[1]}, mesh_,
                sharding::Layout::replicated(2), "last hidden")
            .after(x);
  }
  return head(x);
}

}  // namespace meshrt::models

// The transformer kernels of GPT-2 and Llama (Hugging Face semantics): rotary
// position embeddings and scaled dot-product attention, cpu and CUDA behind one
// call (see elementwise.h for the stream rules). Both return a new contiguous
// tensor; errors name the op and the tensors: Error(kShape) for shapes and
// dtypes, Error(kInvalidArgument) for values (theta, scale, scaling factors).
//
// dtypes: x, q, k, v: f32, f64, f16, bf16. f16 and bf16 compute in f32 and
// round once at the end; f64 computes in f64.
#pragma once

#include <cstdint>

#include "device/tensor.h"

namespace meshrt::kernels {

// transformers' rope_scaling of a Llama config: none (kNone), "linear" (every
// inv_freq divided by factor) or "llama3" (wavelengths longer than
// original_max_position_embeddings / low_freq_factor divided by factor, shorter
// than original_max_position_embeddings / high_freq_factor kept, a smooth blend
// between).
struct RopeScaling {
  enum class Kind { kNone, kLinear, kLlama3 } kind = Kind::kNone;
  double factor = 1, low_freq_factor = 1, high_freq_factor = 4;
  int64_t original_max_position_embeddings = 8192;
};

// Rotary position embedding, Hugging Face Llama's rotate_half convention (the
// pairs are (i, i + head_dim / 2), not interleaved): for i < head_dim / 2,
//   inv_freq[i] = 1 / theta^(2i / head_dim), then scaled,
//   angle = positions[t] * inv_freq[i],
//   out[t, h, i]     = x[t, h, i] cos(angle) - x[t, h, i + d/2] sin(angle),
//   out[t, h, i + d/2] = x[t, h, i + d/2] cos(angle) + x[t, h, i] sin(angle).
// x is [tokens, heads, head_dim] (head_dim even; a batch is [batch * seq,
// heads, head_dim] with its positions flattened alike), positions i64
// [tokens] (any values, a sequence's offset in a cache included).
//
// Precision: inv_freq, the angle, its cos and sin are computed in double on
// both devices (the rotation then in f32, f64 for f64). transformers computes
// the angle in float32, so at position p it is off by up to about p * 6e-8
// radians (1e-3 at p = 16384): meshrt's result is the exact rotation, which
// differs from transformers' by that much (less than bf16's rounding, 2^-9
// relative, for p < 32768).
// transformers also rounds cos and sin to the model's dtype before the
// multiply; meshrt rounds once, at the end.
DeviceTensor rope(const DeviceTensor& x, const DeviceTensor& positions, double theta,
                  const RopeScaling& scaling = {}, const Stream* stream = nullptr);

// Scaled dot-product attention with grouped-query heads, a causal mask and a
// key mask:
//   q [batch, q_seq, heads, head_dim], k and v [batch, kv_seq, kv_heads,
//   head_dim], heads a multiple of kv_heads: query head h reads kv head
//   h / (heads / kv_heads) (transformers' repeat_kv);
//   key_mask undefined (every key) or [batch, kv_seq] of i64, i32, bool or u8,
//   nonzero = attend (Hugging Face's attention_mask; left or right padding);
//   causal: query row i sees keys j <= i + kv_seq - q_seq (q_seq == kv_seq,
//   the usual case: j <= i; q_seq < kv_seq: the queries are the last q_seq
//   positions, as with a KV cache; causal needs q_seq <= kv_seq);
//   out [batch, q_seq, heads, head_dim] = softmax(q k^T * scale + masks) v,
//   scale = 1 / sqrt(head_dim) when 0 is given (else finite and > 0).
// The softmax subtracts the row's maximum and accumulates in f32 (f64 for f64).
//
// A query row whose every key is masked (with left padding: the padding rows
// of a causal mask) gives zeros. transformers gives finite values there that
// nothing reads: its eager path adds the dtype's minimum, so the softmax
// spreads over the masked keys, and its sdpa path unmasks such rows
// (_unmask_unattended) to keep NaN out. Zeros are as NaN-free, and do not
// depend on the padding's keys.
//
// Limits: on CUDA head_dim <= kMaxCudaAttentionHeadDim (one thread per output
// element of a row: a block per (batch, query row, head)); Error(kShape)
// otherwise. The cpu has no limit.
inline constexpr int64_t kMaxCudaAttentionHeadDim = 256;
DeviceTensor attention(const DeviceTensor& q, const DeviceTensor& k, const DeviceTensor& v,
                       const DeviceTensor& key_mask, bool causal = true, double scale = 0,
                       const Stream* stream = nullptr);

}  // namespace meshrt::kernels

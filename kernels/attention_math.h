// Internal to the attention kernels: what the cpu loops and the CUDA kernels
// of kernels/attention.h compute alike, written once for host and device
// (C++17: the CUDA sources include it).
#pragma once

#include <cmath>
#include <cstdint>

#include "device/dtype.h"
#include "device/half.h"

namespace meshrt::kernels {

// RoPE: x [tokens, heads, head_dim] rotated by the angles positions[t] *
// inv_freq(i), the rotate_half pairing (i, i + head_dim / 2).
struct RopeArgs {
  DType dtype;
  int64_t tokens, heads, head_dim;
  double theta;
  // rope_scaling: 0 none, 1 linear, 2 llama3 (RopeScaling::Kind's order).
  int scaling_kind;
  double factor, low_freq_factor, high_freq_factor;
  double original_max_position_embeddings;
};

// Scaled dot-product attention: q [batch, q_seq, heads, head_dim], k and v
// [batch, kv_seq, kv_heads, head_dim], out like q. Query row i sees keys
// j < kv_seq with key_mask[b, j] != 0 (no mask: all) and, when causal,
// j <= i + kv_seq - q_seq (the last query row is the last position).
struct AttentionArgs {
  DType dtype;
  int64_t batch, q_seq, kv_seq, heads, kv_heads, head_dim;
  bool causal;
  double scale;
  DType mask_dtype;  // of key_mask when there is one: i64, i32, bool or u8
};

// inv_freq of pair i, as transformers' _compute_default_rope_parameters and
// _compute_llama3_parameters give it, in double.
MESHRT_HOST_DEVICE inline double rope_inv_freq(const RopeArgs& a, int64_t i) {
  double inv = 1.0 / pow(a.theta, static_cast<double>(2 * i) / static_cast<double>(a.head_dim));
  if (a.scaling_kind == 1) return inv / a.factor;
  if (a.scaling_kind == 2) {
    const double pi = 3.14159265358979323846;
    double wavelen = 2 * pi / inv;
    double low_wavelen = a.original_max_position_embeddings / a.low_freq_factor;
    double high_wavelen = a.original_max_position_embeddings / a.high_freq_factor;
    if (wavelen > low_wavelen) return inv / a.factor;
    if (wavelen < high_wavelen) return inv;
    double smooth = (a.original_max_position_embeddings / wavelen - a.low_freq_factor) /
                    (a.high_freq_factor - a.low_freq_factor);
    return (1 - smooth) * inv / a.factor + smooth * inv;
  }
  return inv;
}

// Whether key_mask (mask_dtype) lets key `at` (b * kv_seq + j) be attended.
MESHRT_HOST_DEVICE inline bool key_allowed(const void* mask, DType mask_dtype, int64_t at) {
  if (!mask) return true;
  switch (mask_dtype) {
    case DType::kI64: return static_cast<const int64_t*>(mask)[at] != 0;
    case DType::kI32: return static_cast<const int32_t*>(mask)[at] != 0;
    default: return static_cast<const uint8_t*>(mask)[at] != 0;  // bool, u8
  }
}

// The keys [0, end) query row i may see before the key mask.
MESHRT_HOST_DEVICE inline int64_t attention_key_end(const AttentionArgs& a, int64_t i) {
  if (!a.causal) return a.kv_seq;
  int64_t end = i + a.kv_seq - a.q_seq + 1;
  return end < a.kv_seq ? end : a.kv_seq;
}

}  // namespace meshrt::kernels

#include "kernels/attention.h"

#include <cmath>

#include "kernels/backend.h"
#include "kernels/dispatch.h"
#include "kernels/dtype_sets.h"

namespace meshrt::kernels {

namespace {
constexpr DType kMaskTypes[] = {DType::kI64, DType::kI32, DType::kBool, DType::kU8};
constexpr DType kPositionTypes[] = {DType::kI64};

const char* scaling_name(RopeScaling::Kind kind) {
  switch (kind) {
    case RopeScaling::Kind::kNone: return "none";
    case RopeScaling::Kind::kLinear: return "linear";
    case RopeScaling::Kind::kLlama3: return "llama3";
  }
  return "?";
}
}  // namespace

DeviceTensor rope(const DeviceTensor& x, const DeviceTensor& positions, double theta, const RopeScaling& scaling,
                  const Stream* stream) {
  detail::check_same_device("rope", {&x, &positions});
  detail::check_dtype("rope", x, FloatTypes::kList);
  detail::check_dtype("rope (positions)", positions, kPositionTypes);
  MESHRT_CHECK_SHAPE(x.ndim() == 3, "rope: x must be [tokens, heads, head_dim], got ", x.description());
  MESHRT_CHECK_SHAPE(x.dim(2) % 2 == 0, "rope: head_dim must be even (pairs i, i + head_dim / 2), x is ",
                     x.description());
  MESHRT_CHECK_SHAPE(positions.ndim() == 1 && positions.dim(0) == x.dim(0), "rope: positions must be i64[",
                     x.dim(0), "] (one per token of x ", x.description(), "), got ", positions.description());
  MESHRT_CHECK_ARG(std::isfinite(theta) && theta > 0, "rope: theta must be finite and > 0, got ", theta);
  const char* kind = scaling_name(scaling.kind);
  if (scaling.kind != RopeScaling::Kind::kNone) {
    MESHRT_CHECK_ARG(std::isfinite(scaling.factor) && scaling.factor > 0, "rope: ", kind,
                     " scaling needs a finite factor > 0, got ", scaling.factor);
  }
  if (scaling.kind == RopeScaling::Kind::kLlama3) {
    MESHRT_CHECK_ARG(scaling.low_freq_factor > 0 && scaling.high_freq_factor > scaling.low_freq_factor &&
                         std::isfinite(scaling.high_freq_factor),
                     "rope: llama3 scaling needs 0 < low_freq_factor < high_freq_factor, got ",
                     scaling.low_freq_factor, " and ", scaling.high_freq_factor);
    MESHRT_CHECK_ARG(scaling.original_max_position_embeddings > 0,
                     "rope: llama3 scaling needs original_max_position_embeddings > 0, got ",
                     scaling.original_max_position_embeddings);
  }
  DeviceTensor out = DeviceTensor::empty(x.shape(), x.dtype(), x.device());
  if (out.numel() == 0) return out;
  RopeArgs args{x.dtype(),
                x.dim(0),
                x.dim(1),
                x.dim(2),
                theta,
                static_cast<int>(scaling.kind),
                scaling.factor,
                scaling.low_freq_factor,
                scaling.high_freq_factor,
                static_cast<double>(scaling.original_max_position_embeddings)};
  detail::Launch launch = detail::launch_for("rope", x.device(), stream, {&x, &positions, &out});
  MESHRT_DISPATCH(launch, rope, args, x.raw_data(), positions.raw_data(), out.raw_data());
  return out;
}

DeviceTensor attention(const DeviceTensor& q, const DeviceTensor& k, const DeviceTensor& v,
                       const DeviceTensor& key_mask, bool causal, double scale, const Stream* stream) {
  detail::check_same_device("attention", {&q, &k, &v});
  detail::check_dtype("attention", q, FloatTypes::kList);
  MESHRT_CHECK_SHAPE(q.ndim() == 4, "attention: q must be [batch, seq, heads, head_dim], got ", q.description());
  MESHRT_CHECK_SHAPE(k.ndim() == 4 && k.dtype() == q.dtype(),
                     "attention: k must be [batch, seq, kv_heads, head_dim] of q's dtype (q is ", q.description(),
                     "), got ", k.description());
  MESHRT_CHECK_SHAPE(v.shape() == k.shape() && v.dtype() == k.dtype(), "attention: v must match k (",
                     k.description(), "), got ", v.description());
  const int64_t batch = q.dim(0), q_seq = q.dim(1), heads = q.dim(2), head_dim = q.dim(3);
  const int64_t kv_seq = k.dim(1), kv_heads = k.dim(2);
  MESHRT_CHECK_SHAPE(k.dim(0) == batch && k.dim(3) == head_dim,
                     "attention: k must have q's batch and head_dim (q is ", q.description(), "), got ",
                     k.description());
  MESHRT_CHECK_SHAPE(kv_heads > 0 && heads % kv_heads == 0, "attention: q's heads (", heads,
                     ") must be a multiple of k's kv_heads (", kv_heads, "): q is ", q.description(), ", k is ",
                     k.description());
  MESHRT_CHECK_SHAPE(!causal || q_seq <= kv_seq, "attention: a causal mask needs q's seq (", q_seq,
                     ") <= k's seq (", kv_seq, "): q is ", q.description(), ", k is ", k.description());
  if (key_mask.defined()) {
    detail::check_same_device("attention", {&q, &key_mask});
    detail::check_dtype("attention (key_mask)", key_mask, kMaskTypes);
    MESHRT_CHECK_SHAPE(key_mask.ndim() == 2 && key_mask.dim(0) == batch && key_mask.dim(1) == kv_seq,
                       "attention: key_mask must be [batch, seq] = [", batch, ", ", kv_seq, "] for k ",
                       k.description(), ", got ", key_mask.description());
  }
  MESHRT_CHECK_ARG(std::isfinite(scale) && scale >= 0, "attention: scale must be finite and > 0 (0: 1 / sqrt(head_dim)), got ",
                   scale);
  MESHRT_CHECK_SHAPE(!q.device().is_cuda() || head_dim <= kMaxCudaAttentionHeadDim, "attention: head_dim ", head_dim,
                     " of q ", q.description(), " on ", q.device(), " is more than the GPU kernel takes (",
                     kMaxCudaAttentionHeadDim, ": one thread per element of a head)");
  DeviceTensor out = DeviceTensor::empty(q.shape(), q.dtype(), q.device());
  if (out.numel() == 0) return out;
  AttentionArgs args{q.dtype(), batch, q_seq, kv_seq, heads, kv_heads, head_dim, causal,
                     scale != 0 ? scale : 1.0 / std::sqrt(static_cast<double>(head_dim)),
                     key_mask.defined() ? key_mask.dtype() : DType::kU8};
  const void* mask = key_mask.defined() ? key_mask.raw_data() : nullptr;
  detail::Launch launch = key_mask.defined()
                              ? detail::launch_for("attention", q.device(), stream, {&q, &k, &v, &key_mask, &out})
                              : detail::launch_for("attention", q.device(), stream, {&q, &k, &v, &out});
  MESHRT_DISPATCH(launch, attention, args, q.raw_data(), k.raw_data(), v.raw_data(), mask, out.raw_data());
  return out;
}

}  // namespace meshrt::kernels

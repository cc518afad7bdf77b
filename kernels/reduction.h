// Reductions and row-wise normalisations, cpu and CUDA behind one call (see
// elementwise.h for the stream and aliasing rules).
//
// dtypes: sum: f32, f64, f16, bf16, i32, i64 (floats accumulate in f64, integers in i64).
//         mean: f32, f64, f16, bf16 (accumulates in f64).
//         amax, amin, argmax, topk: f32, f64, f16, bf16, i32, i64.
//         softmax, layernorm, rmsnorm: f32, f64, f16, bf16 (compute in f32, f64 in f64).
//
// NaN: amax and amin give NaN where a NaN is reduced (torch.amax); argmax and
// topk count a NaN as larger than every number (torch's rule). amax, amin and
// argmax over a dimension of extent 0 are Error(kShape) unless the result is
// empty; mean over one gives NaN (0 / 0).
#pragma once

#include "device/tensor.h"

namespace meshrt::kernels {

// Sum over dimension dim (negative: from the end): out has x's shape without it.
void sum(const DeviceTensor& x, int dim, const DeviceTensor& out, const Stream* stream = nullptr);
DeviceTensor sum(const DeviceTensor& x, int dim, const Stream* stream = nullptr);

// Along one dimension (negative: from the end); the result drops it, as sum's.
DeviceTensor mean(const DeviceTensor& x, int dim, const Stream* stream = nullptr);
DeviceTensor amax(const DeviceTensor& x, int dim, const Stream* stream = nullptr);
DeviceTensor amin(const DeviceTensor& x, int dim, const Stream* stream = nullptr);
// i64: the first index of the maximum (a NaN counts as the maximum).
DeviceTensor argmax(const DeviceTensor& x, int dim, const Stream* stream = nullptr);

// The k largest along the last dimension, sorted descending, ties by lower
// index first; values keep x's dtype, indices are i64; both x's shape with the
// last extent k. 0 <= k <= x.shape[-1] (Error(kInvalidArgument) otherwise); on
// a GPU k <= kMaxCudaTopK (one pass over the row per value taken).
struct TopK {
  DeviceTensor values, indices;
};
inline constexpr int64_t kMaxCudaTopK = 1024;
TopK topk(const DeviceTensor& x, int64_t k, const Stream* stream = nullptr);

// Softmax over the last dimension, max-subtracted for stability.
void softmax(const DeviceTensor& x, const DeviceTensor& out, const Stream* stream = nullptr);
DeviceTensor softmax(const DeviceTensor& x, const Stream* stream = nullptr);

// Layer normalisation over the last dimension (n): (x - mean) / sqrt(var + eps) * gamma + beta,
// var the biased variance; gamma and beta have shape [n].
void layernorm(const DeviceTensor& x, const DeviceTensor& gamma, const DeviceTensor& beta,
               double eps, const DeviceTensor& out, const Stream* stream = nullptr);
DeviceTensor layernorm(const DeviceTensor& x, const DeviceTensor& gamma, const DeviceTensor& beta,
                       double eps = 1e-5, const Stream* stream = nullptr);

// RMS normalisation over the last dimension: x / sqrt(mean(x^2) + eps) * gamma.
void rmsnorm(const DeviceTensor& x, const DeviceTensor& gamma, double eps, const DeviceTensor& out,
             const Stream* stream = nullptr);
DeviceTensor rmsnorm(const DeviceTensor& x, const DeviceTensor& gamma, double eps = 1e-6,
                     const Stream* stream = nullptr);

}  // namespace meshrt::kernels

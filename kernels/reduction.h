// Reductions and row-wise normalisations, cpu and CUDA behind one call (see
// elementwise.h for the stream and aliasing rules).
//
// dtypes: sum: f32, f64, f16, bf16, i32, i64 (floats accumulate in f64, integers in i64).
//         softmax, layernorm, rmsnorm: f32, f64, f16, bf16 (compute in f32, f64 in f64).
#pragma once

#include "device/tensor.h"

namespace meshrt::kernels {

// Sum over dimension dim (negative: from the end): out has x's shape without it.
void sum(const DeviceTensor& x, int dim, const DeviceTensor& out, const Stream* stream = nullptr);
DeviceTensor sum(const DeviceTensor& x, int dim, const Stream* stream = nullptr);

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

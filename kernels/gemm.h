// GEMM: c = alpha * op(a) @ op(b) + beta * c, row-major, optionally batched.
//
// CUDA devices: cuBLAS (cublasGemmStridedBatchedEx) for f32, f64, f16 and bf16;
// f16/bf16 accumulate in f32; MathMode::kTf32 lets f32 use TF32 tensor cores.
// cpu device: OpenBLAS (cblas_sgemm / cblas_dgemm) for f32 and f64; oneDNN's
// matmul for bf16 (bf16 products, f32 accumulation, one rounding of the result)
// and f16 (the same; with Debian's oneDNN 2.6, which has no f16 kernel, through
// f32 copies of the operands). kTf32 is exact f32 on the cpu.
#pragma once

#include "device/tensor.h"

namespace meshrt::kernels {

enum class MathMode { kDefault, kTf32 };

struct GemmOptions {
  bool transpose_a = false;  // a is stored [k, m] (or [batch, k, m])
  bool transpose_b = false;  // b is stored [n, k] (or [batch, n, k])
  double alpha = 1.0;
  double beta = 0.0;
  MathMode math = MathMode::kDefault;
};

// a: [m, k] or [batch, m, k] (transposed storage when transpose_a); likewise b.
// A 2-D operand next to a 3-D one is used for every batch. c: [m, n], or
// [batch, m, n] when either operand is batched. All three share dtype and device.
// Queued on stream (the device's default stream when null). k = 0 gives
// c = beta * c (beta = 0: zeros, c not read).
// Throws Error(kShape) on mismatched shapes or dtypes, naming both.
void gemm(const DeviceTensor& a, const DeviceTensor& b, const DeviceTensor& c,
          const GemmOptions& options = {}, const Stream* stream = nullptr);

// Allocates c and computes op(a) @ op(b) (beta is ignored).
DeviceTensor matmul(const DeviceTensor& a, const DeviceTensor& b, const GemmOptions& options = {},
                    const Stream* stream = nullptr);

}  // namespace meshrt::kernels

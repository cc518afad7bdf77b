// Operation enums shared by the public kernel API and the cpu/CUDA backends
// (kept free of other includes so .cu files can use it).
#pragma once

namespace meshrt::kernels {

enum class UnaryOp {
  kNeg,    // -x
  kRelu,   // max(x, 0)
  kGelu,   // x * Phi(x), the exact (erf) form
  kSilu,   // x * sigmoid(x)
  kScale,  // alpha * x
};

enum class BinaryOp { kAdd, kMul };

}  // namespace meshrt::kernels

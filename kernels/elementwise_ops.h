// The elementwise op table: one row per op, one element function per op
// written once for host and device (C++17: the CUDA sources include it).
//
// A row names the op, its element function (a struct in ops:: below), the
// dtypes it takes and, per operand, the pending partial reductions it commutes
// with: f(reduce_i x_i) == reduce_i f(x_i). neg commutes with sum (it is
// linear), relu with max and min (it is monotone), gelu, gelu_tanh and silu
// with neither.
// A sharded op keeps an operand's partial axes whose reduction the op commutes
// with and reduces the others first (sharding/ops.h).
//
// Everything else is generated from these rows: the UnaryOp and BinaryOp enums,
// the names, the dtype checks, the cpu loop and the CUDA kernel (both call the
// element function), the allocating forms kernels::neg(x) ... and
// sharding::neg(x) ..., and the weightless layer types of model configs
// (models/layers.h). Adding an op is a row and an element function here, and a
// reference in tests/op_references.h.
#pragma once

#include <cmath>
#include <type_traits>

#include "device/convert.h"
#include "kernels/cpu_math.h"
#include "kernels/dtype_sets.h"

namespace meshrt::kernels {

// Pending reductions an operand may keep through an op (bits).
enum PartialRule : unsigned {
  kNoPartial = 0,
  kThroughSum = 1u << 0,
  kThroughMax = 1u << 1,
  kThroughMin = 1u << 2,
  kThroughAvg = 1u << 3,  // the mean over ranks: linear ops
};

// Math for element functions, callable on the host and on a GPU. float on the
// host uses kernels/cpu_math.h (no calls, no branches: the cpu loops
// vectorize), on a GPU CUDA's functions; double uses libm / CUDA's.
namespace math {
MESHRT_HOST_DEVICE inline float erf(float x) { return ::erff(x); }
MESHRT_HOST_DEVICE inline double erf(double x) { return ::erf(x); }
MESHRT_HOST_DEVICE inline float erfc(float x) {
#if defined(__CUDA_ARCH__)
  return ::erfcf(x);
#else
  return cpu_math::erfc(x);
#endif
}
MESHRT_HOST_DEVICE inline double erfc(double x) { return ::erfc(x); }
MESHRT_HOST_DEVICE inline float exp(float x) {
#if defined(__CUDA_ARCH__)
  return ::expf(x);
#else
  return cpu_math::exp(x);
#endif
}
MESHRT_HOST_DEVICE inline double exp(double x) { return ::exp(x); }
MESHRT_HOST_DEVICE inline float tanh(float x) { return ::tanhf(x); }
MESHRT_HOST_DEVICE inline double tanh(double x) { return ::tanh(x); }
}  // namespace math

// Element functions. A is the arithmetic type (acc_t of the stored type: float
// for f32, f16 and bf16, double for f64, the integer type for i32 and i64).
namespace ops {
struct Neg {
  template <class A>
  MESHRT_HOST_DEVICE A operator()(A x) const { return -x; }
};
struct Relu {
  template <class A>
  MESHRT_HOST_DEVICE A operator()(A x) const { return x > A(0) ? x : A(0); }
};
struct Gelu {  // x * Phi(x), the exact (erf) form: Phi(x) = (1 + erf(x / sqrt 2)) / 2 = erfc(-x / sqrt 2) / 2
  template <class A>
  MESHRT_HOST_DEVICE A operator()(A x) const { return A(0.5) * x * math::erfc(x * A(-0.70710678118654752440)); }
};
// GPT-2's gelu_new, PyTorch's gelu(approximate='tanh'):
// 0.5 x (1 + tanh(u)), u = sqrt(2 / pi) (x + 0.044715 x^3), computed as
// x * sigmoid(2u) = x / (1 + exp(-2u)) (the same function: 1 + tanh(u) =
// 2 sigmoid(2u)). exp keeps the float loop vectorized (math::tanh of float is
// a call), and the relative error small where the result is tiny (x < -5),
// where 1 + tanh(u) would cancel. gelu_tanh(-inf) is NaN (-inf * 0), as the
// formula gives in PyTorch.
struct GeluTanh {
  template <class A>
  MESHRT_HOST_DEVICE A operator()(A x) const {
    // -2u = -2 sqrt(2 / pi) x (1 + 0.044715 x^2)
    return x / (A(1) + math::exp(A(-1.5957691216057307117) * x * (A(1) + A(0.044715) * x * x)));
  }
};
struct Silu {  // x * sigmoid(x)
  template <class A>
  MESHRT_HOST_DEVICE A operator()(A x) const { return x / (A(1) + math::exp(-x)); }
};
struct Tanh {
  template <class A>
  MESHRT_HOST_DEVICE A operator()(A x) const { return math::tanh(x); }
};
struct Scale {  // alpha * x
  template <class A>
  MESHRT_HOST_DEVICE A operator()(A x, A alpha) const { return alpha * x; }
};
struct Add {
  template <class A>
  MESHRT_HOST_DEVICE A operator()(A a, A b) const { return a + b; }
};
struct Mul {
  template <class A>
  MESHRT_HOST_DEVICE A operator()(A a, A b) const { return a * b; }
};
}  // namespace ops

// y = f(x).                X(name, element function, dtypes, partial rule)
#define MESHRT_UNARY_OPS(X)                                \
  X(neg, Neg, NumericTypes, kThroughSum | kThroughAvg)     \
  X(relu, Relu, NumericTypes, kThroughMax | kThroughMin)   \
  X(gelu, Gelu, FloatTypes, kNoPartial)                    \
  X(gelu_tanh, GeluTanh, FloatTypes, kNoPartial)           \
  X(silu, Silu, FloatTypes, kNoPartial)                    \
  X(tanh, Tanh, FloatTypes, kThroughMax | kThroughMin)

// y = f(x, alpha).         X(name, element function, dtypes, partial rule)
#define MESHRT_SCALAR_UNARY_OPS(X) \
  X(scale, Scale, FloatTypes, kThroughSum | kThroughAvg)

// y = f(a, b), same shapes. X(name, element function, dtypes, rule for a, rule for b)
// (add commutes with a sum over both operands: a replicated b then counts once,
// at coordinate 0 of the axis; and with an avg: a replicated b counts on every
// rank; see sharding/ops.h.)
#define MESHRT_BINARY_OPS(X)                          \
  X(add, Add, NumericTypes, kThroughSum | kThroughAvg, kThroughSum | kThroughAvg) \
  X(mul, Mul, NumericTypes, kNoPartial, kNoPartial)

#define MESHRT_ELEMENTWISE_ENUMERATOR(name, Element, ...) k##Element,
enum class UnaryOp { MESHRT_UNARY_OPS(MESHRT_ELEMENTWISE_ENUMERATOR) MESHRT_SCALAR_UNARY_OPS(MESHRT_ELEMENTWISE_ENUMERATOR) };
enum class BinaryOp { MESHRT_BINARY_OPS(MESHRT_ELEMENTWISE_ENUMERATOR) };
#undef MESHRT_ELEMENTWISE_ENUMERATOR

// f(x) or f(x, alpha), whichever the element function takes.
template <class F, class A>
MESHRT_HOST_DEVICE inline A apply_unary(const F& f, A x, A alpha) {
  if constexpr (std::is_invocable_v<F, A>) {
    return f(x);
  } else {
    return f(x, alpha);
  }
}

// Calls fn(Element{}, T{}) with op's element function and T the storage type of
// dtype; returns false (calling nothing) when op does not take dtype. The cpu
// loops and the CUDA launches are such fns.
template <class Fn>
bool dispatch_elementwise(UnaryOp op, DType dtype, Fn&& fn) {
  switch (op) {
#define MESHRT_ELEMENTWISE_CASE(name, Element, Types, ...) \
  case UnaryOp::k##Element:                                \
    return visit_dtypes(Types{}, dtype, [&](auto t) { fn(ops::Element{}, t); });
    MESHRT_UNARY_OPS(MESHRT_ELEMENTWISE_CASE)
    MESHRT_SCALAR_UNARY_OPS(MESHRT_ELEMENTWISE_CASE)
#undef MESHRT_ELEMENTWISE_CASE
  }
  return false;
}

template <class Fn>
bool dispatch_elementwise(BinaryOp op, DType dtype, Fn&& fn) {
  switch (op) {
#define MESHRT_ELEMENTWISE_CASE(name, Element, Types, ...) \
  case BinaryOp::k##Element:                               \
    return visit_dtypes(Types{}, dtype, [&](auto t) { fn(ops::Element{}, t); });
    MESHRT_BINARY_OPS(MESHRT_ELEMENTWISE_CASE)
#undef MESHRT_ELEMENTWISE_CASE
  }
  return false;
}

}  // namespace meshrt::kernels

// The elementwise op table: one row per op, one element function per op
// written once for host and device (C++17: the CUDA sources include it).
//
// A row names the op, its element function (a struct in ops:: below), the
// dtypes it takes and, per operand, the pending partial reductions it commutes
// with: f(reduce_i x_i) == reduce_i f(x_i). neg commutes with sum (it is
// linear), relu, sigmoid and exp with max and min (they are monotone), gelu,
// gelu_tanh and silu with neither.
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
// log, log1p and sqrt of float are libm's (calls: their loops do not vectorize,
// which the training steps that use them can afford).
MESHRT_HOST_DEVICE inline float log(float x) { return ::logf(x); }
MESHRT_HOST_DEVICE inline double log(double x) { return ::log(x); }
MESHRT_HOST_DEVICE inline float log1p(float x) { return ::log1pf(x); }
MESHRT_HOST_DEVICE inline double log1p(double x) { return ::log1p(x); }
MESHRT_HOST_DEVICE inline float sqrt(float x) { return ::sqrtf(x); }
MESHRT_HOST_DEVICE inline double sqrt(double x) { return ::sqrt(x); }
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
// 1 / (1 + e^-x), with exp of -|x| only (never of a large positive number):
// for x < 0 it is e^x / (1 + e^x). Exact 0 and 1 at the far ends; NaN gives NaN.
struct Sigmoid {
  template <class A>
  MESHRT_HOST_DEVICE A operator()(A x) const {
    A e = math::exp(x > A(0) ? -x : x);
    return x > A(0) ? A(1) / (A(1) + e) : e / (A(1) + e);
  }
};
struct Exp {
  template <class A>
  MESHRT_HOST_DEVICE A operator()(A x) const { return math::exp(x); }
};
struct Log {  // NaN below 0, -inf at 0
  template <class A>
  MESHRT_HOST_DEVICE A operator()(A x) const { return math::log(x); }
};
struct Log1p {  // log(1 + x), accurate for small |x| (softplus, binary cross-entropy)
  template <class A>
  MESHRT_HOST_DEVICE A operator()(A x) const { return math::log1p(x); }
};
struct Sqrt {  // NaN below 0
  template <class A>
  MESHRT_HOST_DEVICE A operator()(A x) const { return math::sqrt(x); }
};
struct Abs {
  template <class A>
  MESHRT_HOST_DEVICE A operator()(A x) const { return x < A(0) ? -x : x; }
};
struct Scale {  // alpha * x
  template <class A>
  MESHRT_HOST_DEVICE A operator()(A x, A alpha) const { return alpha * x; }
};
struct AddScalar {  // x + alpha
  template <class A>
  MESHRT_HOST_DEVICE A operator()(A x, A alpha) const { return x + alpha; }
};
// max(x, alpha) and min(x, alpha); NaN stays NaN (a clamp does not hide it).
struct ClampMin {
  template <class A>
  MESHRT_HOST_DEVICE A operator()(A x, A alpha) const { return x < alpha ? alpha : x; }
};
struct ClampMax {
  template <class A>
  MESHRT_HOST_DEVICE A operator()(A x, A alpha) const { return x > alpha ? alpha : x; }
};
struct Add {
  template <class A>
  MESHRT_HOST_DEVICE A operator()(A a, A b) const { return a + b; }
};
struct Sub {
  template <class A>
  MESHRT_HOST_DEVICE A operator()(A a, A b) const { return a - b; }
};
struct Mul {
  template <class A>
  MESHRT_HOST_DEVICE A operator()(A a, A b) const { return a * b; }
};
struct Div {  // floats only: IEEE division (x / 0 is +-inf or NaN)
  template <class A>
  MESHRT_HOST_DEVICE A operator()(A a, A b) const { return a / b; }
};
// The backward passes of activations, from the gradient g and the forward
// output y (both are functions of y): relu'(x) = [y > 0] (0 at 0, as
// PyTorch), sigmoid'(x) = y (1 - y).
struct ReluGrad {
  template <class A>
  MESHRT_HOST_DEVICE A operator()(A g, A y) const { return y > A(0) ? g : A(0); }
};
struct SigmoidGrad {
  template <class A>
  MESHRT_HOST_DEVICE A operator()(A g, A y) const { return g * y * (A(1) - y); }
};
}  // namespace ops

// y = f(x).                X(name, element function, dtypes, partial rule)
#define MESHRT_UNARY_OPS(X)                                \
  X(neg, Neg, NumericTypes, kThroughSum | kThroughAvg)     \
  X(relu, Relu, NumericTypes, kThroughMax | kThroughMin)   \
  X(gelu, Gelu, FloatTypes, kNoPartial)                    \
  X(gelu_tanh, GeluTanh, FloatTypes, kNoPartial)           \
  X(silu, Silu, FloatTypes, kNoPartial)                    \
  X(tanh, Tanh, FloatTypes, kThroughMax | kThroughMin)     \
  X(sigmoid, Sigmoid, FloatTypes, kThroughMax | kThroughMin) \
  X(exp, Exp, FloatTypes, kThroughMax | kThroughMin)       \
  X(log, Log, FloatTypes, kNoPartial)                      \
  X(log1p, Log1p, FloatTypes, kNoPartial)                  \
  X(sqrt, Sqrt, FloatTypes, kNoPartial)                    \
  X(abs, Abs, FloatTypes, kNoPartial)
// (log, log1p and sqrt are monotone but keep no pending max or min: the ranks
// that do not hold an element's maximum may hold any value, negative ones
// included, outside their domain.)

// y = f(x, alpha).         X(name, element function, dtypes, partial rule)
// (add_scalar commutes with a mean over ranks, not with a sum: each rank would
// add alpha.)
#define MESHRT_SCALAR_UNARY_OPS(X)                                     \
  X(scale, Scale, FloatTypes, kThroughSum | kThroughAvg)               \
  X(add_scalar, AddScalar, FloatTypes, kThroughMax | kThroughMin | kThroughAvg) \
  X(clamp_min, ClampMin, FloatTypes, kThroughMax | kThroughMin)        \
  X(clamp_max, ClampMax, FloatTypes, kThroughMax | kThroughMin)

// y = f(a, b), same shapes. X(name, element function, dtypes, rule for a, rule for b)
// (add commutes with a sum over both operands: a replicated b then counts once,
// at coordinate 0 of the axis; and with an avg: a replicated b counts on every
// rank; see sharding/ops.h.)
// sub is linear in both operands, as add. mul, div and the activation
// gradients are linear in one operand only given the other, which a
// per-operand rule cannot say: they reduce both first.
#define MESHRT_BINARY_OPS(X)                          \
  X(add, Add, NumericTypes, kThroughSum | kThroughAvg, kThroughSum | kThroughAvg) \
  X(sub, Sub, NumericTypes, kThroughSum | kThroughAvg, kThroughSum | kThroughAvg) \
  X(mul, Mul, NumericTypes, kNoPartial, kNoPartial)   \
  X(div, Div, FloatTypes, kNoPartial, kNoPartial)     \
  X(relu_grad, ReluGrad, FloatTypes, kNoPartial, kNoPartial) \
  X(sigmoid_grad, SigmoidGrad, FloatTypes, kNoPartial, kNoPartial)

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

// Elementwise kernels. The ops and their dtypes are the rows of the table in
// kernels/elementwise_ops.h; each has one element function, run by a cpu loop
// and by a CUDA kernel behind the calls below (tests/kernels_test.cc checks both
// against a float64 reference). Inputs and outputs share device and shape; out
// may alias an input (in-place). Calls queue on stream (the device's default
// stream when null) and return at once on CUDA; on the cpu they are done on
// return. f16 and bf16 compute in f32; f64 in f64.
//
// dtypes: neg, add, sub, mul, relu: f32, f64, f16, bf16, i32, i64.
//         the others (scale, add_scalar, clamp_min, clamp_max, gelu, gelu_tanh,
//         silu, tanh, sigmoid, exp, log, log1p, sqrt, abs, div, relu_grad,
//         sigmoid_grad, bias_add): f32, f64, f16, bf16.
//         cast: any dtype to any dtype.
#pragma once

#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "device/tensor.h"
#include "kernels/elementwise_ops.h"

namespace meshrt::kernels {

// What the table says of an op.
struct ElementwiseOpInfo {
  const char* name;
  int operands;                // 1 or 2
  bool takes_alpha;            // y = f(x, alpha)
  std::span<const DType> dtypes;
  unsigned partial_rule[2];    // PartialRule bits per operand
};
const ElementwiseOpInfo& info(UnaryOp op);
const ElementwiseOpInfo& info(BinaryOp op);
const char* to_string(UnaryOp op);
const char* to_string(BinaryOp op);
// Every op of the table, in table order.
std::span<const UnaryOp> unary_ops();
std::span<const BinaryOp> binary_ops();
// The op called name, if any.
std::optional<UnaryOp> find_unary_op(std::string_view name);
std::optional<BinaryOp> find_binary_op(std::string_view name);

void unary(UnaryOp op, const DeviceTensor& x, const DeviceTensor& out, double alpha = 1.0,
           const Stream* stream = nullptr);
void binary(BinaryOp op, const DeviceTensor& a, const DeviceTensor& b, const DeviceTensor& out,
            const Stream* stream = nullptr);
// out[..., j] = x[..., j] + bias[j]; bias has shape [x.shape[-1]].
void bias_add(const DeviceTensor& x, const DeviceTensor& bias, const DeviceTensor& out,
              const Stream* stream = nullptr);
// out = x converted to out.dtype() by the one cast rule of meshrt (device/convert.h):
// floats to integers truncate toward zero, NaN gives 0 and values out of range
// saturate; integers to integers wrap as in C++; anything to bool tests != 0.
void cast(const DeviceTensor& x, const DeviceTensor& out, const Stream* stream = nullptr);

// Allocating forms: one per row of the table (neg(x), relu(x), ..., scale(x,
// alpha), add(a, b), mul(a, b), ...). (exp, log, sqrt, abs take DeviceTensors:
// inside namespace kernels, call the float functions qualified, std::exp.)
#define MESHRT_DECLARE_UNARY(name, ...) DeviceTensor name(const DeviceTensor& x, const Stream* stream = nullptr);
#define MESHRT_DECLARE_SCALAR_UNARY(name, ...) \
  DeviceTensor name(const DeviceTensor& x, double alpha, const Stream* stream = nullptr);
#define MESHRT_DECLARE_BINARY(name, ...) \
  DeviceTensor name(const DeviceTensor& a, const DeviceTensor& b, const Stream* stream = nullptr);
MESHRT_UNARY_OPS(MESHRT_DECLARE_UNARY)
MESHRT_SCALAR_UNARY_OPS(MESHRT_DECLARE_SCALAR_UNARY)
MESHRT_BINARY_OPS(MESHRT_DECLARE_BINARY)
#undef MESHRT_DECLARE_UNARY
#undef MESHRT_DECLARE_SCALAR_UNARY
#undef MESHRT_DECLARE_BINARY

DeviceTensor bias_add(const DeviceTensor& x, const DeviceTensor& bias, const Stream* stream = nullptr);
DeviceTensor cast(const DeviceTensor& x, DType dtype, const Stream* stream = nullptr);

}  // namespace meshrt::kernels

// Elementwise kernels. Each has a cpu and a CUDA implementation behind one call;
// tests/kernels_test.cc checks the two agree. Inputs and outputs share device and
// shape; out may alias an input (in-place). Calls queue on stream (the device's
// default stream when null) and return at once on CUDA; on the cpu they are done
// on return.
//
// dtypes: neg, add, mul, relu: f32, f64, f16, bf16, i32, i64.
//         scale, gelu, silu, bias_add: f32, f64, f16, bf16.
//         cast: any dtype to any dtype.
// f16 and bf16 compute in f32; f64 in f64.
#pragma once

#include "device/tensor.h"
#include "kernels/op_types.h"

namespace meshrt::kernels {

const char* to_string(UnaryOp op);
const char* to_string(BinaryOp op);

void unary(UnaryOp op, const DeviceTensor& x, const DeviceTensor& out, double alpha = 1.0,
           const Stream* stream = nullptr);
void binary(BinaryOp op, const DeviceTensor& a, const DeviceTensor& b, const DeviceTensor& out,
            const Stream* stream = nullptr);
// out[..., j] = x[..., j] + bias[j]; bias has shape [x.shape[-1]].
void bias_add(const DeviceTensor& x, const DeviceTensor& bias, const DeviceTensor& out,
              const Stream* stream = nullptr);
// out = x converted to out.dtype(). Floats to integers truncate toward zero, NaN gives
// 0 and values out of range saturate (the same on every backend); integers to
// integers wrap as in C++; anything to bool tests != 0.
void cast(const DeviceTensor& x, const DeviceTensor& out, const Stream* stream = nullptr);

// Allocating forms.
DeviceTensor neg(const DeviceTensor& x, const Stream* stream = nullptr);
DeviceTensor relu(const DeviceTensor& x, const Stream* stream = nullptr);
DeviceTensor gelu(const DeviceTensor& x, const Stream* stream = nullptr);
DeviceTensor silu(const DeviceTensor& x, const Stream* stream = nullptr);
DeviceTensor scale(const DeviceTensor& x, double alpha, const Stream* stream = nullptr);
DeviceTensor add(const DeviceTensor& a, const DeviceTensor& b, const Stream* stream = nullptr);
DeviceTensor mul(const DeviceTensor& a, const DeviceTensor& b, const Stream* stream = nullptr);
DeviceTensor bias_add(const DeviceTensor& x, const DeviceTensor& bias,
                      const Stream* stream = nullptr);
DeviceTensor cast(const DeviceTensor& x, DType dtype, const Stream* stream = nullptr);

}  // namespace meshrt::kernels

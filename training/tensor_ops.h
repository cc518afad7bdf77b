// Internal to training/: small compositions of kernels the layers and losses
// share, and the conversions to and from doubles on the host (initial values,
// small constants, metrics). The math itself runs on kernels (the elementwise
// table has the activations, their derivatives, exp, log, sqrt and division).
#pragma once

#include <vector>

#include "device/tensor.h"

namespace meshrt::training::detail {

// Throws Error(kShape) unless x is f32 or f64 (what training/ supports).
void check_float(const DeviceTensor& x, const char* op, const char* what);
// Throws Error(kShape) unless a and b have one shape and dtype.
void check_same(const DeviceTensor& a, const DeviceTensor& b, const char* op);

DeviceTensor ones(const Shape& shape, DType dtype, const Device& device);
// a - b (kernels::sub).
DeviceTensor sub(const DeviceTensor& a, const DeviceTensor& b);
// out[o, i, k] = alpha * g[o, k] for i < n: g's elements repeated along a new
// middle axis of extent n. One batched GEMM: ones[n, 1] @ g[outer, 1, inner].
DeviceTensor broadcast_axis(const DeviceTensor& g, int64_t outer, int64_t n, int64_t inner,
                            double alpha = 1.0);
// The sum of every element, as a double (kernels::sum, one element to the host).
double sum_all(const DeviceTensor& x);

// Elements as doubles on the host (waits for x), and back to a device tensor.
std::vector<double> to_doubles(const DeviceTensor& x);
DeviceTensor from_doubles(const std::vector<double>& values, const Shape& shape, DType dtype,
                          const Device& device);

}  // namespace meshrt::training::detail

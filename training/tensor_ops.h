// Internal to training/: small compositions of kernels the layers and losses
// share, and the host fallbacks for the elementwise functions the kernel table
// does not have yet (sigmoid, log, exp, the derivative masks). A host fallback
// copies the tensor to the host, computes in double and copies the result back:
// correct on every device, slow on a GPU. Each use names itself
// host_fallback:: so the calls to replace by kernel rows are easy to find.
#pragma once

#include <functional>
#include <vector>

#include "device/tensor.h"

namespace meshrt::training::detail {

// Throws Error(kShape) unless x is f32 or f64 (what training/ supports).
void check_float(const DeviceTensor& x, const char* op, const char* what);
// Throws Error(kShape) unless a and b have one shape and dtype.
void check_same(const DeviceTensor& a, const DeviceTensor& b, const char* op);

DeviceTensor ones(const Shape& shape, DType dtype, const Device& device);
// a - b (kernels: add and neg).
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

namespace host_fallback {
// y[i] = f(x[i]) computed in double on the host.
DeviceTensor map(const DeviceTensor& x, const std::function<double(double)>& f);
// y[i] = f(a[i], b[i]); a and b of one shape and dtype.
DeviceTensor map2(const DeviceTensor& a, const DeviceTensor& b,
                  const std::function<double(double, double)>& f);
}  // namespace host_fallback

// The logistic function, stable for large |x| (no exp of a large positive number).
double sigmoid(double x);

}  // namespace meshrt::training::detail

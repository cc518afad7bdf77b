#include "training/tensor_ops.h"

#include <cmath>

#include "device/error.h"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"
#include "kernels/reduction.h"

namespace meshrt::training::detail {

void check_float(const DeviceTensor& x, const char* op, const char* what) {
  MESHRT_CHECK_SHAPE(x.defined(), op, ": ", what, " is undefined");
  MESHRT_CHECK_SHAPE(x.dtype() == DType::kF32 || x.dtype() == DType::kF64, op, ": ", what, " is ",
                     x.description(), "; training supports f32 and f64");
}

void check_same(const DeviceTensor& a, const DeviceTensor& b, const char* op) {
  MESHRT_CHECK_SHAPE(a.shape() == b.shape() && a.dtype() == b.dtype(), op, ": ", a.description(),
                     " and ", b.description(), " differ in shape or dtype");
}

DeviceTensor ones(const Shape& shape, DType dtype, const Device& device) {
  return to_device(cast_host(HostTensor::full(shape, 1.0), dtype), device);
}

DeviceTensor sub(const DeviceTensor& a, const DeviceTensor& b) {
  return kernels::add(a, kernels::neg(b));
}

DeviceTensor broadcast_axis(const DeviceTensor& g, int64_t outer, int64_t n, int64_t inner,
                            double alpha) {
  MESHRT_CHECK_SHAPE(g.numel() == outer * inner, "broadcast_axis: ", g.description(), " is not ",
                     outer, " x ", inner);
  kernels::GemmOptions options;
  options.alpha = alpha;
  return kernels::matmul(ones(Shape{n, 1}, g.dtype(), g.device()), g.reshape(Shape{outer, 1, inner}),
                         options);
}

double sum_all(const DeviceTensor& x) {
  DeviceTensor total = kernels::sum(x.reshape(Shape{x.numel()}), 0);
  return to_doubles(total).at(0);
}

std::vector<double> to_doubles(const DeviceTensor& x) {
  return cast_host(to_host(x), DType::kF64).to_vector<double>();
}

DeviceTensor from_doubles(const std::vector<double>& values, const Shape& shape, DType dtype,
                          const Device& device) {
  return to_device(cast_host(HostTensor::from_vector(values, shape), dtype), device);
}

namespace host_fallback {

DeviceTensor map(const DeviceTensor& x, const std::function<double(double)>& f) {
  std::vector<double> v = to_doubles(x);
  for (double& e : v) e = f(e);
  return from_doubles(v, x.shape(), x.dtype(), x.device());
}

DeviceTensor map2(const DeviceTensor& a, const DeviceTensor& b,
                  const std::function<double(double, double)>& f) {
  check_same(a, b, "host_fallback::map2");
  std::vector<double> va = to_doubles(a);
  std::vector<double> vb = to_doubles(b);
  for (size_t i = 0; i < va.size(); ++i) va[i] = f(va[i], vb[i]);
  return from_doubles(va, a.shape(), a.dtype(), a.device());
}

}  // namespace host_fallback

double sigmoid(double x) {
  if (x >= 0) return 1.0 / (1.0 + std::exp(-x));
  double e = std::exp(x);
  return e / (1.0 + e);
}

}  // namespace meshrt::training::detail

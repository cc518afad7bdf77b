#include "training/tensor_ops.h"


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

DeviceTensor sub(const DeviceTensor& a, const DeviceTensor& b) { return kernels::sub(a, b); }

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

}  // namespace meshrt::training::detail

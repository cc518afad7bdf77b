#include "kernels/reduction.h"

#include <span>
#include <vector>

#include "kernels/backend.h"
#include "kernels/dispatch.h"
#include "kernels/dtype_sets.h"

namespace meshrt::kernels {

namespace {
// Checks a row-wise op (softmax, norms): x and out alike, at least 1-D.
RowArgs rows_of(const char* op, const DeviceTensor& x, const DeviceTensor& out) {
  detail::check_dtype(op, x, FloatTypes::kList);
  MESHRT_CHECK_SHAPE(x.ndim() >= 1, op, " needs at least one axis, got ", x.description());
  MESHRT_CHECK_SHAPE(x.shape() == out.shape() && x.dtype() == out.dtype(), op,
                     ": out must match x: x is ", x.description(), ", out is ", out.description());
  int64_t cols = x.dim(-1);
  return RowArgs{x.dtype(), cols == 0 ? 0 : x.numel() / cols, cols};
}

void check_vector(const char* op, const char* name, const DeviceTensor& v, const DeviceTensor& x) {
  MESHRT_CHECK_SHAPE(v.ndim() == 1 && v.dim(0) == x.dim(-1) && v.dtype() == x.dtype(), op, ": ",
                     name, " must be ", to_string(x.dtype()), "[", x.dim(-1), "] for x ",
                     x.description(), ", got ", v.description());
}
}  // namespace

void sum(const DeviceTensor& x, int dim, const DeviceTensor& out, const Stream* stream) {
  detail::check_same_device("sum", {&x, &out});
  detail::check_dtype("sum", x, NumericTypes::kList);
  int a = x.shape().axis(dim);
  Shape expected = x.shape().without(a);
  MESHRT_CHECK_SHAPE(out.shape() == expected && out.dtype() == x.dtype(), "sum over dimension ", dim,
                     " of ", x.description(), " gives ", to_string(x.dtype()), expected,
                     ", but out is ", out.description());
  if (out.numel() == 0) return;
  detail::Launch launch = detail::launch_for("sum", x.device(), stream, {&x, &out});
  MESHRT_DISPATCH(launch, sum, x.dtype(), x.raw_data(), out.raw_data(), x.shape().outer(a),
                  x.dim(a), x.shape().inner(a));
}

DeviceTensor sum(const DeviceTensor& x, int dim, const Stream* stream) {
  MESHRT_CHECK_ARG(x.defined(), "sum of an undefined tensor");
  DeviceTensor out = DeviceTensor::empty(x.shape().without(dim), x.dtype(), x.device());
  sum(x, dim, out, stream);
  return out;
}

namespace {
// mean, amax, amin, argmax: x reduced along dim into a new tensor.
DeviceTensor reduce_axis(const char* op, ReduceAxisOp which, std::span<const DType> dtypes, const DeviceTensor& x,
                         int dim, const Stream* stream) {
  MESHRT_CHECK_ARG(x.defined(), op, " of an undefined tensor");
  detail::check_dtype(op, x, dtypes);
  const int n = x.ndim();
  MESHRT_CHECK_ARG(dim >= -n && dim < n, op, ": dimension ", dim, " is out of range for ", x.description(),
                   " (", n, " dimensions)");
  const int a = dim < 0 ? dim + n : dim;
  Shape shape = x.shape().without(a);
  MESHRT_CHECK_SHAPE(which == ReduceAxisOp::kMean || x.dim(a) > 0 || shape.numel() == 0, op,
                     " over dimension ", dim, " of ", x.description(),
                     ": the dimension is empty (no elements to take the extreme of)");
  DeviceTensor out = DeviceTensor::empty(shape, which == ReduceAxisOp::kArgmax ? DType::kI64 : x.dtype(), x.device());
  if (out.numel() == 0) return out;
  detail::Launch launch = detail::launch_for(op, x.device(), stream, {&x, &out});
  MESHRT_DISPATCH(launch, reduce_axis, which, x.dtype(), x.raw_data(), out.raw_data(), x.shape().outer(a), x.dim(a),
                  x.shape().inner(a));
  return out;
}
}  // namespace

DeviceTensor mean(const DeviceTensor& x, int dim, const Stream* stream) {
  return reduce_axis("mean", ReduceAxisOp::kMean, FloatTypes::kList, x, dim, stream);
}
DeviceTensor amax(const DeviceTensor& x, int dim, const Stream* stream) {
  return reduce_axis("amax", ReduceAxisOp::kMax, NumericTypes::kList, x, dim, stream);
}
DeviceTensor amin(const DeviceTensor& x, int dim, const Stream* stream) {
  return reduce_axis("amin", ReduceAxisOp::kMin, NumericTypes::kList, x, dim, stream);
}
DeviceTensor argmax(const DeviceTensor& x, int dim, const Stream* stream) {
  return reduce_axis("argmax", ReduceAxisOp::kArgmax, NumericTypes::kList, x, dim, stream);
}

TopK topk(const DeviceTensor& x, int64_t k, const Stream* stream) {
  MESHRT_CHECK_ARG(x.defined(), "topk of an undefined tensor");
  detail::check_dtype("topk", x, NumericTypes::kList);
  MESHRT_CHECK_SHAPE(x.ndim() >= 1, "topk needs at least one dimension, got ", x.description());
  const int64_t cols = x.dim(-1);
  MESHRT_CHECK_ARG(k >= 0 && k <= cols, "topk: k = ", k, " is outside [0, ", cols, "] for the last dimension of ",
                   x.description());
  MESHRT_CHECK_ARG(!x.device().is_cuda() || k <= kMaxCudaTopK, "topk: k = ", k, " on ", x.device(),
                   " is more than the GPU kernel takes (", kMaxCudaTopK, "; it passes over the row once per value)");
  TopK out{DeviceTensor::empty(x.shape().with(-1, k), x.dtype(), x.device()),
           DeviceTensor::empty(x.shape().with(-1, k), DType::kI64, x.device())};
  if (out.values.numel() == 0) return out;
  detail::Launch launch = detail::launch_for("topk", x.device(), stream, {&x, &out.values, &out.indices});
  MESHRT_DISPATCH(launch, topk, x.dtype(), x.raw_data(), out.values.raw_data(), out.indices.raw_data(),
                  x.numel() / cols, cols, k);
  return out;
}

void softmax(const DeviceTensor& x, const DeviceTensor& out, const Stream* stream) {
  detail::check_same_device("softmax", {&x, &out});
  RowArgs rows = rows_of("softmax", x, out);
  if (x.numel() == 0) return;
  detail::Launch launch = detail::launch_for("softmax", x.device(), stream, {&x, &out});
  MESHRT_DISPATCH(launch, softmax, rows, x.raw_data(), out.raw_data());
}

DeviceTensor softmax(const DeviceTensor& x, const Stream* stream) {
  MESHRT_CHECK_ARG(x.defined(), "softmax of an undefined tensor");
  DeviceTensor out = DeviceTensor::empty(x.shape(), x.dtype(), x.device());
  softmax(x, out, stream);
  return out;
}

void layernorm(const DeviceTensor& x, const DeviceTensor& gamma, const DeviceTensor& beta,
               double eps, const DeviceTensor& out, const Stream* stream) {
  detail::check_same_device("layernorm", {&x, &gamma, &beta, &out});
  RowArgs rows = rows_of("layernorm", x, out);
  check_vector("layernorm", "gamma", gamma, x);
  check_vector("layernorm", "beta", beta, x);
  MESHRT_CHECK_ARG(eps >= 0, "layernorm: eps must be >= 0, got ", eps);
  if (x.numel() == 0) return;
  detail::Launch launch = detail::launch_for("layernorm", x.device(), stream, {&x, &gamma, &beta, &out});
  MESHRT_DISPATCH(launch, layernorm, rows, x.raw_data(), gamma.raw_data(), beta.raw_data(), eps,
                  out.raw_data());
}

DeviceTensor layernorm(const DeviceTensor& x, const DeviceTensor& gamma, const DeviceTensor& beta,
                       double eps, const Stream* stream) {
  MESHRT_CHECK_ARG(x.defined(), "layernorm of an undefined tensor");
  DeviceTensor out = DeviceTensor::empty(x.shape(), x.dtype(), x.device());
  layernorm(x, gamma, beta, eps, out, stream);
  return out;
}

void rmsnorm(const DeviceTensor& x, const DeviceTensor& gamma, double eps, const DeviceTensor& out,
             const Stream* stream) {
  detail::check_same_device("rmsnorm", {&x, &gamma, &out});
  RowArgs rows = rows_of("rmsnorm", x, out);
  check_vector("rmsnorm", "gamma", gamma, x);
  MESHRT_CHECK_ARG(eps >= 0, "rmsnorm: eps must be >= 0, got ", eps);
  if (x.numel() == 0) return;
  detail::Launch launch = detail::launch_for("rmsnorm", x.device(), stream, {&x, &gamma, &out});
  MESHRT_DISPATCH(launch, rmsnorm, rows, x.raw_data(), gamma.raw_data(), eps, out.raw_data());
}

DeviceTensor rmsnorm(const DeviceTensor& x, const DeviceTensor& gamma, double eps,
                     const Stream* stream) {
  MESHRT_CHECK_ARG(x.defined(), "rmsnorm of an undefined tensor");
  DeviceTensor out = DeviceTensor::empty(x.shape(), x.dtype(), x.device());
  rmsnorm(x, gamma, eps, out, stream);
  return out;
}

}  // namespace meshrt::kernels

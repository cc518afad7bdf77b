#include "kernels/reduction.h"

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

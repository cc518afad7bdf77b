#include "kernels/elementwise.h"

#include "kernels/backend.h"
#include "kernels/dispatch.h"

namespace meshrt::kernels {

const char* to_string(UnaryOp op) {
  switch (op) {
    case UnaryOp::kNeg: return "neg";
    case UnaryOp::kRelu: return "relu";
    case UnaryOp::kGelu: return "gelu";
    case UnaryOp::kSilu: return "silu";
    case UnaryOp::kScale: return "scale";
  }
  return "?";
}

const char* to_string(BinaryOp op) { return op == BinaryOp::kAdd ? "add" : "mul"; }

namespace {
void check_same_shape_dtype(const char* op, const DeviceTensor& a, const DeviceTensor& b) {
  MESHRT_CHECK_SHAPE(a.shape() == b.shape() && a.dtype() == b.dtype(), op,
                     ": shapes and dtypes must match, got ", a.description(), " and ",
                     b.description());
}
}  // namespace

void unary(UnaryOp op, const DeviceTensor& x, const DeviceTensor& out, double alpha,
           const Stream* stream) {
  const char* name = to_string(op);
  detail::check_same_device(name, {&x, &out});
  bool numeric = op == UnaryOp::kNeg || op == UnaryOp::kRelu;
  detail::check_dtype(name, x, numeric ? detail::kNumericTypes : detail::kFloatTypes);
  check_same_shape_dtype(name, x, out);
  if (x.numel() == 0) return;
  detail::Launch launch = detail::launch_for(name, x.device(), stream, {&x, &out});
  MESHRT_DISPATCH(launch, unary, op, x.dtype(), x.raw_data(), out.raw_data(), x.numel(), alpha);
}

void binary(BinaryOp op, const DeviceTensor& a, const DeviceTensor& b, const DeviceTensor& out,
            const Stream* stream) {
  const char* name = to_string(op);
  detail::check_same_device(name, {&a, &b, &out});
  detail::check_dtype(name, a, detail::kNumericTypes);
  check_same_shape_dtype(name, a, b);
  check_same_shape_dtype(name, a, out);
  if (a.numel() == 0) return;
  detail::Launch launch = detail::launch_for(name, a.device(), stream, {&a, &b, &out});
  MESHRT_DISPATCH(launch, binary, op, a.dtype(), a.raw_data(), b.raw_data(), out.raw_data(),
                  a.numel());
}

void bias_add(const DeviceTensor& x, const DeviceTensor& bias, const DeviceTensor& out,
              const Stream* stream) {
  detail::check_same_device("bias_add", {&x, &bias, &out});
  detail::check_dtype("bias_add", x, detail::kFloatTypes);
  check_same_shape_dtype("bias_add", x, out);
  MESHRT_CHECK_SHAPE(x.ndim() >= 1 && bias.ndim() == 1 && bias.dim(0) == x.dim(-1) &&
                         bias.dtype() == x.dtype(),
                     "bias_add: bias must be ", to_string(x.dtype()), "[",
                     x.ndim() >= 1 ? x.dim(-1) : 0, "] for x ", x.description(), ", got ",
                     bias.description());
  if (x.numel() == 0) return;
  int64_t cols = x.dim(-1), rows = x.numel() / cols;
  detail::Launch launch = detail::launch_for("bias_add", x.device(), stream, {&x, &bias, &out});
  MESHRT_DISPATCH(launch, bias_add, x.dtype(), x.raw_data(), bias.raw_data(), out.raw_data(), rows,
                  cols);
}

void cast(const DeviceTensor& x, const DeviceTensor& out, const Stream* stream) {
  detail::check_same_device("cast", {&x, &out});
  MESHRT_CHECK_SHAPE(x.shape() == out.shape(), "cast: shapes differ: ", x.description(), " and ",
                     out.description());
  if (x.numel() == 0) return;
  if (x.dtype() == out.dtype()) {
    copy(x, out, stream);
    return;
  }
  detail::Launch launch = detail::launch_for("cast", x.device(), stream, {&x, &out});
  MESHRT_DISPATCH(launch, cast, x.dtype(), out.dtype(), x.raw_data(), out.raw_data(), x.numel());
}

namespace {
DeviceTensor like(const DeviceTensor& x) {
  MESHRT_CHECK_ARG(x.defined(), "kernel called on an undefined tensor");
  return DeviceTensor::empty(x.shape(), x.dtype(), x.device());
}
DeviceTensor unary_new(UnaryOp op, const DeviceTensor& x, double alpha, const Stream* stream) {
  DeviceTensor out = like(x);
  unary(op, x, out, alpha, stream);
  return out;
}
}  // namespace

DeviceTensor neg(const DeviceTensor& x, const Stream* s) { return unary_new(UnaryOp::kNeg, x, 1, s); }
DeviceTensor relu(const DeviceTensor& x, const Stream* s) { return unary_new(UnaryOp::kRelu, x, 1, s); }
DeviceTensor gelu(const DeviceTensor& x, const Stream* s) { return unary_new(UnaryOp::kGelu, x, 1, s); }
DeviceTensor silu(const DeviceTensor& x, const Stream* s) { return unary_new(UnaryOp::kSilu, x, 1, s); }
DeviceTensor scale(const DeviceTensor& x, double alpha, const Stream* s) {
  return unary_new(UnaryOp::kScale, x, alpha, s);
}

DeviceTensor add(const DeviceTensor& a, const DeviceTensor& b, const Stream* s) {
  DeviceTensor out = like(a);
  binary(BinaryOp::kAdd, a, b, out, s);
  return out;
}

DeviceTensor mul(const DeviceTensor& a, const DeviceTensor& b, const Stream* s) {
  DeviceTensor out = like(a);
  binary(BinaryOp::kMul, a, b, out, s);
  return out;
}

DeviceTensor bias_add(const DeviceTensor& x, const DeviceTensor& bias, const Stream* s) {
  DeviceTensor out = like(x);
  bias_add(x, bias, out, s);
  return out;
}

DeviceTensor cast(const DeviceTensor& x, DType dtype, const Stream* s) {
  MESHRT_CHECK_ARG(x.defined(), "cast of an undefined tensor");
  DeviceTensor out = DeviceTensor::empty(x.shape(), dtype, x.device());
  cast(x, out, s);
  return out;
}

}  // namespace meshrt::kernels

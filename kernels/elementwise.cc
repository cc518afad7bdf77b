#include "kernels/elementwise.h"

#include "kernels/backend.h"
#include "kernels/dispatch.h"

namespace meshrt::kernels {

namespace {
#define MESHRT_UNARY_INFO(name, Element, Types, rule) {#name, 1, false, Types::kList, {rule, kNoPartial}},
#define MESHRT_SCALAR_UNARY_INFO(name, Element, Types, rule) {#name, 1, true, Types::kList, {rule, kNoPartial}},
#define MESHRT_BINARY_INFO(name, Element, Types, rule_a, rule_b) {#name, 2, false, Types::kList, {rule_a, rule_b}},
const ElementwiseOpInfo kUnaryInfo[] = {MESHRT_UNARY_OPS(MESHRT_UNARY_INFO)
                                            MESHRT_SCALAR_UNARY_OPS(MESHRT_SCALAR_UNARY_INFO)};
const ElementwiseOpInfo kBinaryInfo[] = {MESHRT_BINARY_OPS(MESHRT_BINARY_INFO)};
#undef MESHRT_UNARY_INFO
#undef MESHRT_SCALAR_UNARY_INFO
#undef MESHRT_BINARY_INFO

#define MESHRT_ENUMERATOR(name, Element, ...) UnaryOp::k##Element,
const UnaryOp kUnaryOps[] = {MESHRT_UNARY_OPS(MESHRT_ENUMERATOR) MESHRT_SCALAR_UNARY_OPS(MESHRT_ENUMERATOR)};
#undef MESHRT_ENUMERATOR
#define MESHRT_ENUMERATOR(name, Element, ...) BinaryOp::k##Element,
const BinaryOp kBinaryOps[] = {MESHRT_BINARY_OPS(MESHRT_ENUMERATOR)};
#undef MESHRT_ENUMERATOR

template <class Op, size_t N>
std::optional<Op> find_op(const Op (&ops)[N], std::string_view name) {
  for (Op op : ops) {
    if (name == info(op).name) return op;
  }
  return std::nullopt;
}

void check_same_shape_dtype(const char* op, const DeviceTensor& a, const DeviceTensor& b) {
  MESHRT_CHECK_SHAPE(a.shape() == b.shape() && a.dtype() == b.dtype(), op,
                     ": shapes and dtypes must match, got ", a.description(), " and ",
                     b.description());
}
}  // namespace

const ElementwiseOpInfo& info(UnaryOp op) { return kUnaryInfo[static_cast<size_t>(op)]; }
const ElementwiseOpInfo& info(BinaryOp op) { return kBinaryInfo[static_cast<size_t>(op)]; }
const char* to_string(UnaryOp op) { return info(op).name; }
const char* to_string(BinaryOp op) { return info(op).name; }
std::span<const UnaryOp> unary_ops() { return kUnaryOps; }
std::span<const BinaryOp> binary_ops() { return kBinaryOps; }
std::optional<UnaryOp> find_unary_op(std::string_view name) { return find_op(kUnaryOps, name); }
std::optional<BinaryOp> find_binary_op(std::string_view name) { return find_op(kBinaryOps, name); }

void unary(UnaryOp op, const DeviceTensor& x, const DeviceTensor& out, double alpha,
           const Stream* stream) {
  const char* name = to_string(op);
  detail::check_same_device(name, {&x, &out});
  detail::check_dtype(name, x, info(op).dtypes);
  check_same_shape_dtype(name, x, out);
  if (x.numel() == 0) return;
  detail::Launch launch = detail::launch_for(name, x.device(), stream, {&x, &out});
  MESHRT_DISPATCH(launch, unary, op, x.dtype(), x.raw_data(), out.raw_data(), x.numel(), alpha);
}

void binary(BinaryOp op, const DeviceTensor& a, const DeviceTensor& b, const DeviceTensor& out,
            const Stream* stream) {
  const char* name = to_string(op);
  detail::check_same_device(name, {&a, &b, &out});
  detail::check_dtype(name, a, info(op).dtypes);
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
  detail::check_dtype("bias_add", x, FloatTypes::kList);
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
}  // namespace

#define MESHRT_DEFINE_UNARY(name, Element, ...)               \
  DeviceTensor name(const DeviceTensor& x, const Stream* s) { \
    DeviceTensor out = like(x);                               \
    unary(UnaryOp::k##Element, x, out, 1.0, s);               \
    return out;                                               \
  }
#define MESHRT_DEFINE_SCALAR_UNARY(name, Element, ...)                      \
  DeviceTensor name(const DeviceTensor& x, double alpha, const Stream* s) { \
    DeviceTensor out = like(x);                                             \
    unary(UnaryOp::k##Element, x, out, alpha, s);                           \
    return out;                                                             \
  }
#define MESHRT_DEFINE_BINARY(name, Element, ...)                                      \
  DeviceTensor name(const DeviceTensor& a, const DeviceTensor& b, const Stream* s) { \
    DeviceTensor out = like(a);                                                       \
    binary(BinaryOp::k##Element, a, b, out, s);                                       \
    return out;                                                                       \
  }
MESHRT_UNARY_OPS(MESHRT_DEFINE_UNARY)
MESHRT_SCALAR_UNARY_OPS(MESHRT_DEFINE_SCALAR_UNARY)
MESHRT_BINARY_OPS(MESHRT_DEFINE_BINARY)
#undef MESHRT_DEFINE_UNARY
#undef MESHRT_DEFINE_SCALAR_UNARY
#undef MESHRT_DEFINE_BINARY

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

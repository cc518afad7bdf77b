#include "sharding/ops.h"

#include <algorithm>
#include <set>

#include "kernels/elementwise.h"
#include "kernels/reduction.h"
#include "sharding/op_checks.h"
#include "sharding/redistribute.h"

namespace meshrt::sharding {

namespace {
using Axes = std::vector<std::string>;
using detail::check_same_mesh;

bool contains(const Axes& axes, const std::string& a) { return std::find(axes.begin(), axes.end(), a) != axes.end(); }

Axes minus(const Axes& axes, const std::set<std::string>& drop) {
  Axes out;
  for (const auto& a : axes) {
    if (!drop.count(a)) out.push_back(a);
  }
  return out;
}

unsigned rule_bit(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return kernels::kThroughSum;
    case ReduceOp::kMax: return kernels::kThroughMax;
    case ReduceOp::kMin: return kernels::kThroughMin;
    case ReduceOp::kAvg: return kernels::kThroughAvg;
    case ReduceOp::kProd: break;
  }
  return kernels::kNoPartial;
}

// layout without the pending reductions whose op is not in keep.
Layout keeping(const Layout& layout, unsigned keep) {
  std::vector<Partial> kept;
  for (const Partial& p : layout.partials()) {
    if (keep & rule_bit(p.op)) kept.push_back(p);
  }
  return kept.size() == layout.partials().size() ? layout : layout.with_partials(std::move(kept));
}

DTensor map_local(const DTensor& x, const std::function<DeviceTensor(const DeviceTensor&)>& f,
                  const std::string& name) {
  return DTensor(f(x.local()), x.global_shape(), x.mesh(), x.layout(), name).after(x);
}
}  // namespace

DTensor reduce_partials_except(const DTensor& x, unsigned keep) {
  MESHRT_CHECK_ARG(x.defined(), "an undefined DTensor");
  return redistribute(x, keeping(x.layout(), keep));
}

DTensor matmul(const DTensor& a_given, const DTensor& b_given, const std::string& name, kernels::MathMode math) {
  check_same_mesh("matmul", a_given, b_given);
  // matmul is linear in each operand: pending sums pass, a pending max or min does not.
  DTensor a_in = reduce_partials_except(a_given, kernels::kThroughSum);
  DTensor b_in = reduce_partials_except(b_given, kernels::kThroughSum);
  int an = a_in.ndim(), bn = b_in.ndim();
  MESHRT_CHECK_SHAPE((an == 2 && bn == 2) || (an == 3 && (bn == 2 || bn == 3)), "matmul: ",
                     a_in.description(), " @ ", b_in.description(),
                     ": a must be [m, k] or [batch, m, k] and b [k, n] or [batch, k, n]");
  const Layout& la = a_in.layout();
  const Layout& lb = b_in.layout();
  int ak = an - 1, bk = bn - 2, bnn = bn - 1;
  MESHRT_CHECK_SHAPE(a_in.global_shape()[ak] == b_in.global_shape()[bk], "matmul: contracted extents differ: ",
                     a_in.description(), " has k = ", a_in.global_shape()[ak], ", ", b_in.description(),
                     " has k = ", b_in.global_shape()[bk]);
  MESHRT_CHECK_SHAPE(bn != 3 || a_in.global_shape()[0] == b_in.global_shape()[0], "matmul: batch extents differ: ",
                     a_in.description(), " and ", b_in.description());

  // Output axes of a keep their place.
  std::set<std::string> taken;
  std::vector<Axes> a_dims(static_cast<size_t>(an));
  for (int d = 0; d < an - 1; ++d) {
    a_dims[static_cast<size_t>(d)] = la.dim(d);
    for (const auto& x : la.dim(d)) taken.insert(x);
  }
  Axes k_axes = minus(!la.dim(ak).empty() ? la.dim(ak) : lb.dim(bk), taken);
  for (const auto& x : k_axes) taken.insert(x);
  Axes n_axes = minus(lb.dim(bnn), taken);
  for (const auto& x : n_axes) taken.insert(x);
  a_dims[static_cast<size_t>(ak)] = k_axes;

  // Partial axes: kept unless the other operand (in its new layout) uses them.
  Axes a_partial, b_partial;
  for (const auto& x : lb.partial()) {
    if (!taken.count(x)) b_partial.push_back(x);
  }
  for (const auto& x : la.partial()) {
    if (!taken.count(x) && !contains(b_partial, x)) a_partial.push_back(x);
  }
  // b's partial axes may not collide with a's new partials (kept above) — and a's
  // partial axes that b keeps partial were dropped from a (a is reduced over them).
  Layout a_layout(a_dims, a_partial);
  std::vector<Axes> b_dims(static_cast<size_t>(bn));
  if (bn == 3) b_dims[0] = a_dims[0];
  b_dims[static_cast<size_t>(bk)] = k_axes;
  b_dims[static_cast<size_t>(bnn)] = n_axes;
  Layout b_layout(b_dims, b_partial);

  DTensor a = redistribute(a_in, a_layout);
  DTensor b = redistribute(b_in, b_layout);
  DeviceTensor c = kernels::matmul(a.local(), b.local(), kernels::GemmOptions{.math = math});

  std::vector<Axes> c_dims(a_dims.begin(), a_dims.end() - 1);
  c_dims.push_back(n_axes);
  Axes c_partial = k_axes;
  for (const auto& x : a_partial) c_partial.push_back(x);
  for (const auto& x : b_partial) c_partial.push_back(x);
  std::vector<int64_t> global(a_in.global_shape().dims().begin(), a_in.global_shape().dims().end() - 1);
  global.push_back(b_in.global_shape()[bnn]);
  return DTensor(c, Shape(global), a.mesh(), Layout(c_dims, c_partial),
                 name.empty() ? "(" + a_in.name() + " @ " + b_in.name() + ")" : name)
      .after(a)
      .after(b);
}

DTensor unary(kernels::UnaryOp op, const DTensor& x_in, double alpha) {
  DTensor x = reduce_partials_except(x_in, kernels::info(op).partial_rule[0]);
  return map_local(x, [&](const DeviceTensor& t) {
    DeviceTensor out = DeviceTensor::empty(t.shape(), t.dtype(), t.device());
    kernels::unary(op, t, out, alpha);
    return out;
  }, std::string(kernels::to_string(op)) + "(" + x_in.name() + ")");
}

DTensor binary(kernels::BinaryOp op, const DTensor& a_in, const DTensor& b_in) {
  const char* name = kernels::to_string(op);
  check_same_mesh(name, a_in, b_in);
  MESHRT_CHECK_SHAPE(a_in.global_shape() == b_in.global_shape() && a_in.dtype() == b_in.dtype(), name,
                     ": global shapes and dtypes must match: ", a_in.description(), " and ", b_in.description());
  const unsigned* rule = kernels::info(op).partial_rule;
  DTensor a = reduce_partials_except(a_in, rule[0] & rule[1]);
  DTensor b = redistribute(b_in, a.layout());
  DeviceTensor out = DeviceTensor::empty(a.local().shape(), a.dtype(), a.local().device());
  kernels::binary(op, a.local(), b.local(), out);
  return DTensor(out, a.global_shape(), a.mesh(), a.layout(), std::string(name) + "(" + a_in.name() + ", " + b_in.name() + ")")
      .after(a)
      .after(b);
}

#define MESHRT_DEFINE_UNARY(name, Element, ...) \
  DTensor name(const DTensor& x) { return unary(kernels::UnaryOp::k##Element, x); }
#define MESHRT_DEFINE_SCALAR_UNARY(name, Element, ...) \
  DTensor name(const DTensor& x, double alpha) { return unary(kernels::UnaryOp::k##Element, x, alpha); }
#define MESHRT_DEFINE_BINARY(name, Element, ...) \
  DTensor name(const DTensor& a, const DTensor& b) { return binary(kernels::BinaryOp::k##Element, a, b); }
MESHRT_UNARY_OPS(MESHRT_DEFINE_UNARY)
MESHRT_SCALAR_UNARY_OPS(MESHRT_DEFINE_SCALAR_UNARY)
MESHRT_BINARY_OPS(MESHRT_DEFINE_BINARY)
#undef MESHRT_DEFINE_UNARY
#undef MESHRT_DEFINE_SCALAR_UNARY
#undef MESHRT_DEFINE_BINARY

DTensor bias_add(const DTensor& x_in, const DTensor& bias) {
  check_same_mesh("bias_add", x_in, bias);
  DTensor x = reduce_partials_except(x_in, kernels::kThroughSum);
  MESHRT_CHECK_SHAPE(bias.ndim() == 1 && x.ndim() >= 1 && bias.global_shape()[0] == x.global_shape()[-1] &&
                         bias.dtype() == x.dtype(),
                     "bias_add: bias must be ", to_string(x.dtype()), "[", x.global_shape()[-1], "] for ",
                     x.description(), ", got ", bias.description());
  DTensor b = redistribute(bias, Layout({x.layout().dim(x.ndim() - 1)}, x.layout().partial()));
  return DTensor(kernels::bias_add(x.local(), b.local()), x.global_shape(), x.mesh(), x.layout(),
                 "(" + x_in.name() + " + " + bias.name() + ")")
      .after(x)
      .after(b);
}

DTensor sum(const DTensor& x_in, int dim) {
  MESHRT_CHECK_ARG(x_in.defined(), "sum of an undefined DTensor");
  DTensor x = reduce_partials_except(x_in, kernels::kThroughSum);
  int d = x.global_shape().axis(dim);
  std::vector<Axes> dims;
  for (int i = 0; i < x.ndim(); ++i) {
    if (i != d) dims.push_back(x.layout().dim(i));
  }
  Axes partial = x.layout().partial();
  for (const auto& a : x.layout().dim(d)) partial.push_back(a);
  return DTensor(kernels::sum(x.local(), d), x.global_shape().without(d), x.mesh(), Layout(dims, partial),
                 "sum(" + x_in.name() + ")")
      .after(x);
}

namespace {
// x with its last dimension whole on every rank and nothing partial.
DTensor last_dimension_whole(const DTensor& x) {
  MESHRT_CHECK_ARG(x.defined() && x.ndim() >= 1, "row-wise op on an undefined or 0-d DTensor");
  return redistribute(x, x.layout().with_dim(x.ndim() - 1, {}).with_partial({}));
}

DTensor replicated(const DTensor& v) { return redistribute(v, Layout::replicated(v.ndim())); }

void check_vector(const char* op, const char* what, const DTensor& v, const DTensor& x) {
  check_same_mesh(op, x, v);
  MESHRT_CHECK_SHAPE(v.ndim() == 1 && v.global_shape()[0] == x.global_shape()[-1] && v.dtype() == x.dtype(), op,
                     ": ", what, " must be ", to_string(x.dtype()), "[", x.global_shape()[-1], "] for ",
                     x.description(), ", got ", v.description());
}
}  // namespace

DTensor softmax(const DTensor& x_in) {
  DTensor x = last_dimension_whole(x_in);
  return map_local(x, [](const DeviceTensor& t) { return kernels::softmax(t); }, "softmax(" + x_in.name() + ")");
}

DTensor layernorm(const DTensor& x_in, const DTensor& gamma, const DTensor& beta, double eps) {
  check_vector("layernorm", "gamma", gamma, x_in);
  check_vector("layernorm", "beta", beta, x_in);
  DTensor x = last_dimension_whole(x_in);
  DTensor g = replicated(gamma), b = replicated(beta);
  return map_local(
      x, [&](const DeviceTensor& t) { return kernels::layernorm(t, g.local(), b.local(), eps); },
      "layernorm(" + x_in.name() + ")").after(g).after(b);
}

DTensor rmsnorm(const DTensor& x_in, const DTensor& gamma, double eps) {
  check_vector("rmsnorm", "gamma", gamma, x_in);
  DTensor x = last_dimension_whole(x_in);
  DTensor g = replicated(gamma);
  return map_local(
      x, [&](const DeviceTensor& t) { return kernels::rmsnorm(t, g.local(), eps); }, "rmsnorm(" + x_in.name() + ")")
      .after(g);
}

}  // namespace meshrt::sharding

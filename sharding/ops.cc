#include "sharding/ops.h"

#include <algorithm>
#include <set>

#include "kernels/elementwise.h"
#include "kernels/reduction.h"
#include "sharding/redistribute.h"

namespace meshrt::sharding {

namespace {
using Axes = std::vector<std::string>;

bool contains(const Axes& axes, const std::string& a) { return std::find(axes.begin(), axes.end(), a) != axes.end(); }

Axes minus(const Axes& axes, const std::set<std::string>& drop) {
  Axes out;
  for (const auto& a : axes) {
    if (!drop.count(a)) out.push_back(a);
  }
  return out;
}

bool uses(const Layout& l, const std::string& a) { return l.dim_of(a) >= 0 || l.is_partial_over(a); }

void check_same_mesh(const char* op, const DTensor& a, const DTensor& b) {
  MESHRT_CHECK_ARG(a.defined() && b.defined(), op, ": an operand is an undefined DTensor");
  MESHRT_CHECK_ARG(a.mesh() == b.mesh(), op, ": ", a.description(), " and ", b.description(),
                   " are on different meshes");
}

// x with its partial axes reduced (all_reduce), sharding unchanged.
DTensor reduced(const DTensor& x) {
  return x.layout().is_partial() ? redistribute(x, x.layout().with_partial({})) : x;
}

DTensor map_local(const DTensor& x, const std::function<DeviceTensor(const DeviceTensor&)>& f,
                  const std::string& name) {
  return DTensor(f(x.local()), x.global_shape(), x.mesh(), x.layout(), name);
}
}  // namespace

DTensor matmul(const DTensor& a_in, const DTensor& b_in, const std::string& name, kernels::MathMode math) {
  check_same_mesh("matmul", a_in, b_in);
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
                 name.empty() ? "(" + a_in.name() + " @ " + b_in.name() + ")" : name);
}

DTensor neg(const DTensor& x) {
  return map_local(x, [](const DeviceTensor& t) { return kernels::neg(t); }, "-" + x.name());
}

DTensor scale(const DTensor& x, double alpha) {
  return map_local(x, [alpha](const DeviceTensor& t) { return kernels::scale(t, alpha); }, x.name());
}

DTensor relu(const DTensor& x) {
  return map_local(reduced(x), [](const DeviceTensor& t) { return kernels::relu(t); }, "relu(" + x.name() + ")");
}

DTensor gelu(const DTensor& x) {
  return map_local(reduced(x), [](const DeviceTensor& t) { return kernels::gelu(t); }, "gelu(" + x.name() + ")");
}

DTensor silu(const DTensor& x) {
  return map_local(reduced(x), [](const DeviceTensor& t) { return kernels::silu(t); }, "silu(" + x.name() + ")");
}

namespace {
void check_same_shape(const char* op, const DTensor& a, const DTensor& b) {
  MESHRT_CHECK_SHAPE(a.global_shape() == b.global_shape() && a.dtype() == b.dtype(), op,
                     ": global shapes and dtypes must match: ", a.description(), " and ", b.description());
}
}  // namespace

DTensor add(const DTensor& a, const DTensor& b) {
  check_same_mesh("add", a, b);
  check_same_shape("add", a, b);
  DTensor bb = redistribute(b, a.layout());
  return DTensor(kernels::add(a.local(), bb.local()), a.global_shape(), a.mesh(), a.layout(),
                 "(" + a.name() + " + " + b.name() + ")");
}

DTensor mul(const DTensor& a_in, const DTensor& b_in) {
  check_same_mesh("mul", a_in, b_in);
  check_same_shape("mul", a_in, b_in);
  DTensor a = reduced(a_in);
  DTensor b = redistribute(b_in, a.layout());
  return DTensor(kernels::mul(a.local(), b.local()), a.global_shape(), a.mesh(), a.layout(),
                 "(" + a_in.name() + " * " + b_in.name() + ")");
}

DTensor bias_add(const DTensor& x, const DTensor& bias) {
  check_same_mesh("bias_add", x, bias);
  MESHRT_CHECK_SHAPE(bias.ndim() == 1 && x.ndim() >= 1 && bias.global_shape()[0] == x.global_shape()[-1] &&
                         bias.dtype() == x.dtype(),
                     "bias_add: bias must be ", to_string(x.dtype()), "[", x.global_shape()[-1], "] for ",
                     x.description(), ", got ", bias.description());
  DTensor b = redistribute(bias, Layout({x.layout().dim(x.ndim() - 1)}, x.layout().partial()));
  return DTensor(kernels::bias_add(x.local(), b.local()), x.global_shape(), x.mesh(), x.layout(),
                 "(" + x.name() + " + " + bias.name() + ")");
}

DTensor sum(const DTensor& x, int dim) {
  MESHRT_CHECK_ARG(x.defined(), "sum of an undefined DTensor");
  int d = x.global_shape().axis(dim);
  std::vector<Axes> dims;
  for (int i = 0; i < x.ndim(); ++i) {
    if (i != d) dims.push_back(x.layout().dim(i));
  }
  Axes partial = x.layout().partial();
  for (const auto& a : x.layout().dim(d)) partial.push_back(a);
  std::vector<int64_t> global;
  for (int i = 0; i < x.ndim(); ++i) {
    if (i != d) global.push_back(x.global_shape()[i]);
  }
  return DTensor(kernels::sum(x.local(), d), Shape(global), x.mesh(), Layout(dims, partial),
                 "sum(" + x.name() + ")");
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
      "layernorm(" + x_in.name() + ")");
}

DTensor rmsnorm(const DTensor& x_in, const DTensor& gamma, double eps) {
  check_vector("rmsnorm", "gamma", gamma, x_in);
  DTensor x = last_dimension_whole(x_in);
  DTensor g = replicated(gamma);
  return map_local(
      x, [&](const DeviceTensor& t) { return kernels::rmsnorm(t, g.local(), eps); }, "rmsnorm(" + x_in.name() + ")");
}

}  // namespace meshrt::sharding

// Sharded data movement, lookups and reductions along an axis: the layout
// rules are in ops.h, beside each op.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "kernels/elementwise.h"
#include "kernels/movement.h"
#include "kernels/reduction.h"
#include "sharding/op_checks.h"
#include "sharding/ops.h"
#include "sharding/redistribute.h"
#include "sharding/trace.h"

namespace meshrt::sharding {

namespace {
using Axes = std::vector<std::string>;

using detail::check_defined;
using detail::check_same_mesh;

// A dimension index, negative from the end, checked against x.
int axis_of(const char* op, const DTensor& x, int dim) {
  int n = x.ndim();
  MESHRT_CHECK_ARG(dim >= -n && dim < n, op, ": dimension ", dim, " of ", x.description());
  return dim < 0 ? dim + n : dim;
}

DTensor made(DeviceTensor local, Shape global, const DTensor& from, Layout layout, std::string name) {
  return DTensor(std::move(local), std::move(global), from.mesh(), std::move(layout), std::move(name)).after(from);
}

// x with dimension d whole on every rank (its axes gathered).
DTensor whole_dim(const DTensor& x, int d) { return redistribute(x, x.layout().with_dim(d, {})); }

// A one-time record of a collective an op ran itself (not a redistribution).
void trace_collective(const char* what, const std::string& axis, const DTensor& x, const std::string& to,
                      long long bytes) {
  if (Trace* trace = TraceScope::current()) {
    trace->add({what, axis, x.name(), x.layout().to_string(), to, bytes, 0.0});
  }
}

// A device tensor of shape filled with value (made on the host: small).
DeviceTensor filled(const Shape& shape, DType dtype, double value, const Device& device) {
  HostTensor h = HostTensor::empty(shape, dtype);
  visit_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    T v = static_cast<T>(value);
    if constexpr (std::is_same_v<T, Half> || std::is_same_v<T, BFloat16>) v = T(static_cast<float>(value));
    std::fill(h.data<T>(), h.data<T>() + h.numel(), v);
  });
  return to_device(h, device);
}

// A device tensor of shape filled with dtype's lowest value (-inf for floats),
// or its highest (+inf). Integers take their own limits: through a double, the
// largest i64 (2^63 - 1) would round to 2^63, which does not convert back.
DeviceTensor extreme(const Shape& shape, DType dtype, bool lowest, const Device& device) {
  if (is_floating(dtype)) return filled(shape, dtype, lowest ? -INFINITY : INFINITY, device);
  HostTensor h = HostTensor::empty(shape, dtype);
  visit_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_integral_v<T>) {
      T v = lowest ? std::numeric_limits<T>::lowest() : std::numeric_limits<T>::max();
      std::fill(h.data<T>(), h.data<T>() + h.numel(), v);
    }
  });
  return to_device(h, device);
}
}  // namespace

DTensor permute(const DTensor& x, const std::vector<int>& dims_in) {
  check_defined("permute", x);
  MESHRT_CHECK_ARG(static_cast<int>(dims_in.size()) == x.ndim(), "permute: ", dims_in.size(), " dimensions for ",
                   x.description());
  std::vector<int> dims;
  for (int d : dims_in) dims.push_back(axis_of("permute", x, d));
  std::vector<std::vector<std::string>> axes;
  std::vector<int64_t> global;
  for (int d : dims) {
    axes.push_back(x.layout().dim(d));
    global.push_back(x.global_shape()[d]);
  }
  // (kernels::permute refuses a repeated dimension.)
  return made(kernels::permute(x.local(), dims), Shape(global), x, Layout(axes).with_partials(x.layout().partials()),
              "permute(" + x.name() + ")");
}

DTensor transpose(const DTensor& x, int dim0, int dim1) {
  check_defined("transpose", x);
  std::vector<int> dims(static_cast<size_t>(x.ndim()));
  std::iota(dims.begin(), dims.end(), 0);
  std::swap(dims[static_cast<size_t>(axis_of("transpose", x, dim0))],
            dims[static_cast<size_t>(axis_of("transpose", x, dim1))]);
  return permute(x, dims).renamed("transpose(" + x.name() + ")");
}

namespace {
// Groups of a reshape: input dimensions [in_begin, in_end) become output
// dimensions [out_begin, out_end), with equal products. Dimensions of extent 1
// join the group before them.
struct Group {
  int in_begin, in_end, out_begin, out_end;
};

std::vector<Group> reshape_groups(const Shape& in, const Shape& out) {
  std::vector<Group> groups;
  int i = 0, j = 0, ni = in.ndim(), no = out.ndim();
  while (i < ni || j < no) {
    Group g{i, i, j, j};
    int64_t pi = 1, pj = 1;
    if (i < ni) pi *= in[g.in_end++];
    if (j < no) pj *= out[g.out_end++];
    while (pi != pj) {
      if (pi < pj && g.in_end < ni) {
        pi *= in[g.in_end++];
      } else if (g.out_end < no) {
        pj *= out[g.out_end++];
      } else {
        pi *= in[g.in_end++];
      }
    }
    while (g.in_end < ni && in[g.in_end] == 1 && (g.out_end >= no || out[g.out_end] != 1)) ++g.in_end;
    while (g.out_end < no && out[g.out_end] == 1 && (g.in_end >= ni || in[g.in_end] != 1)) ++g.out_end;
    groups.push_back(g);
    i = g.in_end;
    j = g.out_end;
  }
  return groups;
}

// Whether the blocks of x's dimension d (over its axes), each row of d
// holding inner_in elements, are exactly the blocks torch.chunk gives a
// dimension of out_rows rows of inner_out elements over the same axes: then
// the sharding moves to that dimension with no data moving.
bool blocks_align(const DTensor& x, int d, int64_t inner_in, int64_t out_rows, int64_t inner_out) {
  const Mesh& mesh = x.mesh();
  Layout out(std::vector<std::vector<std::string>>{x.layout().dim(d)});
  for (int r = 0; r < mesh.size(); ++r) {
    std::vector<int> c = mesh.coordinates(r);
    Extent a = x.layout().block(mesh, d, c, x.global_shape()[d]);
    Extent b = out.block(mesh, 0, c, out_rows);
    if (a.offset * inner_in != b.offset * inner_out || a.size * inner_in != b.size * inner_out) return false;
  }
  return true;
}
}  // namespace

DTensor reshape(const DTensor& x_in, const Shape& shape) {
  check_defined("reshape", x_in);
  MESHRT_CHECK_SHAPE(shape.numel() == x_in.global_shape().numel(), "reshape: ", x_in.description(), " has ",
                     x_in.global_shape().numel(), " elements, ", shape, " has ", shape.numel());
  DTensor x = x_in;
  const Shape& in = x.global_shape();
  std::vector<Group> groups;
  if (in.numel() > 0) {
    groups = reshape_groups(in, shape);
  } else {
    groups.push_back({0, in.ndim(), 0, shape.ndim()});  // no elements: one group, gathered (nothing moves)
  }
  std::vector<std::vector<std::string>> out_axes(static_cast<size_t>(shape.ndim()));
  std::vector<std::pair<int, Axes>> recut;  // output dimensions cut again after a gather
  for (const Group& g : groups) {
    if (g.out_begin == g.out_end || g.in_begin == g.in_end) continue;  // only 1-extents
    const Axes& first = x.layout().dim(g.in_begin);
    bool rest_whole = true;
    for (int d = g.in_begin + 1; d < g.in_end; ++d) rest_whole = rest_whole && x.layout().dim(d).empty();
    if (first.empty() && rest_whole) continue;
    int64_t inner_out = 1, inner_in = 1;
    for (int d = g.out_begin + 1; d < g.out_end; ++d) inner_out *= shape[d];
    for (int d = g.in_begin + 1; d < g.in_end; ++d) inner_in *= in[d];
    bool keeps = rest_whole && !first.empty() && blocks_align(x, g.in_begin, inner_in, shape[g.out_begin], inner_out);
    if (keeps) {
      out_axes[static_cast<size_t>(g.out_begin)] = first;
      continue;
    }
    // Gather the group, reshape, cut the first output dimension again.
    Axes gathered;
    for (int d = g.in_begin; d < g.in_end; ++d) {
      for (const auto& a : x.layout().dim(d)) gathered.push_back(a);
      x = whole_dim(x, d);
    }
    if (!gathered.empty()) recut.push_back({g.out_begin, gathered});
  }
  // Local reshape: each rank's block is its rows of the new shape.
  DeviceTensor local = x.local().reshape(Layout(out_axes).local_shape(x.mesh(), shape));  // a view: ops never write their inputs
  DTensor y = made(local, shape, x, Layout(out_axes).with_partials(x.layout().partials()), "reshape(" + x_in.name() + ")");
  for (const auto& [d, axes] : recut) {
    if (shape[d] == 0) continue;
    Layout target = y.layout();
    Axes now = target.dim(d);
    for (const auto& a : axes) now.push_back(a);
    y = redistribute(y, target.with_dim(d, now));  // slices: no communication
  }
  return y;
}

DTensor concat(const std::vector<DTensor>& xs, int dim) {
  MESHRT_CHECK_ARG(!xs.empty(), "concat: no tensors");
  check_defined("concat", xs[0]);
  int d = axis_of("concat", xs[0], dim);
  Layout target = xs[0].layout().with_dim(d, {});
  std::vector<DTensor> parts;
  std::vector<DeviceTensor> locals;
  int64_t extent = 0;
  for (const DTensor& x : xs) {
    check_same_mesh("concat", xs[0], x);
    MESHRT_CHECK_SHAPE(x.ndim() == xs[0].ndim() && x.dtype() == xs[0].dtype() &&
                           x.global_shape().with(d, 0) == xs[0].global_shape().with(d, 0),
                       "concat along ", d, ": ", x.description(), " does not match ", xs[0].description());
    parts.push_back(redistribute(x, target));
    locals.push_back(parts.back().local());
    extent += x.global_shape()[d];
  }
  DTensor y = made(kernels::concat(locals, d), xs[0].global_shape().with(d, extent), parts[0], target,
                   "concat(" + xs[0].name() + ", ...)");
  for (size_t i = 1; i < parts.size(); ++i) y = y.after(parts[i]);
  return y;
}

DTensor narrow(const DTensor& x_in, int dim, int64_t start, int64_t length) {
  check_defined("narrow", x_in);
  int d = axis_of("narrow", x_in, dim);
  int64_t n = x_in.global_shape()[d];
  MESHRT_CHECK_ARG(start >= 0 && length >= 0 && start + length <= n, "narrow: [", start, ", ", start + length,
                   ") of dimension ", d, " of ", x_in.description());
  Axes axes = x_in.layout().dim(d);
  DTensor x = axes.empty() ? x_in : whole_dim(x_in, d);
  DTensor y = made(kernels::narrow(x.local(), d, start, length), x.global_shape().with(d, length), x, x.layout(),
                   "narrow(" + x_in.name() + ")");
  return axes.empty() ? y : redistribute(y, y.layout().with_dim(d, axes));
}

DTensor index_select(const DTensor& x_in, int dim, const DTensor& index_in) {
  check_same_mesh("index_select", x_in, index_in);
  int d = axis_of("index_select", x_in, dim);
  DTensor x = x_in.layout().dim(d).empty() ? x_in : whole_dim(x_in, d);
  DTensor index = redistribute(index_in, Layout::replicated(index_in.ndim()));
  std::vector<std::vector<std::string>> axes;
  std::vector<int64_t> global;
  for (int i = 0; i < d; ++i) {
    axes.push_back(x.layout().dim(i));
    global.push_back(x.global_shape()[i]);
  }
  for (int i = 0; i < index.ndim(); ++i) {
    axes.emplace_back();
    global.push_back(index.global_shape()[i]);
  }
  for (int i = d + 1; i < x.ndim(); ++i) {
    axes.push_back(x.layout().dim(i));
    global.push_back(x.global_shape()[i]);
  }
  return made(kernels::index_select(x.local(), d, index.local()), Shape(global), x,
              Layout(axes).with_partials(x.layout().partials()), "index_select(" + x_in.name() + ")")
      .after(index);
}

DTensor embedding(const DTensor& table_in, const DTensor& ids_in, bool reduce) {
  check_same_mesh("embedding", table_in, ids_in);
  MESHRT_CHECK_SHAPE(table_in.ndim() == 2, "embedding: the table must be [vocab, hidden], got ",
                     table_in.description());
  MESHRT_CHECK_SHAPE(ids_in.dtype() == DType::kI32 || ids_in.dtype() == DType::kI64, "embedding: ids must be i32 or i64, got ",
                     ids_in.description());
  DTensor table = reduce_partials_except(table_in, kernels::kNoPartial);
  const Axes& vocab = table.layout().dim(0);
  const Axes& hidden = table.layout().dim(1);
  // ids: no pending reductions; not sharded over an axis the table uses.
  Layout ids_layout = ids_in.layout().with_partials({});
  for (const auto& a : vocab) ids_layout = ids_layout.without_axis(a);
  for (const auto& a : hidden) ids_layout = ids_layout.without_axis(a);
  DTensor ids = redistribute(ids_in, ids_layout);
  const Mesh& mesh = table.mesh();
  int64_t first = table.layout().block(mesh, 0, mesh.coordinates(mesh.rank()), table.global_shape()[0]).offset;
  std::vector<std::vector<std::string>> axes = ids.layout().dims();
  axes.push_back(hidden);
  std::vector<int64_t> global = ids.global_shape().dims();
  global.push_back(table.global_shape()[1]);
  DTensor y = made(kernels::embedding(table.local(), ids.local(), first), Shape(global), table,
                   Layout(axes, vocab), "embedding(" + table_in.name() + ")")
                  .after(ids);
  return reduce ? redistribute(y, y.layout().with_partials({})) : y;
}

namespace {
// A reduction along d: the block's reduction, pending over d's axes with op.
// An empty block gives op's identity (a pending sum's 0, a max's lowest value).
DTensor reduce_axis(const char* name, const DTensor& x_in, int dim, unsigned keeps, ReduceOp pending,
                    DeviceTensor (*kernel)(const DeviceTensor&, int, const Stream*)) {
  check_defined(name, x_in);
  DTensor x = reduce_partials_except(x_in, keeps);
  int d = axis_of(name, x, dim);
  std::vector<std::vector<std::string>> axes;
  for (int i = 0; i < x.ndim(); ++i) {
    if (i != d) axes.push_back(x.layout().dim(i));
  }
  std::vector<Partial> partials = x.layout().partials();
  for (const auto& a : x.layout().dim(d)) partials.push_back({a, pending});
  Shape out_local = x.local().shape().without(d);
  DeviceTensor local;
  if (x.local().dim(d) > 0) {
    local = kernel(x.local(), d, nullptr);
  } else if (pending == ReduceOp::kMax || pending == ReduceOp::kMin) {
    local = extreme(out_local, x.dtype(), /*lowest=*/pending == ReduceOp::kMax, x.mesh().device());
  } else {
    local = filled(out_local, x.dtype(), 0.0, x.mesh().device());
  }
  return made(local, x.global_shape().without(d), x, Layout(axes).with_partials(partials),
              std::string(name) + "(" + x_in.name() + ")");
}

DeviceTensor block_sum(const DeviceTensor& t, int d, const Stream* stream) { return kernels::sum(t, d, stream); }
DeviceTensor block_max(const DeviceTensor& t, int d, const Stream* stream) { return kernels::amax(t, d, stream); }
DeviceTensor block_min(const DeviceTensor& t, int d, const Stream* stream) { return kernels::amin(t, d, stream); }
}  // namespace

DTensor mean(const DTensor& x_in, int dim) {
  check_defined("mean", x_in);
  int d = axis_of("mean", x_in, dim);
  int64_t n = x_in.global_shape()[d];
  MESHRT_CHECK_SHAPE(n > 0, "mean: dimension ", d, " of ", x_in.description(), " is empty");
  MESHRT_CHECK_SHAPE(is_floating(x_in.dtype()), "mean: ", x_in.description(), " is not a float tensor");
  // The block's sum divided by the global extent: a pending sum of those.
  DTensor s = reduce_axis("mean", x_in, d, kernels::kThroughSum | kernels::kThroughAvg, ReduceOp::kSum, block_sum);
  kernels::unary(kernels::UnaryOp::kScale, s.local(), s.local(), 1.0 / static_cast<double>(n));
  return s;
}

DTensor amax(const DTensor& x, int dim) {
  return reduce_axis("amax", x, dim, kernels::kThroughMax, ReduceOp::kMax, block_max);
}

DTensor amin(const DTensor& x, int dim) {
  return reduce_axis("amin", x, dim, kernels::kThroughMin, ReduceOp::kMin, block_min);
}

TopK topk(const DTensor& x_in, int64_t k) {
  check_defined("topk", x_in);
  MESHRT_CHECK_ARG(x_in.ndim() >= 1, "topk of a 0-d DTensor");
  int last = x_in.ndim() - 1;
  int64_t n = x_in.global_shape()[last];
  MESHRT_CHECK_ARG(k >= 1 && k <= n, "topk: k = ", k, " for ", x_in.description(), " (last dimension ", n, ")");
  DTensor x = reduce_partials_except(x_in, kernels::kNoPartial);
  const Mesh& mesh = x.mesh();
  Axes axes = x.layout().dim(last);
  Layout out_layout = x.layout().with_dim(last, {});
  Shape out_global = x.global_shape().with(last, k);
  std::string name = "topk(" + x_in.name() + ")";
  if (axes.empty()) {
    kernels::TopK t = kernels::topk(x.local(), k);
    return {made(t.values, out_global, x, out_layout, name + ".values"),
            made(t.indices, out_global, x, out_layout, name + ".indices")};
  }
  // Each rank's candidates: the top min(k, block) of its block, indices made
  // global; blocks shorter than k are padded with the lowest value (never
  // chosen before a real element: k <= n).
  const Communicator& comm = mesh.communicator(axes);
  int ranks = comm.size();
  const std::vector<int> here = mesh.coordinates(mesh.rank());
  Extent block = x.layout().block(mesh, last, here, n);
  Shape rows = x.local().shape().with(last, k);
  DeviceTensor values, indices;
  int64_t own = std::min(k, block.size);
  if (own > 0) {
    kernels::TopK t = kernels::topk(x.local(), own);
    values = t.values;
    indices = kernels::add(t.indices, filled(t.indices.shape(), DType::kI64, static_cast<double>(block.offset),
                                             mesh.device()));
  }
  if (own < k) {
    Shape pad = rows.with(last, k - own);
    DeviceTensor pad_values = extreme(pad, x.dtype(), /*lowest=*/true, mesh.device());
    DeviceTensor pad_indices = filled(pad, DType::kI64, static_cast<double>(n), mesh.device());
    values = own > 0 ? kernels::concat({values, pad_values}, last) : pad_values;
    indices = own > 0 ? kernels::concat({indices, pad_indices}, last) : pad_indices;
  }
  // All candidates: [ranks, rows..., k] -> [rows..., ranks * k], in the
  // communicator's rank order.
  DeviceTensor all_values = DeviceTensor::empty({ranks * values.numel()}, values.dtype(), mesh.device());
  DeviceTensor all_indices = DeviceTensor::empty({ranks * indices.numel()}, DType::kI64, mesh.device());
  std::vector<Work> works = {comm.all_gather(values, all_values), comm.all_gather(indices, all_indices)};
  trace_collective("all_gather", axes.front(), x, out_layout.to_string(),
                   static_cast<long long>(values.nbytes() + indices.nbytes()));
  std::vector<int64_t> stacked = {ranks};
  for (int64_t e : rows.dims()) stacked.push_back(e);
  // permute [ranks, rows..., k] to [rows..., ranks, k], then merge the last two.
  std::vector<int> to_rows_first;
  for (int i = 1; i < rows.ndim(); ++i) to_rows_first.push_back(i);
  to_rows_first.push_back(0);
  to_rows_first.push_back(rows.ndim());
  Shape merged = rows.with(last, ranks * k);
  DeviceTensor cand_values = kernels::permute(all_values.reshape(Shape(stacked)), to_rows_first).reshape(merged);
  DeviceTensor cand_indices = kernels::permute(all_indices.reshape(Shape(stacked)), to_rows_first).reshape(merged);
  // Reordered so that position order is global index order (topk breaks ties
  // by position): the real candidates of the blocks in block order, then every
  // padding. The communicator orders its ranks row-major over the axes in the
  // mesh's order (Mesh::communicator), the blocks row-major over the axes in
  // the layout's order: they differ for [.., S(y,x)]. Paddings last: a padding
  // never beats a real element of equal value (-inf, or the lowest integer).
  std::vector<int> group;  // mesh axis indices of the communicator, in mesh order
  for (int i = 0; i < mesh.ndim(); ++i) {
    if (std::find(axes.begin(), axes.end(), mesh.axes()[static_cast<size_t>(i)].name) != axes.end()) group.push_back(i);
  }
  struct Source {
    int64_t offset, own;
    int rank;
  };
  std::vector<Source> sources;
  for (int r = 0; r < ranks; ++r) {
    std::vector<int> coordinates = here;
    int rest = r;
    for (size_t i = group.size(); i-- > 0;) {
      int size = mesh.axes()[static_cast<size_t>(group[i])].size;
      coordinates[static_cast<size_t>(group[i])] = rest % size;
      rest /= size;
    }
    Extent b = x.layout().block(mesh, last, coordinates, n);
    sources.push_back({b.offset, std::min(k, b.size), r});
  }
  std::stable_sort(sources.begin(), sources.end(), [](const Source& p, const Source& q) { return p.offset < q.offset; });
  std::vector<int64_t> order;
  for (const Source& s : sources) {
    for (int64_t j = 0; j < s.own; ++j) order.push_back(s.rank * k + j);
  }
  for (const Source& s : sources) {
    for (int64_t j = s.own; j < k; ++j) order.push_back(s.rank * k + j);
  }
  DeviceTensor positions = to_device(HostTensor::from_vector(order, {ranks * k}), mesh.device());
  cand_values = kernels::index_select(cand_values, last, positions);
  cand_indices = kernels::index_select(cand_indices, last, positions);
  // The top k of the candidates, and their global indices: pick by position.
  kernels::TopK best = kernels::topk(cand_values, k);
  int64_t row_count = merged.numel() / (ranks * k);
  HostTensor base = HostTensor::empty(best.indices.shape(), DType::kI64);
  for (int64_t r = 0; r < row_count; ++r) {
    for (int64_t j = 0; j < k; ++j) base.data<int64_t>()[r * k + j] = r * ranks * k;
  }
  DeviceTensor flat = kernels::add(best.indices, to_device(base, mesh.device()));
  DeviceTensor picked = kernels::index_select(cand_indices.reshape({merged.numel()}), 0, flat.reshape({flat.numel()}))
                            .reshape(best.indices.shape());
  return {made(best.values, out_global, x, out_layout, name + ".values").after(works),
          made(picked, out_global, x, out_layout, name + ".indices").after(works)};
}

DTensor argmax(const DTensor& x_in, int dim) {
  check_defined("argmax", x_in);
  int d = axis_of("argmax", x_in, dim);
  if (d == x_in.ndim() - 1 && !x_in.layout().dim(d).empty()) {
    TopK t = topk(x_in, 1);
    return reshape(t.indices, t.indices.global_shape().without(d)).renamed("argmax(" + x_in.name() + ")");
  }
  DTensor x = whole_dim(reduce_partials_except(x_in, kernels::kNoPartial), d);
  std::vector<std::vector<std::string>> axes;
  for (int i = 0; i < x.ndim(); ++i) {
    if (i != d) axes.push_back(x.layout().dim(i));
  }
  return made(kernels::argmax(x.local(), d), x.global_shape().without(d), x, Layout(axes),
              "argmax(" + x_in.name() + ")");
}

DTensor where(const DTensor& cond_in, const DTensor& a, const DTensor& b_in) {
  check_same_mesh("where", a, b_in);
  check_same_mesh("where", a, cond_in);
  MESHRT_CHECK_SHAPE(a.global_shape() == b_in.global_shape() && a.global_shape() == cond_in.global_shape() &&
                         a.dtype() == b_in.dtype(),
                     "where: ", cond_in.description(), ", ", a.description(), " and ", b_in.description(),
                     " must have one shape, and a and b one dtype");
  DTensor b = redistribute(b_in, a.layout());
  DTensor cond = redistribute(cond_in, a.layout().with_partials({}));
  return made(kernels::where(cond.local(), a.local(), b.local()), a.global_shape(), a, a.layout(),
              "where(" + cond_in.name() + ", " + a.name() + ", " + b_in.name() + ")")
      .after(b)
      .after(cond);
}

DTensor masked_fill(const DTensor& x_in, const DTensor& mask_in, double value) {
  check_same_mesh("masked_fill", x_in, mask_in);
  MESHRT_CHECK_SHAPE(x_in.global_shape() == mask_in.global_shape(), "masked_fill: ", x_in.description(), " and mask ",
                     mask_in.description(), " must have one shape");
  DTensor x = reduce_partials_except(x_in, kernels::kThroughMax | kernels::kThroughMin | kernels::kThroughAvg);
  DTensor mask = redistribute(mask_in, x.layout().with_partials({}));
  return made(kernels::masked_fill(x.local(), mask.local(), value), x.global_shape(), x, x.layout(),
              "masked_fill(" + x_in.name() + ")")
      .after(mask);
}

}  // namespace meshrt::sharding

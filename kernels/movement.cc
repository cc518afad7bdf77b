#include "kernels/movement.h"

#include <cstring>

#include "device/convert.h"
#include "kernels/backend.h"
#include "kernels/dispatch.h"

namespace meshrt::kernels {

namespace {
constexpr DType kIndexTypes[] = {DType::kI32, DType::kI64};
constexpr DType kMaskTypes[] = {DType::kBool, DType::kU8};
constexpr DType kAddTypes[] = {DType::kF32, DType::kF64};  // index_add (CUDA's atomicAdd)

// dim normalised against x's rank, or Error(kInvalidArgument) naming op and x.
int axis_of(const char* op, const DeviceTensor& x, int dim) {
  int n = x.ndim();
  MESHRT_CHECK_ARG(dim >= -n && dim < n, op, ": dimension ", dim, " is out of range for ",
                   x.description(), " (", n, " dimensions)");
  return dim < 0 ? dim + n : dim;
}

DeviceTensor empty_like_shape(const DeviceTensor& x, const Shape& shape, DType dtype) {
  return DeviceTensor::empty(shape, dtype, x.device());
}

std::string dims_string(const std::vector<int>& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

// Slices of x along axis a: rows = outer(a) blocks of row_bytes, taken from
// offset bytes into each source row of src_pitch bytes, to dst with dst_pitch.
void copy_blocks(const DeviceTensor& src, size_t src_offset, size_t src_pitch, const DeviceTensor& dst,
                 size_t dst_offset, size_t dst_pitch, size_t row_bytes, size_t rows, const Stream* stream) {
  copy_rows(src.device(), static_cast<char*>(dst.raw_data()) + dst_offset, dst_pitch,
            static_cast<const char*>(src.raw_data()) + src_offset, src_pitch, row_bytes, rows, stream);
}
}  // namespace

DeviceTensor permute(const DeviceTensor& x, const std::vector<int>& dims, const Stream* stream) {
  MESHRT_CHECK_ARG(x.defined(), "permute of an undefined tensor");
  const int n = x.ndim();
  MESHRT_CHECK_ARG(static_cast<int>(dims.size()) == n, "permute: dims ", dims_string(dims), " has ",
                   dims.size(), " entries for ", x.description(), " with ", n, " dimensions");
  std::vector<int> p(dims.size());
  std::vector<bool> seen(dims.size(), false);
  for (size_t i = 0; i < dims.size(); ++i) {
    int a = axis_of("permute", x, dims[i]);
    MESHRT_CHECK_ARG(!seen[static_cast<size_t>(a)], "permute: dims ", dims_string(dims),
                     " repeats dimension ", a, " of ", x.description());
    seen[static_cast<size_t>(a)] = true;
    p[i] = a;
  }
  std::vector<int64_t> out_dims(dims.size());
  for (size_t i = 0; i < p.size(); ++i) out_dims[i] = x.dim(p[i]);
  DeviceTensor out = empty_like_shape(x, Shape(out_dims), x.dtype());
  if (out.numel() == 0) return out;

  // Out's dimensions with x's strides, extents of 1 dropped and neighbours
  // that stay together in memory (stride[i-1] == stride[i] * extent[i]) merged.
  PermuteArgs args{};
  args.element_size = static_cast<int>(x.element_size());
  std::vector<int64_t> extents, strides;
  for (size_t i = 0; i < p.size(); ++i) {
    int64_t extent = x.dim(p[i]), stride = x.shape().inner(p[i]);
    if (extent == 1) continue;
    if (!extents.empty() && strides.back() == stride * extent) {
      extents.back() *= extent;
      strides.back() = stride;
    } else {
      extents.push_back(extent);
      strides.push_back(stride);
    }
  }
  if (extents.empty() || (extents.size() == 1 && strides[0] == 1)) {  // the order of memory is kept
    copy(x, out.reshape(x.shape()), stream);
    return out;
  }
  MESHRT_CHECK_SHAPE(extents.size() <= static_cast<size_t>(kMaxPermuteDims), "permute ",
                     dims_string(dims), " of ", x.description(), " moves ", extents.size(),
                     " separate blocks of dimensions; at most ", kMaxPermuteDims, " are supported");
  args.ndim = static_cast<int>(extents.size());
  for (size_t i = 0; i < extents.size(); ++i) {
    args.extents[i] = extents[i];
    args.strides[i] = strides[i];
  }
  detail::Launch launch = detail::launch_for("permute", x.device(), stream, {&x, &out});
  MESHRT_DISPATCH(launch, permute, args, x.raw_data(), out.raw_data());
  return out;
}

DeviceTensor transpose(const DeviceTensor& x, int dim0, int dim1, const Stream* stream) {
  MESHRT_CHECK_ARG(x.defined(), "transpose of an undefined tensor");
  int a = axis_of("transpose", x, dim0), b = axis_of("transpose", x, dim1);
  std::vector<int> dims(static_cast<size_t>(x.ndim()));
  for (int i = 0; i < x.ndim(); ++i) dims[static_cast<size_t>(i)] = i;
  std::swap(dims[static_cast<size_t>(a)], dims[static_cast<size_t>(b)]);
  return permute(x, dims, stream);
}

DeviceTensor concat(const std::vector<DeviceTensor>& xs, int dim, const Stream* stream) {
  MESHRT_CHECK_ARG(!xs.empty(), "concat of no tensors");
  const DeviceTensor& first = xs.front();
  for (size_t i = 0; i < xs.size(); ++i) {
    MESHRT_CHECK_ARG(xs[i].defined(), "concat: piece ", i, " is an undefined tensor");
    MESHRT_CHECK_ARG(xs[i].device() == first.device(), "concat: tensors on different devices (",
                     first.description(), " and ", xs[i].description(), ")");
  }
  const int a = axis_of("concat", first, dim);
  int64_t total = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    const DeviceTensor& p = xs[i];
    MESHRT_CHECK_SHAPE(p.dtype() == first.dtype() && p.ndim() == first.ndim() &&
                           p.shape().with(a, 0) == first.shape().with(a, 0),
                       "concat along dimension ", dim, ": piece ", i, " ", p.description(),
                       " does not fit piece 0 ", first.description(),
                       " (same dtype, and extents equal but along the dimension)");
    total += p.dim(a);
  }
  DeviceTensor out = empty_like_shape(first, first.shape().with(a, total), first.dtype());
  if (out.numel() == 0) return out;
  detail::launch_for("concat", first.device(), stream, {&out});  // device and stream checks
  const size_t es = first.element_size();
  const size_t inner = static_cast<size_t>(first.shape().inner(a)) * es;
  const size_t rows = static_cast<size_t>(first.shape().outer(a));
  size_t at = 0;
  for (const DeviceTensor& p : xs) {
    size_t row_bytes = static_cast<size_t>(p.dim(a)) * inner;
    if (row_bytes == 0) continue;
    prepare_stream_use(stream, {&p});
    copy_blocks(p, 0, row_bytes, out, at, static_cast<size_t>(total) * inner, row_bytes, rows, stream);
    at += row_bytes;
  }
  return out;
}

DeviceTensor narrow(const DeviceTensor& x, int dim, int64_t start, int64_t length, const Stream* stream) {
  MESHRT_CHECK_ARG(x.defined(), "narrow of an undefined tensor");
  const int a = axis_of("narrow", x, dim);
  MESHRT_CHECK_ARG(start >= 0 && length >= 0 && start <= x.dim(a) && length <= x.dim(a) - start,
                   "narrow: [", start, ", ", start, " + ", length, ") is not inside [0, ", x.dim(a),
                   ") of dimension ", dim, " of ", x.description());
  DeviceTensor out = empty_like_shape(x, x.shape().with(a, length), x.dtype());
  if (out.numel() == 0) return out;
  detail::launch_for("narrow", x.device(), stream, {&x, &out});
  const size_t inner = static_cast<size_t>(x.shape().inner(a)) * x.element_size();
  const size_t row_bytes = static_cast<size_t>(length) * inner;
  copy_blocks(x, static_cast<size_t>(start) * inner, static_cast<size_t>(x.dim(a)) * inner, out, 0, row_bytes,
              row_bytes, static_cast<size_t>(x.shape().outer(a)), stream);
  return out;
}

DeviceTensor index_select(const DeviceTensor& x, int dim, const DeviceTensor& index, const Stream* stream) {
  detail::check_same_device("index_select", {&x, &index});
  detail::check_dtype("index_select", index, kIndexTypes);
  const int a = axis_of("index_select", x, dim);
  std::vector<int64_t> dims(x.shape().begin(), x.shape().begin() + a);
  dims.insert(dims.end(), index.shape().begin(), index.shape().end());
  dims.insert(dims.end(), x.shape().begin() + a + 1, x.shape().end());
  DeviceTensor out = empty_like_shape(x, Shape(dims), x.dtype());
  if (out.numel() == 0) return out;
  GatherArgs args{static_cast<int>(x.element_size()), index.dtype(), x.shape().outer(a), x.dim(a),
                  index.numel(), x.shape().inner(a), 0, false, "index_select", a};
  detail::Launch launch = detail::launch_for("index_select", x.device(), stream, {&x, &index, &out});
  MESHRT_DISPATCH(launch, gather, args, x.raw_data(), index.raw_data(), out.raw_data());
  return out;
}

void index_copy(const DeviceTensor& x, int dim, const DeviceTensor& index, const DeviceTensor& src, const Stream* stream) {
  detail::check_same_device("index_copy", {&x, &index, &src});
  detail::check_dtype("index_copy", index, kIndexTypes);
  const int a = axis_of("index_copy", x, dim);
  MESHRT_CHECK_SHAPE(index.ndim() == 1 && src.dtype() == x.dtype() && src.shape() == x.shape().with(a, index.numel()),
                     "index_copy: src must be x's shape with ", index.numel(), " (the index's count) along dimension ",
                     dim, " and x's dtype, and the index 1-D; got x ", x.description(), ", index ",
                     index.description(), ", src ", src.description());
  if (src.numel() == 0) return;
  GatherArgs args{static_cast<int>(x.element_size()), index.dtype(), x.shape().outer(a), x.dim(a),
                  index.numel(), x.shape().inner(a), 0, true, "index_copy", a};
  detail::Launch launch = detail::launch_for("index_copy", x.device(), stream, {&x, &index, &src});
  MESHRT_DISPATCH(launch, scatter, args, static_cast<const void*>(src.raw_data()), static_cast<const void*>(index.raw_data()),
                  x.raw_data());
}

void index_add(const DeviceTensor& x, int dim, const DeviceTensor& index, const DeviceTensor& src, const Stream* stream) {
  detail::check_same_device("index_add", {&x, &index, &src});
  detail::check_dtype("index_add", index, kIndexTypes);
  detail::check_dtype("index_add", x, kAddTypes);
  const int a = axis_of("index_add", x, dim);
  MESHRT_CHECK_SHAPE(index.ndim() == 1 && src.dtype() == x.dtype() && src.shape() == x.shape().with(a, index.numel()),
                     "index_add: src must be x's shape with ", index.numel(), " (the index's count) along dimension ",
                     dim, " and x's dtype, and the index 1-D; got x ", x.description(), ", index ",
                     index.description(), ", src ", src.description());
  if (src.numel() == 0) return;
  GatherArgs args{static_cast<int>(x.element_size()), index.dtype(), x.shape().outer(a), x.dim(a),
                  index.numel(), x.shape().inner(a), 0, false, "index_add", a};
  detail::Launch launch = detail::launch_for("index_add", x.device(), stream, {&x, &index, &src});
  MESHRT_DISPATCH(launch, scatter_add, args, x.dtype(), static_cast<const void*>(src.raw_data()),
                  static_cast<const void*>(index.raw_data()), x.raw_data());
}

DeviceTensor embedding(const DeviceTensor& table, const DeviceTensor& ids, int64_t first_id, const Stream* stream) {
  detail::check_same_device("embedding", {&table, &ids});
  detail::check_dtype("embedding", ids, kIndexTypes);
  MESHRT_CHECK_SHAPE(table.ndim() == 2, "embedding: the table must be [rows, hidden], got ", table.description());
  std::vector<int64_t> dims(ids.shape().begin(), ids.shape().end());
  dims.push_back(table.dim(1));
  DeviceTensor out = empty_like_shape(table, Shape(dims), table.dtype());
  if (out.numel() == 0) return out;
  GatherArgs args{static_cast<int>(table.element_size()), ids.dtype(), 1, table.dim(0), ids.numel(),
                  table.dim(1), first_id, true, "embedding", 0};
  detail::Launch launch = detail::launch_for("embedding", table.device(), stream, {&table, &ids, &out});
  MESHRT_DISPATCH(launch, gather, args, table.raw_data(), ids.raw_data(), out.raw_data());
  return out;
}

DeviceTensor where(const DeviceTensor& cond, const DeviceTensor& a, const DeviceTensor& b, const Stream* stream) {
  detail::check_same_device("where", {&cond, &a, &b});
  detail::check_dtype("where", cond, kMaskTypes);
  MESHRT_CHECK_SHAPE(a.dtype() == b.dtype(), "where: a and b must have one dtype, got ", a.description(),
                     " and ", b.description());
  MESHRT_CHECK_SHAPE(cond.shape() == a.shape() && a.shape() == b.shape(), "where: cond, a and b must have one shape, got ",
                     cond.description(), ", ", a.description(), " and ", b.description());
  DeviceTensor out = empty_like_shape(a, a.shape(), a.dtype());
  if (out.numel() == 0) return out;
  WhereArgs args{static_cast<int>(a.element_size()), a.numel(), 0};
  detail::Launch launch = detail::launch_for("where", a.device(), stream, {&cond, &a, &b, &out});
  MESHRT_DISPATCH(launch, where, args, cond.raw_data(), static_cast<const void*>(a.raw_data()),
                  static_cast<const void*>(b.raw_data()), out.raw_data());
  return out;
}

DeviceTensor masked_fill(const DeviceTensor& x, const DeviceTensor& mask, double value, const Stream* stream) {
  detail::check_same_device("masked_fill", {&x, &mask});
  detail::check_dtype("masked_fill", mask, kMaskTypes);
  MESHRT_CHECK_SHAPE(mask.shape() == x.shape(), "masked_fill: the mask must have x's shape, got ",
                     mask.description(), " for x ", x.description());
  DeviceTensor out = empty_like_shape(x, x.shape(), x.dtype());
  if (out.numel() == 0) return out;
  WhereArgs args{static_cast<int>(x.element_size()), x.numel(), 0};
  visit_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T v = convert<T>(value);
    std::memcpy(&args.scalar_a, &v, sizeof v);
  });
  detail::Launch launch = detail::launch_for("masked_fill", x.device(), stream, {&x, &mask, &out});
  MESHRT_DISPATCH(launch, where, args, mask.raw_data(), static_cast<const void*>(nullptr),
                  static_cast<const void*>(x.raw_data()), out.raw_data());
  return out;
}

}  // namespace meshrt::kernels

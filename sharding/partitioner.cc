#include "sharding/partitioner.h"

#include <algorithm>

#include "sharding/blocks.h"

namespace meshrt::sharding {

namespace {
void check_axis(const Shape& shape, int axis, const char* who) {
  MESHRT_CHECK_ARG(axis >= 0 && axis < shape.ndim(), who, ": axis ", axis, " is outside shape ", shape);
}
}  // namespace

FixedShardsPartitioner::FixedShardsPartitioner(int num_shards, int axis) : num_shards_(num_shards), axis_(axis) {
  MESHRT_CHECK_ARG(num_shards >= 1, "FixedShardsPartitioner: num_shards must be >= 1, got ", num_shards);
}

Partition FixedShardsPartitioner::operator()(const Shape& shape, DType) const {
  check_axis(shape, axis_, "FixedShardsPartitioner");
  Partition p(static_cast<size_t>(shape.ndim()), 1);
  p[static_cast<size_t>(axis_)] = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_shards_, shape[axis_])));
  return p;
}

MinSizePartitioner::MinSizePartitioner(int64_t min_shard_bytes, int max_shards, int axis)
    : min_shard_bytes_(min_shard_bytes), max_shards_(max_shards), axis_(axis) {
  MESHRT_CHECK_ARG(min_shard_bytes >= 1, "MinSizePartitioner: min_shard_bytes must be >= 1, got ", min_shard_bytes);
  MESHRT_CHECK_ARG(max_shards >= 1, "MinSizePartitioner: max_shards must be >= 1, got ", max_shards);
}

Partition MinSizePartitioner::operator()(const Shape& shape, DType dtype) const {
  check_axis(shape, axis_, "MinSizePartitioner");
  // TensorFlow's rule (min_max_variable_partitioner): ceil(total bytes / min_shard_bytes)
  // shards, capped by max_shards and the axis's extent, at least one.
  int64_t bytes = shape.numel() * static_cast<int64_t>(size_of(dtype));
  int64_t wanted = bytes / min_shard_bytes_ + (bytes % min_shard_bytes_ != 0 ? 1 : 0);
  int64_t shards = std::min<int64_t>({static_cast<int64_t>(max_shards_), wanted, shape[axis_]});
  Partition p(static_cast<size_t>(shape.ndim()), 1);
  p[static_cast<size_t>(axis_)] = static_cast<int>(std::max<int64_t>(1, shards));
  return p;
}

MaxSizePartitioner::MaxSizePartitioner(int64_t max_shard_bytes, int max_shards, int axis)
    : max_shard_bytes_(max_shard_bytes), max_shards_(max_shards), axis_(axis) {
  MESHRT_CHECK_ARG(max_shard_bytes >= 1, "MaxSizePartitioner: max_shard_bytes must be >= 1, got ", max_shard_bytes);
  MESHRT_CHECK_ARG(max_shards >= 0, "MaxSizePartitioner: max_shards must be >= 0 (0: no cap), got ", max_shards);
}

Partition MaxSizePartitioner::operator()(const Shape& shape, DType dtype) const {
  check_axis(shape, axis_, "MaxSizePartitioner");
  Partition p(static_cast<size_t>(shape.ndim()), 1);
  int64_t rows = shape[axis_];
  if (rows == 0) return p;
  // TensorFlow's rule: rows that fit in a shard (at least one), then shards
  // for every row, capped by max_shards.
  int64_t row_bytes = shape.numel() / rows * static_cast<int64_t>(size_of(dtype));
  int64_t rows_per_shard = row_bytes == 0 ? rows : std::max<int64_t>(1, max_shard_bytes_ / row_bytes);
  int64_t shards = rows / rows_per_shard + (rows % rows_per_shard != 0 ? 1 : 0);
  if (max_shards_ > 0) shards = std::min<int64_t>(shards, max_shards_);
  p[static_cast<size_t>(axis_)] = static_cast<int>(std::max<int64_t>(1, shards));
  return p;
}

std::vector<int64_t> shard_extents(int64_t extent, int shards) {
  MESHRT_CHECK_ARG(shards >= 1, "shard_extents: shards must be >= 1");
  std::vector<int64_t> out(static_cast<size_t>(shards), extent / shards);
  for (int64_t i = 0; i < extent % shards; ++i) ++out[static_cast<size_t>(i)];
  return out;
}

std::vector<HostTensor> split_variable(const HostTensor& t, const Partition& partition) {
  MESHRT_CHECK_SHAPE(static_cast<int>(partition.size()) == t.ndim(), "split_variable: a partition of ",
                     partition.size(), " dimensions for ", t.description());
  std::vector<HostTensor> pieces = {t};
  for (int d = 0; d < t.ndim(); ++d) {
    int n = partition[static_cast<size_t>(d)];
    if (n == 1) continue;
    std::vector<HostTensor> next;
    for (const HostTensor& piece : pieces) {
      std::vector<int64_t> extents = shard_extents(piece.dim(d), n);
      int64_t offset = 0;
      for (int64_t e : extents) {
        // One block of extent e at offset along d: a strided copy.
        HostTensor out = HostTensor::empty(piece.shape().with(d, e), piece.dtype());
        size_t inner = static_cast<size_t>(piece.shape().inner(d)) * piece.element_size();
        copy_host_rows(out.raw_data(), static_cast<size_t>(e) * inner,
                       static_cast<const char*>(piece.raw_data()) + static_cast<size_t>(offset) * inner,
                       static_cast<size_t>(piece.dim(d)) * inner, static_cast<size_t>(e) * inner,
                       static_cast<size_t>(piece.shape().outer(d)));
        next.push_back(out);
        offset += e;
      }
    }
    pieces = std::move(next);
  }
  return pieces;
}

Layout layout_for_partition(const Partition& partition, const Shape& shape, const Mesh& mesh,
                            const std::string& axis) {
  MESHRT_CHECK_SHAPE(static_cast<int>(partition.size()) == shape.ndim(), "layout_for_partition: a partition of ",
                     partition.size(), " dimensions for shape ", shape);
  int size = mesh.axis_size(axis);
  std::vector<std::vector<std::string>> dims(partition.size());
  for (size_t d = 0; d < partition.size(); ++d) {
    if (partition[d] == 1) continue;
    MESHRT_CHECK_SHAPE(partition[d] == size, "the partition cuts dimension ", d, " of ", shape, " into ",
                       partition[d], " shards but mesh axis '", axis, "' has ", size, " ranks");
    // TensorFlow's split (first ones larger) and a layout's torch.chunk sizes
    // agree when the sizes divide, and in some uneven cases (5 over 2: 3, 2).
    std::vector<int64_t> tf = shard_extents(shape[static_cast<int>(d)], size);
    std::vector<int64_t> chunk = chunk_extents(shape[static_cast<int>(d)], size);
    MESHRT_CHECK_SHAPE(tf == chunk, "the partition of dimension ", d, " of ", shape, " into ", size,
                       " shards follows TensorFlow's split (", Shape(tf), ": the first ones one larger), but a layout "
                       "cuts by torch.chunk's rule (", Shape(chunk), "): place the shards one by one, or choose a "
                       "partition whose sizes divide");
    dims[d] = {axis};
  }
  return Layout(dims);
}

}  // namespace meshrt::sharding

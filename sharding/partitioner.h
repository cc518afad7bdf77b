// Variable partitioners, as TensorFlow's tf.distribute.experimental.partitioners:
// given a variable's shape and dtype, how many shards to cut each dimension into
// (one entry per dimension, only `axis` > 1).
//
//   FixedShardsPartitioner(n): n shards along axis (fewer if the axis is shorter).
//   MinSizePartitioner(min_shard_bytes, max_shards): TensorFlow's rule,
//     ceil(total bytes / min_shard_bytes) shards, capped by max_shards and by the
//     axis length, at least one.
//   MaxSizePartitioner(max_shard_bytes, max_shards): TensorFlow's rule
//     (variable_axis_size_partitioner): as many rows per shard as fit in
//     max_shard_bytes (at least one), ceil(rows / that) shards, capped by
//     max_shards when it is > 0 (a shard may then exceed max_shard_bytes).
//
// Shards along the axis may be uneven: the first (extent mod n) shards get one
// row more (TensorFlow's split for partitioned variables, which the
// parameter-server partitioners keep: 10 over 4 gives 3, 3, 2, 2). DTensor
// layouts use torch.chunk's sizes instead (layout.h: 10 over 4 gives 3, 3, 3,
// 1), a different rule. split_variable() cuts a host tensor by a partition;
// layout_for_partition() places one shard per rank of a mesh axis where the
// two rules give the same sizes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "device/tensor.h"
#include "sharding/layout.h"

namespace meshrt::sharding {

using Partition = std::vector<int>;

class FixedShardsPartitioner {
 public:
  explicit FixedShardsPartitioner(int num_shards, int axis = 0);
  Partition operator()(const Shape& shape, DType dtype) const;

 private:
  int num_shards_, axis_;
};

class MinSizePartitioner {
 public:
  explicit MinSizePartitioner(int64_t min_shard_bytes = 256 << 10, int max_shards = 1, int axis = 0);
  Partition operator()(const Shape& shape, DType dtype) const;

 private:
  int64_t min_shard_bytes_;
  int max_shards_, axis_;
};

class MaxSizePartitioner {
 public:
  // max_shards 0: no cap.
  explicit MaxSizePartitioner(int64_t max_shard_bytes, int max_shards = 0, int axis = 0);
  Partition operator()(const Shape& shape, DType dtype) const;

 private:
  int64_t max_shard_bytes_;
  int max_shards_, axis_;
};

// Extents of `shards` shards of a dimension of length extent (first ones larger).
std::vector<int64_t> shard_extents(int64_t extent, int shards);

// Cuts t into the shards partition describes (row-major over the partitioned
// dimensions), each a new host tensor.
std::vector<HostTensor> split_variable(const HostTensor& t, const Partition& partition);

// The layout that places a partitioned variable with one shard per rank of mesh
// axis: the partitioned dimension sharded over it. Throws Error(kShape) when the
// partition has another number of shards, or sizes where TensorFlow's split
// and torch.chunk's differ, saying which.
Layout layout_for_partition(const Partition& partition, const Shape& shape, const Mesh& mesh,
                            const std::string& axis);

}  // namespace meshrt::sharding

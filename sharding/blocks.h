// Internal to sharding/: cutting a tensor into blocks along one dimension and
// putting blocks back together, on any device (strided copies with copy_rows,
// so cudaMemcpy2DAsync on GPUs). Blocks may differ in size (torch.chunk's
// sizes, layout.h), and may be empty.
#pragma once

#include <vector>

#include "device/tensor.h"
#include "sharding/layout.h"

namespace meshrt::sharding::blocks {

// The block [block.offset, block.offset + block.size) of t along dimension d: t
// itself when that is the whole dimension, else a copy.
template <class Space>
Tensor<Space> take_block(const Tensor<Space>& t, int d, Extent block);

// t cut along d into pieces of the given extents (they sum to t.dim(d)), one
// after another: [piece 0][piece 1]..., each row-major. The send buffer of
// reduce_scatter and all_to_all.
DeviceTensor pack_pieces(const DeviceTensor& t, int d, const std::vector<int64_t>& extents);

// The inverse: consecutive pieces in packed, piece j of shape base.with(d,
// extents[j]), joined along d. The receive buffer of all_gather and
// all_to_all, made whole.
DeviceTensor join_pieces(const DeviceTensor& packed, const Shape& base, int d, const std::vector<int64_t>& extents);

// The sum of counts or extents.
int64_t total(const std::vector<int64_t>& v);

// Elements of each piece: extents[j] times the elements of base outside d.
std::vector<int64_t> piece_counts(const Shape& base, int d, const std::vector<int64_t>& extents);

}  // namespace meshrt::sharding::blocks

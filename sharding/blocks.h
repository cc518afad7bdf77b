// Internal to sharding/: cutting a tensor into equal blocks along one dimension
// and putting blocks back together, on any device (strided copies with
// copy_rows, so cudaMemcpy2DAsync on GPUs).
#pragma once

#include "device/tensor.h"

namespace meshrt::sharding::blocks {

// Block `index` of `parts` equal blocks of t along dimension d.
template <class Space>
Tensor<Space> take_block(const Tensor<Space>& t, int d, int64_t index, int64_t parts);

// All `parts` blocks of t along d, one after another: [block 0][block 1]...,
// each block row-major. The send buffer of reduce_scatter and all_to_all.
DeviceTensor pack_blocks(const DeviceTensor& t, int d, int64_t parts);

// The inverse: `parts` consecutive blocks of shape block (in packed) put side by
// side along d. The receive buffer of all_gather and all_to_all, made whole.
DeviceTensor unpack_blocks(const DeviceTensor& packed, const Shape& block, int d, int64_t parts);

}  // namespace meshrt::sharding::blocks

#include "sharding/blocks.h"

namespace meshrt::sharding::blocks {

namespace {
// Bytes of one row of the block copy (extent along d times everything after d)
// and the number of rows (everything before d).
struct Geometry {
  size_t rows, block_row_bytes, full_row_bytes;
};

Geometry geometry(const Shape& full, DType dtype, int d, int64_t parts) {
  MESHRT_CHECK_SHAPE(full[d] % parts == 0, "cannot cut dimension ", d, " of ", full, " into ", parts,
                     " equal blocks");
  size_t inner = static_cast<size_t>(full.inner(d)) * size_of(dtype);
  return {static_cast<size_t>(full.outer(d)), static_cast<size_t>(full[d] / parts) * inner,
          static_cast<size_t>(full[d]) * inner};
}

}  // namespace

template <class Space>
Tensor<Space> take_block(const Tensor<Space>& t, int d, int64_t index, int64_t parts) {
  if (parts == 1) return t;
  Geometry g = geometry(t.shape(), t.dtype(), d, parts);
  Tensor<Space> out = Tensor<Space>::empty(t.shape().with(d, t.dim(d) / parts), t.dtype(), t.device());
  const char* from = static_cast<const char*>(t.raw_data()) + static_cast<size_t>(index) * g.block_row_bytes;
  if constexpr (Tensor<Space>::kIsHost) {
    copy_host_rows(out.raw_data(), g.block_row_bytes, from, g.full_row_bytes, g.block_row_bytes, g.rows);
  } else {
    copy_rows(t.device(), out.raw_data(), g.block_row_bytes, from, g.full_row_bytes, g.block_row_bytes, g.rows);
  }
  return out;
}

template HostTensor take_block(const HostTensor&, int, int64_t, int64_t);
template DeviceTensor take_block(const DeviceTensor&, int, int64_t, int64_t);

DeviceTensor pack_blocks(const DeviceTensor& t, int d, int64_t parts) {
  Geometry g = geometry(t.shape(), t.dtype(), d, parts);
  DeviceTensor out = DeviceTensor::empty(t.shape(), t.dtype(), t.device());
  size_t block_bytes = g.block_row_bytes * g.rows;
  for (int64_t j = 0; j < parts; ++j) {
    copy_rows(t.device(), static_cast<char*>(out.raw_data()) + static_cast<size_t>(j) * block_bytes,
              g.block_row_bytes, static_cast<const char*>(t.raw_data()) + static_cast<size_t>(j) * g.block_row_bytes,
              g.full_row_bytes, g.block_row_bytes, g.rows);
  }
  return out;
}

DeviceTensor unpack_blocks(const DeviceTensor& packed, const Shape& block, int d, int64_t parts) {
  Shape full = block.with(d, block[d] * parts);
  MESHRT_CHECK_SHAPE(packed.numel() == full.numel(), "unpack_blocks: ", packed.description(), " is not ",
                     parts, " blocks of ", block);
  Geometry g = geometry(full, packed.dtype(), d, parts);
  DeviceTensor out = DeviceTensor::empty(full, packed.dtype(), packed.device());
  size_t block_bytes = g.block_row_bytes * g.rows;
  for (int64_t j = 0; j < parts; ++j) {
    copy_rows(packed.device(), static_cast<char*>(out.raw_data()) + static_cast<size_t>(j) * g.block_row_bytes,
              g.full_row_bytes, static_cast<const char*>(packed.raw_data()) + static_cast<size_t>(j) * block_bytes,
              g.block_row_bytes, g.block_row_bytes, g.rows);
  }
  return out;
}

}  // namespace meshrt::sharding::blocks

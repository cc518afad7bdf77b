#include "sharding/blocks.h"

namespace meshrt::sharding::blocks {

namespace {
// A block copy along d: rows (everything before d) of extent x inner bytes.
struct Geometry {
  size_t rows, inner_bytes;
  size_t row_bytes(int64_t extent) const { return static_cast<size_t>(extent) * inner_bytes; }
};

Geometry geometry(const Shape& shape, DType dtype, int d) {
  return {static_cast<size_t>(shape.outer(d)), static_cast<size_t>(shape.inner(d)) * size_of(dtype)};
}

}  // namespace

int64_t total(const std::vector<int64_t>& v) {
  int64_t n = 0;
  for (int64_t e : v) n += e;
  return n;
}

template <class Space>
Tensor<Space> take_block(const Tensor<Space>& t, int d, Extent block) {
  MESHRT_CHECK_SHAPE(block.offset >= 0 && block.size >= 0 && block.offset + block.size <= t.dim(d),
                     "take_block: [", block.offset, ", ", block.offset + block.size, ") of dimension ", d, " of ",
                     t.description());
  if (block.offset == 0 && block.size == t.dim(d)) return t;
  Geometry g = geometry(t.shape(), t.dtype(), d);
  Tensor<Space> out = Tensor<Space>::empty(t.shape().with(d, block.size), t.dtype(), t.device());
  if (out.numel() == 0) return out;
  const char* from = static_cast<const char*>(t.raw_data()) + g.row_bytes(block.offset);
  if constexpr (Tensor<Space>::kIsHost) {
    copy_host_rows(out.raw_data(), g.row_bytes(block.size), from, g.row_bytes(t.dim(d)), g.row_bytes(block.size),
                   g.rows);
  } else {
    copy_rows(t.device(), out.raw_data(), g.row_bytes(block.size), from, g.row_bytes(t.dim(d)),
              g.row_bytes(block.size), g.rows);
  }
  return out;
}

template HostTensor take_block(const HostTensor&, int, Extent);
template DeviceTensor take_block(const DeviceTensor&, int, Extent);

DeviceTensor pack_pieces(const DeviceTensor& t, int d, const std::vector<int64_t>& extents) {
  MESHRT_CHECK_SHAPE(total(extents) == t.dim(d), "pack_pieces: the pieces of dimension ", d, " of ",
                     t.description(), " add up to ", total(extents));
  Geometry g = geometry(t.shape(), t.dtype(), d);
  DeviceTensor out = DeviceTensor::empty({t.numel()}, t.dtype(), t.device());
  size_t at = 0, from = 0;
  for (int64_t e : extents) {
    if (e > 0 && g.rows > 0) {
      copy_rows(t.device(), static_cast<char*>(out.raw_data()) + at, g.row_bytes(e),
                static_cast<const char*>(t.raw_data()) + from, g.row_bytes(t.dim(d)), g.row_bytes(e), g.rows);
    }
    at += g.row_bytes(e) * g.rows;
    from += g.row_bytes(e);
  }
  return out;
}

DeviceTensor join_pieces(const DeviceTensor& packed, const Shape& base, int d, const std::vector<int64_t>& extents) {
  Shape whole = base.with(d, total(extents));
  MESHRT_CHECK_SHAPE(packed.numel() == whole.numel(), "join_pieces: ", packed.description(), " is not the pieces of ",
                     whole);
  Geometry g = geometry(whole, packed.dtype(), d);
  DeviceTensor out = DeviceTensor::empty(whole, packed.dtype(), packed.device());
  size_t at = 0, to = 0;
  for (int64_t e : extents) {
    if (e > 0 && g.rows > 0) {
      copy_rows(packed.device(), static_cast<char*>(out.raw_data()) + to, g.row_bytes(whole[d]),
                static_cast<const char*>(packed.raw_data()) + at, g.row_bytes(e), g.row_bytes(e), g.rows);
    }
    at += g.row_bytes(e) * g.rows;
    to += g.row_bytes(e);
  }
  return out;
}

std::vector<int64_t> piece_counts(const Shape& base, int d, const std::vector<int64_t>& extents) {
  int64_t rest = base.outer(d) * base.inner(d);
  std::vector<int64_t> counts;
  for (int64_t e : extents) counts.push_back(e * rest);
  return counts;
}

}  // namespace meshrt::sharding::blocks

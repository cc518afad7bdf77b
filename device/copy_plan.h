// Internal to device/: how copy_rows moves `rows` rows of row_bytes between
// pitched buffers on a GPU. cudaMemcpy2DAsync refuses pitches above the device's
// cudaDevAttrMaxPitch (~2 GiB), which slicing a tensor whose rows are longer
// than that reaches (a 128256 x 8192 f32 embedding is 4.2 GB), so:
//   contiguous rows (or one row)   one 1-D copy of every byte
//   both pitches <= max_pitch      one 2-D copy
//   otherwise                      one 1-D copy per row (few: rows x pitch fit in memory)
#pragma once

#include <cstddef>

namespace meshrt::detail {

enum class RowCopy { kContiguous, kPitched, kPerRow };

inline RowCopy plan_row_copy(size_t row_bytes, size_t rows, size_t src_pitch, size_t dst_pitch, size_t max_pitch) {
  if (rows <= 1 || (src_pitch == row_bytes && dst_pitch == row_bytes)) return RowCopy::kContiguous;
  if (src_pitch <= max_pitch && dst_pitch <= max_pitch) return RowCopy::kPitched;
  return RowCopy::kPerRow;
}

}  // namespace meshrt::detail

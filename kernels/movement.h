// Data movement: permutes, concatenation, slices, gathers and selects, cpu and
// CUDA behind one call. Every dtype (f32, f64, f16, bf16, i32, i64, u8, bool)
// flows through: elements are copied, never computed (masked_fill converts its
// value once, by meshrt's cast rule, device/convert.h), except by index_add
// (f32 and f64), which adds them. Each call queues its
// work on stream (the device's default stream when null) and returns a new
// contiguous tensor; axes may be negative (from the end). Errors name the op and
// the tensors: Error(kShape) for shapes and dtypes that do not fit,
// Error(kInvalidArgument) for a bad axis, range or index.
//
// Limits: permute handles any rank whose dimensions, once those that stay
// together in memory are merged and extents of 1 dropped, number at most 8
// (Error(kShape) past that). Index values of index_select are checked by the
// kernel: on the cpu an index outside [0, x.shape[dim]) throws
// Error(kInvalidArgument) naming it from the kernel, which surfaces at the call
// (work run at once) or at the next wait on the stream (queued work: the
// stream's error is then sticky). On CUDA such an index reads nothing and gives
// a slice of zeros, unreported (a kernel cannot throw; checking on the host
// would wait for the index).
#pragma once

#include <cstdint>
#include <vector>

#include "device/tensor.h"

namespace meshrt::kernels {

// out.shape[i] = x.shape[dims[i]]; dims a permutation of x's axes (negative allowed).
DeviceTensor permute(const DeviceTensor& x, const std::vector<int>& dims, const Stream* stream = nullptr);
// x with axes dim0 and dim1 swapped.
DeviceTensor transpose(const DeviceTensor& x, int dim0, int dim1, const Stream* stream = nullptr);
// xs one after another along dim: same dtype, device and rank, extents equal
// except along dim; pieces of extent 0 are allowed.
DeviceTensor concat(const std::vector<DeviceTensor>& xs, int dim, const Stream* stream = nullptr);
// A copy of [start, start + length) along dim (any axis; Tensor::narrow is the
// view along axis 0).
DeviceTensor narrow(const DeviceTensor& x, int dim, int64_t start, int64_t length,
                    const Stream* stream = nullptr);
// x's slices along dim picked by index (i32 or i64, any shape):
// out.shape = x.shape[:dim] + index.shape + x.shape[dim+1:]. An index outside
// [0, x.shape[dim]): see the limits above.
DeviceTensor index_select(const DeviceTensor& x, int dim, const DeviceTensor& index,
                          const Stream* stream = nullptr);
// In place, index_select's inverse (PyTorch's index_copy_): for each j,
// x's slice index[j] along dim becomes src's slice j. index i32 or i64 of
// [count] elements; src has x's shape with extent count along dim and x's
// dtype. An index outside [0, x.shape[dim]) is skipped (a KV cache's slot
// "not kept", -1); the indices in range must be distinct (which duplicate wins
// is not defined on CUDA).
void index_copy(const DeviceTensor& x, int dim, const DeviceTensor& index, const DeviceTensor& src,
                const Stream* stream = nullptr);
// In place, x's slice index[j] along dim += src's slice j for each j
// (PyTorch's index_add_): repeated ids add up (a scatter-add, the backward of
// index_select and embedding). x f32 or f64; index i32 or i64 of [count]
// elements; src has x's shape with extent count along dim and x's dtype. On the
// cpu the slices are added in the order of j (deterministic) and an index
// outside [0, x.shape[dim]) throws Error(kInvalidArgument) before anything is
// added, reported as index_select's (see the limits above); on CUDA the adds
// are atomic, in no fixed order (float sums may differ in the last bits from
// run to run), and such an index adds nothing, unreported.
void index_add(const DeviceTensor& x, int dim, const DeviceTensor& index, const DeviceTensor& src,
               const Stream* stream = nullptr);
// The embedding lookup of a (possibly vocabulary-sharded) table: table
// [rows, hidden] holds vocabulary ids [first_id, first_id + rows); ids i32 or
// i64 of any shape; out.shape = ids.shape + [hidden]. An id outside that range
// gives a row of zeros (the vocabulary-parallel embedding masks them, then
// all-reduces).
DeviceTensor embedding(const DeviceTensor& table, const DeviceTensor& ids, int64_t first_id = 0,
                       const Stream* stream = nullptr);
// out = cond ? a : b, elementwise; cond bool or u8 (nonzero is true); a and b of
// one dtype; all three of one shape.
DeviceTensor where(const DeviceTensor& cond, const DeviceTensor& a, const DeviceTensor& b,
                   const Stream* stream = nullptr);
// out = mask ? value : x; mask bool or u8 of x's shape; value converted to x's
// dtype by the cast rule (integers saturate, NaN gives 0).
DeviceTensor masked_fill(const DeviceTensor& x, const DeviceTensor& mask, double value,
                         const Stream* stream = nullptr);

}  // namespace meshrt::kernels

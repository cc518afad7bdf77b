// Internal: the entry points each backend implements. The public calls in
// gemm.cc, elementwise.cc, reduction.cc, movement.cc and attention.cc validate
// shapes and dtypes, then call
// cpu::... or cuda::... with raw pointers and extents. The cuda:: functions are
// defined in .cu files built only with CUDA; they take the cudaStream_t as void*.
#pragma once

#include <cstdint>

#include "device/dtype.h"
#include "device/error.h"
#include "kernels/attention_math.h"
#include "kernels/op_types.h"

namespace meshrt::kernels {

struct GemmArgs {
  DType dtype;
  bool transpose_a, transpose_b;
  bool tf32;
  int64_t m, n, k, batch;
  const void* a;
  int64_t lda, stride_a;  // stride in elements between batches; 0 broadcasts
  const void* b;
  int64_t ldb, stride_b;
  void* c;
  int64_t ldc, stride_c;
  double alpha, beta;
};

// Shape of a row-wise op: rows x cols, contiguous.
struct RowArgs {
  DType dtype;
  int64_t rows, cols;
};

// The data-movement rows copy elements without looking at them, so they take
// the element size (1, 2, 4 or 8 bytes) instead of a dtype: every dtype flows
// through one instantiation per size.
//
// A permutation copy: out is contiguous with extents[0, ndim); its element at
// (i_0, ..., i_{ndim-1}) is x's element at sum_d i_d * strides[d] (elements).
// movement.cc merges dimensions that stay together first, so ndim counts what
// is left (at most kMaxPermuteDims).
inline constexpr int kMaxPermuteDims = 8;
struct PermuteArgs {
  int element_size;
  int ndim;
  int64_t extents[kMaxPermuteDims];
  int64_t strides[kMaxPermuteDims];
};

// A gather of slices: x is [outer, extent, inner], index holds count ids
// (index_dtype i32 or i64), out is [outer, count, inner] with
// out[o, j, :] = x[o, index[j] - first_id, :]. An id outside
// [first_id, first_id + extent) gives zeros when zero_outside (the embedding of
// a vocabulary shard); otherwise the cpu throws Error(kInvalidArgument) naming
// op and dim, and CUDA writes zeros (it has no way to report from the kernel).
struct GatherArgs {
  int element_size;
  DType index_dtype;
  int64_t outer, extent, count, inner;
  int64_t first_id;
  bool zero_outside;
  const char* op;  // a string literal: for the error
  int dim;
};

// out[i] = cond[i] != 0 ? a[i] : b[i] over n elements (cond bool or u8, read
// as bytes); when a is null, every a[i] is the element whose bytes are
// scalar_a (masked_fill's value, already converted to the dtype).
struct WhereArgs {
  int element_size;
  int64_t n;
  uint64_t scalar_a;
};

// Reductions along one axis of [outer, axis, inner] into [outer, inner]:
// mean (floats; f32 accumulates in f64), max and min (NaN wins), argmax (i64
// out: the first index of the maximum, a NaN counting as the maximum).
enum class ReduceAxisOp { kMean, kMax, kMin, kArgmax };

#define MESHRT_KERNEL_BACKEND_DECLARATIONS(...)                                                  \
  void gemm(const GemmArgs& args __VA_ARGS__);                                                   \
  void unary(UnaryOp op, DType dtype, const void* x, void* out, int64_t n,                       \
             double alpha __VA_ARGS__);                                                          \
  void binary(BinaryOp op, DType dtype, const void* a, const void* b, void* out,                 \
              int64_t n __VA_ARGS__);                                                            \
  void bias_add(DType dtype, const void* x, const void* bias, void* out, int64_t rows,           \
                int64_t cols __VA_ARGS__);                                                       \
  void cast(DType from, DType to, const void* x, void* out, int64_t n __VA_ARGS__);              \
  /* out[o, i] = sum_a x[o, a, i] */                                                             \
  void sum(DType dtype, const void* x, void* out, int64_t outer, int64_t axis,                   \
           int64_t inner __VA_ARGS__);                                                           \
  void softmax(const RowArgs& rows, const void* x, void* out __VA_ARGS__);                       \
  void layernorm(const RowArgs& rows, const void* x, const void* gamma, const void* beta,        \
                 double eps, void* out __VA_ARGS__);                                             \
  void rmsnorm(const RowArgs& rows, const void* x, const void* gamma, double eps,                \
               void* out __VA_ARGS__);                                                           \
  void permute(const PermuteArgs& args, const void* x, void* out __VA_ARGS__);                    \
  void gather(const GatherArgs& args, const void* x, const void* index, void* out __VA_ARGS__);   \
  /* gather's inverse, in place: x[o, index[j] - first_id, :] = src[o, j, :]; ids outside skipped */ \
  void scatter(const GatherArgs& args, const void* src, const void* index, void* x __VA_ARGS__);  \
  /* the same with x[o, index[j] - first_id, :] += src[o, j, :]; dtype f32 or f64; the cpu   */ \
  /* checks every id first (Error(kInvalidArgument) naming args.op), CUDA skips those outside */ \
  void scatter_add(const GatherArgs& args, DType dtype, const void* src, const void* index,     \
                   void* x __VA_ARGS__);                                                         \
  void where(const WhereArgs& args, const void* cond, const void* a, const void* b,              \
             void* out __VA_ARGS__);                                                             \
  void reduce_axis(ReduceAxisOp op, DType dtype, const void* x, void* out, int64_t outer,        \
                   int64_t axis, int64_t inner __VA_ARGS__);                                     \
  /* per row of rows x cols: the k largest, descending, ties by lower index; indices i64 */     \
  void topk(DType dtype, const void* x, void* values, void* indices, int64_t rows, int64_t cols, \
            int64_t k __VA_ARGS__);                                                              \
  /* RopeArgs and AttentionArgs: kernels/attention_math.h; positions i64, key_mask may be null */ \
  void rope(const RopeArgs& args, const void* x, const void* positions, void* out __VA_ARGS__);   \
  void attention(const AttentionArgs& args, const void* q, const void* k, const void* v,         \
                 const void* key_mask, void* out __VA_ARGS__);

// Calls f(U{}) with U the unsigned integer of element_size bytes (the
// movement rows' element types).
template <class F>
void visit_element_size(int element_size, F&& f) {
  switch (element_size) {
    case 1: f(uint8_t{}); return;
    case 2: f(uint16_t{}); return;
    case 4: f(uint32_t{}); return;
    case 8: f(uint64_t{}); return;
    default: throw Error(ErrorKind::kInternal, detail::cat("a movement kernel got elements of ", element_size, " bytes"));
  }
}

namespace cpu {
MESHRT_KERNEL_BACKEND_DECLARATIONS()
}  // namespace cpu

namespace cuda {
// Each takes the device (for cuBLAS handles) and the cudaStream_t as trailing arguments.
MESHRT_KERNEL_BACKEND_DECLARATIONS(, int device, void* stream)
}  // namespace cuda

#undef MESHRT_KERNEL_BACKEND_DECLARATIONS

}  // namespace meshrt::kernels

// Internal: the entry points each backend implements. The public calls in
// gemm.cc, elementwise.cc and reduction.cc validate shapes and dtypes, then call
// cpu::... or cuda::... with raw pointers and extents. The cuda:: functions are
// defined in .cu files built only with CUDA; they take the cudaStream_t as void*.
#pragma once

#include <cstdint>

#include "device/dtype.h"
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
               void* out __VA_ARGS__);

namespace cpu {
MESHRT_KERNEL_BACKEND_DECLARATIONS()
}  // namespace cpu

namespace cuda {
// Each takes the device (for cuBLAS handles) and the cudaStream_t as trailing arguments.
MESHRT_KERNEL_BACKEND_DECLARATIONS(, int device, void* stream)
}  // namespace cuda

#undef MESHRT_KERNEL_BACKEND_DECLARATIONS

}  // namespace meshrt::kernels

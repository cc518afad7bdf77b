// CUDA kernels of the elementwise ops: grid-stride loops, one element per
// thread per step, each calling the op's element function (elementwise_ops.h),
// as the cpu loops do. Dtypes were checked by elementwise.cc.
#include "device/convert.h"
#include "kernels/backend.h"
#include "kernels/cuda_common.cuh"
#include "kernels/elementwise_ops.h"

namespace meshrt::kernels {
namespace cuda_impl {
namespace {

template <class F, class T>
__global__ void unary_kernel(F f, const T* x, T* out, int64_t n, acc_t<T> alpha) {
  MESHRT_GRID_STRIDE(i, n) { out[i] = store<T>(apply_unary(f, load(x[i]), alpha)); }
}

template <class F, class T>
__global__ void binary_kernel(F f, const T* a, const T* b, T* out, int64_t n) {
  MESHRT_GRID_STRIDE(i, n) { out[i] = store<T>(f(load(a[i]), load(b[i]))); }
}

template <class T>
__global__ void bias_add_kernel(const T* x, const T* bias, T* out, int64_t n, int64_t cols) {
  MESHRT_GRID_STRIDE(i, n) { out[i] = store<T>(load(x[i]) + load(bias[i % cols])); }
}

template <class In, class Out>
__global__ void cast_kernel(const In* x, Out* out, int64_t n) {
  MESHRT_GRID_STRIDE(i, n) { out[i] = convert<Out>(x[i]); }
}

}  // namespace
}  // namespace cuda_impl

namespace cuda {
using namespace cuda_impl;

void unary(UnaryOp op, DType dtype, const void* x, void* out, int64_t n, double alpha, int, void* stream) {
  bool done = dispatch_elementwise(op, dtype, [&](auto f, auto tag) {
    using T = decltype(tag);
    unary_kernel<<<grid_for(n), kBlock, 0, static_cast<cudaStream_t>(stream)>>>(
        f, static_cast<const T*>(x), static_cast<T*>(out), n, static_cast<acc_t<T>>(alpha));
  });
  MESHRT_CHECK(done, ErrorKind::kInternal, to_string(dtype), " reached the CUDA kernel of a unary op that does not take it");
  check_launch();
}

void binary(BinaryOp op, DType dtype, const void* a, const void* b, void* out, int64_t n, int, void* stream) {
  bool done = dispatch_elementwise(op, dtype, [&](auto f, auto tag) {
    using T = decltype(tag);
    binary_kernel<<<grid_for(n), kBlock, 0, static_cast<cudaStream_t>(stream)>>>(
        f, static_cast<const T*>(a), static_cast<const T*>(b), static_cast<T*>(out), n);
  });
  MESHRT_CHECK(done, ErrorKind::kInternal, to_string(dtype), " reached the CUDA kernel of a binary op that does not take it");
  check_launch();
}

void bias_add(DType dtype, const void* x, const void* bias, void* out, int64_t rows, int64_t cols, int,
              void* stream) {
  visit_validated(FloatTypes{}, dtype, "bias_add", [&](auto tag) {
    using T = decltype(tag);
    bias_add_kernel<T><<<grid_for(rows * cols), kBlock, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(x), static_cast<const T*>(bias), static_cast<T*>(out), rows * cols, cols);
  });
  check_launch();
}

void cast(DType from, DType to, const void* x, void* out, int64_t n, int, void* stream) {
  visit_dtype(from, [&](auto in_tag) {
    using In = decltype(in_tag);
    visit_dtype(to, [&](auto out_tag) {
      using Out = decltype(out_tag);
      cast_kernel<In, Out><<<grid_for(n), kBlock, 0, static_cast<cudaStream_t>(stream)>>>(
          static_cast<const In*>(x), static_cast<Out*>(out), n);
    });
  });
  check_launch();
}

}  // namespace cuda
}  // namespace meshrt::kernels

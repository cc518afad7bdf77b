// CUDA twins of elementwise_cpu.cc: grid-stride loops, one element per thread
// per step. Dtypes were checked by elementwise.cc.
#include "device/convert.h"
#include "kernels/backend.h"
#include "kernels/cuda_common.cuh"

namespace meshrt::kernels {
namespace cuda_impl {
namespace {

template <class A>
__device__ __forceinline__ A apply(UnaryOp op, A x, A alpha) {
  switch (op) {
    case UnaryOp::kNeg: return -x;
    case UnaryOp::kRelu: return x > A(0) ? x : A(0);
    case UnaryOp::kScale: return alpha * x;
    case UnaryOp::kGelu:
      if constexpr (std::is_floating_point_v<A>) {
        return A(0.5) * x * (A(1) + erf(x * A(0.70710678118654752440)));
      }
      break;
    case UnaryOp::kSilu:
      if constexpr (std::is_floating_point_v<A>) return x / (A(1) + exp(-x));
      break;
  }
  return x;
}

#define MESHRT_GRID_STRIDE(i, n)                                                         \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

template <class T>
__global__ void unary_kernel(UnaryOp op, const T* x, T* out, int64_t n, acc_t<T> alpha) {
  MESHRT_GRID_STRIDE(i, n) { out[i] = Store<T>::from(apply(op, load(x[i]), alpha)); }
}

template <class T>
__global__ void binary_kernel(BinaryOp op, const T* a, const T* b, T* out, int64_t n) {
  if (op == BinaryOp::kAdd) {
    MESHRT_GRID_STRIDE(i, n) { out[i] = Store<T>::from(load(a[i]) + load(b[i])); }
  } else {
    MESHRT_GRID_STRIDE(i, n) { out[i] = Store<T>::from(load(a[i]) * load(b[i])); }
  }
}

template <class T>
__global__ void bias_add_kernel(const T* x, const T* bias, T* out, int64_t n, int64_t cols) {
  MESHRT_GRID_STRIDE(i, n) { out[i] = Store<T>::from(load(x[i]) + load(bias[i % cols])); }
}

template <class In, class Out>
__device__ __forceinline__ Out convert(In v) {
  if constexpr (std::is_same_v<Out, bool>) {
    return load(v) != acc_t<In>(0);
  } else if constexpr (std::is_integral_v<Out> && std::is_integral_v<In>) {
    return static_cast<Out>(v);
  } else {
    double d = static_cast<double>(load(v));
    if constexpr (std::is_integral_v<Out>) {
      return saturate_to_integer<Out>(d);
    } else {
      return Store<Out>::from(d);
    }
  }
}

template <class In, class Out>
__global__ void cast_kernel(const In* x, Out* out, int64_t n) {
  MESHRT_GRID_STRIDE(i, n) { out[i] = convert<In, Out>(x[i]); }
}

}  // namespace
}  // namespace cuda_impl

namespace cuda {
using namespace cuda_impl;

void unary(UnaryOp op, DType dtype, const void* x, void* out, int64_t n, double alpha, int,
           void* stream) {
  visit_numeric(dtype, [&](auto tag) {
    using T = decltype(tag);
    unary_kernel<T><<<grid_for(n), kBlock, 0, static_cast<cudaStream_t>(stream)>>>(
        op, static_cast<const T*>(x), static_cast<T*>(out), n, static_cast<acc_t<T>>(alpha));
  });
  check_launch();
}

void binary(BinaryOp op, DType dtype, const void* a, const void* b, void* out, int64_t n, int,
            void* stream) {
  visit_numeric(dtype, [&](auto tag) {
    using T = decltype(tag);
    binary_kernel<T><<<grid_for(n), kBlock, 0, static_cast<cudaStream_t>(stream)>>>(
        op, static_cast<const T*>(a), static_cast<const T*>(b), static_cast<T*>(out), n);
  });
  check_launch();
}

void bias_add(DType dtype, const void* x, const void* bias, void* out, int64_t rows, int64_t cols,
              int, void* stream) {
  visit_floating(dtype, [&](auto tag) {
    using T = decltype(tag);
    bias_add_kernel<T><<<grid_for(rows * cols), kBlock, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(x), static_cast<const T*>(bias), static_cast<T*>(out), rows * cols,
        cols);
  });
  check_launch();
}

void cast(DType from, DType to, const void* x, void* out, int64_t n, int, void* stream) {
  visit(from, [&](auto in_tag) {
    using In = decltype(in_tag);
    visit(to, [&](auto out_tag) {
      using Out = decltype(out_tag);
      cast_kernel<In, Out><<<grid_for(n), kBlock, 0, static_cast<cudaStream_t>(stream)>>>(
          static_cast<const In*>(x), static_cast<Out*>(out), n);
    });
  });
  check_launch();
}

}  // namespace cuda
}  // namespace meshrt::kernels

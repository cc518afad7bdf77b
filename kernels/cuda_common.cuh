// Internal to the CUDA kernels: element load/store, dtype dispatch, block reductions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "device/cuda_check.h"
#include "device/dtype.h"
#include "device/error.h"

namespace meshrt::kernels::cuda_impl {

constexpr int kBlock = 256;

// Arithmetic type per storage type: float for f32 and the 16-bit floats, double
// for f64, the type itself for integers (i32 sums use i64, see SumAcc).
template <class T> struct Acc { using type = T; };
template <> struct Acc<__half> { using type = float; };
template <> struct Acc<__nv_bfloat16> { using type = float; };
template <> struct Acc<bool> { using type = float; };
template <> struct Acc<uint8_t> { using type = int32_t; };
template <class T> using acc_t = typename Acc<T>::type;

template <class T>
__device__ __forceinline__ acc_t<T> load(T v) { return static_cast<acc_t<T>>(v); }
template <>
__device__ __forceinline__ float load<__half>(__half v) { return __half2float(v); }
template <>
__device__ __forceinline__ float load<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T>
struct Store {
  template <class A>
  __device__ __forceinline__ static T from(A v) { return static_cast<T>(v); }
};
template <>
struct Store<__half> {
  template <class A>
  __device__ __forceinline__ static __half from(A v) { return __float2half_rn(static_cast<float>(v)); }
};
template <>
struct Store<__nv_bfloat16> {
  template <class A>
  __device__ __forceinline__ static __nv_bfloat16 from(A v) {
    return __float2bfloat16_rn(static_cast<float>(v));
  }
};
template <>
struct Store<bool> {
  template <class A>
  __device__ __forceinline__ static bool from(A v) { return v != A(0); }
};

// Calls f(T{}) with T the device storage type of dtype.
template <class F>
void visit(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kF32: f(float{}); return;
    case DType::kF64: f(double{}); return;
    case DType::kF16: f(__half{}); return;
    case DType::kBF16: f(__nv_bfloat16{}); return;
    case DType::kI32: f(int32_t{}); return;
    case DType::kI64: f(int64_t{}); return;
    case DType::kU8: f(uint8_t{}); return;
    case DType::kBool: f(bool{}); return;
  }
}

// Floating dtypes only (validated by the caller); other dtypes are a bug.
template <class F>
void visit_floating(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kF32: f(float{}); return;
    case DType::kF64: f(double{}); return;
    case DType::kF16: f(__half{}); return;
    case DType::kBF16: f(__nv_bfloat16{}); return;
    default: throw Error(ErrorKind::kInternal, "CUDA kernel reached with a non-floating dtype");
  }
}

template <class F>
void visit_numeric(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kI32: f(int32_t{}); return;
    case DType::kI64: f(int64_t{}); return;
    default: visit_floating(dtype, f);
  }
}

inline unsigned grid_for(int64_t n) {
  int64_t blocks = (n + kBlock - 1) / kBlock;
  return static_cast<unsigned>(blocks < 65536 ? (blocks > 0 ? blocks : 1) : 65536);
}

inline unsigned rows_grid(int64_t rows) {
  return static_cast<unsigned>(rows < 65536 ? (rows > 0 ? rows : 1) : 65536);
}

struct SumOp {
  template <class A>
  __device__ __forceinline__ A operator()(A a, A b) const { return a + b; }
};
struct MaxOp {
  template <class A>
  __device__ __forceinline__ A operator()(A a, A b) const { return a > b ? a : b; }
};

// Reduces v over the block (blockDim.x a multiple of 32, at most 1024); every
// thread gets the result. identity is op's neutral value (0 for sums, -inf for
// max). shared must hold 32 values; it is free for reuse again on return.
template <class A, class Op>
__device__ A block_reduce(A v, A* shared, Op op, A identity) {
  for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int warps = (blockDim.x + 31) >> 5;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) {
    A w = lane < warps ? shared[lane] : identity;
    for (int offset = 16; offset > 0; offset >>= 1) w = op(w, __shfl_xor_sync(0xffffffffu, w, offset));
    if (lane == 0) shared[0] = w;
  }
  __syncthreads();
  A result = shared[0];
  __syncthreads();
  return result;
}

inline void check_launch() { MESHRT_CUDA_CHECK(cudaGetLastError()); }

}  // namespace meshrt::kernels::cuda_impl

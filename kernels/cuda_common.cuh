// Internal to the CUDA kernels: launch shapes, block reductions, launch checks.
// Elements are loaded, stored and converted with device/convert.h (meshrt::Half
// and meshrt::BFloat16 are the 16-bit storage types on the GPU too), and dtypes
// dispatched with kernels/dtype_sets.h, as in the cpu loops.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "device/convert.h"
#include "device/cuda_check.h"
#include "device/dtype.h"
#include "device/error.h"
#include "kernels/dtype_sets.h"

namespace meshrt::kernels::cuda_impl {

constexpr int kBlock = 256;

inline unsigned grid_for(int64_t n) {
  int64_t blocks = (n + kBlock - 1) / kBlock;
  return static_cast<unsigned>(blocks < 65536 ? (blocks > 0 ? blocks : 1) : 65536);
}

// A grid-stride loop of i over [0, n) (with grid_for(n) blocks of kBlock threads).
#define MESHRT_GRID_STRIDE(i, n)                                                         \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

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

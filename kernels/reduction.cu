// CUDA twins of reduction_cpu.cc. Row-wise ops (softmax, norms, sums over the
// last axis) use one block per row with block_reduce; other sums, mean, amax,
// amin and argmax use one thread per output element, reading along the reduced
// axis (coalesced across inner). topk: one block per row, k passes, each a
// block reduction for the first element in topk's order after the last one taken.
#include <cmath>

#include "kernels/backend.h"
#include "kernels/cuda_common.cuh"

namespace meshrt::kernels {
namespace cuda_impl {
namespace {

template <class T>
__global__ void sum_rows_kernel(const T* x, T* out, int64_t rows, int64_t cols) {
  using S = sum_acc_t<T>;
  __shared__ S shared[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* in = x + r * cols;
    S s = 0;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) s += static_cast<S>(load(in[c]));
    s = block_reduce(s, shared, SumOp{}, S(0));
    if (threadIdx.x == 0) out[r] = store<T>(s);
  }
}

template <class T>
__global__ void sum_strided_kernel(const T* x, T* out, int64_t outer, int64_t axis, int64_t inner) {
  using S = sum_acc_t<T>;
  int64_t total = outer * inner;
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < total;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t o = j / inner, i = j % inner;
    const T* in = x + o * axis * inner + i;
    S s = 0;
    for (int64_t a = 0; a < axis; ++a) s += static_cast<S>(load(in[a * inner]));
    out[j] = store<T>(s);
  }
}

template <class A>
__device__ __forceinline__ bool replaces(A v, A best, bool max) {
  if (best != best) return false;
  return v != v || (max ? v > best : v < best);
}

// topk's order: NaN first, then larger values, then lower indices.
template <class A>
__device__ __forceinline__ bool ranks_before(A v, int64_t i, A w, int64_t j) {
  bool nv = v != v, nw = w != w;
  if (nv != nw) return nv;
  if (!nv && v != w) return v > w;
  return i < j;
}

template <class T>
__global__ void mean_kernel(const T* x, T* out, int64_t outer, int64_t axis, int64_t inner) {
  MESHRT_GRID_STRIDE(j, outer * inner) {
    const T* in = x + (j / inner) * axis * inner + j % inner;
    double s = 0;
    for (int64_t a = 0; a < axis; ++a) s += static_cast<double>(load(in[a * inner]));
    out[j] = store<T>(s / static_cast<double>(axis));
  }
}

// amax / amin (argmax false: out is T) or argmax (out is int64).
template <class T>
__global__ void extreme_kernel(const T* x, void* out, int64_t outer, int64_t axis, int64_t inner, bool max,
                               bool argmax) {
  using A = acc_t<T>;
  MESHRT_GRID_STRIDE(j, outer * inner) {
    const T* in = x + (j / inner) * axis * inner + j % inner;
    A best = load(in[0]);
    int64_t at = 0;
    for (int64_t a = 1; a < axis; ++a) {
      A v = load(in[a * inner]);
      if (replaces(v, best, max)) {
        best = v;
        at = a;
      }
    }
    if (argmax) {
      static_cast<int64_t*>(out)[j] = at;
    } else {
      static_cast<T*>(out)[j] = in[at * inner];
    }
  }
}

// blockDim.x == kBlock (a power of two).
template <class T>
__global__ void topk_kernel(const T* x, T* values, int64_t* indices, int64_t rows, int64_t cols, int64_t k) {
  using A = acc_t<T>;
  __shared__ A best_value[kBlock];
  __shared__ int64_t best_index[kBlock];
  const int tid = threadIdx.x;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* in = x + r * cols;
    A last_value = A(0);
    int64_t last_index = -1;  // none taken yet
    for (int64_t t = 0; t < k; ++t) {
      A bv = A(0);
      int64_t bi = -1;
      for (int64_t c = tid; c < cols; c += blockDim.x) {
        A v = load(in[c]);
        if (last_index >= 0 && !ranks_before(last_value, last_index, v, c)) continue;  // taken already
        if (bi < 0 || ranks_before(v, c, bv, bi)) {
          bv = v;
          bi = c;
        }
      }
      best_value[tid] = bv;
      best_index[tid] = bi;
      __syncthreads();
      for (int half = blockDim.x / 2; half > 0; half >>= 1) {
        if (tid < half) {
          int64_t oi = best_index[tid + half];
          if (oi >= 0 && (best_index[tid] < 0 || ranks_before(best_value[tid + half], oi, best_value[tid], best_index[tid]))) {
            best_value[tid] = best_value[tid + half];
            best_index[tid] = oi;
          }
        }
        __syncthreads();
      }
      last_value = best_value[0];
      last_index = best_index[0];
      if (tid == 0) {
        values[r * k + t] = in[last_index];
        indices[r * k + t] = last_index;
      }
      __syncthreads();  // everyone has read the result before the next pass writes the arrays
    }
  }
}

template <class T>
__global__ void softmax_kernel(const T* x, T* y, int64_t rows, int64_t cols) {
  using A = acc_t<T>;
  __shared__ A shared[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* in = x + r * cols;
    T* out = y + r * cols;
    A m = -INFINITY;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      A v = load(in[c]);
      m = v > m ? v : m;
    }
    m = block_reduce(m, shared, MaxOp{}, A(-INFINITY));
    A s = 0;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) s += exp(load(in[c]) - m);
    s = block_reduce(s, shared, SumOp{}, A(0));
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      out[c] = store<T>(exp(load(in[c]) - m) / s);
    }
  }
}

template <class T>
__global__ void layernorm_kernel(const T* x, const T* gamma, const T* beta, double eps, T* y,
                                 int64_t rows, int64_t cols) {
  using A = acc_t<T>;
  __shared__ A shared[32];
  A n = static_cast<A>(cols);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* in = x + r * cols;
    T* out = y + r * cols;
    A s = 0;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) s += load(in[c]);
    A mean = block_reduce(s, shared, SumOp{}, A(0)) / n;
    A v = 0;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      A d = load(in[c]) - mean;
      v += d * d;
    }
    A var = block_reduce(v, shared, SumOp{}, A(0)) / n;
    A inv = A(1) / sqrt(var + static_cast<A>(eps));
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      out[c] = store<T>((load(in[c]) - mean) * inv * load(gamma[c]) + load(beta[c]));
    }
  }
}

template <class T>
__global__ void rmsnorm_kernel(const T* x, const T* gamma, double eps, T* y, int64_t rows,
                               int64_t cols) {
  using A = acc_t<T>;
  __shared__ A shared[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* in = x + r * cols;
    T* out = y + r * cols;
    A s = 0;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      A v = load(in[c]);
      s += v * v;
    }
    A mean_square = block_reduce(s, shared, SumOp{}, A(0)) / static_cast<A>(cols);
    A inv = A(1) / sqrt(mean_square + static_cast<A>(eps));
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
      out[c] = store<T>(load(in[c]) * inv * load(gamma[c]));
    }
  }
}

}  // namespace
}  // namespace cuda_impl

namespace cuda {
using namespace cuda_impl;

void sum(DType dtype, const void* x, void* out, int64_t outer, int64_t axis, int64_t inner, int,
         void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  visit_validated(NumericTypes{}, dtype, "sum", [&](auto tag) {
    using T = decltype(tag);
    if (inner == 1) {
      sum_rows_kernel<T><<<rows_grid(outer), kBlock, 0, s>>>(static_cast<const T*>(x),
                                                             static_cast<T*>(out), outer, axis);
    } else {
      sum_strided_kernel<T><<<grid_for(outer * inner), kBlock, 0, s>>>(
          static_cast<const T*>(x), static_cast<T*>(out), outer, axis, inner);
    }
  });
  check_launch();
}

void reduce_axis(ReduceAxisOp op, DType dtype, const void* x, void* out, int64_t outer, int64_t axis, int64_t inner,
                 int, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  if (op == ReduceAxisOp::kMean) {
    visit_validated(FloatTypes{}, dtype, "mean", [&](auto tag) {
      using T = decltype(tag);
      mean_kernel<T><<<grid_for(outer * inner), kBlock, 0, s>>>(static_cast<const T*>(x), static_cast<T*>(out), outer,
                                                                axis, inner);
    });
  } else {
    const char* name = op == ReduceAxisOp::kMax ? "amax" : op == ReduceAxisOp::kMin ? "amin" : "argmax";
    visit_validated(NumericTypes{}, dtype, name, [&](auto tag) {
      using T = decltype(tag);
      extreme_kernel<T><<<grid_for(outer * inner), kBlock, 0, s>>>(static_cast<const T*>(x), out, outer, axis, inner,
                                                                   op != ReduceAxisOp::kMin, op == ReduceAxisOp::kArgmax);
    });
  }
  check_launch();
}

void topk(DType dtype, const void* x, void* values, void* indices, int64_t rows, int64_t cols, int64_t k, int,
          void* stream) {
  visit_validated(NumericTypes{}, dtype, "topk", [&](auto tag) {
    using T = decltype(tag);
    topk_kernel<T><<<rows_grid(rows), kBlock, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(x), static_cast<T*>(values), static_cast<int64_t*>(indices), rows, cols, k);
  });
  check_launch();
}

void softmax(const RowArgs& rows, const void* x, void* out, int, void* stream) {
  visit_validated(FloatTypes{}, rows.dtype, "softmax", [&](auto tag) {
    using T = decltype(tag);
    softmax_kernel<T><<<rows_grid(rows.rows), kBlock, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(x), static_cast<T*>(out), rows.rows, rows.cols);
  });
  check_launch();
}

void layernorm(const RowArgs& rows, const void* x, const void* gamma, const void* beta, double eps,
               void* out, int, void* stream) {
  visit_validated(FloatTypes{}, rows.dtype, "layernorm", [&](auto tag) {
    using T = decltype(tag);
    layernorm_kernel<T><<<rows_grid(rows.rows), kBlock, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(x), static_cast<const T*>(gamma), static_cast<const T*>(beta), eps,
        static_cast<T*>(out), rows.rows, rows.cols);
  });
  check_launch();
}

void rmsnorm(const RowArgs& rows, const void* x, const void* gamma, double eps, void* out, int,
             void* stream) {
  visit_validated(FloatTypes{}, rows.dtype, "rmsnorm", [&](auto tag) {
    using T = decltype(tag);
    rmsnorm_kernel<T><<<rows_grid(rows.rows), kBlock, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(x), static_cast<const T*>(gamma), eps, static_cast<T*>(out),
        rows.rows, rows.cols);
  });
  check_launch();
}

}  // namespace cuda
}  // namespace meshrt::kernels

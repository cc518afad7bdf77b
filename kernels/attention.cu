// CUDA twins of attention_cpu.cc. Shapes and dtypes were checked by attention.cc.
//
// rope: a grid-stride loop, one thread per rotated pair (token, head, i); the
// angle, its cos and sin in double (attention_math.h), as on the cpu.
//
// attention: one block of kBlock threads per (batch, query row, head), the
// softmax online over chunks of kChunk keys (FlashAttention's rescaling, without
// its tiling): per chunk, each warp computes scores of keys (a dot product over
// the lanes, coalesced along head_dim) into shared memory; then every thread
// takes the chunk's maximum, rescales its running sum and its accumulator by
// exp(old max - new max), and adds exp(s - max) v[j, c] for its own element c
// of the head (thread c < head_dim: coalesced reads of v's rows). Hence
// head_dim <= kMaxHeadDim (256, checked by attention.cc), and
// no limit on the sequence length.
#include <cmath>

#include "kernels/backend.h"
#include "kernels/cuda_common.cuh"

namespace meshrt::kernels {
namespace cuda_impl {
namespace {

constexpr int kChunk = kBlock;  // keys per chunk
// A thread per element of a head: attention.h's kMaxCudaAttentionHeadDim (not
// included here: a C++20 header), which attention.cc checks.
constexpr int kMaxHeadDim = 256;
static_assert(kMaxHeadDim <= kBlock, "a thread per element of a head");

template <class T>
__global__ void rope_kernel(RopeArgs a, const T* x, const int64_t* positions, T* out, int64_t pairs) {
  using A = acc_t<T>;
  const int64_t half = a.head_dim / 2;
  MESHRT_GRID_STRIDE(e, pairs) {
    const int64_t i = e % half, row = e / half, t = row / a.heads;
    double s, c;
    sincos(static_cast<double>(positions[t]) * rope_inv_freq(a, i), &s, &c);
    const A cs = static_cast<A>(c), sn = static_cast<A>(s);
    const T* in = x + row * a.head_dim;
    T* dst = out + row * a.head_dim;
    const A x0 = load(in[i]), x1 = load(in[i + half]);
    dst[i] = store<T>(x0 * cs - x1 * sn);
    dst[i + half] = store<T>(x1 * cs + x0 * sn);
  }
}

// blockDim.x == kBlock; rows in (batch, query row, head) order, as out's.
template <class T>
__global__ void attention_kernel(AttentionArgs a, const T* q, const T* k, const T* v, const void* mask, T* out) {
  using A = acc_t<T>;
  __shared__ A query[kMaxHeadDim];
  __shared__ A scores[kChunk];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, warps = blockDim.x >> 5;
  const int64_t d = a.head_dim, group = a.heads / a.kv_heads, kv_stride = a.kv_heads * d;
  const int64_t rows = a.batch * a.q_seq * a.heads;
  const A scale = static_cast<A>(a.scale);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const int64_t h = r % a.heads, i = (r / a.heads) % a.q_seq, b = r / (a.heads * a.q_seq);
    const int64_t g = h / group;
    if (tid < d) query[tid] = load(q[r * d + tid]);
    __syncthreads();
    const int64_t end = attention_key_end(a, i);
    A max = -INFINITY, total = 0, acc = 0;
    for (int64_t j0 = 0; j0 < end; j0 += kChunk) {
      const int n = static_cast<int>(end - j0 < kChunk ? end - j0 : kChunk);
      for (int jj = warp; jj < n; jj += warps) {  // a warp per key; the branch is the warp's
        const int64_t j = j0 + jj;
        A s = -INFINITY;
        if (key_allowed(mask, a.mask_dtype, b * a.kv_seq + j)) {
          const T* key = k + (b * a.kv_seq + j) * kv_stride + g * d;
          A part = 0;
          for (int64_t c = lane; c < d; c += 32) part += query[c] * load(key[c]);
          for (int offset = 16; offset > 0; offset >>= 1) part += __shfl_xor_sync(0xffffffffu, part, offset);
          s = part * scale;
        }
        if (lane == 0) scores[jj] = s;
      }
      __syncthreads();
      A chunk_max = -INFINITY;
      for (int jj = 0; jj < n; ++jj) chunk_max = scores[jj] > chunk_max ? scores[jj] : chunk_max;
      const A new_max = chunk_max > max ? chunk_max : max;
      if (new_max != A(-INFINITY)) {  // the same for every thread: all read the same scores
        const A rescale = exp(max - new_max);  // 0 while max is -inf (nothing summed yet)
        total *= rescale;
        acc *= rescale;
        const T* value = v + (b * a.kv_seq + j0) * kv_stride + g * d + tid;
        for (int jj = 0; jj < n; ++jj) {
          const A s = scores[jj];
          if (s == A(-INFINITY)) continue;
          const A p = exp(s - new_max);
          total += p;
          if (tid < d) acc += p * load(value[jj * kv_stride]);
        }
        max = new_max;
      }
      __syncthreads();  // every thread has read the scores before the next chunk writes them
    }
    // Every key masked: total is 0 and the row is zeros (attention.h).
    if (tid < d) out[r * d + tid] = store<T>(total > A(0) ? acc / total : A(0));
    __syncthreads();  // every thread has read the query before the next row writes it
  }
}

}  // namespace
}  // namespace cuda_impl

namespace cuda {
using namespace cuda_impl;

void rope(const RopeArgs& args, const void* x, const void* positions, void* out, int, void* stream) {
  const int64_t pairs = args.tokens * args.heads * (args.head_dim / 2);
  visit_validated(FloatTypes{}, args.dtype, "rope", [&](auto tag) {
    using T = decltype(tag);
    rope_kernel<T><<<grid_for(pairs), kBlock, 0, static_cast<cudaStream_t>(stream)>>>(
        args, static_cast<const T*>(x), static_cast<const int64_t*>(positions), static_cast<T*>(out), pairs);
  });
  check_launch();
}

void attention(const AttentionArgs& args, const void* q, const void* k, const void* v, const void* key_mask, void* out,
               int, void* stream) {
  MESHRT_CHECK(args.head_dim <= kMaxHeadDim, ErrorKind::kInternal, "attention reached the GPU with head_dim ",
               args.head_dim);
  const int64_t rows = args.batch * args.q_seq * args.heads;
  visit_validated(FloatTypes{}, args.dtype, "attention", [&](auto tag) {
    using T = decltype(tag);
    attention_kernel<T><<<rows_grid(rows), kBlock, 0, static_cast<cudaStream_t>(stream)>>>(
        args, static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), key_mask,
        static_cast<T*>(out));
  });
  check_launch();
}

}  // namespace cuda
}  // namespace meshrt::kernels

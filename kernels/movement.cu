// CUDA twins of movement_cpu.cc: grid-stride loops, one output element per
// thread per step; elements moved as unsigned integers of their size. Shapes
// were checked by movement.cc. An index_select index out of range gives zeros
// here, an index_add index out of range adds nothing (a kernel cannot throw;
// see movement.h).
#include <cstring>

#include "kernels/backend.h"
#include "kernels/cuda_common.cuh"

namespace meshrt::kernels {
namespace cuda_impl {
namespace {

template <class U>
__global__ void permute_kernel(PermuteArgs args, const U* x, U* out, int64_t n) {
  MESHRT_GRID_STRIDE(j, n) {
    int64_t rest = j, offset = 0;
    for (int d = args.ndim - 1; d >= 0; --d) {
      offset += (rest % args.extents[d]) * args.strides[d];
      rest /= args.extents[d];
    }
    out[j] = x[offset];
  }
}

template <class U, class I>
__global__ void gather_kernel(GatherArgs args, const U* x, const I* index, U* out, int64_t n) {
  MESHRT_GRID_STRIDE(e, n) {
    int64_t i = e % args.inner, rest = e / args.inner;
    int64_t j = rest % args.count, b = rest / args.count;
    int64_t local = static_cast<int64_t>(index[j]) - args.first_id;
    out[e] = local >= 0 && local < args.extent ? x[(b * args.extent + local) * args.inner + i] : U(0);
  }
}

template <class U, class I>
__global__ void scatter_kernel(GatherArgs args, const U* src, const I* index, U* x, int64_t n) {
  MESHRT_GRID_STRIDE(e, n) {
    int64_t i = e % args.inner, rest = e / args.inner;
    int64_t j = rest % args.count, b = rest / args.count;
    int64_t local = static_cast<int64_t>(index[j]) - args.first_id;
    if (local >= 0 && local < args.extent) x[(b * args.extent + local) * args.inner + i] = src[e];
  }
}

template <class T, class I>
__global__ void scatter_add_kernel(GatherArgs args, const T* src, const I* index, T* x, int64_t n) {
  MESHRT_GRID_STRIDE(e, n) {
    int64_t i = e % args.inner, rest = e / args.inner;
    int64_t j = rest % args.count, b = rest / args.count;
    int64_t local = static_cast<int64_t>(index[j]) - args.first_id;
    if (local >= 0 && local < args.extent) atomicAdd(&x[(b * args.extent + local) * args.inner + i], src[e]);
  }
}

template <class U>
__global__ void where_kernel(const uint8_t* cond, const U* a, U scalar_a, const U* b, U* out, int64_t n) {
  MESHRT_GRID_STRIDE(i, n) { out[i] = cond[i] ? (a ? a[i] : scalar_a) : b[i]; }
}

}  // namespace
}  // namespace cuda_impl

namespace cuda {
using namespace cuda_impl;

void permute(const PermuteArgs& args, const void* x, void* out, int, void* stream) {
  int64_t n = 1;
  for (int d = 0; d < args.ndim; ++d) n *= args.extents[d];
  visit_element_size(args.element_size, [&](auto tag) {
    using U = decltype(tag);
    permute_kernel<U><<<grid_for(n), kBlock, 0, static_cast<cudaStream_t>(stream)>>>(
        args, static_cast<const U*>(x), static_cast<U*>(out), n);
  });
  check_launch();
}

void gather(const GatherArgs& args, const void* x, const void* index, void* out, int, void* stream) {
  int64_t n = args.outer * args.count * args.inner;
  visit_element_size(args.element_size, [&](auto tag) {
    using U = decltype(tag);
    auto s = static_cast<cudaStream_t>(stream);
    if (args.index_dtype == DType::kI32) {
      gather_kernel<U, int32_t><<<grid_for(n), kBlock, 0, s>>>(
          args, static_cast<const U*>(x), static_cast<const int32_t*>(index), static_cast<U*>(out), n);
    } else {
      gather_kernel<U, int64_t><<<grid_for(n), kBlock, 0, s>>>(
          args, static_cast<const U*>(x), static_cast<const int64_t*>(index), static_cast<U*>(out), n);
    }
  });
  check_launch();
}

void scatter(const GatherArgs& args, const void* src, const void* index, void* x, int, void* stream) {
  int64_t n = args.outer * args.count * args.inner;
  visit_element_size(args.element_size, [&](auto tag) {
    using U = decltype(tag);
    auto s = static_cast<cudaStream_t>(stream);
    if (args.index_dtype == DType::kI32) {
      scatter_kernel<U, int32_t><<<grid_for(n), kBlock, 0, s>>>(
          args, static_cast<const U*>(src), static_cast<const int32_t*>(index), static_cast<U*>(x), n);
    } else {
      scatter_kernel<U, int64_t><<<grid_for(n), kBlock, 0, s>>>(
          args, static_cast<const U*>(src), static_cast<const int64_t*>(index), static_cast<U*>(x), n);
    }
  });
  check_launch();
}

void scatter_add(const GatherArgs& args, DType dtype, const void* src, const void* index, void* x, int,
                 void* stream) {
  int64_t n = args.outer * args.count * args.inner;
  auto launch = [&](auto tag) {
    using T = decltype(tag);
    auto s = static_cast<cudaStream_t>(stream);
    if (args.index_dtype == DType::kI32) {
      scatter_add_kernel<T, int32_t><<<grid_for(n), kBlock, 0, s>>>(
          args, static_cast<const T*>(src), static_cast<const int32_t*>(index), static_cast<T*>(x), n);
    } else {
      scatter_add_kernel<T, int64_t><<<grid_for(n), kBlock, 0, s>>>(
          args, static_cast<const T*>(src), static_cast<const int64_t*>(index), static_cast<T*>(x), n);
    }
  };
  switch (dtype) {
    case DType::kF32: launch(float{}); break;
    case DType::kF64: launch(double{}); break;
    default: throw Error(ErrorKind::kInternal, ::meshrt::detail::cat("scatter_add got ", to_string(dtype)));
  }
  check_launch();
}

void where(const WhereArgs& args, const void* cond, const void* a, const void* b, void* out, int,
           void* stream) {
  visit_element_size(args.element_size, [&](auto tag) {
    using U = decltype(tag);
    U scalar;
    std::memcpy(&scalar, &args.scalar_a, sizeof scalar);
    where_kernel<U><<<grid_for(args.n), kBlock, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const uint8_t*>(cond), static_cast<const U*>(a), scalar, static_cast<const U*>(b),
        static_cast<U*>(out), args.n);
  });
  check_launch();
}

}  // namespace cuda
}  // namespace meshrt::kernels

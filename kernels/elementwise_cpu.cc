// cpu loops of the elementwise ops: each calls the op's element function
// (elementwise_ops.h), as the CUDA kernels do. Dtypes were checked by elementwise.cc.
//
// The loops vectorize (cpu_vector.h: compiled for AVX-512, AVX2 and baseline
// x86-64; the float math of the element functions has no calls or branches,
// cpu_math.h). f16 and bf16 are computed in float a block at a time: converted
// into a buffer on the stack, computed there, converted back.
#include "device/convert.h"
#include "kernels/backend.h"
#include "kernels/cpu_vector.h"
#include "kernels/elementwise_ops.h"

namespace meshrt::kernels::cpu {

namespace {
template <class F, class T, class A>
MESHRT_CPU_CLONES void unary_loop(F f, const T* in, T* out, int64_t n, A alpha) {
  for (int64_t i = 0; i < n; ++i) out[i] = store<T>(apply_unary(f, load(in[i]), alpha));
}

template <class F, class T>
MESHRT_CPU_CLONES void binary_loop(F f, const T* a, const T* b, T* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = store<T>(f(load(a[i]), load(b[i])));
}

// out[r, c] = x[r, c] + bias[c] over one row of float.
MESHRT_CPU_CLONES void add_row(const float* x, const float* bias, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] + bias[i];
}
}  // namespace

void unary(UnaryOp op, DType dtype, const void* x, void* out, int64_t n, double alpha) {
  bool done = dispatch_elementwise(op, dtype, [&](auto f, auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    const T* in = static_cast<const T*>(x);
    T* o = static_cast<T*>(out);
    A a = static_cast<A>(alpha);
    if constexpr (kBlockedFloat<T>) {
      float block[kBlock];
      for (int64_t start = 0; start < n; start += kBlock) {
        int64_t count = std::min(kBlock, n - start);
        widen_block(in + start, block, count);
        unary_loop(f, block, block, count, a);
        narrow_block(block, o + start, count);
      }
    } else {
      unary_loop(f, in, o, n, a);
    }
  });
  MESHRT_CHECK(done, ErrorKind::kInternal, to_string(dtype), " reached the cpu loop of a unary op that does not take it");
}

void binary(BinaryOp op, DType dtype, const void* a, const void* b, void* out, int64_t n) {
  bool done = dispatch_elementwise(op, dtype, [&](auto f, auto tag) {
    using T = decltype(tag);
    const T* x = static_cast<const T*>(a);
    const T* y = static_cast<const T*>(b);
    T* o = static_cast<T*>(out);
    if constexpr (kBlockedFloat<T>) {
      float bx[kBlock], by[kBlock];
      for (int64_t start = 0; start < n; start += kBlock) {
        int64_t count = std::min(kBlock, n - start);
        widen_block(x + start, bx, count);
        widen_block(y + start, by, count);
        binary_loop(f, bx, by, bx, count);
        narrow_block(bx, o + start, count);
      }
    } else {
      binary_loop(f, x, y, o, n);
    }
  });
  MESHRT_CHECK(done, ErrorKind::kInternal, to_string(dtype), " reached the cpu loop of a binary op that does not take it");
}

void bias_add(DType dtype, const void* x, const void* bias, void* out, int64_t rows, int64_t cols) {
  visit_validated(FloatTypes{}, dtype, "bias_add", [&](auto tag) {
    using T = decltype(tag);
    const T* in = static_cast<const T*>(x);
    const T* b = static_cast<const T*>(bias);
    T* o = static_cast<T*>(out);
    if constexpr (kBlockedFloat<T>) {
      // A block of columns at a time: the bias block is widened once for every row.
      float bx[kBlock], bb[kBlock];
      for (int64_t start = 0; start < cols; start += kBlock) {
        int64_t count = std::min(kBlock, cols - start);
        widen_block(b + start, bb, count);
        for (int64_t r = 0; r < rows; ++r) {
          widen_block(in + r * cols + start, bx, count);
          add_row(bx, bb, bx, count);
          narrow_block(bx, o + r * cols + start, count);
        }
      }
    } else {
      for (int64_t r = 0; r < rows; ++r) {
        binary_loop(ops::Add{}, in + r * cols, b, o + r * cols, cols);
      }
    }
  });
}

void cast(DType from, DType to, const void* x, void* out, int64_t n) {
  visit_dtype(from, [&](auto in_tag) {
    using In = decltype(in_tag);
    visit_dtype(to, [&](auto out_tag) {
      using Out = decltype(out_tag);
      const In* in = static_cast<const In*>(x);
      Out* o = static_cast<Out*>(out);
      for (int64_t i = 0; i < n; ++i) o[i] = convert<Out>(in[i]);
    });
  });
}

}  // namespace meshrt::kernels::cpu

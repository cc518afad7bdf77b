// cpu twins of elementwise.cu. Dtypes were checked by elementwise.cc.
#include <cmath>

#include "device/convert.h"
#include "kernels/backend.h"
#include "kernels/cpu_types.h"

namespace meshrt::kernels::cpu {

namespace {
template <class A>
A apply(UnaryOp op, A x, A alpha) {
  switch (op) {
    case UnaryOp::kNeg: return -x;
    case UnaryOp::kRelu: return x > A(0) ? x : A(0);
    case UnaryOp::kScale: return alpha * x;
    case UnaryOp::kGelu:
      if constexpr (std::is_floating_point_v<A>) {
        return A(0.5) * x * (A(1) + std::erf(x * A(0.70710678118654752440)));
      }
      break;
    case UnaryOp::kSilu:
      if constexpr (std::is_floating_point_v<A>) return x / (A(1) + std::exp(-x));
      break;
  }
  return x;
}
}  // namespace

void unary(UnaryOp op, DType dtype, const void* x, void* out, int64_t n, double alpha) {
  visit_numeric(dtype, "unary", [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    const T* in = static_cast<const T*>(x);
    T* o = static_cast<T*>(out);
    A a = static_cast<A>(alpha);
    for (int64_t i = 0; i < n; ++i) o[i] = store<T>(apply<A>(op, load(in[i]), a));
  });
}

void binary(BinaryOp op, DType dtype, const void* a, const void* b, void* out, int64_t n) {
  visit_numeric(dtype, "binary", [&](auto tag) {
    using T = decltype(tag);
    const T* x = static_cast<const T*>(a);
    const T* y = static_cast<const T*>(b);
    T* o = static_cast<T*>(out);
    if (op == BinaryOp::kAdd) {
      for (int64_t i = 0; i < n; ++i) o[i] = store<T>(load(x[i]) + load(y[i]));
    } else {
      for (int64_t i = 0; i < n; ++i) o[i] = store<T>(load(x[i]) * load(y[i]));
    }
  });
}

void bias_add(DType dtype, const void* x, const void* bias, void* out, int64_t rows,
              int64_t cols) {
  visit_floating(dtype, "bias_add", [&](auto tag) {
    using T = decltype(tag);
    const T* in = static_cast<const T*>(x);
    const T* b = static_cast<const T*>(bias);
    T* o = static_cast<T*>(out);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        o[r * cols + c] = store<T>(load(in[r * cols + c]) + load(b[c]));
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
      for (int64_t i = 0; i < n; ++i) {
        // Through double: exact for every value of every source type but i64
        // beyond 2^53, which a float destination cannot hold anyway.
        double v = static_cast<double>(load(in[i]));
        if constexpr (std::is_same_v<Out, bool>) {
          o[i] = v != 0.0;
        } else if constexpr (std::is_integral_v<Out>) {
          if constexpr (std::is_integral_v<In>) {
            o[i] = static_cast<Out>(in[i]);
          } else {
            o[i] = saturate_to_integer<Out>(v);
          }
        } else {
          o[i] = store<Out>(v);
        }
      }
    });
  });
}

}  // namespace meshrt::kernels::cpu

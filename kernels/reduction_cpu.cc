// cpu twins of reduction.cu. Dtypes were checked by reduction.cc.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/backend.h"
#include "device/convert.h"
#include "kernels/dtype_sets.h"

namespace meshrt::kernels::cpu {

void sum(DType dtype, const void* x, void* out, int64_t outer, int64_t axis, int64_t inner) {
  visit_validated(NumericTypes{}, dtype, "sum", [&](auto tag) {
    using T = decltype(tag);
    using S = sum_acc_t<T>;  // double for floats, int64 for integers
    const T* in = static_cast<const T*>(x);
    T* o = static_cast<T*>(out);
    std::vector<S> acc(static_cast<size_t>(inner));
    for (int64_t b = 0; b < outer; ++b) {
      std::fill(acc.begin(), acc.end(), S(0));
      for (int64_t a = 0; a < axis; ++a) {
        const T* row = in + (b * axis + a) * inner;
        for (int64_t i = 0; i < inner; ++i) acc[static_cast<size_t>(i)] += static_cast<S>(load(row[i]));
      }
      for (int64_t i = 0; i < inner; ++i) o[b * inner + i] = store<T>(acc[static_cast<size_t>(i)]);
    }
  });
}

void softmax(const RowArgs& rows, const void* x, void* out) {
  visit_validated(FloatTypes{}, rows.dtype, "softmax", [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    const T* in = static_cast<const T*>(x);
    T* o = static_cast<T*>(out);
    std::vector<A> e(static_cast<size_t>(rows.cols));
    for (int64_t r = 0; r < rows.rows; ++r) {
      const T* row = in + r * rows.cols;
      A max = -INFINITY;
      for (int64_t c = 0; c < rows.cols; ++c) max = std::max(max, load(row[c]));
      A total = 0;
      for (int64_t c = 0; c < rows.cols; ++c) {
        e[static_cast<size_t>(c)] = std::exp(load(row[c]) - max);
        total += e[static_cast<size_t>(c)];
      }
      for (int64_t c = 0; c < rows.cols; ++c) {
        o[r * rows.cols + c] = store<T>(e[static_cast<size_t>(c)] / total);
      }
    }
  });
}

void layernorm(const RowArgs& rows, const void* x, const void* gamma, const void* beta, double eps,
               void* out) {
  visit_validated(FloatTypes{}, rows.dtype, "layernorm", [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    const T* in = static_cast<const T*>(x);
    const T* g = static_cast<const T*>(gamma);
    const T* b = static_cast<const T*>(beta);
    T* o = static_cast<T*>(out);
    A n = static_cast<A>(rows.cols);
    for (int64_t r = 0; r < rows.rows; ++r) {
      const T* row = in + r * rows.cols;
      A mean = 0;
      for (int64_t c = 0; c < rows.cols; ++c) mean += load(row[c]);
      mean /= n;
      A var = 0;
      for (int64_t c = 0; c < rows.cols; ++c) {
        A d = load(row[c]) - mean;
        var += d * d;
      }
      var /= n;
      A inv = A(1) / std::sqrt(var + static_cast<A>(eps));
      for (int64_t c = 0; c < rows.cols; ++c) {
        o[r * rows.cols + c] = store<T>((load(row[c]) - mean) * inv * load(g[c]) + load(b[c]));
      }
    }
  });
}

void rmsnorm(const RowArgs& rows, const void* x, const void* gamma, double eps, void* out) {
  visit_validated(FloatTypes{}, rows.dtype, "rmsnorm", [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    const T* in = static_cast<const T*>(x);
    const T* g = static_cast<const T*>(gamma);
    T* o = static_cast<T*>(out);
    for (int64_t r = 0; r < rows.rows; ++r) {
      const T* row = in + r * rows.cols;
      A squares = 0;
      for (int64_t c = 0; c < rows.cols; ++c) squares += load(row[c]) * load(row[c]);
      A inv = A(1) / std::sqrt(squares / static_cast<A>(rows.cols) + static_cast<A>(eps));
      for (int64_t c = 0; c < rows.cols; ++c) {
        o[r * rows.cols + c] = store<T>(load(row[c]) * inv * load(g[c]));
      }
    }
  });
}

}  // namespace meshrt::kernels::cpu

// cpu twins of reduction.cu. Dtypes were checked by reduction.cc.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "device/convert.h"
#include "kernels/backend.h"
#include "kernels/cpu_math.h"
#include "kernels/cpu_vector.h"
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

namespace {
// Whether v replaces best as the running maximum (minimum when !max): a NaN
// wins and stays (v != v tests NaN; integers never are), so ties and NaNs keep
// the first index.
template <class A>
bool replaces(A v, A best, bool max) {
  if (best != best) return false;
  return v != v || (max ? v > best : v < best);
}

// Whether row element (v, i) comes before (w, j) in topk's order: NaN first,
// then larger values, then lower indices.
template <class A>
bool ranks_before(A v, int64_t i, A w, int64_t j) {
  bool nv = v != v, nw = w != w;
  if (nv != nw) return nv;
  if (!nv && v != w) return v > w;
  return i < j;
}
}  // namespace

// Along the axis with the inner elements as the fast loop (contiguous reads).
void reduce_axis(ReduceAxisOp op, DType dtype, const void* x, void* out, int64_t outer, int64_t axis, int64_t inner) {
  const size_t width = static_cast<size_t>(inner);
  if (op == ReduceAxisOp::kMean) {
    visit_validated(FloatTypes{}, dtype, "mean", [&](auto tag) {
      using T = decltype(tag);
      const T* in = static_cast<const T*>(x);
      T* o = static_cast<T*>(out);
      std::vector<double> acc(width);
      for (int64_t b = 0; b < outer; ++b) {
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t a = 0; a < axis; ++a) {
          const T* row = in + (b * axis + a) * inner;
          for (size_t i = 0; i < width; ++i) acc[i] += static_cast<double>(load(row[i]));
        }
        for (size_t i = 0; i < width; ++i) o[b * inner + static_cast<int64_t>(i)] = store<T>(acc[i] / static_cast<double>(axis));
      }
    });
    return;
  }
  const char* name = op == ReduceAxisOp::kMax ? "amax" : op == ReduceAxisOp::kMin ? "amin" : "argmax";
  const bool max = op != ReduceAxisOp::kMin;
  visit_validated(NumericTypes{}, dtype, name, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    const T* in = static_cast<const T*>(x);
    std::vector<A> best(width);
    std::vector<int64_t> at(width);
    for (int64_t b = 0; b < outer; ++b) {
      const T* first = in + b * axis * inner;
      for (size_t i = 0; i < width; ++i) best[i] = load(first[i]);
      std::fill(at.begin(), at.end(), int64_t{0});
      for (int64_t a = 1; a < axis; ++a) {
        const T* row = first + a * inner;
        for (size_t i = 0; i < width; ++i) {
          A v = load(row[i]);
          if (replaces(v, best[i], max)) {
            best[i] = v;
            at[i] = a;
          }
        }
      }
      if (op == ReduceAxisOp::kArgmax) {
        std::copy(at.begin(), at.end(), static_cast<int64_t*>(out) + b * inner);
      } else {
        T* o = static_cast<T*>(out) + b * inner;
        for (size_t i = 0; i < width; ++i) o[i] = first[at[i] * inner + static_cast<int64_t>(i)];
      }
    }
  });
}

// Per row: a partial sort of the column numbers by ranks_before.
void topk(DType dtype, const void* x, void* values, void* indices, int64_t rows, int64_t cols, int64_t k) {
  visit_validated(NumericTypes{}, dtype, "topk", [&](auto tag) {
    using T = decltype(tag);
    std::vector<int64_t> order(static_cast<size_t>(cols));
    for (int64_t r = 0; r < rows; ++r) {
      const T* row = static_cast<const T*>(x) + r * cols;
      for (int64_t c = 0; c < cols; ++c) order[static_cast<size_t>(c)] = c;
      std::partial_sort(order.begin(), order.begin() + k, order.end(),
                        [&](int64_t i, int64_t j) { return ranks_before(load(row[i]), i, load(row[j]), j); });
      T* v = static_cast<T*>(values) + r * k;
      int64_t* ix = static_cast<int64_t*>(indices) + r * k;
      for (int64_t t = 0; t < k; ++t) {
        ix[t] = order[static_cast<size_t>(t)];
        v[t] = row[ix[t]];
      }
    }
  });
}

namespace {
// Lanes of a row reduction: independent partial results the compiler keeps in
// one vector register (a float reduction in one variable would not vectorize:
// its order of additions is fixed).
constexpr int kLanes = 16;

// The largest element of a row; NaNs are skipped (a NaN then reaches every
// output through exp, as it does with std::max).
MESHRT_CPU_CLONES float row_max(const float* x, int64_t n) {
  float lanes[kLanes];
  for (float& l : lanes) l = -INFINITY;
  int64_t i = 0;
#if defined(__GNUC__) && !defined(__clang__)
  // GCC keeps 16 scalar lanes in 16 registers here (a max is no reduction it
  // vectorizes without -ffinite-math-only); its vector type makes it one register.
  typedef float Lanes __attribute__((vector_size(kLanes * sizeof(float))));
  Lanes acc;
  std::memcpy(&acc, lanes, sizeof acc);
  for (; i + kLanes <= n; i += kLanes) {
    Lanes v;
    std::memcpy(&v, x + i, sizeof v);
    acc = v > acc ? v : acc;
  }
  std::memcpy(lanes, &acc, sizeof acc);
#else
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) lanes[j] = x[i + j] > lanes[j] ? x[i + j] : lanes[j];
  }
#endif
  float m = -INFINITY;
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  for (float l : lanes) m = l > m ? l : m;
  return m;
}

// e[i] = exp(x[i] - max); returns their sum.
MESHRT_CPU_CLONES float exp_and_sum(const float* x, float* e, int64_t n, float max) {
  float lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      e[i + j] = cpu_math::exp(x[i + j] - max);
      lanes[j] += e[i + j];
    }
  }
  float total = 0;
  for (; i < n; ++i) {
    e[i] = cpu_math::exp(x[i] - max);
    total += e[i];
  }
  for (float l : lanes) total += l;
  return total;
}

MESHRT_CPU_CLONES void scale_row(const float* x, float* out, int64_t n, float factor) {
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] * factor;
}

// A row of float scratch for the 16-bit dtypes, kept by the thread (grown, never
// allocated per call).
float* row_scratch(int64_t cols) {
  thread_local std::vector<float> scratch;
  if (scratch.size() < static_cast<size_t>(cols)) scratch.resize(static_cast<size_t>(cols));
  return scratch.data();
}
}  // namespace

// Softmax over rows: max, then exp(x - max) and its sum, then a scaling by
// 1 / sum. float (f32, and f16 / bf16 through a float row) runs the vectorized
// loops above; f64 the same steps with libm's exp. A row of only -inf gives NaN
// (0 / 0), as in PyTorch; a NaN anywhere in a row makes the row NaN.
void softmax(const RowArgs& rows, const void* x, void* out) {
  visit_validated(FloatTypes{}, rows.dtype, "softmax", [&](auto tag) {
    using T = decltype(tag);
    const T* in = static_cast<const T*>(x);
    T* o = static_cast<T*>(out);
    const int64_t cols = rows.cols;
    if constexpr (std::is_same_v<T, double>) {
      for (int64_t r = 0; r < rows.rows; ++r) {
        const double* row = in + r * cols;
        double* dst = o + r * cols;
        double max = -INFINITY;
        for (int64_t c = 0; c < cols; ++c) max = std::max(max, row[c]);
        double total = 0;
        for (int64_t c = 0; c < cols; ++c) total += (dst[c] = std::exp(row[c] - max));
        for (int64_t c = 0; c < cols; ++c) dst[c] /= total;
      }
    } else {
      float* scratch = kBlockedFloat<T> ? row_scratch(cols) : nullptr;
      for (int64_t r = 0; r < rows.rows; ++r) {
        const float* row;
        float* e;
        if constexpr (kBlockedFloat<T>) {
          widen_block(in + r * cols, scratch, cols);
          row = e = scratch;
        } else {
          row = in + r * cols;
          e = o + r * cols;  // exp is written to out, then scaled in place
        }
        float total = exp_and_sum(row, e, cols, row_max(row, cols));
        float inverse = 1.0f / total;
        scale_row(e, e, cols, inverse);
        if constexpr (kBlockedFloat<T>) narrow_block(e, o + r * cols, cols);
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

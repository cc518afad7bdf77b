// cpu twins of attention.cu. Shapes and dtypes were checked by attention.cc.
//
// attention: per (batch, kv head) the keys and values are gathered once into
// contiguous rows of the compute type (f32, f64 for f64); then per query head
// of the group and query row, the scores q . k_j * scale of the keys the row
// may see, their maximum, exp(s - max) and its sum, and the weighted sum of
// the value rows. The dot products and the weighted sums run over contiguous
// rows and vectorize (cpu_vector.h).
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "device/convert.h"
#include "kernels/backend.h"
#include "kernels/cpu_vector.h"
#include "kernels/dtype_sets.h"

namespace meshrt::kernels::cpu {

namespace {
// Independent partial sums the compiler keeps in one vector register (one
// accumulator would fix the order of additions and not vectorize).
constexpr int kLanes = 16;

template <class A>
MESHRT_CPU_CLONES A dot(const A* x, const A* y, int64_t n) {
  A lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) lanes[j] += x[i + j] * y[i + j];
  }
  A total = 0;
  for (; i < n; ++i) total += x[i] * y[i];
  for (A l : lanes) total += l;
  return total;
}

// acc += p * x
template <class A>
MESHRT_CPU_CLONES void add_scaled(A* acc, A p, const A* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) acc[i] += p * x[i];
}

// n stored elements as the compute type.
template <class T, class A>
void to_compute(const T* in, A* out, int64_t n) {
  if constexpr (kBlockedFloat<T>) {
    widen_block(in, out, n);
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = load(in[i]);
  }
}
}  // namespace

void rope(const RopeArgs& args, const void* x, const void* positions, void* out) {
  visit_validated(FloatTypes{}, args.dtype, "rope", [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    const T* in = static_cast<const T*>(x);
    const int64_t* pos = static_cast<const int64_t*>(positions);
    T* o = static_cast<T*>(out);
    const int64_t half = args.head_dim / 2;
    std::vector<double> inv_freq(static_cast<size_t>(half));
    for (int64_t i = 0; i < half; ++i) inv_freq[static_cast<size_t>(i)] = rope_inv_freq(args, i);
    std::vector<A> cos_t(static_cast<size_t>(half)), sin_t(static_cast<size_t>(half));
    for (int64_t t = 0; t < args.tokens; ++t) {
      for (int64_t i = 0; i < half; ++i) {
        double angle = static_cast<double>(pos[t]) * inv_freq[static_cast<size_t>(i)];
        cos_t[static_cast<size_t>(i)] = static_cast<A>(std::cos(angle));
        sin_t[static_cast<size_t>(i)] = static_cast<A>(std::sin(angle));
      }
      for (int64_t h = 0; h < args.heads; ++h) {
        const T* row = in + (t * args.heads + h) * args.head_dim;
        T* dst = o + (t * args.heads + h) * args.head_dim;
        for (int64_t i = 0; i < half; ++i) {
          A c = cos_t[static_cast<size_t>(i)], s = sin_t[static_cast<size_t>(i)];
          A x0 = load(row[i]), x1 = load(row[i + half]);
          dst[i] = store<T>(x0 * c - x1 * s);
          dst[i + half] = store<T>(x1 * c + x0 * s);
        }
      }
    }
  });
}

void attention(const AttentionArgs& a, const void* q, const void* k, const void* v, const void* key_mask, void* out) {
  visit_validated(FloatTypes{}, a.dtype, "attention", [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    const T* qs = static_cast<const T*>(q);
    const T* ks = static_cast<const T*>(k);
    const T* vs = static_cast<const T*>(v);
    T* o = static_cast<T*>(out);
    const int64_t d = a.head_dim, group = a.heads / a.kv_heads;
    const A scale = static_cast<A>(a.scale);
    const size_t kv_elements = static_cast<size_t>(a.kv_seq * d);
    std::vector<A> keys(kv_elements), values(kv_elements), query(static_cast<size_t>(d)), acc(static_cast<size_t>(d));
    std::vector<A> scores(static_cast<size_t>(a.kv_seq));
    for (int64_t b = 0; b < a.batch; ++b) {
      for (int64_t g = 0; g < a.kv_heads; ++g) {
        for (int64_t j = 0; j < a.kv_seq; ++j) {
          int64_t at = ((b * a.kv_seq + j) * a.kv_heads + g) * d;
          to_compute(ks + at, keys.data() + j * d, d);
          to_compute(vs + at, values.data() + j * d, d);
        }
        for (int64_t h = g * group; h < (g + 1) * group; ++h) {
          for (int64_t i = 0; i < a.q_seq; ++i) {
            const int64_t row = ((b * a.q_seq + i) * a.heads + h) * d;
            to_compute(qs + row, query.data(), d);
            const int64_t end = attention_key_end(a, i);
            A max = -INFINITY;
            for (int64_t j = 0; j < end; ++j) {
              A s = key_allowed(key_mask, a.mask_dtype, b * a.kv_seq + j) ? dot(query.data(), keys.data() + j * d, d) * scale
                                                                          : A(-INFINITY);
              scores[static_cast<size_t>(j)] = s;
              max = s > max ? s : max;
            }
            T* dst = o + row;
            if (max == A(-INFINITY)) {  // every key masked: zeros (attention.h)
              for (int64_t c = 0; c < d; ++c) dst[c] = store<T>(A(0));
              continue;
            }
            std::fill(acc.begin(), acc.end(), A(0));
            A total = 0;
            for (int64_t j = 0; j < end; ++j) {
              A s = scores[static_cast<size_t>(j)];
              if (s == A(-INFINITY)) continue;
              A p = std::exp(s - max);
              total += p;
              add_scaled(acc.data(), p, values.data() + j * d, d);
            }
            const A inverse = A(1) / total;
            for (int64_t c = 0; c < d; ++c) dst[c] = store<T>(acc[static_cast<size_t>(c)] * inverse);
          }
        }
      }
    }
  });
}

}  // namespace meshrt::kernels::cpu

// cpu GEMM with OpenBLAS. f32 and f64 call cblas directly on the caller's
// memory, so meshrt's GEMM costs what cblas_sgemm costs; f16 and bf16 are
// widened to f32, multiplied, and narrowed back.
#include <cblas.h>

#include <limits>
#include <vector>

#include "kernels/backend.h"
#include "device/half.h"

namespace meshrt::kernels::cpu {

namespace {
CBLAS_TRANSPOSE op(bool transpose) { return transpose ? CblasTrans : CblasNoTrans; }

blasint narrow_int(int64_t v, const char* what) {
  MESHRT_CHECK_SHAPE(v <= static_cast<int64_t>(std::numeric_limits<blasint>::max()), "gemm: ",
                     what, " = ", v, " exceeds the BLAS integer range");
  return static_cast<blasint>(v);
}

template <class T>
std::vector<float> widen(const void* data, int64_t count) {
  const T* in = static_cast<const T*>(data);
  std::vector<float> out(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) out[static_cast<size_t>(i)] = static_cast<float>(in[i]);
  return out;
}

// Number of elements one batch of an operand spans given its leading dimension.
int64_t extent(int64_t rows, int64_t ld) { return rows * ld; }
}  // namespace

void gemm(const GemmArgs& g) {
  blasint m = narrow_int(g.m, "m"), n = narrow_int(g.n, "n"), k = narrow_int(g.k, "k");
  blasint lda = narrow_int(g.lda, "lda"), ldb = narrow_int(g.ldb, "ldb"),
          ldc = narrow_int(g.ldc, "ldc");
  switch (g.dtype) {
    case DType::kF32:
      for (int64_t i = 0; i < g.batch; ++i) {
        cblas_sgemm(CblasRowMajor, op(g.transpose_a), op(g.transpose_b), m, n, k,
                    static_cast<float>(g.alpha), static_cast<const float*>(g.a) + i * g.stride_a,
                    lda, static_cast<const float*>(g.b) + i * g.stride_b, ldb,
                    static_cast<float>(g.beta), static_cast<float*>(g.c) + i * g.stride_c, ldc);
      }
      return;
    case DType::kF64:
      for (int64_t i = 0; i < g.batch; ++i) {
        cblas_dgemm(CblasRowMajor, op(g.transpose_a), op(g.transpose_b), m, n, k, g.alpha,
                    static_cast<const double*>(g.a) + i * g.stride_a, lda,
                    static_cast<const double*>(g.b) + i * g.stride_b, ldb, g.beta,
                    static_cast<double*>(g.c) + i * g.stride_c, ldc);
      }
      return;
    case DType::kF16:
    case DType::kBF16: {
      // Widen whole operands (all batches) once, then run the f32 path.
      auto run = [&](auto tag) {
        using T = decltype(tag);
        int64_t a_rows = g.transpose_a ? g.k : g.m;
        int64_t b_rows = g.transpose_b ? g.n : g.k;
        int64_t a_count = (g.stride_a ? (g.batch - 1) * g.stride_a : 0) + extent(a_rows, g.lda);
        int64_t b_count = (g.stride_b ? (g.batch - 1) * g.stride_b : 0) + extent(b_rows, g.ldb);
        int64_t c_count = (g.batch - 1) * g.stride_c + extent(g.m, g.ldc);
        std::vector<float> a = widen<T>(g.a, a_count);
        std::vector<float> b = widen<T>(g.b, b_count);
        std::vector<float> c = g.beta != 0.0 ? widen<T>(g.c, c_count)
                                             : std::vector<float>(static_cast<size_t>(c_count));
        GemmArgs f = g;
        f.dtype = DType::kF32;
        f.a = a.data();
        f.b = b.data();
        f.c = c.data();
        gemm(f);
        T* out = static_cast<T*>(g.c);
        for (int64_t i = 0; i < c_count; ++i) out[i] = T(c[static_cast<size_t>(i)]);
      };
      if (g.dtype == DType::kF16) {
        run(Half{});
      } else {
        run(BFloat16{});
      }
      return;
    }
    default:
      throw Error(ErrorKind::kInternal, "cpu gemm reached with an unsupported dtype");
  }
}

}  // namespace meshrt::kernels::cpu

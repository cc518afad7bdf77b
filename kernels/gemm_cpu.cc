// cpu GEMM: a table of one row per dtype (gemm_cpu.h). f32 and f64 call
// OpenBLAS directly on the caller's memory, so meshrt's GEMM costs what
// cblas_sgemm costs; bf16 and f16 go to oneDNN's matmul (gemm_onednn.cc), which
// multiplies bf16 in bf16 with f32 accumulation (OpenBLAS has no 16-bit GEMM).
#include <cblas.h>

#include <limits>

#include "kernels/gemm_cpu.h"

namespace meshrt::kernels::cpu {

namespace {
CBLAS_TRANSPOSE op(bool transpose) { return transpose ? CblasTrans : CblasNoTrans; }

blasint narrow_int(int64_t v, const char* what) {
  MESHRT_CHECK_SHAPE(v <= static_cast<int64_t>(std::numeric_limits<blasint>::max()), "gemm: ",
                     what, " = ", v, " exceeds the BLAS integer range");
  return static_cast<blasint>(v);
}

struct BlasArgs {
  blasint m, n, k, lda, ldb, ldc;
  explicit BlasArgs(const GemmArgs& g)
      : m(narrow_int(g.m, "m")), n(narrow_int(g.n, "n")), k(narrow_int(g.k, "k")),
        lda(narrow_int(g.lda, "lda")), ldb(narrow_int(g.ldb, "ldb")), ldc(narrow_int(g.ldc, "ldc")) {}
};

void openblas_sgemm(const GemmArgs& g) {
  BlasArgs b(g);
  for (int64_t i = 0; i < g.batch; ++i) {
    cblas_sgemm(CblasRowMajor, op(g.transpose_a), op(g.transpose_b), b.m, b.n, b.k,
                static_cast<float>(g.alpha), static_cast<const float*>(g.a) + i * g.stride_a,
                b.lda, static_cast<const float*>(g.b) + i * g.stride_b, b.ldb,
                static_cast<float>(g.beta), static_cast<float*>(g.c) + i * g.stride_c, b.ldc);
  }
}

void openblas_dgemm(const GemmArgs& g) {
  BlasArgs b(g);
  for (int64_t i = 0; i < g.batch; ++i) {
    cblas_dgemm(CblasRowMajor, op(g.transpose_a), op(g.transpose_b), b.m, b.n, b.k, g.alpha,
                static_cast<const double*>(g.a) + i * g.stride_a, b.lda,
                static_cast<const double*>(g.b) + i * g.stride_b, b.ldb, g.beta,
                static_cast<double*>(g.c) + i * g.stride_c, b.ldc);
  }
}

const GemmRow kGemmRows[] = {
    {DType::kF32, "OpenBLAS cblas_sgemm", openblas_sgemm},
    {DType::kF64, "OpenBLAS cblas_dgemm", openblas_dgemm},
    {DType::kBF16, "oneDNN matmul (bf16, f32 accumulation)", onednn_gemm},
    {DType::kF16, "oneDNN matmul (f16, f32 accumulation; through f32 copies where oneDNN has no f16 kernel)",
     onednn_gemm},
};
}  // namespace

std::span<const GemmRow> gemm_rows() { return kGemmRows; }

void gemm(const GemmArgs& g) {
  for (const GemmRow& row : kGemmRows) {
    if (row.dtype == g.dtype) return row.run(g);
  }
  throw Error(ErrorKind::kInternal, detail::cat("cpu gemm reached with dtype ", to_string(g.dtype),
                                                ", which the cpu GEMM table has no row for"));
}

}  // namespace meshrt::kernels::cpu

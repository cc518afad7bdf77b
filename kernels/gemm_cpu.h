// Internal: the cpu GEMM table and its oneDNN rows (C++20; the CUDA sources do
// not include it).
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "kernels/backend.h"

namespace meshrt::kernels::cpu {

// The cpu GEMM table (gemm_cpu.cc): one row per dtype, naming the library that
// multiplies it; cpu::gemm runs the row of its dtype. Adding a library or a
// dtype is a row.
struct GemmRow {
  DType dtype;
  const char* library;
  void (*run)(const GemmArgs& args);
};
std::span<const GemmRow> gemm_rows();

// oneDNN's matmul (gemm_onednn.cc): bf16, f16 (through f32 copies where oneDNN
// has no f16 kernel) and f32. Primitives are cached by problem.
void onednn_gemm(const GemmArgs& args);
// The oneDNN kernel a plain (m x k) @ (k x n) of dtype gets, e.g.
// "brg:avx512_core_amx_bf16", or "none (...)" with oneDNN's reason.
std::string onednn_gemm_kernel(DType dtype, int64_t m, int64_t n, int64_t k);
// Whether oneDNN multiplies dtype itself (false: f16 goes through f32 copies).
bool onednn_has_kernel(DType dtype);
struct OnednnCacheStats {
  uint64_t hits = 0, misses = 0;  // lookups of the primitive cache since the start
  size_t size = 0, capacity = 0;  // primitives kept, and the bound
};
OnednnCacheStats onednn_cache_stats();

}  // namespace meshrt::kernels::cpu

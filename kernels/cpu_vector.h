// Internal: what the cpu loops share to vectorize (elementwise_cpu.cc,
// reduction_cpu.cc).
//
// MESHRT_CPU_CLONES compiles a function (templates too) for AVX-512
// (x86-64-v4), AVX2 + FMA (x86-64-v3) and baseline x86-64, and picks one when
// the library is loaded (GCC's target_clones; an ifunc). Elsewhere (clang,
// other architectures) it is empty: the baseline build, still vectorized for
// SSE2 / the target's default.
//
// 16-bit floats are computed in float: whole blocks of kBlock elements are
// converted into a buffer on the stack, computed, and converted back, by the
// branch-free converters below (the same rounding as Half and BFloat16 in
// device/half.h: to nearest even, infinities kept, NaN stays NaN).
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "device/half.h"

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__CUDACC__)
#define MESHRT_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MESHRT_CPU_CLONES
#endif

namespace meshrt::kernels::cpu {

// Elements per block of a 16-bit float loop (a 4 KiB float buffer, in L1).
inline constexpr int64_t kBlock = 1024;

template <class T>
inline constexpr bool kBlockedFloat = std::is_same_v<T, Half> || std::is_same_v<T, BFloat16>;

namespace vec {
inline uint32_t bits(float f) { return float_bits(f); }  // device/half.h
inline float from_bits(uint32_t u) { return bits_float(u); }

inline float widen(BFloat16 v) { return from_bits(static_cast<uint32_t>(v.bits) << 16); }

inline BFloat16 narrow_bf16(float f) {
  uint32_t u = bits(f);
  uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;  // to nearest even
  uint32_t nan = (u >> 16) | 0x0040u;                          // quiet, keeps the sign
  return BFloat16::from_bits(static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded));
}

inline float widen(Half v) {
  uint32_t h = v.bits;
  uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  float normal = from_bits(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  float special = from_bits(sign | 0x7f800000u | (mantissa << 13));       // inf, NaN
  float subnormal = static_cast<float>(static_cast<int32_t>(mantissa)) * (1.0f / 16777216.0f);
  subnormal = from_bits(bits(subnormal) | sign);
  return exponent == 0x1fu ? special : exponent == 0 ? subnormal : normal;
}

inline Half narrow_f16(float f) {
  uint32_t u = bits(f);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t abs = u & 0x7fffffffu;
  // Normal halves: rebias the exponent (127 -> 15) and round the mantissa to
  // nearest even (a carry may reach the exponent, and from the largest finite
  // value to infinity, as it should).
  uint32_t normal = (abs - (112u << 23) + 0x0fffu + ((abs >> 13) & 1u)) >> 13;
  // Below 2^-14: adding 0.5 puts the half's subnormal unit (2^-24) at the last
  // bit of the float's mantissa, and the float addition rounds to nearest even.
  uint32_t subnormal = bits(from_bits(abs) + 0.5f) - bits(0.5f);
  uint32_t h = abs < 0x38800000u ? subnormal : normal;
  h = abs >= 0x477ff000u ? 0x7c00u : h;  // rounds to >= 65520: infinity
  h = abs > 0x7f800000u ? 0x7e00u : h;   // NaN
  return Half::from_bits(static_cast<uint16_t>(sign | h));
}

inline void narrow(float f, BFloat16& out) { out = narrow_bf16(f); }
inline void narrow(float f, Half& out) { out = narrow_f16(f); }
}  // namespace vec

// n elements of a 16-bit float array as float, and back.
template <class T>
MESHRT_CPU_CLONES void widen_block(const T* in, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = vec::widen(in[i]);
}
template <class T>
MESHRT_CPU_CLONES void narrow_block(const float* in, T* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) vec::narrow(in[i], out[i]);
}

}  // namespace meshrt::kernels::cpu

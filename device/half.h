// 16-bit floating-point storage types: IEEE binary16 (Half) and bfloat16
// (BFloat16), the same types in host and CUDA device code (the bit layout of
// __half and __nv_bfloat16). Arithmetic is done in float; these types only
// store. Conversions round to nearest even and keep NaN and infinities: on the
// host by the code below, on a GPU by CUDA's conversion intrinsics, which round
// the same way.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define MESHRT_HOST_DEVICE __host__ __device__
#else
#define MESHRT_HOST_DEVICE
#endif

namespace meshrt {

struct Half {
  uint16_t bits = 0;
  Half() = default;
  MESHRT_HOST_DEVICE explicit Half(float value);
  MESHRT_HOST_DEVICE explicit operator float() const;
  MESHRT_HOST_DEVICE static Half from_bits(uint16_t b) {
    Half h;
    h.bits = b;
    return h;
  }
};

struct BFloat16 {
  uint16_t bits = 0;
  BFloat16() = default;
  MESHRT_HOST_DEVICE explicit BFloat16(float value);
  MESHRT_HOST_DEVICE explicit operator float() const;
  MESHRT_HOST_DEVICE static BFloat16 from_bits(uint16_t b) {
    BFloat16 h;
    h.bits = b;
    return h;
  }
};

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

MESHRT_HOST_DEVICE inline BFloat16::BFloat16(float value) {
#if defined(__CUDA_ARCH__)
  bits = __bfloat16_as_ushort(__float2bfloat16_rn(value));
#else
  uint32_t u = float_bits(value);
  if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep it quiet and a NaN
    bits = static_cast<uint16_t>((u >> 16) | 0x0040u);
    return;
  }
  uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  bits = static_cast<uint16_t>((u + rounding) >> 16);
#endif
}

MESHRT_HOST_DEVICE inline BFloat16::operator float() const {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(static_cast<unsigned>(bits) << 16);
#else
  return bits_float(static_cast<uint32_t>(bits) << 16);
#endif
}

MESHRT_HOST_DEVICE inline Half::Half(float value) {
#if defined(__CUDA_ARCH__)
  bits = __half_as_ushort(__float2half_rn(value));
#else
  uint32_t u = float_bits(value);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) {  // NaN
    bits = static_cast<uint16_t>(sign | 0x7e00u);
    return;
  }
  if (abs >= 0x477ff000u) {  // rounds to >= 65520: infinity
    bits = static_cast<uint16_t>(sign | 0x7c00u);
    return;
  }
  if (abs < 0x38800000u) {  // below the smallest normal half (2^-14): subnormal or zero
    // Scale so the half subnormal unit (2^-24) becomes 1 and let float rounding
    // (to nearest even) do the work.
    float f = bits_float(abs) * 16777216.0f;  // 2^24
    uint32_t m = static_cast<uint32_t>(f);
    float rest = f - static_cast<float>(m);
    if (rest > 0.5f || (rest == 0.5f && (m & 1u))) ++m;
    bits = static_cast<uint16_t>(sign | m);
    return;
  }
  uint32_t exponent = ((abs >> 23) - 112u) << 10;  // rebias 127 -> 15
  uint32_t mantissa = abs & 0x7fffffu;
  uint32_t half = exponent | (mantissa >> 13);
  uint32_t rest = mantissa & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (half & 1u))) ++half;  // may carry into the exponent
  bits = static_cast<uint16_t>(sign | half);
#endif
}

MESHRT_HOST_DEVICE inline Half::operator float() const {
#if defined(__CUDA_ARCH__)
  return __half2float(__ushort_as_half(bits));
#else
  uint32_t sign = (static_cast<uint32_t>(bits) & 0x8000u) << 16;
  uint32_t exponent = (bits >> 10) & 0x1fu;
  uint32_t mantissa = bits & 0x3ffu;
  if (exponent == 0x1fu) return bits_float(sign | 0x7f800000u | (mantissa << 13));
  if (exponent == 0) {
    float f = static_cast<float>(mantissa) * (1.0f / 16777216.0f);  // mantissa x 2^-24
    return sign ? -f : f;
  }
  return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
#endif
}

}  // namespace meshrt

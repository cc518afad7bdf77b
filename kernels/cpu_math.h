// exp and erfc of float for the cpu loops, written without calls and without
// branches (selects only), so that a loop calling them per element vectorizes;
// the element functions of kernels/elementwise_ops.h use them on the host
// (math::exp, math::erfc), a GPU uses CUDA's expf and erfcf. C++17 (the CUDA
// sources include elementwise_ops.h); host code only.
//
// Accuracy, measured against double on every 997th float (with and without
// FMA; tests/kernels_test.cc checks a sweep and the ops at the kernel tolerances):
//   exp(x)   relative error < 1e-7 where the result is a normal float;
//            +inf above 88.72, 0 below -87.34 (where exp is subnormal, < 1.2e-38);
//            NaN gives NaN.
//   erfc(x)  relative error < 5e-7 for x < 1, < 1.1e-6 for x < 3, growing to
//            ~7e-6 by x = 9 (erfc(9) = 4e-37): the fit's 1.2e-7 plus the
//            rounding of x^2 in the exponent. NaN gives NaN.
// erfc rather than erf: gelu needs 1 + erf(x), which erf gives only to an
// absolute error (with libm's erff, gelu's relative error is 1e-5 at x = -3
// and 100% below x = -7; with erfc it is below 1.1e-6 for x > -4.2 and below
// 1e-5 down to x = -13).
#pragma once

#include <cstdint>

#include "device/half.h"

namespace meshrt::kernels::cpu_math {

namespace detail {
inline uint32_t bits(float f) { return float_bits(f); }  // device/half.h
inline float from_bits(uint32_t u) { return bits_float(u); }
}  // namespace detail

// e^x: x = n ln2 + r with |r| <= ln2/2, e^r by the Cephes polynomial, 2^n built
// in the exponent bits (in two factors: n reaches 128 just below overflow).
inline float exp(float x) {
  constexpr float kHi = 88.72283935546875f;   // above: +inf
  constexpr float kLo = -87.33654022216797f;  // below: 0 (a subnormal result)
  constexpr float kRound = 12582912.0f;       // 1.5 * 2^23: adding it rounds to an integer
  // Clamps written so that a NaN passes through (both comparisons are false).
  float c = x > kHi ? kHi : x;
  c = c < kLo ? kLo : c;
  float t = c * 1.44269504088896341f + kRound;  // n in the low mantissa bits of t
  float k = t - kRound;
  int32_t n = static_cast<int32_t>(detail::bits(t) - detail::bits(kRound));
  float r = c - k * 0.693359375f;  // ln2 in two parts: k * hi is exact
  r = r - k * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t n1 = n >> 1, n2 = n - n1;
  float s1 = detail::from_bits(static_cast<uint32_t>(n1 + 127) << 23);
  float s2 = detail::from_bits(static_cast<uint32_t>(n2 + 127) << 23);
  float y = p * s1 * s2;
  y = x > kHi ? detail::from_bits(0x7f800000u) : y;
  y = x < kLo ? 0.0f : y;
  return y;
}

// erfc(x): Numerical Recipes' erfcc (a Chebyshev fit, relative error below
// 1.2e-7 for every x >= 0), erfc(|x|) = t exp(-x^2 + P(t)), t = 1 / (1 + |x|/2).
inline float erfc(float x) {
  float a = x < 0.0f ? -x : x;
  float t = 1.0f / (1.0f + 0.5f * a);
  float p = 0.17087277f;
  p = p * t - 0.82215223f;
  p = p * t + 1.48851587f;
  p = p * t - 1.13520398f;
  p = p * t + 0.27886807f;
  p = p * t - 0.18628806f;
  p = p * t + 0.09678418f;
  p = p * t + 0.37409196f;
  p = p * t + 1.00002368f;
  p = p * t - 1.26551223f;
  float r = t * exp(p - a * a);
  return x < 0.0f ? 2.0f - r : r;
}

}  // namespace meshrt::kernels::cpu_math

// Element arithmetic and conversions, written once for host and CUDA device
// code (C++17, so .cu files include it too): the cpu kernels, the CUDA kernels
// and cast_host() all use these rules.
//
//   acc_t<T>     the type arithmetic on T happens in: float for f32 and the
//                16-bit floats, double for f64, the type itself for i32/i64,
//                int32 for u8, float for bool
//   load(v)      a stored element as acc_t
//   store<T>(a)  an acc_t value as a stored T (16-bit floats round to nearest
//                even; bool is a != 0)
//   convert<Out>(v)  the one cast rule of meshrt, on every backend:
//                floats to integers truncate toward zero, NaN gives 0 and values
//                out of range saturate; integers to integers wrap as in C++;
//                anything to bool tests != 0; everything else goes through
//                double (exact for every source value but i64 beyond 2^53,
//                which a float destination cannot hold anyway), and to a 16-bit
//                float through float.
//   sum_acc_t<T> what sums accumulate in: double for floats, int64 for integers
#pragma once

#include <cstdint>
#include <limits>
#include <type_traits>

#include "device/half.h"

namespace meshrt {

template <class T>
struct Acc {
  using type = T;
};
template <> struct Acc<Half> { using type = float; };
template <> struct Acc<BFloat16> { using type = float; };
template <> struct Acc<bool> { using type = float; };
template <> struct Acc<uint8_t> { using type = int32_t; };
template <class T>
using acc_t = typename Acc<T>::type;

template <class T>
inline constexpr bool kIsSixteenBitFloat = std::is_same_v<T, Half> || std::is_same_v<T, BFloat16>;

template <class T>
using sum_acc_t = std::conditional_t<std::is_integral_v<T>, int64_t, double>;

template <class T>
MESHRT_HOST_DEVICE inline acc_t<T> load(T v) {
  if constexpr (kIsSixteenBitFloat<T>) {
    return static_cast<float>(v);
  } else {
    return static_cast<acc_t<T>>(v);
  }
}

template <class T, class A>
MESHRT_HOST_DEVICE inline T store(A v) {
  if constexpr (kIsSixteenBitFloat<T>) {
    return T(static_cast<float>(v));
  } else if constexpr (std::is_same_v<T, bool>) {
    return v != A(0);
  } else {
    return static_cast<T>(v);
  }
}

// meshrt's float -> integer conversion: truncate toward zero, NaN -> 0,
// out-of-range values saturate to the type's limits. (C++ leaves out-of-range
// conversions undefined, and CPUs and GPUs differ.)
template <class Out>
MESHRT_HOST_DEVICE inline Out saturate_to_integer(double v) {
  if (v != v) return Out(0);
  constexpr double lowest = static_cast<double>(std::numeric_limits<Out>::lowest());
  constexpr double highest = static_cast<double>(std::numeric_limits<Out>::max());
  if (v <= lowest) return std::numeric_limits<Out>::lowest();
  if (v >= highest) return std::numeric_limits<Out>::max();
  return static_cast<Out>(v);
}

template <class Out, class In>
MESHRT_HOST_DEVICE inline Out convert(In v) {
  if constexpr (std::is_same_v<Out, In>) {
    return v;
  } else if constexpr (std::is_same_v<Out, bool>) {
    return load(v) != acc_t<In>(0);
  } else if constexpr (std::is_integral_v<Out> && std::is_integral_v<In>) {
    return static_cast<Out>(v);  // wraps
  } else {
    double d = static_cast<double>(load(v));
    if constexpr (std::is_integral_v<Out>) {
      return saturate_to_integer<Out>(d);
    } else {
      return store<Out>(d);
    }
  }
}

}  // namespace meshrt

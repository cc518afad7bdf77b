// Internal: how the cpu kernels load and store each element type.
// Acc<T> is the type arithmetic happens in: float for the 16-bit floats and
// f32, double for f64, the type itself for integers.
#pragma once

#include <cstdint>
#include <type_traits>

#include "device/dtype.h"
#include "device/error.h"

namespace meshrt::kernels::cpu {

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
inline acc_t<T> load(T v) {
  if constexpr (std::is_same_v<T, Half> || std::is_same_v<T, BFloat16>) {
    return static_cast<float>(v);
  } else {
    return static_cast<acc_t<T>>(v);
  }
}

template <class T, class A>
inline T store(A v) {
  if constexpr (std::is_same_v<T, Half> || std::is_same_v<T, BFloat16>) {
    return T(static_cast<float>(v));
  } else if constexpr (std::is_same_v<T, bool>) {
    return v != A(0);
  } else {
    return static_cast<T>(v);
  }
}

// Calls f(T{}) for the floating dtypes; throws for others, naming the op.
template <class F>
void visit_floating(DType dtype, const char* op, F&& f) {
  switch (dtype) {
    case DType::kF32: f(float{}); return;
    case DType::kF64: f(double{}); return;
    case DType::kF16: f(Half{}); return;
    case DType::kBF16: f(BFloat16{}); return;
    default:
      throw Error(ErrorKind::kShape, detail::cat(op, " does not support dtype ", to_string(dtype),
                                                 ": expected f32, f64, f16 or bf16"));
  }
}

// Calls f(T{}) for the floating dtypes and i32/i64.
template <class F>
void visit_numeric(DType dtype, const char* op, F&& f) {
  switch (dtype) {
    case DType::kI32: f(int32_t{}); return;
    case DType::kI64: f(int64_t{}); return;
    default: visit_floating(dtype, op, f);
  }
}

}  // namespace meshrt::kernels::cpu

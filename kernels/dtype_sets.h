// The sets of dtypes kernels accept, as types (so that dispatch instantiates an
// element function only for the dtypes it takes) and as lists at run time.
// C++17: the CUDA sources include it.
#pragma once

#include <cstdint>

#include "device/dtype.h"
#include "device/error.h"

namespace meshrt::kernels {

struct FloatTypes {  // f32, f64, f16, bf16
  static constexpr DType kList[] = {DType::kF32, DType::kF64, DType::kF16, DType::kBF16};
};
struct NumericTypes {  // the floats, i32, i64
  static constexpr DType kList[] = {DType::kF32, DType::kF64, DType::kF16, DType::kBF16, DType::kI32, DType::kI64};
};

// Calls f(T{}) with T the storage type of dtype (Half and BFloat16 for the
// 16-bit floats, on the host and on the GPU) when dtype is in Set; returns
// whether it was.
template <class F>
bool visit_dtypes(FloatTypes, DType dtype, F&& f) {
  switch (dtype) {
    case DType::kF32: f(float{}); return true;
    case DType::kF64: f(double{}); return true;
    case DType::kF16: f(Half{}); return true;
    case DType::kBF16: f(BFloat16{}); return true;
    default: return false;
  }
}

template <class F>
bool visit_dtypes(NumericTypes, DType dtype, F&& f) {
  switch (dtype) {
    case DType::kI32: f(int32_t{}); return true;
    case DType::kI64: f(int64_t{}); return true;
    default: return visit_dtypes(FloatTypes{}, dtype, f);
  }
}

// visit_dtypes for backend code, whose dtypes the public call validated: a
// dtype outside Set here is a bug of meshrt (Error of kind internal, naming op).
template <class Set, class F>
void visit_validated(Set set, DType dtype, const char* op, F&& f) {
  if (!visit_dtypes(set, dtype, f)) {
    throw Error(ErrorKind::kInternal, detail::cat(op, " reached a kernel with dtype ", to_string(dtype)));
  }
}

}  // namespace meshrt::kernels

#include "device/shape.h"

#include <ostream>

#include "device/error.h"

namespace meshrt {
namespace {
void check_dims(const std::vector<int64_t>& dims) {
  int64_t numel = 1;
  bool overflow = false;
  for (size_t i = 0; i < dims.size(); ++i) {
    MESHRT_CHECK_SHAPE(dims[i] >= 0, "shape extent ", dims[i], " at axis ", i, " is negative");
    overflow = overflow || __builtin_mul_overflow(numel, dims[i], &numel);
  }
  // Element counts stay far below 2^62, so that count x element size fits in 64 bits.
  MESHRT_CHECK_SHAPE(!overflow && numel <= (int64_t{1} << 58), "a shape with ", dims.size(),
                     " extents holds more than 2^58 elements");
}
}  // namespace

Shape::Shape(std::initializer_list<int64_t> dims) : dims_(dims) { check_dims(dims_); }
Shape::Shape(std::vector<int64_t> dims) : dims_(std::move(dims)) { check_dims(dims_); }

int Shape::axis(int i) const {
  int n = ndim();
  int a = i < 0 ? i + n : i;
  MESHRT_CHECK_ARG(a >= 0 && a < n, "axis ", i, " is out of range for shape ", to_string(),
                   " with ", n, " dimensions");
  return a;
}

Shape Shape::with(int i, int64_t extent) const {
  std::vector<int64_t> dims = dims_;
  dims[static_cast<size_t>(axis(i))] = extent;
  return Shape(std::move(dims));
}

Shape Shape::without(int i) const {
  std::vector<int64_t> dims = dims_;
  dims.erase(dims.begin() + axis(i));
  return Shape(std::move(dims));
}

int64_t Shape::outer(int i) const {
  int a = axis(i);
  int64_t n = 1;
  for (int k = 0; k < a; ++k) n *= dims_[static_cast<size_t>(k)];
  return n;
}

int64_t Shape::inner(int i) const {
  int a = axis(i);
  int64_t n = 1;
  for (int k = a + 1; k < ndim(); ++k) n *= dims_[static_cast<size_t>(k)];
  return n;
}

std::string Shape::to_string() const {
  std::string s = "[";
  for (size_t i = 0; i < dims_.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(dims_[i]);
  }
  return s + "]";
}

std::ostream& operator<<(std::ostream& out, const Shape& shape) { return out << shape.to_string(); }

}  // namespace meshrt

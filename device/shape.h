// Tensor shapes: a list of non-negative extents, row-major.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

namespace meshrt {

class Shape {
 public:
  Shape() = default;
  Shape(std::initializer_list<int64_t> dims);
  explicit Shape(std::vector<int64_t> dims);

  int ndim() const { return static_cast<int>(dims_.size()); }
  // Extent of axis i; negative i counts from the end. Throws on a bad axis.
  int64_t operator[](int i) const { return dims_[static_cast<size_t>(axis(i))]; }
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : dims_) n *= d;
    return n;
  }
  const std::vector<int64_t>& dims() const { return dims_; }
  // Normalises a possibly negative axis; throws Error(kInvalidArgument) when out of range.
  int axis(int i) const;
  // A copy with axis i set to extent.
  Shape with(int i, int64_t extent) const;
  // A copy without axis i (one dimension fewer).
  Shape without(int i) const;
  // Product of extents before / after axis i.
  int64_t outer(int i) const;
  int64_t inner(int i) const;

  auto begin() const { return dims_.begin(); }
  auto end() const { return dims_.end(); }
  bool operator==(const Shape& other) const = default;

  // "[128, 96]"
  std::string to_string() const;

 private:
  std::vector<int64_t> dims_;
};

inline std::string to_string(const Shape& shape) { return shape.to_string(); }
std::ostream& operator<<(std::ostream& out, const Shape& shape);

}  // namespace meshrt

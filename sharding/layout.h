// Layout: how a tensor is placed on a Mesh. For each tensor dimension, the mesh
// axes that shard it (outermost first; none = replicated), plus the mesh axes
// along which the value is a pending partial sum (the true value is the sum of
// the shards over those axes). A mesh axis is used at most once in a layout.
//
// Printed short, as in PyTorch DTensor: "[S(model), R]", "[S(data,model), R] P(x)".
// A dimension sharded over axes (a, b) is cut into |a| x |b| blocks; the rank with
// coordinates (ca, cb) holds block ca x |b| + cb.
#pragma once

#include <string>
#include <vector>

#include "device/shape.h"
#include "sharding/mesh.h"

namespace meshrt::sharding {

class Layout {
 public:
  Layout() = default;
  explicit Layout(std::vector<std::vector<std::string>> dims, std::vector<std::string> partial = {});
  static Layout replicated(int ndim);
  // Dimension dim sharded over one mesh axis, the others replicated.
  static Layout sharded(int ndim, int dim, const std::string& axis);
  // "[S(model), R] P(data)", "S(x,y),R", "R,R": throws Error(kInvalidArgument) with the text.
  static Layout parse(const std::string& text);

  int ndim() const { return static_cast<int>(dims_.size()); }
  const std::vector<std::string>& dim(int d) const;
  const std::vector<std::vector<std::string>>& dims() const { return dims_; }
  const std::vector<std::string>& partial() const { return partial_; }
  bool is_partial() const { return !partial_.empty(); }
  // No dimension sharded and nothing partial: every rank holds the whole value.
  bool is_replicated() const;
  // The tensor dimension sharded by mesh axis, or -1.
  int dim_of(const std::string& axis) const;
  bool is_partial_over(const std::string& axis) const;

  Layout with_dim(int d, std::vector<std::string> axes) const;
  Layout with_partial(std::vector<std::string> axes) const;
  // The same layout with mesh axis `axis` nowhere (not sharding, not partial).
  Layout without_axis(const std::string& axis) const;

  // Checks the layout against mesh and a global shape; errors name the tensor,
  // e.g. "dimension 0 of x (global size 4) is sharded over mesh axis 'model' of
  // size 8: 4 is not divisible by 8".
  void check(const Mesh& mesh, const Shape& global, const std::string& name) const;

  // Number of blocks dimension d is cut into, this rank's block index and the
  // block's extent and offset in the global dimension.
  int64_t parts(const Mesh& mesh, int d) const;
  int64_t block_index(const Mesh& mesh, int d, const std::vector<int>& coordinates) const;
  Shape local_shape(const Mesh& mesh, const Shape& global) const;

  std::string to_string() const;
  bool operator==(const Layout& other) const = default;

 private:
  std::vector<std::vector<std::string>> dims_;
  std::vector<std::string> partial_;
};

}  // namespace meshrt::sharding

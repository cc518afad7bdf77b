// Layout: how a tensor is placed on a Mesh. For each tensor dimension, the mesh
// axes that shard it (outermost first; none = replicated), plus the mesh axes
// along which the value is a pending partial reduction (the true value is the
// reduction of the shards over those axes: a sum, or a max or min). A mesh axis
// is used at most once in a layout.
//
// Notation (docs/ARCHITECTURE.md, "Layouts"): one entry per tensor dimension, in
// order, as in JAX's PartitionSpec: the position is the tensor dimension, the
// argument the mesh axis. "[S(model), R]" is a matrix whose rows (dimension 0)
// are sharded over mesh axis 'model' and whose columns are replicated; PyTorch
// DTensor writes the same placement per mesh axis: model -> Shard(0).
// "[S(data,model), R]": dimension 0 cut over 'data' then 'model'. "P(x)" after
// the brackets: a pending sum over mesh axis 'x' (PyTorch's Partial("sum"));
// "P(x:max)", "P(x:min)": a pending max or min; "P(x, y:max)" lists several.
//
// A dimension sharded over axes (a, b) is cut into |a| x |b| blocks; the rank with
// coordinates (ca, cb) holds block ca x |b| + cb. Of a value partial over axis a,
// for a sum the rank at coordinate 0 of a holds the value (when it was placed
// from a whole one) and the others zeros; for max and min every rank holds it.
#pragma once

#include <string>
#include <vector>

#include "comm/communicator.h"
#include "device/shape.h"
#include "sharding/mesh.h"

namespace meshrt::sharding {

// A pending reduction over one mesh axis. Sum, max and min are supported.
struct Partial {
  std::string axis;
  ReduceOp op = ReduceOp::kSum;
  bool operator==(const Partial&) const = default;
};

class Layout {
 public:
  Layout() = default;
  // partial: mesh axes of pending sums.
  explicit Layout(std::vector<std::vector<std::string>> dims, std::vector<std::string> partial = {});
  static Layout replicated(int ndim);
  // Dimension dim sharded over one mesh axis, the others replicated.
  static Layout sharded(int ndim, int dim, const std::string& axis);
  // "[S(model), R] P(data)", "S(x,y),R", "R,R", "[R] P(x:max)": throws
  // Error(kInvalidArgument) with the text.
  static Layout parse(const std::string& text);

  int ndim() const { return static_cast<int>(dims_.size()); }
  const std::vector<std::string>& dim(int d) const;
  const std::vector<std::vector<std::string>>& dims() const { return dims_; }
  // The mesh axes of pending reductions, and the reductions with their ops.
  std::vector<std::string> partial() const;
  const std::vector<Partial>& partials() const { return partials_; }
  bool is_partial() const { return !partials_.empty(); }
  // No dimension sharded and nothing partial: every rank holds the whole value.
  bool is_replicated() const;
  // The tensor dimension sharded by mesh axis, or -1.
  int dim_of(const std::string& axis) const;
  bool is_partial_over(const std::string& axis) const;
  // The pending reduction over axis; throws Error(kInternal) if there is none.
  ReduceOp partial_op(const std::string& axis) const;
  // Whether this rank holds the value of a tensor placed whole with this layout
  // (false: it holds zeros, at a nonzero coordinate of a pending sum's axis).
  bool holds_value(const Mesh& mesh) const;

  Layout with_dim(int d, std::vector<std::string> axes) const;
  // The same sharding with these pending sums (replacing every partial).
  Layout with_partial(std::vector<std::string> axes) const;
  // The same sharding with these pending reductions (replacing every partial).
  Layout with_partials(std::vector<Partial> partials) const;
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
  Layout(std::vector<std::vector<std::string>> dims, std::vector<Partial> partials, int /*checked: the one constructor that validates*/);
  std::vector<std::vector<std::string>> dims_;
  std::vector<Partial> partials_;
};

}  // namespace meshrt::sharding

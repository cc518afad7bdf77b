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
// Block sizes follow torch.chunk (PyTorch DTensor's rule): a dimension of n
// elements over a mesh axis of k ranks is cut into pieces of ceil(n / k)
// elements until the elements run out, so 5 over 4 gives 2, 2, 1, 0 and 50257
// over 2 gives 25129, 25128. Sizes need not divide. A dimension sharded over
// axes (a, b) is cut over a first, then each piece over b (5 over (2, 2): 3, 2
// over a, then 2, 1 and 1, 1), so the rank with coordinates (ca, cb) holds piece
// cb of piece ca. Gathering over the innermost axis b gives back the piece of a:
// every redistribution step works over one axis. (TensorFlow's partitioners cut
// differently, the first n mod k pieces one larger: sharding/partitioner.h.)
//
// Of a value partial over axis a, for a sum the rank at coordinate 0 of a holds
// the value (when it was placed from a whole one) and the others zeros; for avg,
// max and min every rank holds it.
#pragma once

#include <string>
#include <vector>

#include "comm/communicator.h"
#include "device/shape.h"
#include "sharding/mesh.h"

namespace meshrt::sharding {

// torch.chunk's sizes: n elements cut into k pieces of ceil(n / k) elements
// until they run out (5 over 4: 2, 2, 1, 0; 0 over 3: 0, 0, 0).
std::vector<int64_t> chunk_extents(int64_t n, int64_t k);
// Piece i of chunk_extents(n, k): its offset in the n elements and its extent.
struct Extent {
  int64_t offset = 0, size = 0;
  bool operator==(const Extent&) const = default;
};
Extent chunk_extent(int64_t n, int64_t k, int64_t i);

// A pending reduction over one mesh axis: sum, avg (the mean over the axis's
// ranks), max or min.
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

  // Checks the layout against mesh and a global shape (the number of
  // dimensions, the axes exist); errors name the tensor. Sizes need not divide.
  void check(const Mesh& mesh, const Shape& global, const std::string& name) const;

  // Number of blocks dimension d is cut into, and the block index of the rank
  // at coordinates (row-major over d's axes).
  int64_t parts(const Mesh& mesh, int d) const;
  int64_t block_index(const Mesh& mesh, int d, const std::vector<int>& coordinates) const;
  // The block of dimension d (global extent n) held at coordinates: torch.chunk
  // over each of d's axes in turn, outermost first.
  Extent block(const Mesh& mesh, int d, const std::vector<int>& coordinates, int64_t n) const;
  // Offsets of the block held at coordinates (this rank's by default), one per dimension.
  std::vector<int64_t> block_offsets(const Mesh& mesh, const Shape& global) const;
  std::vector<int64_t> block_offsets(const Mesh& mesh, const Shape& global, const std::vector<int>& coordinates) const;
  // The shape of the block held at coordinates (this rank's by default).
  Shape local_shape(const Mesh& mesh, const Shape& global) const;
  Shape local_shape(const Mesh& mesh, const Shape& global, const std::vector<int>& coordinates) const;

  std::string to_string() const;
  bool operator==(const Layout& other) const = default;

 private:
  Layout(std::vector<std::vector<std::string>> dims, std::vector<Partial> partials, int /*checked: the one constructor that validates*/);
  std::vector<std::vector<std::string>> dims_;
  std::vector<Partial> partials_;
};

}  // namespace meshrt::sharding

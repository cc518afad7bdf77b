// Mesh: the ranks of the world arranged as a grid with named axes, row-major,
// e.g. {{"data", 2}, {"model", 4}}: rank r has coordinates (r / 4, r % 4).
// Each rank owns one device (its shards live there). Sub-communicators over an
// axis, or a group of axes, connect the ranks that differ only along those axes;
// their rank is the row-major index of the coordinates along those axes.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "comm/communicator.h"
#include "device/device.h"

namespace meshrt::sharding {

struct MeshAxis {
  std::string name;
  int size;
};

class Mesh {
 public:
  Mesh() = default;
  // Collective over the world. Throws Error(kInvalidArgument) when the product of
  // the axis sizes differs from the number of ranks (naming both), on an empty or
  // repeated axis name, or a size < 1. device: this rank's device (default: the
  // World's default device).
  explicit Mesh(std::vector<MeshAxis> axes);
  Mesh(std::vector<MeshAxis> axes, const Device& device);
  // A mesh over the ranks of `over` (a communicator over some of the world's
  // ranks, e.g. one model's placement in a server), in its rank order:
  // collective over `over` only. rank() and the coordinates then count within
  // `over`; the device is over's. The same checks as above, against over.size().
  Mesh(std::vector<MeshAxis> axes, const Communicator& over);
  // "data=2,model=2" (also "2x2" for axes named x, y, z in order).
  static std::vector<MeshAxis> parse_axes(const std::string& text);

  bool valid() const { return impl_ != nullptr; }
  int ndim() const;
  const std::vector<MeshAxis>& axes() const;
  // Index of the axis called name; throws Error(kInvalidArgument) listing the axes.
  int axis_index(const std::string& name) const;
  int axis_size(const std::string& name) const;
  int size() const;  // number of ranks
  int rank() const;  // this rank (world rank, or its rank in the communicator the mesh was made over)
  const Device& device() const;

  // Coordinates of rank, and the rank at coordinates.
  std::vector<int> coordinates(int rank) const;
  int rank_at(const std::vector<int>& coordinates) const;
  // This rank's coordinate along axis name.
  int coordinate(const std::string& name) const;

  // The communicator over the given axes (in the mesh's axis order); made once
  // per group and cached. Collective the first time a group is asked for, so
  // every rank must ask for the same groups in the same order (SPMD code does).
  // Each axis's communicator is made when the mesh is.
  const Communicator& communicator(const std::string& axis) const;
  const Communicator& communicator(std::vector<std::string> axes) const;
  // The communicator over all ranks of the mesh.
  const Communicator& world_communicator() const;

  // The slice of this mesh at this rank's coordinate along axis: a mesh of the
  // other axes over the ranks that share that coordinate (e.g. the ranks of one
  // pipeline stage). Its rank() counts within the slice. Collective over this mesh
  // the first time an axis is asked for (its communicators are this mesh's).
  Mesh slice(const std::string& axis) const;

  // The deadline of every communicator of this mesh, its slices, and those it
  // makes later (default: MESHRT_COMM_TIMEOUT).
  void set_timeout(std::chrono::milliseconds timeout) const;
  // Communicator::set_abortable_collectives for every communicator of this mesh,
  // its slices, and those it makes later.
  void set_abortable_collectives(bool on) const;

  // Aborts every communicator of this mesh (and of its slices): operations on
  // them fail at once with reason. For giving up on a mesh after a failure.
  void abort(const std::string& reason) const;
  // Why a communicator of this mesh (or of its slices) was aborted, or "" while
  // none is: work that ran on an aborted communicator has no valid result.
  std::string failure() const;

  // "Mesh(data=2, model=2)"
  std::string to_string() const;
  bool operator==(const Mesh& other) const;

 private:
  // over invalid: a new communicator over the world.
  Mesh(std::vector<MeshAxis> axes, const Communicator& over, const Device& device);
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace meshrt::sharding

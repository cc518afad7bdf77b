// DTensor: a global tensor placed on a Mesh by a Layout. Each rank holds its
// local shard (a DeviceTensor on the mesh's device); programs are written
// against the global shape.
//
// Reading a sharded (or partial) value on the host is an explicit gather():
// to_host() on one is an error that says so.
//
// Asynchronous dispatch (JAX's): ops on DTensors queue their kernels on the
// device's stream and their collectives on the communicators' streams (ordered
// by events, communicator.h) and return at once; a DTensor is a future value.
// Its shape, dtype and layout are known at once; its elements only after
// block_until_ready(), to_host() or gather(), which wait and rethrow a failure
// of the work that produced it, naming the operation. The collectives a value
// depends on travel with it (pending()), so an error is never lost with a
// Work nobody waited on.
#pragma once

#include <string>
#include <vector>

#include "comm/work.h"
#include "device/tensor.h"
#include "sharding/layout.h"
#include "sharding/mesh.h"

namespace meshrt::sharding {

class DTensor {
 public:
  DTensor() = default;
  // Wraps this rank's shard of a global tensor (no communication). Throws
  // Error(kShape) when local's shape is not the layout's block of global.
  DTensor(DeviceTensor local, Shape global, Mesh mesh, Layout layout, std::string name);

  // Every rank passes the same global value; each keeps its block. With a partial
  // layout the value sits at coordinate 0 of the partial axes and the other
  // ranks hold zeros (so the sum is the value).
  static DTensor from_global(const HostTensor& global, const Mesh& mesh, const Layout& layout,
                             const std::string& name);
  // The multi-host case: each rank brings its own block. The global shape is the
  // local shape times the number of blocks per dimension; collective: ranks
  // compare their blocks' shapes and dtypes and all throw Error(kShape) naming the
  // first rank that disagrees.
  static DTensor from_local_shards(const HostTensor& local, const Mesh& mesh, const Layout& layout,
                                   const std::string& name);

  bool defined() const { return local_.defined(); }
  const std::string& name() const { return name_; }
  const Shape& global_shape() const { return global_; }
  DType dtype() const { return local_.dtype(); }
  const Mesh& mesh() const { return mesh_; }
  const Layout& layout() const { return layout_; }
  // This rank's shard. Makes the device's default stream wait (on the device,
  // not the host) for the collectives still producing it (pending()), so work
  // queued there after this call reads the finished value.
  const DeviceTensor& local() const;
  int ndim() const { return global_.ndim(); }

  // The whole value on every rank (collective: an all-gather, and an all-reduce
  // for partial values).
  HostTensor gather() const;
  // The value on the host, only for a replicated DTensor; for a sharded or partial
  // one it throws Error(kInvalidArgument) saying to gather() or redistribute.
  HostTensor to_host() const;

  // Waits until the value is computed (its collectives, then everything queued
  // on its device's stream) and rethrows a failure, naming the operation and
  // this tensor. Returns *this.
  const DTensor& block_until_ready() const;
  // The collectives in flight whose results this value reads (its own and its
  // inputs'); those known to be done are dropped as values are made.
  const std::vector<Work>& pending() const { return pending_; }
  // The same value, also depending on works (what ops pass on from their inputs).
  DTensor after(const std::vector<Work>& works) const;
  DTensor after(const DTensor& input) const { return after(input.pending()); }

  DTensor renamed(std::string name) const;
  // "x: f32[128, 96] [S(data), S(model)] on Mesh(data=2, model=2)"
  std::string description() const;

 private:
  DeviceTensor local_;
  Shape global_;
  Mesh mesh_;
  Layout layout_;
  std::string name_;
  std::vector<Work> pending_;
};

}  // namespace meshrt::sharding

#include "sharding/dtensor.h"

#include <sstream>

#include "sharding/blocks.h"
#include "sharding/redistribute.h"

namespace meshrt::sharding {

DTensor::DTensor(DeviceTensor local, Shape global, Mesh mesh, Layout layout, std::string name)
    : local_(std::move(local)), global_(std::move(global)), mesh_(std::move(mesh)), layout_(std::move(layout)),
      name_(std::move(name)) {
  MESHRT_CHECK_ARG(local_.defined(), "DTensor ", name_, ": the local shard is undefined");
  layout_.check(mesh_, global_, name_);
  Shape expected = layout_.local_shape(mesh_, global_);
  MESHRT_CHECK_SHAPE(local_.shape() == expected, "DTensor ", name_, ": global shape ", global_, " with layout ",
                     layout_.to_string(), " on ", mesh_.to_string(), " gives local shards of ", expected,
                     ", but this rank's shard is ", local_.description());
  MESHRT_CHECK_ARG(local_.device() == mesh_.device(), "DTensor ", name_, ": the shard is on ", local_.device(),
                   " but this rank's device in ", mesh_.to_string(), " is ", mesh_.device());
}

DTensor DTensor::from_global(const HostTensor& global, const Mesh& mesh, const Layout& layout,
                             const std::string& name) {
  MESHRT_CHECK_ARG(global.defined(), "from_global: ", name, " is an undefined tensor");
  layout.check(mesh, global.shape(), name);
  std::vector<int> coordinates = mesh.coordinates(mesh.rank());
  HostTensor block = global;
  for (int d = 0; d < layout.ndim(); ++d) {
    block = blocks::take_block(block, d, layout.block_index(mesh, d, coordinates), layout.parts(mesh, d));
  }
  DeviceTensor local = layout.holds_value(mesh) ? to_device(block, mesh.device())
                                   : DeviceTensor::zeros(block.shape(), block.dtype(), mesh.device());
  return DTensor(std::move(local), global.shape(), mesh, layout, name);
}

DTensor DTensor::from_local_shards(const HostTensor& local, const Mesh& mesh, const Layout& layout,
                                   const std::string& name) {
  MESHRT_CHECK_ARG(local.defined(), "from_local_shards: ", name, " is an undefined tensor");
  MESHRT_CHECK_SHAPE(layout.ndim() == local.ndim(), "from_local_shards: layout ", layout.to_string(), " of ",
                     name, " has ", layout.ndim(), " dimensions but the local shard is ", local.description());
  // Every rank's (dtype, ndim, extents...) must agree: gather them all.
  constexpr int kMaxDims = 16;
  MESHRT_CHECK_SHAPE(local.ndim() <= kMaxDims, "from_local_shards: more than ", kMaxDims, " dimensions");
  std::vector<int64_t> mine(kMaxDims + 2, -1);
  mine[0] = static_cast<int64_t>(local.dtype());
  mine[1] = local.ndim();
  for (int d = 0; d < local.ndim(); ++d) mine[static_cast<size_t>(d) + 2] = local.dim(d);
  const Communicator& world = mesh.world_communicator();
  DeviceTensor send = to_device(HostTensor::from_vector(mine, {kMaxDims + 2}), mesh.device());
  DeviceTensor all = DeviceTensor::empty({world.size() * (kMaxDims + 2)}, DType::kI64, mesh.device());
  world.all_gather(send, all).wait();
  HostTensor everyone = meshrt::to_host(all);
  const int64_t* v = everyone.data<int64_t>();
  for (int r = 0; r < world.size(); ++r) {
    const int64_t* theirs = v + r * (kMaxDims + 2);
    if (std::equal(mine.begin(), mine.end(), theirs)) continue;
    std::vector<int64_t> dims(theirs + 2, theirs + 2 + std::max<int64_t>(0, theirs[1]));
    throw Error(ErrorKind::kShape,
                detail::cat("from_local_shards of ", name, ": rank ", r, " holds ",
                            to_string(static_cast<DType>(theirs[0])), Shape(dims), " but rank ", mesh.rank(),
                            " holds ", local.description(),
                            ": every rank must bring a block of the same shape and dtype"));
  }
  std::vector<int64_t> global = local.shape().dims();
  for (int d = 0; d < layout.ndim(); ++d) global[static_cast<size_t>(d)] *= layout.parts(mesh, d);
  return DTensor(to_device(local, mesh.device()), Shape(global), mesh, layout, name);
}

HostTensor DTensor::gather() const {
  MESHRT_CHECK_ARG(defined(), "gather of an undefined DTensor");
  if (layout_.is_replicated()) return meshrt::to_host(local_);
  return meshrt::to_host(redistribute(*this, Layout::replicated(ndim())).local());
}

HostTensor DTensor::to_host() const {
  MESHRT_CHECK_ARG(defined(), "to_host of an undefined DTensor");
  MESHRT_CHECK_ARG(layout_.is_replicated(), "reading ", description(),
                   " on the host needs its whole value, which no rank holds: gather it explicitly with ",
                   name_, ".gather(), or redistribute(", name_, ", Layout::replicated(", ndim(),
                   ")) first");
  return meshrt::to_host(local_);
}

DTensor DTensor::renamed(std::string name) const {
  DTensor t = *this;
  t.name_ = std::move(name);
  return t;
}

std::string DTensor::description() const {
  std::ostringstream out;
  out << name_ << ": " << to_string(dtype()) << global_ << " " << layout_.to_string() << " on "
      << mesh_.to_string();
  return out.str();
}

}  // namespace meshrt::sharding

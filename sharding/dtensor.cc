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
  for (int d = 0; d < layout.ndim(); ++d) {
    int64_t parts = layout.parts(mesh, d);
    // JAX's case: a process passed its own part where the global value was
    // expected (the blocks would be mostly empty).
    MESHRT_CHECK_SHAPE(global.dim(d) >= parts, "from_global: dimension ", d, " of ", name, " (size ",
                       global.dim(d), ") is sharded into ", parts, " blocks by ", layout.to_string(), " on ",
                       mesh.to_string(), ", more blocks than elements: from_global takes the global value, the "
                       "same on every rank. If each process holds only its own part, convert it with "
                       "host_local_to_global(local, mesh, layout, name) (JAX's "
                       "host_local_array_to_global_array)");
  }
  std::vector<int> coordinates = mesh.coordinates(mesh.rank());
  HostTensor block = global;
  for (int d = 0; d < layout.ndim(); ++d) {
    block = blocks::take_block(block, d, layout.block(mesh, d, coordinates, global.dim(d)));
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
  // Every rank's (dtype, ndim, extents...): gather them all.
  constexpr int kMaxDims = 16;
  constexpr int kFields = kMaxDims + 2;
  MESHRT_CHECK_SHAPE(local.ndim() <= kMaxDims, "from_local_shards: more than ", kMaxDims, " dimensions");
  std::vector<int64_t> mine(kFields, -1);
  mine[0] = static_cast<int64_t>(local.dtype());
  mine[1] = local.ndim();
  for (int d = 0; d < local.ndim(); ++d) mine[static_cast<size_t>(d) + 2] = local.dim(d);
  const Communicator& world = mesh.world_communicator();
  DeviceTensor send = to_device(HostTensor::from_vector(mine, {kFields}), mesh.device());
  DeviceTensor all = DeviceTensor::empty({world.size() * kFields}, DType::kI64, mesh.device());
  world.all_gather(send, all).wait();
  HostTensor everyone = meshrt::to_host(all);
  const int64_t* v = everyone.data<int64_t>();
  auto shape_of = [&](int r) {
    const int64_t* theirs = v + r * kFields;
    return Shape(std::vector<int64_t>(theirs + 2, theirs + 2 + std::max<int64_t>(0, theirs[1])));
  };
  for (int r = 0; r < world.size(); ++r) {
    const int64_t* theirs = v + r * kFields;
    if (theirs[0] == mine[0] && theirs[1] == mine[1]) continue;
    throw Error(ErrorKind::kShape,
                detail::cat("from_local_shards of ", name, ": rank ", r, " holds ",
                            to_string(static_cast<DType>(theirs[0])), shape_of(r), " but rank ", mesh.rank(),
                            " holds ", local.description(), ": every rank must bring a block of the same dtype "
                            "and number of dimensions"));
  }
  // The global extent of a dimension: the sum of its blocks' extents (one rank per block).
  std::vector<int64_t> global(static_cast<size_t>(local.ndim()), 0);
  for (int d = 0; d < layout.ndim(); ++d) {
    std::vector<bool> seen(static_cast<size_t>(layout.parts(mesh, d)), false);
    for (int r = 0; r < world.size(); ++r) {
      int64_t b = layout.block_index(mesh, d, mesh.coordinates(r));
      if (seen[static_cast<size_t>(b)]) continue;
      seen[static_cast<size_t>(b)] = true;
      global[static_cast<size_t>(d)] += shape_of(r)[d];
    }
  }
  // Every rank's block must be the one torch.chunk's rule gives it.
  Shape whole(global);
  std::string wrong;
  for (int r = 0; r < world.size(); ++r) {
    Shape expected = layout.local_shape(mesh, whole, mesh.coordinates(r));
    if (shape_of(r) == expected) continue;
    wrong += detail::cat(wrong.empty() ? "" : "; ", "rank ", r, " holds ", shape_of(r), " where the rule gives ", expected);
  }
  MESHRT_CHECK_SHAPE(wrong.empty(), "from_local_shards of ", name, ": the blocks add up to the global shape ", whole,
                     " under ", layout.to_string(), " on ", mesh.to_string(),
                     ", but not as torch.chunk cuts it (ceil(n / k) per block until the elements run out): ", wrong);
  return DTensor(to_device(local, mesh.device()), whole, mesh, layout, name);
}

const DeviceTensor& DTensor::local() const {
  if (!pending_.empty()) {
    Stream stream = Stream::default_for(local_.device());
    for (const Work& w : pending_) w.block(stream);
  }
  return local_;
}

const DTensor& DTensor::block_until_ready() const {
  MESHRT_CHECK_ARG(defined(), "block_until_ready of an undefined DTensor");
  for (const Work& w : pending_) {
    try {
      w.wait();
    } catch (const Error& e) {
      throw Error(e.kind(), detail::cat(name_, ": ", w.description(), ", whose result it reads, failed: ", e.what()));
    }
  }
  Stream::default_for(local_.device()).synchronize();
  return *this;
}

DTensor DTensor::after(const std::vector<Work>& works) const {
  if (works.empty()) return *this;
  DTensor t = *this;
  for (const Work& w : works) {
    bool done = false;
    try {
      done = w.is_completed();
    } catch (...) {
      // Failed: kept, so that the wait reports it.
    }
    if (!done) t.pending_.push_back(w);
  }
  return t;
}

HostTensor DTensor::gather() const {
  MESHRT_CHECK_ARG(defined(), "gather of an undefined DTensor");
  if (layout_.is_replicated()) return to_host();
  return redistribute(*this, Layout::replicated(ndim())).to_host();
}

HostTensor DTensor::to_host() const {
  MESHRT_CHECK_ARG(defined(), "to_host of an undefined DTensor");
  MESHRT_CHECK_ARG(layout_.is_replicated(), "reading ", description(),
                   " on the host needs its whole value, which no rank holds: gather it explicitly with ",
                   name_, ".gather(), or redistribute(", name_, ", Layout::replicated(", ndim(),
                   ")) first");
  block_until_ready();
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

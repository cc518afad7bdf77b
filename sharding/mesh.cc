#include "sharding/mesh.h"

#include <algorithm>
#include <mutex>
#include <set>
#include <sstream>

#include "comm/world.h"

namespace meshrt::sharding {

struct Mesh::Impl {
  std::vector<MeshAxis> axes;
  Device device;
  int rank = 0;
  Communicator world;
  mutable std::mutex mutex;
  mutable std::map<std::vector<int>, Communicator> groups;  // axis indices -> communicator
  mutable std::map<std::string, Mesh> slices;              // by the axis sliced away
};

namespace {
std::string axes_text(const std::vector<MeshAxis>& axes) {
  std::ostringstream out;
  for (size_t i = 0; i < axes.size(); ++i) out << (i ? ", " : "") << axes[i].name << "=" << axes[i].size;
  return out.str();
}
}  // namespace

Mesh::Mesh(std::vector<MeshAxis> axes) : Mesh(std::move(axes), World::get().default_device()) {}

Mesh::Mesh(std::vector<MeshAxis> axes, const Device& device)
    : Mesh(std::move(axes), Communicator(), device) {}

Mesh::Mesh(std::vector<MeshAxis> axes, const Communicator& over) : Mesh(std::move(axes), over, over.device()) {}

Mesh::Mesh(std::vector<MeshAxis> axes, const Communicator& over, const Device& device) {
  World& world = World::get();
  MESHRT_CHECK_ARG(!axes.empty(), "a mesh needs at least one axis");
  std::set<std::string> names;
  int64_t product = 1;
  for (const MeshAxis& a : axes) {
    MESHRT_CHECK_ARG(!a.name.empty(), "mesh axis names must not be empty");
    MESHRT_CHECK_ARG(names.insert(a.name).second, "mesh axis '", a.name, "' appears twice in Mesh(",
                     axes_text(axes), ")");
    MESHRT_CHECK_ARG(a.size >= 1, "mesh axis '", a.name, "' has size ", a.size, ": sizes must be >= 1");
    product *= a.size;
  }
  if (over.valid()) {
    MESHRT_CHECK_ARG(product == over.size(), "Mesh(", axes_text(axes), ") has ", product, " devices but communicator '",
                     over.name(), "' has ", over.size(), " ranks");
  } else {
    MESHRT_CHECK_ARG(product == world.size(), "Mesh(", axes_text(axes), ") has ", product,
                     " devices but the world has ", world.size(), " ranks: start ", product,
                     " ranks (mpirun -np ", product, ") or change the mesh");
  }
  impl_ = std::make_shared<Impl>();
  impl_->axes = std::move(axes);
  impl_->device = device;
  impl_->world = over.valid() ? over : Communicator::world(device, "mesh");
  impl_->rank = over.valid() ? over.rank() : world.rank();
  for (const MeshAxis& a : impl_->axes) communicator(a.name);  // every rank, same order
}

std::vector<MeshAxis> Mesh::parse_axes(const std::string& text) {
  std::vector<MeshAxis> axes;
  bool grid = text.find('=') == std::string::npos;
  std::string item;
  std::stringstream in(text);
  const char* grid_names[] = {"x", "y", "z", "w"};
  char separator = grid ? 'x' : ',';
  while (std::getline(in, item, separator)) {
    std::string name, size_text = item;
    if (!grid) {
      size_t eq = item.find('=');
      MESHRT_CHECK_ARG(eq != std::string::npos, "mesh axis '", item, "' in '", text, "' is not name=size");
      name = item.substr(0, eq);
      size_text = item.substr(eq + 1);
    } else {
      MESHRT_CHECK_ARG(axes.size() < 4, "mesh '", text, "': at most 4 axes in the AxBxC form");
      name = grid_names[axes.size()];
    }
    int size = 0;
    try {
      size_t used = 0;
      size = std::stoi(size_text, &used);
      MESHRT_CHECK_ARG(used == size_text.size(), "");
    } catch (const std::exception&) {
      throw Error(ErrorKind::kInvalidArgument,
                  detail::cat("mesh '", text, "': '", size_text, "' is not a whole number"));
    }
    axes.push_back({name, size});
  }
  MESHRT_CHECK_ARG(!axes.empty(), "empty mesh description '", text, "'");
  return axes;
}

int Mesh::ndim() const { return static_cast<int>(axes().size()); }

const std::vector<MeshAxis>& Mesh::axes() const {
  MESHRT_CHECK_ARG(valid(), "use of an empty Mesh");
  return impl_->axes;
}

int Mesh::axis_index(const std::string& name) const {
  const auto& a = axes();
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].name == name) return static_cast<int>(i);
  }
  throw Error(ErrorKind::kInvalidArgument, detail::cat("mesh axis '", name, "' is not an axis of ", to_string()));
}

int Mesh::axis_size(const std::string& name) const { return axes()[static_cast<size_t>(axis_index(name))].size; }

int Mesh::size() const {
  int n = 1;
  for (const MeshAxis& a : axes()) n *= a.size;
  return n;
}

int Mesh::rank() const {
  MESHRT_CHECK_ARG(valid(), "use of an empty Mesh");
  return impl_->rank;
}

const Device& Mesh::device() const {
  MESHRT_CHECK_ARG(valid(), "use of an empty Mesh");
  return impl_->device;
}

std::vector<int> Mesh::coordinates(int rank) const {
  const auto& a = axes();
  MESHRT_CHECK_ARG(rank >= 0 && rank < size(), "rank ", rank, " is not in ", to_string());
  std::vector<int> c(a.size());
  for (size_t i = a.size(); i-- > 0;) {
    c[i] = rank % a[i].size;
    rank /= a[i].size;
  }
  return c;
}

int Mesh::rank_at(const std::vector<int>& coordinates) const {
  const auto& a = axes();
  MESHRT_CHECK_ARG(coordinates.size() == a.size(), "rank_at: ", coordinates.size(),
                   " coordinates for ", to_string());
  int rank = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    MESHRT_CHECK_ARG(coordinates[i] >= 0 && coordinates[i] < a[i].size, "coordinate ", coordinates[i],
                     " is outside axis '", a[i].name, "' of ", to_string());
    rank = rank * a[i].size + coordinates[i];
  }
  return rank;
}

int Mesh::coordinate(const std::string& name) const {
  return coordinates(rank())[static_cast<size_t>(axis_index(name))];
}

const Communicator& Mesh::communicator(const std::string& axis) const {
  return communicator(std::vector<std::string>{axis});
}

const Communicator& Mesh::communicator(std::vector<std::string> names) const {
  std::vector<int> group;
  for (const std::string& n : names) group.push_back(axis_index(n));
  std::sort(group.begin(), group.end());
  MESHRT_CHECK_ARG(std::adjacent_find(group.begin(), group.end()) == group.end(),
                   "communicator: an axis is named twice");
  std::lock_guard<std::mutex> lock(impl_->mutex);
  auto it = impl_->groups.find(group);
  if (it != impl_->groups.end()) return it->second;
  // Ranks that agree on every other axis share a communicator; within it they
  // are ordered row-major by their coordinates on the group's axes.
  std::vector<int> c = coordinates(rank());
  int color = 0, key = 0;
  for (size_t i = 0; i < c.size(); ++i) {
    bool in_group = std::find(group.begin(), group.end(), static_cast<int>(i)) != group.end();
    int& target = in_group ? key : color;
    target = target * impl_->axes[i].size + c[i];
  }
  std::string name;
  for (int g : group) name += (name.empty() ? "" : ",") + impl_->axes[static_cast<size_t>(g)].name;
  Communicator sub = impl_->world.split(color, key, name);  // "model": errors say "all_reduce #12 on 'model'"
  return impl_->groups.emplace(group, std::move(sub)).first->second;
}

const Communicator& Mesh::world_communicator() const {
  MESHRT_CHECK_ARG(valid(), "use of an empty Mesh");
  return impl_->world;
}

Mesh Mesh::slice(const std::string& axis) const {
  int removed = axis_index(axis);
  MESHRT_CHECK_ARG(ndim() > 1, "slice of ", to_string(), " along '", axis, "' would leave no axes");
  {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    auto it = impl_->slices.find(axis);
    if (it != impl_->slices.end()) return it->second;
  }
  std::vector<std::string> rest;
  std::vector<MeshAxis> axes;
  for (int i = 0; i < ndim(); ++i) {
    if (i == removed) continue;
    rest.push_back(impl_->axes[static_cast<size_t>(i)].name);
    axes.push_back(impl_->axes[static_cast<size_t>(i)]);
  }
  auto impl = std::make_shared<Impl>();
  impl->axes = axes;
  impl->device = impl_->device;
  impl->world = communicator(rest);
  impl->rank = impl->world.rank();
  // The slice's groups are this mesh's groups of the same axes (same ranks, same order).
  std::vector<std::vector<std::string>> groups;
  for (const std::string& a : rest) groups.push_back({a});
  for (size_t g = 0; g < groups.size(); ++g) {
    impl->groups.emplace(std::vector<int>{static_cast<int>(g)}, communicator(groups[g]));
  }
  Mesh m;
  m.impl_ = impl;
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->slices.emplace(axis, m).first->second;
}

void Mesh::set_timeout(std::chrono::milliseconds timeout) const {
  MESHRT_CHECK_ARG(valid(), "use of an empty Mesh");
  // Copies of a communicator share its backend, and communicators split later
  // inherit the deadline of the one they come from: the world and the groups
  // made so far are all there is to set (slices hold this mesh's communicators).
  std::lock_guard<std::mutex> lock(impl_->mutex);
  impl_->world.set_timeout(timeout);
  for (auto& [group, comm] : impl_->groups) comm.set_timeout(timeout);
}

void Mesh::set_abortable_collectives(bool on) const {
  MESHRT_CHECK_ARG(valid(), "use of an empty Mesh");
  std::lock_guard<std::mutex> lock(impl_->mutex);
  impl_->world.set_abortable_collectives(on);
  for (auto& [group, comm] : impl_->groups) comm.set_abortable_collectives(on);
}

void Mesh::abort(const std::string& reason) const {
  if (!valid()) return;
  std::lock_guard<std::mutex> lock(impl_->mutex);
  impl_->world.abort(reason);
  for (auto& [group, comm] : impl_->groups) comm.abort(reason);
  for (auto& [axis, slice] : impl_->slices) {
    slice.impl_->world.abort(reason);
    for (auto& [group, comm] : slice.impl_->groups) comm.abort(reason);
  }
}

std::string Mesh::failure() const {
  if (!valid()) return "";
  std::lock_guard<std::mutex> lock(impl_->mutex);
  auto first = [](const Communicator& c) { return c.aborted() ? c.abort_reason() : std::string(); };
  if (std::string r = first(impl_->world); !r.empty()) return r;
  for (auto& [group, comm] : impl_->groups) {
    if (std::string r = first(comm); !r.empty()) return r;
  }
  for (auto& [axis, slice] : impl_->slices) {
    if (std::string r = first(slice.impl_->world); !r.empty()) return r;
    for (auto& [group, comm] : slice.impl_->groups) {
      if (std::string r = first(comm); !r.empty()) return r;
    }
  }
  return "";
}

std::string Mesh::to_string() const {
  if (!valid()) return "Mesh()";
  return "Mesh(" + axes_text(impl_->axes) + ")";
}

bool Mesh::operator==(const Mesh& other) const {
  if (impl_ == other.impl_) return true;
  if (!valid() || !other.valid()) return false;
  if (impl_->axes.size() != other.impl_->axes.size() || impl_->device != other.impl_->device) return false;
  for (size_t i = 0; i < impl_->axes.size(); ++i) {
    if (impl_->axes[i].name != other.impl_->axes[i].name || impl_->axes[i].size != other.impl_->axes[i].size) return false;
  }
  return true;
}

}  // namespace meshrt::sharding

#include "sharding/multihost.h"

#include <map>

namespace meshrt::sharding {

DTensor host_local_array_to_global_array(const HostTensor& local, const Mesh& mesh, const Layout& layout,
                                         const std::string& name) {
  return DTensor::from_local_shards(local, mesh, layout, name);
}

HostTensor global_array_to_host_local_array(const DTensor& t) {
  MESHRT_CHECK_ARG(t.defined(), "global_array_to_host_local_array of an undefined DTensor");
  MESHRT_CHECK_ARG(!t.layout().is_partial(), "global_array_to_host_local_array: ", t.description(),
                   " is a pending reduction, which no rank holds a part of: redistribute(", t.name(), ", ",
                   t.layout().with_partial({}).to_string(), ") first");
  t.block_until_ready();
  return meshrt::to_host(t.local());
}

namespace {
// FNV-1a over the bytes: replicas compare one number each.
int64_t fingerprint(const HostTensor& t) {
  uint64_t h = 1469598103934665603ull;
  const auto* p = static_cast<const unsigned char*>(t.raw_data());
  for (size_t i = 0; i < t.nbytes(); ++i) h = (h ^ p[i]) * 1099511628211ull;
  return static_cast<int64_t>(h);
}
}  // namespace

void check_replicas(const DTensor& t) {
  MESHRT_CHECK_ARG(t.defined(), "check_replicas of an undefined DTensor");
  t.block_until_ready();
  const Mesh& mesh = t.mesh();
  const Communicator& world = mesh.world_communicator();
  DeviceTensor mine = to_device(HostTensor::full<int64_t>({1}, fingerprint(meshrt::to_host(t.local()))), mesh.device());
  DeviceTensor all = DeviceTensor::empty({world.size()}, DType::kI64, mesh.device());
  world.all_gather(mine, all).wait();
  std::vector<int64_t> prints = meshrt::to_host(all).to_vector<int64_t>();

  // Replica axes: neither sharding nor pending. A group: the other coordinates.
  std::vector<bool> replica_axis;
  std::string axes;
  for (const MeshAxis& a : mesh.axes()) {
    bool replica = t.layout().dim_of(a.name) < 0 && !t.layout().is_partial_over(a.name);
    replica_axis.push_back(replica);
    if (replica && a.size > 1) axes += (axes.empty() ? "'" : ", '") + a.name + "'";
  }
  std::map<std::vector<int>, std::vector<int>> groups;
  for (int r = 0; r < mesh.size(); ++r) {
    std::vector<int> key = mesh.coordinates(r);
    for (size_t i = 0; i < key.size(); ++i) {
      if (replica_axis[i]) key[i] = 0;
    }
    groups[key].push_back(r);
  }
  std::string disagreements;
  for (const auto& [key, ranks] : groups) {
    std::map<int64_t, std::vector<int>> by_value;
    for (int r : ranks) by_value[prints[static_cast<size_t>(r)]].push_back(r);
    if (by_value.size() < 2) continue;
    std::string text;
    for (const auto& [value, holders] : by_value) {
      std::string list;
      for (int r : holders) list += detail::cat(list.empty() ? "" : ", ", r);
      text += detail::cat(text.empty() ? "" : " vs ", "rank(s) ", list);
    }
    disagreements += (disagreements.empty() ? "" : "; ") + text;
  }
  MESHRT_CHECK_SHAPE(disagreements.empty(), "check_replicas: the replicas of ", t.description(),
                     " along mesh axis(es) ", axes, " disagree: ", disagreements, " hold different values");
}

}  // namespace meshrt::sharding

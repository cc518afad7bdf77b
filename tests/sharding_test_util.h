// Helpers shared by the sharding tests (sharding_test.cc, sharding_ops_test.cc):
// the meshes each world size allows, every layout of a tensor on a mesh, and
// whether from_global can place a shape with a layout.
#pragma once

#include <algorithm>
#include <functional>
#include <string>
#include <vector>

#include "sharding/layout.h"
#include "sharding/mesh.h"

namespace meshrt::sharding::testing {

using Dims = std::vector<std::vector<std::string>>;

// 1-D always; 2x2 and 2x1x2 (3-D, one axis of size 1) at 4 ranks; 2x3 and 3x2 at 6.
inline std::vector<std::vector<MeshAxis>> meshes_for(int n) {
  std::vector<std::vector<MeshAxis>> m = {{{"x", n}}};
  if (n == 4) {
    m.push_back({{"x", 2}, {"y", 2}});
    m.push_back({{"x", 2}, {"y", 1}, {"z", 2}});
  }
  if (n == 6) {
    m.push_back({{"x", 2}, {"y", 3}});
    m.push_back({{"x", 3}, {"y", 2}});
  }
  return m;
}

// Every layout of a tensor with `ndim` dimensions on the mesh: each mesh axis is
// unused, shards one dimension, or is a pending sum (with_partial); axes
// sharing a dimension in every order.
inline std::vector<Layout> all_layouts(const Mesh& mesh, int ndim, bool with_partial = true) {
  std::vector<Layout> out;
  int roles = ndim + 1 + (with_partial ? 1 : 0);  // 0..ndim-1: shard that dim, ndim: unused, ndim+1: partial
  int axes = mesh.ndim();
  int combos = 1;
  for (int i = 0; i < axes; ++i) combos *= roles;
  for (int c = 0; c < combos; ++c) {
    Dims dims(static_cast<size_t>(ndim));
    std::vector<std::string> partial;
    int rest = c;
    for (int i = 0; i < axes; ++i) {
      int role = rest % roles;
      rest /= roles;
      const std::string& name = mesh.axes()[static_cast<size_t>(i)].name;
      if (role < ndim) dims[static_cast<size_t>(role)].push_back(name);
      if (role == ndim + 1) partial.push_back(name);
    }
    std::function<void(size_t, Dims&)> orders = [&](size_t d, Dims& current) {
      if (d == current.size()) {
        out.emplace_back(current, partial);
        return;
      }
      std::sort(current[d].begin(), current[d].end());
      do {
        orders(d + 1, current);
      } while (std::next_permutation(current[d].begin(), current[d].end()));
    };
    orders(0, dims);
  }
  return out;
}

// Whether from_global can place a tensor of shape with layout l: no dimension
// has fewer elements than blocks (that is a host-local part, by its error).
inline bool placeable(const Mesh& mesh, const Layout& l, const Shape& shape) {
  for (int d = 0; d < shape.ndim(); ++d) {
    if (shape[d] < l.parts(mesh, d)) return false;
  }
  return true;
}

}  // namespace meshrt::sharding::testing

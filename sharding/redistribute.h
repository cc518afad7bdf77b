// redistribute(t, layout): the same global value under another layout, with the
// least communication: each step runs over one mesh axis only. The transition
// table is in redistribute.cc; plan_redistribution() lists the steps without
// running them.
#pragma once

#include <string>
#include <vector>

#include "sharding/dtensor.h"

namespace meshrt::sharding {

struct RedistributionStep {
  enum class Kind { kAllReduce, kReduceScatter, kAllGather, kAllToAll, kSlice, kZero };
  Kind kind;
  std::string axis;  // the mesh axis
  int dim = -1;      // tensor dimension gathered, scattered or sliced (for all_to_all: gathered)
  int to_dim = -1;   // all_to_all: the dimension split
  Layout before, after;
};

const char* to_string(RedistributionStep::Kind kind);

// The steps from layout `from` to `to` for a tensor of rank from.ndim().
std::vector<RedistributionStep> plan_redistribution(const Layout& from, const Layout& to);

// Collective over t's mesh. Throws Error(kShape) (naming t) if `layout` does not
// fit t's global shape. Steps are recorded in the current TraceScope.
DTensor redistribute(const DTensor& t, const Layout& layout);

}  // namespace meshrt::sharding

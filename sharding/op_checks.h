// Internal to sharding/: the argument checks every sharded op makes (ops.cc,
// ops_data.cc), so their messages are the same everywhere.
#pragma once

#include "sharding/dtensor.h"

namespace meshrt::sharding::detail {

inline void check_defined(const char* op, const DTensor& x) {
  MESHRT_CHECK_ARG(x.defined(), op, ": an undefined DTensor");
}

inline void check_same_mesh(const char* op, const DTensor& a, const DTensor& b) {
  check_defined(op, a);
  check_defined(op, b);
  MESHRT_CHECK_ARG(a.mesh() == b.mesh(), op, ": ", a.description(), " and ", b.description(),
                   " are on different meshes");
}

}  // namespace meshrt::sharding::detail

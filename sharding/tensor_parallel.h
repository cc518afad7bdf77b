// Moved: the tensor-parallel layers are models/tensor_parallel.h (namespace
// meshrt::models; link meshrt::models). This forwarding header keeps the old
// path and names working for one release.
#pragma once

#include "models/tensor_parallel.h"

namespace meshrt::sharding {
using models::ColumnParallelLinear;
using models::ParallelMLP;
using models::RowParallelLinear;
}  // namespace meshrt::sharding

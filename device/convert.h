// Element conversions shared by the cpu and CUDA code (host and device callable).
#pragma once

#include <limits>

#if defined(__CUDACC__)
#define MESHRT_HOST_DEVICE __host__ __device__
#else
#define MESHRT_HOST_DEVICE
#endif

namespace meshrt {

// meshrt's float -> integer conversion, the same on every backend: truncate
// toward zero, NaN -> 0, out-of-range values saturate to the type's limits.
// (C++ leaves out-of-range conversions undefined, and CPUs and GPUs differ.)
template <class Out>
MESHRT_HOST_DEVICE inline Out saturate_to_integer(double v) {
  if (v != v) return Out(0);
  constexpr double lowest = static_cast<double>(std::numeric_limits<Out>::lowest());
  constexpr double highest = static_cast<double>(std::numeric_limits<Out>::max());
  if (v <= lowest) return std::numeric_limits<Out>::lowest();
  if (v >= highest) return std::numeric_limits<Out>::max();
  return static_cast<Out>(v);
}

}  // namespace meshrt

// Helpers shared by the benchmark apps: sizes with K/M/G suffixes, the MPI
// world, and printing on rank 0 only.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>

#include "device/error.h"
#include "device/tensor.h"

namespace meshrt::apps {

// "8", "64K", "1M", "2G" (binary multiples); throws Error(kInvalidArgument) otherwise.
inline int64_t parse_size(const std::string& text) {
  if (text.empty()) throw Error(ErrorKind::kInvalidArgument, "empty size");
  size_t used = 0;
  long long value = 0;
  try {
    value = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  MESHRT_CHECK_ARG(used > 0 && value >= 0, "size '", text, "' is not a number with an optional K, M or G");
  std::string suffix = text.substr(used);
  int64_t scale = 1;
  if (suffix == "K" || suffix == "k") scale = int64_t{1} << 10;
  else if (suffix == "M" || suffix == "m") scale = int64_t{1} << 20;
  else if (suffix == "G" || suffix == "g") scale = int64_t{1} << 30;
  else MESHRT_CHECK_ARG(suffix.empty(), "size '", text, "': unknown suffix '", suffix, "' (use K, M or G)");
  return value * scale;
}

inline double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Uniform values in [-1, 1) of dtype, reproducible by seed.
inline HostTensor random_host(const Shape& shape, DType dtype, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  HostTensor f = HostTensor::empty(shape, DType::kF32);
  for (float& v : f.span<float>()) v = dist(rng);
  return cast_host(f, dtype);
}

}  // namespace meshrt::apps

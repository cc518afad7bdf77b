// Helpers of the training tests: f64 values of a tensor, tensors from
// values, and reproducible random ones (the same on every rank for a seed).
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "device/tensor.h"

namespace meshrt::training::testing {

inline const Device kCpu = Device::cpu();

inline std::vector<double> values(const DeviceTensor& t) {
  return cast_host(to_host(t), DType::kF64).to_vector<double>();
}

inline DeviceTensor tensor(const std::vector<double>& v, const Shape& shape, DType dtype = DType::kF64) {
  return to_device(cast_host(HostTensor::from_vector(v, shape), dtype), kCpu);
}

inline std::vector<double> uniform(int64_t n, uint64_t seed, double lo = -1, double hi = 1) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<double> v(static_cast<size_t>(n));
  for (double& e : v) e = dist(rng);
  return v;
}

inline DeviceTensor random(const Shape& shape, uint64_t seed, DType dtype = DType::kF64, double lo = -1,
                           double hi = 1) {
  return tensor(uniform(shape.numel(), seed, lo, hi), shape, dtype);
}

}  // namespace meshrt::training::testing

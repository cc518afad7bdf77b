// Float64 references of the elementwise ops of kernels/elementwise_ops.h, by
// the op's name in the table, for the kernel tests (every device) and the layer
// tests (every weightless layer type of model configs). A table row without a
// reference here fails those tests.
#pragma once

#include <cmath>
#include <functional>
#include <map>
#include <numbers>
#include <string>

namespace meshrt::testing {

struct UnaryReference {
  std::function<double(double x, double alpha)> f;
  double lo = -4, hi = 4;  // inputs are drawn from [lo, hi)
};

struct BinaryReference {
  std::function<double(double a, double b)> f;
};

inline const std::map<std::string, UnaryReference>& unary_references() {
  static const std::map<std::string, UnaryReference> references = {
      {"neg", {[](double x, double) { return -x; }}},
      {"relu", {[](double x, double) { return x > 0 ? x : 0; }}},
      {"gelu", {[](double x, double) { return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0))); }}},
      {"gelu_tanh", {[](double x, double) {
         return 0.5 * x * (1 + std::tanh(std::sqrt(2 / std::numbers::pi) * (x + 0.044715 * x * x * x)));
       }}},
      {"silu", {[](double x, double) { return x / (1 + std::exp(-x)); }}},
      {"tanh", {[](double x, double) { return std::tanh(x); }}},
      {"scale", {[](double x, double alpha) { return alpha * x; }}},
  };
  return references;
}

inline const std::map<std::string, BinaryReference>& binary_references() {
  static const std::map<std::string, BinaryReference> references = {
      {"add", {[](double a, double b) { return a + b; }}},
      {"mul", {[](double a, double b) { return a * b; }}},
  };
  return references;
}

}  // namespace meshrt::testing

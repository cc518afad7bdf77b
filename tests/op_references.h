// Float64 references of the elementwise ops of kernels/elementwise_ops.h, by
// the op's name in the table, for the kernel tests (every device) and the layer
// tests (every weightless layer type of model configs). A table row without a
// reference here fails those tests.
#pragma once

#include <algorithm>
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
  double lo = -50, hi = 50;  // both inputs are drawn from [lo, hi)
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
      {"sigmoid", {[](double x, double) { return 1 / (1 + std::exp(-x)); }, -20, 20}},
      {"exp", {[](double x, double) { return std::exp(x); }}},
      {"log", {[](double x, double) { return std::log(x); }, 1e-3, 10}},
      {"log1p", {[](double x, double) { return std::log1p(x); }, -0.99, 10}},
      {"sqrt", {[](double x, double) { return std::sqrt(x); }, 0, 10}},
      {"abs", {[](double x, double) { return std::fabs(x); }}},
      {"scale", {[](double x, double alpha) { return alpha * x; }}},
      {"add_scalar", {[](double x, double alpha) { return x + alpha; }}},
      {"clamp_min", {[](double x, double alpha) { return std::max(x, alpha); }}},
      {"clamp_max", {[](double x, double alpha) { return std::min(x, alpha); }}},
  };
  return references;
}

inline const std::map<std::string, BinaryReference>& binary_references() {
  static const std::map<std::string, BinaryReference> references = {
      {"add", {[](double a, double b) { return a + b; }}},
      {"sub", {[](double a, double b) { return a - b; }}},
      {"mul", {[](double a, double b) { return a * b; }}},
      {"div", {[](double a, double b) { return a / b; }}},
      {"relu_grad", {[](double g, double y) { return y > 0 ? g : 0; }}},
      // y (1 - y) of |y| up to 50 would overflow f16.
      {"sigmoid_grad", {[](double g, double y) { return g * y * (1 - y); }, -3, 3}},
  };
  return references;
}

}  // namespace meshrt::testing

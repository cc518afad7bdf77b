#include "training/losses.h"

#include <algorithm>
#include <cmath>

#include "device/error.h"
#include "kernels/elementwise.h"
#include "kernels/reduction.h"
#include "training/tensor_ops.h"

namespace meshrt::training {

namespace {

void check_pair(const DeviceTensor& prediction, const DeviceTensor& target, const char* op) {
  detail::check_float(prediction, op, "prediction");
  detail::check_same(prediction, target, op);
  MESHRT_CHECK_SHAPE(prediction.numel() > 0, op, ": empty prediction ", prediction.description());
}

}  // namespace

Loss mean_squared_error(const DeviceTensor& prediction, const DeviceTensor& target) {
  check_pair(prediction, target, "mean_squared_error");
  const double count = static_cast<double>(prediction.numel());
  DeviceTensor diff = detail::sub(prediction, target);
  Loss loss;
  loss.value = detail::sum_all(kernels::mul(diff, diff)) / count;
  loss.grad = kernels::scale(diff, 2.0 / count);
  return loss;
}

// Host fallback: the elementwise table has no log or exp row yet.
Loss binary_cross_entropy(const DeviceTensor& probabilities, const DeviceTensor& target, double eps) {
  check_pair(probabilities, target, "binary_cross_entropy");
  MESHRT_CHECK_ARG(eps > 0 && eps < 0.5, "binary_cross_entropy: eps ", eps, " outside (0, 0.5)");
  std::vector<double> p = detail::to_doubles(probabilities);
  std::vector<double> t = detail::to_doubles(target);
  const double count = static_cast<double>(p.size());
  std::vector<double> grad(p.size());
  double total = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    double q = std::clamp(p[i], eps, 1 - eps);
    total -= t[i] * std::log(q) + (1 - t[i]) * std::log(1 - q);
    bool clamped = p[i] < eps || p[i] > 1 - eps;
    grad[i] = clamped ? 0.0 : (q - t[i]) / (q * (1 - q)) / count;
  }
  Loss loss;
  loss.value = total / count;
  loss.grad = detail::from_doubles(grad, probabilities.shape(), probabilities.dtype(), probabilities.device());
  return loss;
}

// Host fallback: the elementwise table has no log, exp or sigmoid row yet.
Loss binary_cross_entropy_with_logits(const DeviceTensor& logits, const DeviceTensor& target) {
  check_pair(logits, target, "binary_cross_entropy_with_logits");
  std::vector<double> z = detail::to_doubles(logits);
  std::vector<double> t = detail::to_doubles(target);
  const double count = static_cast<double>(z.size());
  std::vector<double> grad(z.size());
  double total = 0;
  for (size_t i = 0; i < z.size(); ++i) {
    total += std::max(z[i], 0.0) - z[i] * t[i] + std::log1p(std::exp(-std::abs(z[i])));
    grad[i] = (detail::sigmoid(z[i]) - t[i]) / count;
  }
  Loss loss;
  loss.value = total / count;
  loss.grad = detail::from_doubles(grad, logits.shape(), logits.dtype(), logits.device());
  return loss;
}

Loss softmax_cross_entropy(const DeviceTensor& logits, const DeviceTensor& labels) {
  detail::check_float(logits, "softmax_cross_entropy", "logits");
  MESHRT_CHECK_SHAPE(logits.ndim() >= 1 && (labels.dtype() == DType::kI32 || labels.dtype() == DType::kI64) &&
                         labels.shape() == logits.shape().without(-1),
                     "softmax_cross_entropy: labels ", labels.description(), " must be i32 or i64 of logits ",
                     logits.description(), " without the last axis");
  const int64_t classes = logits.shape()[-1];
  const int64_t rows = labels.numel();
  MESHRT_CHECK_SHAPE(rows > 0 && classes > 0, "softmax_cross_entropy: empty logits ", logits.description());
  std::vector<int64_t> label = to_host(kernels::cast(labels, DType::kI64)).to_vector<int64_t>();
  // The value on the host (no log or exp kernel yet): logsumexp with the
  // row's maximum subtracted.
  std::vector<double> z = detail::to_doubles(logits);
  std::vector<double> onehot(z.size(), 0.0);
  double total = 0;
  for (int64_t r = 0; r < rows; ++r) {
    MESHRT_CHECK_ARG(label[r] >= 0 && label[r] < classes, "softmax_cross_entropy: label ", label[r],
                     " of row ", r, " outside [0, ", classes, ")");
    const double* row = z.data() + r * classes;
    double m = *std::max_element(row, row + classes);
    double s = 0;
    for (int64_t c = 0; c < classes; ++c) s += std::exp(row[c] - m);
    total += m + std::log(s) - row[label[r]];
    onehot[r * classes + label[r]] = 1.0;
  }
  Loss loss;
  loss.value = total / static_cast<double>(rows);
  // The gradient with kernels: (softmax(z) - onehot) / rows.
  DeviceTensor targets = detail::from_doubles(onehot, logits.shape(), logits.dtype(), logits.device());
  loss.grad = kernels::scale(detail::sub(kernels::softmax(logits), targets), 1.0 / static_cast<double>(rows));
  return loss;
}

}  // namespace meshrt::training

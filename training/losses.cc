#include "training/losses.h"

#include <vector>

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

// 1 - x.
DeviceTensor one_minus(const DeviceTensor& x) { return kernels::add_scalar(kernels::neg(x), 1.0); }

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

Loss binary_cross_entropy(const DeviceTensor& probabilities, const DeviceTensor& target, double eps) {
  check_pair(probabilities, target, "binary_cross_entropy");
  MESHRT_CHECK_ARG(eps > 0 && eps < 0.5, "binary_cross_entropy: eps ", eps, " outside (0, 0.5)");
  const DeviceTensor& p = probabilities;
  const DeviceTensor& t = target;
  const double count = static_cast<double>(p.numel());
  DeviceTensor q = kernels::clamp_max(kernels::clamp_min(p, eps), 1 - eps);
  DeviceTensor one_minus_q = one_minus(q);
  // -(t log q + (1 - t) log(1 - q)), summed.
  DeviceTensor terms = kernels::add(kernels::mul(t, kernels::log(q)),
                                    kernels::mul(one_minus(t), kernels::log(one_minus_q)));
  Loss loss;
  loss.value = -detail::sum_all(terms) / count;
  // (q - t) / (q (1 - q)) / count where the clamp did not act (q == p); 0 where
  // it did: relu_grad keeps g exactly where |q - p| > 0, and g - that is g
  // where q == p and exactly 0 elsewhere.
  DeviceTensor g = kernels::scale(kernels::div(kernels::sub(q, t), kernels::mul(q, one_minus_q)), 1 / count);
  loss.grad = kernels::sub(g, kernels::relu_grad(g, kernels::abs(kernels::sub(q, p))));
  return loss;
}

Loss binary_cross_entropy_with_logits(const DeviceTensor& logits, const DeviceTensor& target) {
  check_pair(logits, target, "binary_cross_entropy_with_logits");
  const DeviceTensor& z = logits;
  const double count = static_cast<double>(z.numel());
  // max(z, 0) - z t + log(1 + exp(-|z|)), summed.
  DeviceTensor softplus = kernels::log1p(kernels::exp(kernels::neg(kernels::abs(z))));
  DeviceTensor terms = kernels::add(kernels::sub(kernels::relu(z), kernels::mul(z, target)), softplus);
  Loss loss;
  loss.value = detail::sum_all(terms) / count;
  loss.grad = kernels::scale(kernels::sub(kernels::sigmoid(z), target), 1 / count);
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
  std::vector<double> onehot(static_cast<size_t>(rows * classes), 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    MESHRT_CHECK_ARG(label[r] >= 0 && label[r] < classes, "softmax_cross_entropy: label ", label[r],
                     " of row ", r, " outside [0, ", classes, ")");
    onehot[r * classes + label[r]] = 1.0;
  }
  DeviceTensor targets = detail::from_doubles(onehot, logits.shape(), logits.dtype(), logits.device());
  // The value with kernels: per row logsumexp(z) - z[label] = log(sum(exp(s))) - s[label]
  // for s = z - max(z) (any shift gives the same value; the row's maximum keeps
  // exp from overflowing, and both terms are >= 0: nothing cancels).
  const Shape matrix{rows, classes};
  DeviceTensor z = logits.reshape(matrix);
  DeviceTensor shifted = kernels::sub(z, detail::broadcast_axis(kernels::amax(z, 1), rows, classes, 1).reshape(matrix));
  double log_sums = detail::sum_all(kernels::log(kernels::sum(kernels::exp(shifted), 1)));
  double picked = detail::sum_all(kernels::mul(targets.reshape(matrix), shifted));
  Loss loss;
  loss.value = (log_sums - picked) / static_cast<double>(rows);
  // The gradient: (softmax(z) - onehot) / rows.
  loss.grad = kernels::scale(detail::sub(kernels::softmax(logits), targets), 1.0 / static_cast<double>(rows));
  return loss;
}

}  // namespace meshrt::training

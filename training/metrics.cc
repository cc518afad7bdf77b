#include "training/metrics.h"

#include <cmath>
#include <vector>

#include "device/error.h"
#include "kernels/elementwise.h"
#include "kernels/reduction.h"
#include "training/tensor_ops.h"

namespace meshrt::training::metrics {

void Mean::update_state(double value, double weight) {
  MESHRT_CHECK_ARG(std::isfinite(weight) && weight >= 0, "Mean: weight ", weight, " must be finite and >= 0");
  total_ += weight * value;
  count_ += weight;
}

void Mean::update_state(const DeviceTensor& values) {
  detail::check_float(values, "Mean", "values");
  for (double v : detail::to_doubles(values)) update_state(v);
}

double Mean::result() const { return count_ == 0 ? 0.0 : total_ / count_; }

void Mean::reset_state() { total_ = count_ = 0; }

void Mean::merge_state(double total, double count) {
  MESHRT_CHECK_ARG(std::isfinite(total) && std::isfinite(count) && count >= 0, "Mean::merge_state: total ", total,
                   " and count ", count, " must be finite, count >= 0");
  total_ += total;
  count_ += count;
}

BinaryAccuracy::BinaryAccuracy(double threshold) : threshold_(threshold) {
  MESHRT_CHECK_ARG(std::isfinite(threshold), "BinaryAccuracy: threshold ", threshold, " must be finite");
}

void BinaryAccuracy::update_state(const DeviceTensor& predictions, const DeviceTensor& targets) {
  detail::check_float(predictions, "BinaryAccuracy", "predictions");
  detail::check_same(predictions, targets, "BinaryAccuracy");
  std::vector<double> p = detail::to_doubles(predictions), t = detail::to_doubles(targets);
  for (size_t i = 0; i < p.size(); ++i) {
    MESHRT_CHECK_ARG(t[i] == 0 || t[i] == 1, "BinaryAccuracy: target ", t[i], " at ", i, " is not 0 or 1");
    Mean::update_state((p[i] > threshold_ ? 1.0 : 0.0) == t[i] ? 1.0 : 0.0);
  }
}

void SparseCategoricalAccuracy::update_state(const DeviceTensor& logits, const DeviceTensor& labels) {
  MESHRT_CHECK_SHAPE(logits.defined() && labels.defined() && logits.ndim() >= 1 &&
                         (labels.dtype() == DType::kI32 || labels.dtype() == DType::kI64) &&
                         labels.shape() == logits.shape().without(-1),
                     "SparseCategoricalAccuracy: labels ", labels.description(), " must be i32 or i64 of logits ",
                     logits.description(), " without the last axis");
  MESHRT_CHECK_SHAPE(logits.shape()[-1] > 0, "SparseCategoricalAccuracy: no classes in ", logits.description());
  std::vector<int64_t> predicted = to_host(kernels::argmax(logits, -1)).to_vector<int64_t>();
  std::vector<int64_t> label = to_host(kernels::cast(labels, DType::kI64)).to_vector<int64_t>();
  for (size_t i = 0; i < label.size(); ++i) Mean::update_state(predicted[i] == label[i] ? 1.0 : 0.0);
}

}  // namespace meshrt::training::metrics

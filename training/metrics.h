// Metrics that aggregate over batches, as Keras's tf.keras.metrics:
// update_state adds a batch, result() is the value over every batch since the
// last reset_state(), 0 before any (Keras's divide_no_nan). Each keeps a
// weighted total and a count on the host: a batch's predictions are read back
// once (to_host), the aggregate is a pair of doubles. In namespace metrics,
// as Keras's tf.keras.metrics: metrics::Mean is not the Mean layer.
#pragma once

#include <cstdint>

#include "device/tensor.h"

namespace meshrt::training::metrics {

// The mean of the values given (a mean loss: update_state(loss.value) per batch).
class Mean {
 public:
  // Adds value with weight (>= 0): result = sum(weight value) / sum(weight).
  void update_state(double value, double weight = 1.0);
  // Adds every element of values (f32 or f64) with weight 1.
  void update_state(const DeviceTensor& values);
  double result() const;
  void reset_state();
  double count() const { return count_; }
  // The weighted total (result() is total() / count()).
  double total() const { return total_; }
  // Adds another state's total and count (Keras's merge_state: the metric
  // over both sets of batches; the data-parallel loop sums the ranks' so).
  void merge_state(double total, double count);

 protected:
  double total_ = 0, count_ = 0;
};

// The fraction of elements where (prediction > threshold) equals the target
// (0 or 1): Keras's BinaryAccuracy on probabilities, threshold 0.5.
class BinaryAccuracy : public Mean {
 public:
  explicit BinaryAccuracy(double threshold = 0.5);
  // predictions and targets: f32 or f64, one shape.
  void update_state(const DeviceTensor& predictions, const DeviceTensor& targets);

 private:
  double threshold_;
};

// The fraction of rows whose argmax over the last axis of logits (or
// probabilities) equals the integer label (i32 or i64, the logits' shape
// without the last axis): Keras's SparseCategoricalAccuracy. Ties go to the
// first maximum (kernels::argmax, as tf.argmax).
class SparseCategoricalAccuracy : public Mean {
 public:
  void update_state(const DeviceTensor& logits, const DeviceTensor& labels);
};

}  // namespace meshrt::training::metrics

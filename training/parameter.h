// A trainable tensor and its gradient. Backward passes accumulate into the
// gradient (a parameter used twice gets the sum); an optimizer reads it and
// the training loop clears it with zero_grad() before the next step.
//
// Gradients are dense (a tensor of the value's shape, e.g. a dense layer's
// weight) or sparse (an embedding: only the rows a batch looked up, as
// TensorFlow's IndexedSlices). A sparse gradient keeps one entry per lookup:
// an id looked up twice appears twice, and its rows add up (densify sums them).
#pragma once

#include <string>
#include <vector>

#include "device/tensor.h"

namespace meshrt::training {

// Rows of a gradient of a table [rows, ...]: table row ids[j] gets rows[j].
// ids: i64 [count]; rows: [count, ...] of the table's dtype and row shape.
struct SparseGrad {
  DeviceTensor ids;
  DeviceTensor rows;
};

class Parameter {
 public:
  Parameter(std::string name, DeviceTensor value);

  const std::string& name() const { return name_; }
  // The value; an optimizer may replace it with a tensor of the same shape and dtype.
  const DeviceTensor& value() const { return value_; }
  void set_value(DeviceTensor value);

  // grad += g (dense; g of the value's shape and dtype).
  void accumulate(const DeviceTensor& g);
  // Adds rows to the sparse gradient (kept as given, not merged).
  void accumulate_sparse(SparseGrad g);
  // Drops both gradients.
  void zero_grad();
  // Replaces the gradients (the data-parallel loop puts the reduced ones
  // back): a dense one of the value's shape and dtype, or undefined for none;
  // sparse parts as accumulate_sparse takes them.
  void set_grad(DeviceTensor grad);
  void set_sparse_grads(std::vector<SparseGrad> grads);

  // The dense gradient, undefined until a dense backward has run.
  const DeviceTensor& grad() const { return grad_; }
  const std::vector<SparseGrad>& sparse_grads() const { return sparse_grads_; }
  // The whole gradient as one dense tensor of the value's shape: the dense part
  // plus every sparse part, zeros when there is none.
  DeviceTensor dense_grad() const;

 private:
  std::string name_;
  DeviceTensor value_;
  DeviceTensor grad_;
  std::vector<SparseGrad> sparse_grads_;
};

// The sparse parts as one: the distinct ids (ascending) and, for each, the
// sum of its rows over every part (index_add on the device; the ids are read
// on the host). Throws Error(kInvalidArgument) for an id outside
// [0, table_shape[0]); name names the parameter in it.
SparseGrad merge_sparse(const std::vector<SparseGrad>& parts, const Shape& table_shape, const std::string& name);

// The dense tensor of table_shape (dtype of g.rows, on its device) that g
// stands for: zeros except row ids[j] += rows[j] for each j. Throws
// Error(kInvalidArgument) for an id outside [0, table_shape[0]).
DeviceTensor densify(const SparseGrad& g, const Shape& table_shape);

}  // namespace meshrt::training

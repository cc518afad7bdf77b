// Layers with forward and backward passes on device tensors (f32 and f64).
//
// forward(x) computes the output and keeps what backward needs (the input or
// the output: one forward, then one backward, as in a training step).
// backward(grad_out), grad_out = dL/d(output) of the last forward's output
// shape, returns dL/d(input) and adds the gradients of the layer's parameters
// to them (Parameter::accumulate). A layer whose input is not differentiable
// (Embedding: integer ids) returns an undefined tensor.
//
// Compute goes through kernels/ (GEMM, the elementwise table with the
// activations and their derivative rows relu_grad and sigmoid_grad, sum, mean,
// softmax, embedding). Embedding's gradient is sparse rows, which
// Parameter::dense_grad and the optimizers merge with index_add.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "device/tensor.h"
#include "training/parameter.h"

namespace meshrt::training {

class Layer {
 public:
  virtual ~Layer() = default;
  virtual std::string name() const = 0;
  virtual DeviceTensor forward(const DeviceTensor& x) = 0;
  virtual DeviceTensor backward(const DeviceTensor& grad_out) = 0;
  // The layer's trainable parameters (owned by the layer).
  virtual std::vector<Parameter*> parameters() { return {}; }
};

enum class Activation { kNone, kRelu, kSigmoid };
const char* to_string(Activation activation);

// y = activation(x @ weight + bias): x [..., in], weight [in, out], bias [out],
// y [..., out]. The leading axes of x are rows of one GEMM.
class Dense : public Layer {
 public:
  Dense(DeviceTensor weight, DeviceTensor bias, Activation activation = Activation::kNone);
  // Glorot-uniform weight (limit sqrt(6 / (in + out))) from seed, zero bias.
  static Dense glorot(int64_t in, int64_t out, Activation activation, DType dtype,
                      const Device& device, uint64_t seed);

  std::string name() const override;
  DeviceTensor forward(const DeviceTensor& x) override;
  DeviceTensor backward(const DeviceTensor& grad_out) override;
  std::vector<Parameter*> parameters() override { return {&weight_, &bias_}; }
  Parameter& weight() { return weight_; }
  Parameter& bias() { return bias_; }

 private:
  Parameter weight_, bias_;
  Activation activation_;
  Shape input_shape_;
  DeviceTensor input_;   // [rows, in]
  DeviceTensor output_;  // [rows, out], after the activation
};

// An activation alone, element by element (the same math as Dense's).
class ActivationLayer : public Layer {
 public:
  explicit ActivationLayer(Activation activation) : activation_(activation) {}
  std::string name() const override { return to_string(activation_); }
  DeviceTensor forward(const DeviceTensor& x) override;
  DeviceTensor backward(const DeviceTensor& grad_out) override;

 private:
  Activation activation_;
  DeviceTensor output_;
};

// max(x, 0).
class ReLU : public ActivationLayer {
 public:
  ReLU() : ActivationLayer(Activation::kRelu) {}
};

// 1 / (1 + exp(-x)).
class Sigmoid : public ActivationLayer {
 public:
  Sigmoid() : ActivationLayer(Activation::kSigmoid) {}
};

// Softmax over the last axis.
class Softmax : public Layer {
 public:
  std::string name() const override { return "softmax"; }
  DeviceTensor forward(const DeviceTensor& x) override;
  DeviceTensor backward(const DeviceTensor& grad_out) override;

 private:
  DeviceTensor output_;
};

// The mean over one axis (negative: from the end); the output drops the axis.
class Mean : public Layer {
 public:
  explicit Mean(int axis) : axis_(axis) {}
  std::string name() const override { return "mean"; }
  DeviceTensor forward(const DeviceTensor& x) override;
  DeviceTensor backward(const DeviceTensor& grad_out) override;

 private:
  int axis_;
  Shape input_shape_;
};

// Lookup of rows of table [vocabulary, hidden] by ids (i32 or i64, any shape):
// output ids.shape + [hidden]. Every id must lie in [0, vocabulary) (the
// kernel gives zeros for others; the sparse gradient would not fit the table).
// backward returns an undefined tensor (ids have no gradient) and adds a
// SparseGrad to the table: the ids of the batch (flattened, repeats kept) and
// grad_out's rows.
class Embedding : public Layer {
 public:
  explicit Embedding(DeviceTensor table);
  // Uniform in [-0.05, 0.05) from seed (Keras's default initializer).
  static Embedding uniform(int64_t vocabulary, int64_t hidden, DType dtype, const Device& device,
                           uint64_t seed);

  std::string name() const override { return "embedding"; }
  DeviceTensor forward(const DeviceTensor& ids) override;
  DeviceTensor backward(const DeviceTensor& grad_out) override;
  std::vector<Parameter*> parameters() override { return {&table_}; }
  Parameter& table() { return table_; }

 private:
  Parameter table_;
  DeviceTensor ids_;  // i64 [count]
};

}  // namespace meshrt::training

#include "training/layers.h"

#include <cmath>
#include <random>
#include <utility>

#include "device/error.h"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"
#include "kernels/movement.h"
#include "kernels/reduction.h"
#include "training/tensor_ops.h"

namespace meshrt::training {

namespace {

DeviceTensor activate(Activation activation, const DeviceTensor& z) {
  switch (activation) {
    case Activation::kNone: return z;
    case Activation::kRelu: return kernels::relu(z);
    case Activation::kSigmoid: return kernels::sigmoid(z);
  }
  return z;
}

// dL/dz from dL/dy and y = activation(z) (both activations' derivatives are
// functions of y: relu' = [y > 0], sigmoid' = y (1 - y)).
DeviceTensor activation_backward(Activation activation, const DeviceTensor& grad, const DeviceTensor& y) {
  detail::check_same(grad, y, "activation backward");
  switch (activation) {
    case Activation::kNone: return grad;
    case Activation::kRelu: return kernels::relu_grad(grad, y);
    case Activation::kSigmoid: return kernels::sigmoid_grad(grad, y);
  }
  return grad;
}

DeviceTensor uniform_tensor(const Shape& shape, double limit, DType dtype, const Device& device,
                            uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> dist(-limit, limit);
  std::vector<double> values(static_cast<size_t>(shape.numel()));
  for (double& v : values) v = dist(rng);
  return detail::from_doubles(values, shape, dtype, device);
}

void check_cached(const DeviceTensor& cached, const char* layer) {
  MESHRT_CHECK_ARG(cached.defined(), layer, ": backward before forward");
}

}  // namespace

const char* to_string(Activation activation) {
  switch (activation) {
    case Activation::kNone: return "none";
    case Activation::kRelu: return "relu";
    case Activation::kSigmoid: return "sigmoid";
  }
  return "?";
}

// ---------------------------------------------------------------------------
// Dense

Dense::Dense(DeviceTensor weight, DeviceTensor bias, Activation activation)
    : weight_("weight", std::move(weight)), bias_("bias", std::move(bias)), activation_(activation) {
  const DeviceTensor& w = weight_.value();
  const DeviceTensor& b = bias_.value();
  MESHRT_CHECK_SHAPE(w.ndim() == 2 && b.ndim() == 1 && b.dim(0) == w.dim(1) && b.dtype() == w.dtype(),
                     "Dense: weight ", w.description(), " must be [in, out] and bias ", b.description(),
                     " [out] of its dtype");
}

Dense Dense::glorot(int64_t in, int64_t out, Activation activation, DType dtype, const Device& device,
                    uint64_t seed) {
  double limit = std::sqrt(6.0 / static_cast<double>(in + out));
  return Dense(uniform_tensor(Shape{in, out}, limit, dtype, device, seed),
               DeviceTensor::zeros(Shape{out}, dtype, device), activation);
}

std::string Dense::name() const { return std::string("dense(") + to_string(activation_) + ")"; }

DeviceTensor Dense::forward(const DeviceTensor& x) {
  const DeviceTensor& w = weight_.value();
  const int64_t in = w.dim(0), out = w.dim(1);
  detail::check_float(x, "Dense::forward", "x");
  MESHRT_CHECK_SHAPE(x.ndim() >= 1 && x.shape()[-1] == in && x.dtype() == w.dtype(), "Dense::forward: x ",
                     x.description(), " does not fit weight ", w.description());
  input_shape_ = x.shape();
  input_ = x.reshape(Shape{x.numel() / in, in});
  output_ = activate(activation_, kernels::bias_add(kernels::matmul(input_, w), bias_.value()));
  return output_.reshape(input_shape_.with(-1, out));
}

DeviceTensor Dense::backward(const DeviceTensor& grad_out) {
  check_cached(output_, "Dense::backward");
  const DeviceTensor& w = weight_.value();
  MESHRT_CHECK_SHAPE(grad_out.numel() == output_.numel() && grad_out.dtype() == output_.dtype(),
                     "Dense::backward: grad_out ", grad_out.description(), " does not fit the output ",
                     output_.description());
  DeviceTensor dz = activation_backward(activation_, grad_out.reshape(output_.shape()), output_);
  kernels::GemmOptions xt;
  xt.transpose_a = true;
  weight_.accumulate(kernels::matmul(input_, dz, xt));  // x^T dz: [in, out]
  bias_.accumulate(kernels::sum(dz, 0));
  kernels::GemmOptions wt;
  wt.transpose_b = true;
  return kernels::matmul(dz, w, wt).reshape(input_shape_);  // dz w^T: [rows, in]
}

// ---------------------------------------------------------------------------
// Weightless layers

DeviceTensor ActivationLayer::forward(const DeviceTensor& x) {
  detail::check_float(x, name().c_str(), "x");
  output_ = activate(activation_, x);
  return output_;
}

DeviceTensor ActivationLayer::backward(const DeviceTensor& grad_out) {
  check_cached(output_, name().c_str());
  return activation_backward(activation_, grad_out, output_);
}

DeviceTensor Softmax::forward(const DeviceTensor& x) {
  detail::check_float(x, "Softmax::forward", "x");
  output_ = kernels::softmax(x);
  return output_;
}

// dx = y * (g - sum(g * y, last axis)), the sum repeated along the last axis.
DeviceTensor Softmax::backward(const DeviceTensor& grad_out) {
  check_cached(output_, "Softmax::backward");
  detail::check_same(grad_out, output_, "Softmax::backward");
  const int64_t n = output_.shape()[-1];
  DeviceTensor dot = kernels::sum(kernels::mul(grad_out, output_), -1);
  DeviceTensor repeated = detail::broadcast_axis(dot, dot.numel(), n, 1).reshape(output_.shape());
  return kernels::mul(output_, detail::sub(grad_out, repeated));
}

DeviceTensor Mean::forward(const DeviceTensor& x) {
  detail::check_float(x, "Mean::forward", "x");
  input_shape_ = x.shape();
  return kernels::mean(x, axis_);
}

// Each input element gets grad_out at its position without the axis, / n.
DeviceTensor Mean::backward(const DeviceTensor& grad_out) {
  MESHRT_CHECK_ARG(input_shape_.ndim() > 0, "Mean::backward: backward before forward");
  const int axis = input_shape_.axis(axis_);
  MESHRT_CHECK_SHAPE(grad_out.shape() == input_shape_.without(axis), "Mean::backward: grad_out ",
                     grad_out.description(), " is not the output shape ", to_string(input_shape_.without(axis)));
  const int64_t n = input_shape_[axis];
  return detail::broadcast_axis(grad_out, input_shape_.outer(axis), n, input_shape_.inner(axis),
                                1.0 / static_cast<double>(n))
      .reshape(input_shape_);
}

// ---------------------------------------------------------------------------
// Embedding

Embedding::Embedding(DeviceTensor table) : table_("table", std::move(table)) {
  MESHRT_CHECK_SHAPE(table_.value().ndim() == 2, "Embedding: table ", table_.value().description(),
                     " must be [vocabulary, hidden]");
}

Embedding Embedding::uniform(int64_t vocabulary, int64_t hidden, DType dtype, const Device& device,
                             uint64_t seed) {
  return Embedding(uniform_tensor(Shape{vocabulary, hidden}, 0.05, dtype, device, seed));
}

DeviceTensor Embedding::forward(const DeviceTensor& ids) {
  MESHRT_CHECK_SHAPE(ids.dtype() == DType::kI32 || ids.dtype() == DType::kI64, "Embedding::forward: ids ",
                     ids.description(), " must be i32 or i64");
  ids_ = ids.dtype() == DType::kI64 ? ids.reshape(Shape{ids.numel()})
                                    : kernels::cast(ids.reshape(Shape{ids.numel()}), DType::kI64);
  return kernels::embedding(table_.value(), ids);
}

DeviceTensor Embedding::backward(const DeviceTensor& grad_out) {
  check_cached(ids_, "Embedding::backward");
  const int64_t hidden = table_.value().dim(1);
  MESHRT_CHECK_SHAPE(grad_out.numel() == ids_.numel() * hidden && grad_out.dtype() == table_.value().dtype(),
                     "Embedding::backward: grad_out ", grad_out.description(), " does not fit ", ids_.numel(),
                     " ids of ", table_.value().description());
  // Copies: the caller may reuse grad_out, and the optimizer reads these later.
  table_.accumulate_sparse({ids_.clone(), grad_out.reshape(Shape{ids_.numel(), hidden}).clone()});
  return DeviceTensor();
}

}  // namespace meshrt::training

#include "training/optimizers.h"

#include <cmath>
#include <map>
#include <utility>

#include "device/error.h"
#include "kernels/elementwise.h"
#include "kernels/movement.h"
#include "training/tensor_ops.h"

namespace meshrt::training {

Optimizer::Optimizer(double learning_rate) { set_learning_rate(learning_rate); }

void Optimizer::set_learning_rate(double learning_rate) {
  MESHRT_CHECK_ARG(std::isfinite(learning_rate) && learning_rate >= 0, "optimizer: learning rate ",
                   learning_rate, " must be finite and >= 0");
  learning_rate_ = learning_rate;
  schedule_.reset();
}

void Optimizer::set_schedule(std::shared_ptr<const LearningRateSchedule> schedule) {
  MESHRT_CHECK_ARG(schedule != nullptr, "optimizer: a null learning-rate schedule");
  schedule_ = std::move(schedule);
}

const std::vector<DeviceTensor>& Optimizer::slots(const Parameter& parameter) const {
  static const std::vector<DeviceTensor> kNone;
  auto it = state_.find(&parameter);
  return it == state_.end() ? kNone : it->second;
}

std::vector<DeviceTensor>& Optimizer::state(const Parameter& parameter) {
  std::vector<DeviceTensor>& slots = state_[&parameter];
  if (slots.empty()) {
    const DeviceTensor& value = parameter.value();
    for (int k = 0; k < slot_count(); ++k)
      slots.push_back(DeviceTensor::zeros(value.shape(), value.dtype(), value.device()));
  }
  return slots;
}

void Optimizer::step(const std::vector<Parameter*>& parameters) {
  // The schedules check their rates (finite, >= 0).
  if (schedule_) learning_rate_ = (*schedule_)(iterations_);
  ++iterations_;
  for (Parameter* parameter : parameters) {
    MESHRT_CHECK_ARG(parameter != nullptr, "optimizer: a null parameter");
    if (parameter->grad().defined()) {
      dense_step(*parameter, parameter->sparse_grads().empty() ? parameter->grad() : parameter->dense_grad());
    } else if (!parameter->sparse_grads().empty()) {
      sparse_step(*parameter);
    }
  }
}

void Optimizer::dense_step(Parameter& parameter, const DeviceTensor& grad) {
  std::vector<DeviceTensor>& slots = state(parameter);
  parameter.set_value(update(parameter.value(), grad, slots));
}

// Repeated ids are merged first (merge_sparse: the distinct ids, each with
// its rows summed); the merged rows are gathered and written back with
// index_select and index_copy.
void Optimizer::sparse_step(Parameter& parameter) {
  const DeviceTensor& value = parameter.value();
  SparseGrad merged = merge_sparse(parameter.sparse_grads(), value.shape(), parameter.name());
  const DeviceTensor& index = merged.ids;
  const DeviceTensor& grad = merged.rows;

  std::vector<DeviceTensor>& slots = state(parameter);
  std::vector<DeviceTensor> slot_rows;
  for (const DeviceTensor& slot : slots) slot_rows.push_back(kernels::index_select(slot, 0, index));
  DeviceTensor new_rows = update(kernels::index_select(value, 0, index), grad, slot_rows);
  // In place: the value and the slots keep their storage, only these rows change.
  kernels::index_copy(value, 0, index, new_rows);
  for (size_t k = 0; k < slots.size(); ++k) kernels::index_copy(slots[k], 0, index, slot_rows[k]);
}

// ---------------------------------------------------------------------------

SGD::SGD(double learning_rate, double momentum) : Optimizer(learning_rate), momentum_(momentum) {
  MESHRT_CHECK_ARG(momentum >= 0 && momentum < 1, "SGD: momentum ", momentum, " outside [0, 1)");
}

DeviceTensor SGD::update(const DeviceTensor& value, const DeviceTensor& grad, std::vector<DeviceTensor>& slots) {
  DeviceTensor step = kernels::scale(grad, -learning_rate());
  if (momentum_ > 0) {
    slots[0] = kernels::add(kernels::scale(slots[0], momentum_), step);
    step = slots[0];
  }
  return kernels::add(value, step);
}

RMSprop::RMSprop(double learning_rate, double rho, double epsilon)
    : Optimizer(learning_rate), rho_(rho), epsilon_(epsilon) {
  MESHRT_CHECK_ARG(rho >= 0 && rho < 1, "RMSprop: rho ", rho, " outside [0, 1)");
  MESHRT_CHECK_ARG(epsilon > 0, "RMSprop: epsilon ", epsilon, " must be > 0");
}

// The kernels evaluate the formulas in the order they are written:
// (1 - rho) g g is ((1 - rho) g) g.
DeviceTensor RMSprop::update(const DeviceTensor& value, const DeviceTensor& grad, std::vector<DeviceTensor>& slots) {
  namespace k = kernels;
  // s = rho s + (1 - rho) g^2; w -= lr g / (sqrt(s) + epsilon)
  slots[0] = k::add(k::scale(slots[0], rho_), k::mul(k::scale(grad, 1 - rho_), grad));
  return k::sub(value, k::div(k::scale(grad, learning_rate()), k::add_scalar(k::sqrt(slots[0]), epsilon_)));
}

Adam::Adam(double learning_rate, double beta1, double beta2, double epsilon)
    : Optimizer(learning_rate), beta1_(beta1), beta2_(beta2), epsilon_(epsilon) {
  MESHRT_CHECK_ARG(beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1, "Adam: betas ", beta1, ", ", beta2,
                   " outside [0, 1)");
  MESHRT_CHECK_ARG(epsilon > 0, "Adam: epsilon ", epsilon, " must be > 0");
}

DeviceTensor Adam::update(const DeviceTensor& value, const DeviceTensor& grad, std::vector<DeviceTensor>& slots) {
  namespace k = kernels;
  const double t = static_cast<double>(iterations());
  const double lr_t = learning_rate() * std::sqrt(1 - std::pow(beta2_, t)) / (1 - std::pow(beta1_, t));
  // m = beta1 m + (1 - beta1) g; v = beta2 v + (1 - beta2) g^2; w -= lr_t m / (sqrt(v) + epsilon)
  slots[0] = k::add(k::scale(slots[0], beta1_), k::scale(grad, 1 - beta1_));
  slots[1] = k::add(k::scale(slots[1], beta2_), k::mul(k::scale(grad, 1 - beta2_), grad));
  return k::sub(value, k::div(k::scale(slots[0], lr_t), k::add_scalar(k::sqrt(slots[1]), epsilon_)));
}

// ---------------------------------------------------------------------------

void Optimizer::set_slots(const Parameter& parameter, std::vector<DeviceTensor> slots) {
  if (slots.empty()) {
    state_.erase(&parameter);
    return;
  }
  MESHRT_CHECK_ARG(static_cast<int>(slots.size()) == slot_count(), "optimizer: parameter ", parameter.name(),
                   ": ", slots.size(), " slots given, the optimizer keeps ", slot_count());
  const DeviceTensor& value = parameter.value();
  for (size_t k = 0; k < slots.size(); ++k) {
    MESHRT_CHECK_SHAPE(slots[k].defined() && slots[k].shape() == value.shape() && slots[k].dtype() == value.dtype() &&
                           slots[k].device() == value.device(),
                       "optimizer: parameter ", parameter.name(), ": slot ", k, " ",
                       slots[k].defined() ? slots[k].description() : std::string("undefined"), " does not fit ",
                       value.description());
  }
  state_[&parameter] = std::move(slots);
}

void Optimizer::set_iterations(int64_t iterations) {
  MESHRT_CHECK_ARG(iterations >= 0, "optimizer: iterations ", iterations, " must be >= 0");
  iterations_ = iterations;
}

}  // namespace meshrt::training

// Optimizers: SGD with momentum, RMSprop and Adam, with their per-parameter
// state (slots), applied to dense gradients and to sparse (embedding) ones.
// The update formulas are Keras's (TensorFlow 2's optimizer_v2), so that a
// model trained here and there moves alike:
//
//   SGD:     v = momentum v - lr g;  w += v             (momentum 0: w -= lr g, no slot)
//   RMSprop: s = rho s + (1 - rho) g^2;  w -= lr g / (sqrt(s) + eps)
//   Adam:    t += 1;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
//            w -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps)
//
// step(parameters) updates every parameter with a gradient and leaves the
// gradients as they are (the loop calls zero_grad). A parameter with a dense
// gradient (Parameter::grad) takes a dense update with its whole gradient,
// sparse parts included. One with only sparse gradients takes a lazy sparse
// update: the ids of all its sparse parts are merged (a repeated id's rows
// added), and only those rows of the value and of the slots change (as
// Keras's sparse SGD and RMSprop, and LazyAdam: rows absent from a batch keep
// their momentum and moments as they were). A sparse update writes its rows
// into the value's and the slots' storage in place (a tensor sharing it sees
// them); a dense one replaces the value (Parameter::set_value). Adam's t
// counts steps of the optimizer, not of the parameter.
//
// The learning rate is fixed (the constructor's, or set_learning_rate's) or
// follows a schedule (set_schedule, training/schedules.h): each step then
// first sets learning_rate() to the schedule at iterations() as it was
// before the step (0 on the first), as Keras evaluates a schedule at
// optimizer.iterations.
//
// Every update runs on kernels (the elementwise table's scale, add, mul, sub,
// div, sqrt and add_scalar), in the parameter's dtype. Sparse rows: the
// distinct ids are found on the host (from the ids alone), repeated ids' rows
// are summed by index_add, and the touched rows are gathered and written back
// with index_select and index_copy.
#pragma once

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

#include "device/tensor.h"
#include "training/parameter.h"
#include "training/schedules.h"

namespace meshrt::training {

class Optimizer {
 public:
  explicit Optimizer(double learning_rate);
  virtual ~Optimizer() = default;

  void step(const std::vector<Parameter*>& parameters);

  // The rate of the last step (with a schedule; before the first step, the
  // constructor's) or the fixed rate.
  double learning_rate() const { return learning_rate_; }
  // A fixed rate from now on (drops a schedule).
  void set_learning_rate(double learning_rate);
  // A schedule from now on (non-null); shared so that optimizers may share one.
  void set_schedule(std::shared_ptr<const LearningRateSchedule> schedule);
  const LearningRateSchedule* schedule() const { return schedule_.get(); }
  // Steps taken (Adam's t after the step).
  int64_t iterations() const { return iterations_; }
  // The slots of a parameter (empty before its first update), in the order
  // the class documents.
  const std::vector<DeviceTensor>& slots(const Parameter& parameter) const;

  // Restoring a checkpoint (a parameter server's, cluster/ps_server.h): the
  // slots a parameter has per update (the class's count), its slots (that
  // many tensors of its value's shape and dtype and device, in the order the
  // class documents; none: as before its first update), and the steps taken.
  int num_slots() const { return slot_count(); }
  void set_slots(const Parameter& parameter, std::vector<DeviceTensor> slots);
  void set_iterations(int64_t iterations);

 protected:
  virtual int slot_count() const = 0;
  // The new value of rows of a parameter (all of it, or the rows of a sparse
  // update) from their gradient; replaces slots (of value's shape) with their
  // new values.
  virtual DeviceTensor update(const DeviceTensor& value, const DeviceTensor& grad,
                              std::vector<DeviceTensor>& slots) = 0;

 private:
  std::vector<DeviceTensor>& state(const Parameter& parameter);
  void dense_step(Parameter& parameter, const DeviceTensor& grad);
  void sparse_step(Parameter& parameter);

  double learning_rate_;
  std::shared_ptr<const LearningRateSchedule> schedule_;
  int64_t iterations_ = 0;
  // Keyed by the parameter's address: parameters live in their layers, which
  // outlive the optimizer's use of them.
  std::unordered_map<const Parameter*, std::vector<DeviceTensor>> state_;
};

// Slots: momentum > 0: the velocity v; momentum 0: none.
class SGD : public Optimizer {
 public:
  explicit SGD(double learning_rate = 0.01, double momentum = 0.0);

 protected:
  int slot_count() const override { return momentum_ > 0 ? 1 : 0; }
  DeviceTensor update(const DeviceTensor& value, const DeviceTensor& grad, std::vector<DeviceTensor>& slots) override;

 private:
  double momentum_;
};

// Slots: the mean square s.
class RMSprop : public Optimizer {
 public:
  explicit RMSprop(double learning_rate = 0.001, double rho = 0.9, double epsilon = 1e-7);

 protected:
  int slot_count() const override { return 1; }
  DeviceTensor update(const DeviceTensor& value, const DeviceTensor& grad, std::vector<DeviceTensor>& slots) override;

 private:
  double rho_, epsilon_;
};

// Slots: the first moment m, the second moment v.
class Adam : public Optimizer {
 public:
  explicit Adam(double learning_rate = 0.001, double beta1 = 0.9, double beta2 = 0.999, double epsilon = 1e-7);

 protected:
  int slot_count() const override { return 2; }
  DeviceTensor update(const DeviceTensor& value, const DeviceTensor& grad, std::vector<DeviceTensor>& slots) override;

 private:
  double beta1_, beta2_, epsilon_;
};

}  // namespace meshrt::training

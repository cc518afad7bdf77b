// Learning-rate schedules: the rate as a function of the optimizer's step
// count, as Keras's tf.keras.optimizers.schedules define them. The step is the
// number of steps the optimizer took before this one (Keras's
// optimizer.iterations when it applies gradients): the first step uses the
// schedule at 0. An optimizer takes one with Optimizer::set_schedule.
#pragma once

#include <cstdint>
#include <vector>

namespace meshrt::training {

class LearningRateSchedule {
 public:
  virtual ~LearningRateSchedule() = default;
  // The rate at step (>= 0).
  virtual double operator()(int64_t step) const = 0;
};

// The same rate at every step.
class ConstantSchedule : public LearningRateSchedule {
 public:
  explicit ConstantSchedule(double learning_rate);
  double operator()(int64_t step) const override;

 private:
  double learning_rate_;
};

// initial * decay_rate ^ (step / decay_steps); staircase: the exponent is
// floor(step / decay_steps), so the rate drops once every decay_steps steps.
class ExponentialDecay : public LearningRateSchedule {
 public:
  ExponentialDecay(double initial_learning_rate, int64_t decay_steps, double decay_rate, bool staircase = false);
  double operator()(int64_t step) const override;

 private:
  double initial_, decay_rate_;
  int64_t decay_steps_;
  bool staircase_;
};

// values[0] while step <= boundaries[0], values[i] while boundaries[i-1] <
// step <= boundaries[i], values.back() after the last boundary. boundaries
// strictly increasing; values has one more element.
class PiecewiseConstantDecay : public LearningRateSchedule {
 public:
  PiecewiseConstantDecay(std::vector<int64_t> boundaries, std::vector<double> values);
  double operator()(int64_t step) const override;

 private:
  std::vector<int64_t> boundaries_;
  std::vector<double> values_;
};

}  // namespace meshrt::training

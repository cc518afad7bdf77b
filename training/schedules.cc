#include "training/schedules.h"

#include <cmath>
#include <utility>

#include "device/error.h"

namespace meshrt::training {

namespace {

void check_rate(double rate, const char* what) {
  MESHRT_CHECK_ARG(std::isfinite(rate) && rate >= 0, what, ": learning rate ", rate, " must be finite and >= 0");
}

void check_step(int64_t step, const char* what) { MESHRT_CHECK_ARG(step >= 0, what, ": step ", step, " < 0"); }

}  // namespace

ConstantSchedule::ConstantSchedule(double learning_rate) : learning_rate_(learning_rate) {
  check_rate(learning_rate, "ConstantSchedule");
}

double ConstantSchedule::operator()(int64_t step) const {
  check_step(step, "ConstantSchedule");
  return learning_rate_;
}

ExponentialDecay::ExponentialDecay(double initial_learning_rate, int64_t decay_steps, double decay_rate,
                                   bool staircase)
    : initial_(initial_learning_rate), decay_rate_(decay_rate), decay_steps_(decay_steps), staircase_(staircase) {
  check_rate(initial_learning_rate, "ExponentialDecay");
  MESHRT_CHECK_ARG(decay_steps > 0, "ExponentialDecay: decay_steps ", decay_steps, " must be > 0");
  MESHRT_CHECK_ARG(std::isfinite(decay_rate) && decay_rate > 0, "ExponentialDecay: decay_rate ", decay_rate,
                   " must be finite and > 0");
}

double ExponentialDecay::operator()(int64_t step) const {
  check_step(step, "ExponentialDecay");
  double exponent = static_cast<double>(step) / static_cast<double>(decay_steps_);
  if (staircase_) exponent = std::floor(exponent);
  return initial_ * std::pow(decay_rate_, exponent);
}

PiecewiseConstantDecay::PiecewiseConstantDecay(std::vector<int64_t> boundaries, std::vector<double> values)
    : boundaries_(std::move(boundaries)), values_(std::move(values)) {
  MESHRT_CHECK_ARG(values_.size() == boundaries_.size() + 1, "PiecewiseConstantDecay: ", values_.size(),
                   " values for ", boundaries_.size(), " boundaries; there must be one more value");
  for (size_t i = 1; i < boundaries_.size(); ++i)
    MESHRT_CHECK_ARG(boundaries_[i - 1] < boundaries_[i], "PiecewiseConstantDecay: boundaries ", boundaries_[i - 1],
                     " and ", boundaries_[i], " are not strictly increasing");
  for (double v : values_) check_rate(v, "PiecewiseConstantDecay");
}

double PiecewiseConstantDecay::operator()(int64_t step) const {
  check_step(step, "PiecewiseConstantDecay");
  size_t i = 0;
  while (i < boundaries_.size() && step > boundaries_[i]) ++i;
  return values_[i];
}

}  // namespace meshrt::training

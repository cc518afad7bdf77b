// The training examples of meshrt-train and meshrt-bench-train: seed 003's
// two models with their data, and a wider MLP for measuring the gradient
// reduction. Each gives the model, its optimizer and loss, and the global
// batch of any step, the same on every rank (a fixed seed): the
// data-parallel loop takes each rank's rows of it (training::shard_batch).
//
//   regression  Dense(10) on 10 examples of 10 uniform features with a uniform
//               target (tf.random.uniform((10, 10)), ((10,))), shuffled,
//               repeated, global batches of 64; SGD (0.01) and MSE, the
//               seed's model.compile(SGD(), loss='mse'). The target is
//               broadcast over the 10 outputs, as Keras's mse broadcasts
//               y (batch,) against a (batch, 10) prediction.
//   avenger     200 examples of 3 distinct strings out of 7 heroes, label
//               "yes" when "avenger" is among them; StringLookup (1 OOV id)
//               for the features and ["yes", "no"] (no OOV) for the label,
//               so the target is 1 for "no"; shuffled each pass, batches of
//               32 (each pass ends with a batch of 8), repeated;
//               Embedding(8, 16384) -> mean over the 3 -> Dense(1, sigmoid),
//               RMSprop (0.1), binary cross-entropy, accuracy at 0.5. The
//               sigmoid sits in the loss (from logits), as Keras computes it.
//   mlp         Dense(hidden, relu) -> Dense(hidden, relu) -> Dense(1) on
//               random data, SGD (0.01) and MSE: dense gradients of
//               2 hidden^2 + ... elements, to measure their all-reduce.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "device/tensor.h"
#include "training/data_parallel.h"
#include "training/model.h"
#include "training/optimizers.h"

namespace meshrt::apps {

struct TrainingExampleOptions {
  int64_t batch = 0;            // global batch rows; 0: the example's own (64, 32, 256)
  int64_t embedding_dim = 16384;  // avenger
  int64_t hidden = 1024;        // mlp
  double learning_rate = 0;     // 0: the example's own
  uint64_t seed = 1;
  DType dtype = DType::kF32;
};

struct TrainingExample {
  std::string name;
  std::string description;        // one line for the log
  std::unique_ptr<training::Sequential> model;
  std::unique_ptr<training::Optimizer> optimizer;
  training::LossFunction loss;
  bool classifier = false;        // report binary accuracy
  double accuracy_threshold = 0.5;  // of the prediction: 0 when it is a logit
  int64_t batch = 0;              // global batch rows
  // The global batch of step s (inputs, targets) on device.
  std::function<std::pair<DeviceTensor, DeviceTensor>(int64_t step)> batch_of;
};

// The seed's data on the host, one example per row.
struct ExampleData {
  HostTensor inputs, targets;
};
// regression: inputs [10, 10] uniform in [0, 1) of dtype, targets [10, 10]
// (each example's uniform target repeated over the 10 outputs).
ExampleData regression_data(uint64_t seed, DType dtype);
// avenger: n examples, inputs i64 [n, 3] (StringLookup ids of 3 distinct
// heroes), targets [n, 1] of dtype (the label's id: 0 "yes", 1 "no").
ExampleData avenger_data(uint64_t seed, DType dtype, int n = 200);
// The rows of data picked by index (host copies).
ExampleData pick_rows(const ExampleData& data, const std::vector<int64_t>& rows);
// The order of pass `pass` over n examples: shuffled, reshuffled each pass
// (tf.data's shuffle(n) with reshuffle_each_iteration), seeded.
std::vector<int64_t> pass_order(int64_t n, uint64_t seed, int64_t pass);
// The seed's models with their initial values from options.seed:
// regression Dense(10); avenger Embedding(8, embedding_dim) -> mean ->
// Dense(1) giving the logit (the sigmoid is in the loss, as Keras computes it).
std::unique_ptr<training::Sequential> regression_model(const TrainingExampleOptions& options, const Device& device);
std::unique_ptr<training::Sequential> avenger_model(const TrainingExampleOptions& options, const Device& device);

// --expect-falling-loss and --min-accuracy over a run's first and last
// epochs (meshrt-train, meshrt-ps-train): prints each check that failed,
// prefixed with program, and returns whether all held.
bool training_checks_hold(const char* program, bool expect_falling_loss, double min_accuracy, double first_loss,
                          double last_loss, double last_accuracy);

// "regression", "avenger" or "mlp"; throws Error(kInvalidArgument) otherwise.
TrainingExample make_training_example(const std::string& name, const TrainingExampleOptions& options,
                                      const Device& device);
const std::vector<std::string>& training_example_names();

}  // namespace meshrt::apps

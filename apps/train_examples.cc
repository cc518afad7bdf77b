#include "apps/train_examples.h"

#include <algorithm>
#include <cstdio>
#include <numeric>
#include <random>

#include "device/error.h"
#include "training/losses.h"
#include "training/preprocessing.h"

namespace meshrt::apps {
namespace {

using training::Activation;
using training::Dense;

// Rows of a host table picked by index, as a device tensor of dtype.
DeviceTensor gather_rows(const std::vector<double>& table, int64_t width, const std::vector<int64_t>& rows,
                         DType dtype, const Device& device) {
  std::vector<double> out;
  out.reserve(rows.size() * static_cast<size_t>(width));
  for (int64_t r : rows) {
    out.insert(out.end(), table.begin() + r * width, table.begin() + (r + 1) * width);
  }
  HostTensor host = HostTensor::from_vector(out, Shape{static_cast<int64_t>(rows.size()), width});
  return to_device(cast_host(host, dtype), device);
}

std::vector<double> uniform(int64_t n, std::mt19937_64& rng, double lo = 0, double hi = 1) {
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<double> v(static_cast<size_t>(n));
  for (double& e : v) e = dist(rng);
  return v;
}

std::pair<DeviceTensor, DeviceTensor> on_device(const ExampleData& d, const Device& device) {
  return {to_device(d.inputs, device), to_device(d.targets, device)};
}

TrainingExample regression(const TrainingExampleOptions& o, const Device& device) {
  TrainingExample ex;
  ex.name = "regression";
  ex.batch = o.batch > 0 ? o.batch : 64;
  double lr = o.learning_rate > 0 ? o.learning_rate : 0.01;
  ex.model = regression_model(o, device);
  ex.optimizer = std::make_unique<training::SGD>(lr);
  ex.loss = training::mean_squared_error;
  ex.description = "Dense(10) on 10 random examples, SGD (" + std::to_string(lr) + "), MSE, global batch " +
                   std::to_string(ex.batch);
  ExampleData data = regression_data(o.seed, o.dtype);
  int64_t batch = ex.batch;
  uint64_t seed = o.seed;
  ex.batch_of = [data, batch, seed, device](int64_t step) {
    // shuffle(10).repeat().batch(batch): one stream of shuffled passes.
    std::vector<int64_t> rows, order;
    for (int64_t k = step * batch, pass = -1; k < (step + 1) * batch; ++k) {
      if (k / 10 != pass) order = pass_order(10, seed, pass = k / 10);  // each pass shuffled once
      rows.push_back(order[static_cast<size_t>(k % 10)]);
    }
    return on_device(pick_rows(data, rows), device);
  };
  return ex;
}

TrainingExample avenger(const TrainingExampleOptions& o, const Device& device) {
  TrainingExample ex;
  ex.name = "avenger";
  ex.classifier = true;
  ex.batch = o.batch > 0 ? o.batch : 32;
  double lr = o.learning_rate > 0 ? o.learning_rate : 0.1;
  ex.model = avenger_model(o, device);
  ex.optimizer = std::make_unique<training::RMSprop>(lr);
  ex.loss = training::binary_cross_entropy_with_logits;
  ex.accuracy_threshold = 0.0;
  ex.description = "StringLookup -> Embedding(8, " + std::to_string(o.embedding_dim) +
                   ") -> mean -> Dense(1, sigmoid) on 200 examples, RMSprop (" + std::to_string(lr) +
                   "), binary cross-entropy, batches of " + std::to_string(ex.batch);
  ExampleData data = avenger_data(o.seed, o.dtype);
  int64_t batch = ex.batch;
  int64_t per_pass = (200 + batch - 1) / batch;
  uint64_t seed = o.seed;
  ex.batch_of = [data, batch, per_pass, seed, device](int64_t step) {
    // shuffle(200).batch(batch).repeat(): each pass reshuffled, its last batch short.
    int64_t pass = step / per_pass, first = (step % per_pass) * batch;
    std::vector<int64_t> order = pass_order(200, seed, pass);
    std::vector<int64_t> rows(order.begin() + first, order.begin() + std::min<int64_t>(first + batch, 200));
    return on_device(pick_rows(data, rows), device);
  };
  return ex;
}

TrainingExample mlp(const TrainingExampleOptions& o, const Device& device) {
  TrainingExample ex;
  ex.name = "mlp";
  ex.batch = o.batch > 0 ? o.batch : 256;
  double lr = o.learning_rate > 0 ? o.learning_rate : 0.01;
  int64_t h = o.hidden;
  ex.model = std::make_unique<training::Sequential>();
  ex.model->emplace<Dense>(Dense::glorot(h, h, Activation::kRelu, o.dtype, device, o.seed));
  ex.model->emplace<Dense>(Dense::glorot(h, h, Activation::kRelu, o.dtype, device, o.seed + 1));
  ex.model->emplace<Dense>(Dense::glorot(h, 1, Activation::kNone, o.dtype, device, o.seed + 2));
  ex.optimizer = std::make_unique<training::SGD>(lr);
  ex.loss = training::mean_squared_error;
  ex.description = "Dense(" + std::to_string(h) + ", relu) x 2 -> Dense(1), SGD (" + std::to_string(lr) +
                   "), MSE, global batch " + std::to_string(ex.batch);
  // A fixed pool of 4 batches, drawn once: the benchmark measures the step, not the data.
  std::mt19937_64 rng(o.seed + 41);
  std::vector<std::pair<DeviceTensor, DeviceTensor>> pool;
  std::vector<int64_t> all(static_cast<size_t>(ex.batch));
  std::iota(all.begin(), all.end(), 0);
  for (int i = 0; i < 4; ++i) {
    std::vector<double> x = uniform(ex.batch * h, rng, -1, 1), y = uniform(ex.batch, rng, -1, 1);
    pool.emplace_back(gather_rows(x, h, all, o.dtype, device), gather_rows(y, 1, all, o.dtype, device));
  }
  ex.batch_of = [pool](int64_t step) { return pool[static_cast<size_t>(step % 4)]; };
  return ex;
}

}  // namespace

std::vector<int64_t> pass_order(int64_t n, uint64_t seed, int64_t pass) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(seed * 1000003 + static_cast<uint64_t>(pass));
  std::shuffle(order.begin(), order.end(), rng);
  return order;
}

ExampleData regression_data(uint64_t seed, DType dtype) {
  std::mt19937_64 rng(seed + 17);
  std::vector<double> x = uniform(100, rng), y = uniform(10, rng);
  std::vector<double> targets;
  for (double v : y) targets.insert(targets.end(), 10, v);
  return {cast_host(HostTensor::from_vector(x, Shape{10, 10}), dtype),
          cast_host(HostTensor::from_vector(targets, Shape{10, 10}), dtype)};
}

ExampleData avenger_data(uint64_t seed, DType dtype, int n) {
  MESHRT_CHECK_ARG(n >= 1, "avenger_data: ", n, " examples");
  const std::vector<std::string> heroes{"avenger", "ironman", "batman", "hulk", "spiderman", "kingkong",
                                        "wonder_woman"};
  training::StringLookup features(heroes);  // 1 OOV id (0), heroes 1..7
  training::StringLookupOptions no_oov;
  no_oov.num_oov_indices = 0;
  training::StringLookup labels({"yes", "no"}, no_oov);
  // feature_and_label_gen(n): random.sample(heroes, 3), "yes" if "avenger" is among them.
  std::mt19937_64 rng(seed + 29);
  std::vector<std::string> strings, answers;
  for (int i = 0; i < n; ++i) {
    std::vector<std::string> pick = heroes;
    std::shuffle(pick.begin(), pick.end(), rng);
    pick.resize(3);
    bool yes = std::find(pick.begin(), pick.end(), "avenger") != pick.end();
    strings.insert(strings.end(), pick.begin(), pick.end());
    answers.push_back(yes ? "yes" : "no");
  }
  return {to_host(features(strings, Shape{n, 3})),
          cast_host(to_host(labels(answers, Shape{n, 1})), dtype)};
}

ExampleData pick_rows(const ExampleData& data, const std::vector<int64_t>& rows) {
  std::vector<HostTensor> in, out;
  for (int64_t r : rows) {
    in.push_back(data.inputs.narrow(r, 1));
    out.push_back(data.targets.narrow(r, 1));
  }
  return {concat_rows(in), concat_rows(out)};
}

std::unique_ptr<training::Sequential> regression_model(const TrainingExampleOptions& o, const Device& device) {
  auto model = std::make_unique<training::Sequential>();
  model->emplace<Dense>(Dense::glorot(10, 10, Activation::kNone, o.dtype, device, o.seed));
  return model;
}

std::unique_ptr<training::Sequential> avenger_model(const TrainingExampleOptions& o, const Device& device) {
  auto model = std::make_unique<training::Sequential>();
  model->emplace<training::Embedding>(training::Embedding::uniform(8, o.embedding_dim, o.dtype, device, o.seed));
  model->emplace<training::Mean>(1);
  // The sigmoid is folded into the loss: Keras computes the binary
  // cross-entropy of a Dense(sigmoid) output from its logits (it finds the
  // Sigmoid op under the output), so a saturated prediction keeps its
  // gradient; from clamped probabilities it would be 0 and RMSprop's first
  // steps (lr / sqrt(1 - rho) = 0.32 per weight) saturate it. Accuracy
  // thresholds the logit at 0 (the probability at 0.5).
  model->emplace<Dense>(Dense::glorot(o.embedding_dim, 1, Activation::kNone, o.dtype, device, o.seed + 1));
  return model;
}

bool training_checks_hold(const char* program, bool expect_falling_loss, double min_accuracy, double first_loss,
                          double last_loss, double last_accuracy) {
  bool hold = true;
  if (expect_falling_loss && !(last_loss < first_loss)) {
    std::printf("%s: the loss did not fall (first epoch %.6g, last %.6g)\n", program, first_loss, last_loss);
    hold = false;
  }
  if (min_accuracy >= 0 && !(last_accuracy >= min_accuracy)) {
    std::printf("%s: the last epoch's accuracy %.6f is below --min-accuracy %.6f\n", program, last_accuracy,
                min_accuracy);
    hold = false;
  }
  return hold;
}

const std::vector<std::string>& training_example_names() {
  static const std::vector<std::string> names{"regression", "avenger", "mlp"};
  return names;
}

TrainingExample make_training_example(const std::string& name, const TrainingExampleOptions& options,
                                      const Device& device) {
  MESHRT_CHECK_ARG(options.batch >= 0 && options.embedding_dim > 0 && options.hidden > 0 &&
                       options.learning_rate >= 0,
                   "training example: --batch and --learning-rate must be >= 0 (0: the default), "
                   "--embedding-dim and --hidden > 0");
  if (name == "regression") return regression(options, device);
  if (name == "avenger") return avenger(options, device);
  if (name == "mlp") return mlp(options, device);
  throw Error(ErrorKind::kInvalidArgument, "unknown training example '" + name +
                                               "' (regression, avenger or mlp)");
}

}  // namespace meshrt::apps

// training/: every backward pass and every loss gradient against central
// finite differences in float64 on random inputs, the embedding's sparse
// gradient densified and compared, the f32 passes against the f64 ones, a
// few loss values by hand, every optimizer's steps (dense and sparse)
// against the formulas computed by hand, the learning-rate schedules and an
// optimizer following one, StringLookup's ids (OOV buckets, mask) and the
// metrics over batches, all by hand. cpu device.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <sstream>

#include "device/error.h"
#include "training/layers.h"
#include "training/losses.h"
#include "training/metrics.h"
#include "training/optimizers.h"
#include "training/preprocessing.h"
#include "training/schedules.h"
#include "training_test_util.h"

namespace meshrt::training {
namespace {

using namespace testing;

double dot(const DeviceTensor& a, const std::vector<double>& b) {
  std::vector<double> va = values(a);
  EXPECT_EQ(va.size(), b.size());
  double s = 0;
  for (size_t i = 0; i < va.size(); ++i) s += va[i] * b[i];
  return s;
}

constexpr double kEps = 1e-6;
constexpr double kTolerance = 1e-6;

// Central differences of loss around x, element by element, against analytic:
// |numeric - analytic| / max(|numeric|, |analytic|, 1e-2) < kTolerance (the
// floor keeps gradients near 0 from dividing by nothing).
void expect_gradient(const std::function<double(const std::vector<double>&)>& loss, const std::vector<double>& x,
                     const std::vector<double>& analytic, const std::string& what) {
  ASSERT_EQ(x.size(), analytic.size()) << what;
  double worst = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    std::vector<double> plus = x, minus = x;
    plus[i] += kEps;
    minus[i] -= kEps;
    double numeric = (loss(plus) - loss(minus)) / (2 * kEps);
    double error = std::abs(numeric - analytic[i]) /
                   std::max({std::abs(numeric), std::abs(analytic[i]), 1e-2});
    worst = std::max(worst, error);
    EXPECT_LT(error, kTolerance) << what << " element " << i << ": numeric " << numeric << ", analytic "
                                 << analytic[i];
  }
  EXPECT_GT(x.size(), 0u) << what;
  std::ostringstream text;
  text << worst;
  ::testing::Test::RecordProperty(what + "_max_relative_error", text.str());
}

// L = sum(layer(x) * r) for a fixed random r: dL/dy = r, so backward(r) must
// give dL/dx and each parameter's dL/dp. x is f64.
void check_layer(Layer& layer, const DeviceTensor& x, bool input_differentiable = true) {
  DeviceTensor y = layer.forward(x);
  std::vector<double> r = uniform(y.numel(), 99);
  for (Parameter* p : layer.parameters()) p->zero_grad();
  DeviceTensor dx = layer.backward(tensor(r, y.shape()));
  std::vector<std::vector<double>> param_grads;
  for (Parameter* p : layer.parameters()) param_grads.push_back(values(p->dense_grad()));

  if (input_differentiable) {
    ASSERT_TRUE(dx.defined()) << layer.name();
    EXPECT_EQ(dx.shape(), x.shape()) << layer.name();
    expect_gradient([&](const std::vector<double>& v) { return dot(layer.forward(tensor(v, x.shape())), r); },
                    values(x), values(dx), layer.name() + " input");
  } else {
    EXPECT_FALSE(dx.defined()) << layer.name();
  }
  auto params = layer.parameters();
  for (size_t k = 0; k < params.size(); ++k) {
    Parameter* p = params[k];
    DeviceTensor base = p->value();
    expect_gradient(
        [&](const std::vector<double>& v) {
          p->set_value(tensor(v, base.shape()));
          return dot(layer.forward(x), r);
        },
        values(base), param_grads[k], layer.name() + " " + p->name());
    p->set_value(base);
  }
}

TEST(TrainingLayers, DenseBackwardMatchesFiniteDifferences) {
  for (Activation act : {Activation::kNone, Activation::kRelu, Activation::kSigmoid}) {
    SCOPED_TRACE(to_string(act));
    Dense dense(random(Shape{4, 3}, 1), random(Shape{3}, 2), act);
    check_layer(dense, random(Shape{5, 4}, 3));
    // Leading axes are rows.
    check_layer(dense, random(Shape{2, 3, 4}, 4));
  }
}

TEST(TrainingLayers, WeightlessBackwardsMatchFiniteDifferences) {
  ReLU relu;
  check_layer(relu, random(Shape{3, 7}, 5));
  Sigmoid sigmoid;
  check_layer(sigmoid, random(Shape{3, 7}, 6, DType::kF64, -4, 4));
  Softmax softmax;
  check_layer(softmax, random(Shape{2, 3, 5}, 7, DType::kF64, -3, 3));
  for (int axis : {0, 1, 2, -1}) {
    SCOPED_TRACE(axis);
    Mean mean(axis);
    check_layer(mean, random(Shape{2, 3, 4}, 8));
  }
}

TEST(TrainingLayers, EmbeddingSparseGradientMatchesFiniteDifferences) {
  for (DType id_type : {DType::kI64, DType::kI32}) {
    Embedding embedding(random(Shape{6, 3}, 9));
    // Repeats (1, 4) and unused rows (0, 2).
    DeviceTensor ids = to_device(cast_host(HostTensor::from_vector<int64_t>({1, 4, 5, 1, 3, 4}, Shape{2, 3}), id_type),
                                 kCpu);
    DeviceTensor y = embedding.forward(ids);
    ASSERT_EQ(y.shape(), (Shape{2, 3, 3}));
    EXPECT_EQ(values(y)[3 * 3 + 2], values(embedding.table().value())[1 * 3 + 2]);  // ids[1, 0] = 1
    check_layer(embedding, ids, /*input_differentiable=*/false);
    // The gradient is sparse: one entry with a row per lookup, repeats kept.
    ASSERT_EQ(embedding.table().sparse_grads().size(), 1u);
    EXPECT_FALSE(embedding.table().grad().defined());
    const SparseGrad& g = embedding.table().sparse_grads()[0];
    EXPECT_EQ(to_host(g.ids).to_vector<int64_t>(), (std::vector<int64_t>{1, 4, 5, 1, 3, 4}));
    EXPECT_EQ(g.rows.shape(), (Shape{6, 3}));
    std::vector<double> dense = values(densify(g, Shape{6, 3}));
    for (int k = 0; k < 3; ++k) {
      EXPECT_EQ(dense[0 * 3 + k], 0.0);
      EXPECT_EQ(dense[2 * 3 + k], 0.0);
    }
  }
}

TEST(TrainingLayers, DensifyRejectsIdsOutsideTheTable) {
  SparseGrad g{to_device(HostTensor::from_vector<int64_t>({0, 6}, Shape{2}), kCpu), random(Shape{2, 3}, 1)};
  EXPECT_THROW(densify(g, Shape{6, 3}), Error);
}

// The seed's classifier: embedding -> mean over the sequence -> dense(sigmoid)
// -> binary cross-entropy, the chain's gradient of the table against finite
// differences of the whole loss.
TEST(TrainingLayers, EmbeddingMeanDenseChainMatchesFiniteDifferences) {
  Embedding embedding(random(Shape{5, 4}, 11));
  Mean mean(1);
  Dense dense(random(Shape{4, 1}, 12), random(Shape{1}, 13), Activation::kSigmoid);
  DeviceTensor ids = to_device(HostTensor::from_vector<int64_t>({0, 2, 2, 4, 1, 3}, Shape{2, 3}), kCpu);
  DeviceTensor target = tensor({1, 0}, Shape{2, 1});
  auto loss_of = [&]() { return binary_cross_entropy(dense.forward(mean.forward(embedding.forward(ids))), target); };
  Loss loss = loss_of();
  embedding.table().zero_grad();
  embedding.backward(mean.backward(dense.backward(loss.grad)));
  DeviceTensor table = embedding.table().value();
  expect_gradient(
      [&](const std::vector<double>& v) {
        embedding.table().set_value(tensor(v, table.shape()));
        return loss_of().value;
      },
      values(table), values(embedding.table().dense_grad()), "chain table");
}

TEST(TrainingLayers, ParameterGradientsAccumulate) {
  Dense dense(random(Shape{3, 2}, 1), random(Shape{2}, 2));
  DeviceTensor x = random(Shape{4, 3}, 3);
  DeviceTensor g = random(Shape{4, 2}, 4);
  dense.forward(x);
  dense.backward(g);
  std::vector<double> once = values(dense.weight().grad());
  dense.forward(x);
  dense.backward(g);
  std::vector<double> twice = values(dense.weight().grad());
  for (size_t i = 0; i < once.size(); ++i) EXPECT_NEAR(twice[i], 2 * once[i], 1e-12);
  dense.weight().zero_grad();
  EXPECT_FALSE(dense.weight().grad().defined());
}

TEST(TrainingLayers, BackwardBeforeForwardAndBadShapesAreErrors) {
  ReLU relu;
  EXPECT_THROW(relu.backward(random(Shape{2}, 1)), Error);
  Dense dense(random(Shape{3, 2}, 1), random(Shape{2}, 2));
  EXPECT_THROW(dense.forward(random(Shape{4, 5}, 3)), Error);
  EXPECT_THROW(Dense(random(Shape{3, 2}, 1), random(Shape{3}, 2)), Error);
  EXPECT_THROW(dense.forward(random(Shape{4, 3}, 3, DType::kF32)), Error);  // dtype of the weight
}

// The f32 passes give the f64 ones to f32 precision (inputs rounded to f32 alike).
TEST(TrainingLayers, Float32MatchesFloat64) {
  auto make = [](DType dtype) {
    std::vector<std::unique_ptr<Layer>> layers;
    layers.push_back(std::make_unique<Dense>(Dense::glorot(4, 6, Activation::kRelu, dtype, kCpu, 1)));
    layers.push_back(std::make_unique<Dense>(Dense::glorot(6, 5, Activation::kSigmoid, dtype, kCpu, 2)));
    layers.push_back(std::make_unique<Softmax>());
    layers.push_back(std::make_unique<Mean>(-1));
    return layers;
  };
  std::vector<double> x = uniform(3 * 4, 5);
  // Round the f64 input to f32 values so both runs see one input.
  x = values(tensor(x, Shape{3, 4}, DType::kF32));
  std::vector<double> r = uniform(3, 6);
  std::vector<std::vector<double>> results[2];
  int k = 0;
  for (DType dtype : {DType::kF64, DType::kF32}) {
    auto layers = make(dtype);
    DeviceTensor h = tensor(x, Shape{3, 4}, dtype);
    for (auto& layer : layers) h = layer->forward(h);
    ASSERT_EQ(h.dtype(), dtype);
    results[k].push_back(values(h));
    DeviceTensor g = tensor(r, Shape{3}, dtype);
    for (auto it = layers.rbegin(); it != layers.rend(); ++it) g = (*it)->backward(g);
    results[k].push_back(values(g));
    for (auto& layer : layers)
      for (Parameter* p : layer->parameters()) results[k].push_back(values(p->grad()));
    ++k;
  }
  ASSERT_EQ(results[0].size(), results[1].size());
  for (size_t i = 0; i < results[0].size(); ++i)
    for (size_t j = 0; j < results[0][i].size(); ++j)
      EXPECT_NEAR(results[1][i][j], results[0][i][j], 1e-5 + 1e-4 * std::abs(results[0][i][j])) << i << ", " << j;
}

// Loss gradients against finite differences of the loss value.
void check_loss(const std::function<Loss(const DeviceTensor&)>& loss, const DeviceTensor& prediction,
                const std::string& what) {
  Loss at = loss(prediction);
  ASSERT_EQ(at.grad.shape(), prediction.shape()) << what;
  ASSERT_EQ(at.grad.dtype(), prediction.dtype()) << what;
  expect_gradient([&](const std::vector<double>& v) { return loss(tensor(v, prediction.shape())).value; },
                  values(prediction), values(at.grad), what);
}

TEST(TrainingLosses, GradientsMatchFiniteDifferences) {
  DeviceTensor target = random(Shape{3, 4}, 21, DType::kF64, 0, 1);
  check_loss([&](const DeviceTensor& p) { return mean_squared_error(p, target); }, random(Shape{3, 4}, 22), "mse");
  check_loss([&](const DeviceTensor& p) { return binary_cross_entropy(p, target); },
             random(Shape{3, 4}, 23, DType::kF64, 0.05, 0.95), "bce");
  check_loss([&](const DeviceTensor& z) { return binary_cross_entropy_with_logits(z, target); },
             random(Shape{3, 4}, 24, DType::kF64, -5, 5), "bce_logits");
  DeviceTensor labels = to_device(HostTensor::from_vector<int64_t>({0, 3, 4, 1, 1, 2}, Shape{2, 3}), kCpu);
  check_loss([&](const DeviceTensor& z) { return softmax_cross_entropy(z, labels); },
             random(Shape{2, 3, 5}, 25, DType::kF64, -3, 3), "softmax_ce");
}

TEST(TrainingLosses, ValuesByHand) {
  EXPECT_NEAR(mean_squared_error(tensor({1, 2}, Shape{2}), tensor({0, 0}, Shape{2})).value, 2.5, 1e-12);
  // -(log 0.8 + log(1 - 0.4)) / 2
  EXPECT_NEAR(binary_cross_entropy(tensor({0.8, 0.4}, Shape{2}), tensor({1, 0}, Shape{2})).value,
              -(std::log(0.8) + std::log(0.6)) / 2, 1e-12);
  // From logits equals from probabilities sigmoid(z), and stays finite far out.
  std::vector<double> z = {-2, 0.5, 3};
  std::vector<double> p;
  for (double v : z) p.push_back(1 / (1 + std::exp(-v)));
  DeviceTensor t = tensor({0, 1, 1}, Shape{3});
  EXPECT_NEAR(binary_cross_entropy_with_logits(tensor(z, Shape{3}), t).value,
              binary_cross_entropy(tensor(p, Shape{3}), t).value, 1e-12);
  Loss far = binary_cross_entropy_with_logits(tensor({1000, -1000}, Shape{2}), tensor({0, 1}, Shape{2}));
  EXPECT_NEAR(far.value, 1000, 1e-9);
  EXPECT_NEAR(values(far.grad)[0], 0.5, 1e-12);
  EXPECT_NEAR(values(far.grad)[1], -0.5, 1e-12);
  // Saturated probabilities: finite through the clamp.
  EXPECT_TRUE(std::isfinite(binary_cross_entropy(tensor({0, 1}, Shape{2}), tensor({1, 0}, Shape{2})).value));
  // Two equal logits: log 2; a large gap: stable.
  DeviceTensor label0 = to_device(HostTensor::from_vector<int32_t>({0}, Shape{1}), kCpu);
  EXPECT_NEAR(softmax_cross_entropy(tensor({0, 0}, Shape{1, 2}), label0).value, std::log(2.0), 1e-12);
  EXPECT_NEAR(softmax_cross_entropy(tensor({0, 1000}, Shape{1, 2}), label0).value, 1000, 1e-9);
  // f32 works too.
  Loss f32 = mean_squared_error(tensor({1, 2}, Shape{2}, DType::kF32), tensor({0, 0}, Shape{2}, DType::kF32));
  EXPECT_NEAR(f32.value, 2.5, 1e-6);
  EXPECT_EQ(f32.grad.dtype(), DType::kF32);
}

// The clamp to [eps, 1 - eps]: where it acts (p = 0, p = 1) the loss is finite
// and the gradient 0; at p = eps it does not act.
TEST(TrainingLosses, BinaryCrossEntropyGradientIsZeroWhereTheClampActs) {
  Loss l = binary_cross_entropy(tensor({0, 1, 0.25, 0.1}, Shape{4}), tensor({1, 0, 1, 0}, Shape{4}), 0.1);
  EXPECT_NEAR(l.value, -(std::log(0.1) + std::log(1 - 0.9) + std::log(0.25) + std::log(0.9)) / 4, 1e-12);
  std::vector<double> g = values(l.grad);
  EXPECT_EQ(g[0], 0.0);
  EXPECT_EQ(g[1], 0.0);
  EXPECT_NEAR(g[2], (0.25 - 1) / (0.25 * 0.75) / 4, 1e-12);
  EXPECT_NEAR(g[3], 0.1 / (0.1 * 0.9) / 4, 1e-12);
}

TEST(TrainingLosses, BadArgumentsAreErrors) {
  EXPECT_THROW(mean_squared_error(tensor({1, 2}, Shape{2}), tensor({0, 0, 0}, Shape{3})), Error);
  DeviceTensor bad = to_device(HostTensor::from_vector<int64_t>({2}, Shape{1}), kCpu);
  EXPECT_THROW(softmax_cross_entropy(tensor({0, 0}, Shape{1, 2}), bad), Error);
}

// ---------------------------------------------------------------------------
// Optimizers: each step against the formulas computed here by hand.

// The reference of one element's updates (the formulas of optimizers.h).
struct Reference {
  enum Kind { kSgd, kRmsprop, kAdam } kind;
  double lr, a = 0, b = 0, eps = 0;  // momentum | rho | beta1, beta2
  double w = 0, s1 = 0, s2 = 0;
  int t = 0;
  void step(double g) {
    ++t;
    switch (kind) {
      case kSgd:
        s1 = a * s1 - lr * g;
        w += a > 0 ? s1 : -lr * g;
        break;
      case kRmsprop:
        s1 = a * s1 + (1 - a) * g * g;
        w -= lr * g / (std::sqrt(s1) + eps);
        break;
      case kAdam:
        s1 = a * s1 + (1 - a) * g;
        s2 = b * s2 + (1 - b) * g * g;
        w -= lr * std::sqrt(1 - std::pow(b, t)) / (1 - std::pow(a, t)) * s1 / (std::sqrt(s2) + eps);
        break;
    }
  }
};

TEST(TrainingOptimizers, FirstStepsByHand) {
  // w = [1, 2], g = [0.5, -1], lr 0.1.
  Parameter p("w", tensor({1, 2}, Shape{2}));
  SGD sgd(0.1, 0.9);
  p.accumulate(tensor({0.5, -1}, Shape{2}));
  sgd.step({&p});
  // v = -lr g = [-0.05, 0.1]; w + v
  EXPECT_NEAR(values(p.value())[0], 0.95, 1e-15);
  EXPECT_NEAR(values(p.value())[1], 2.1, 1e-15);
  sgd.step({&p});
  // v = 0.9 v - lr g = [-0.095, 0.19]
  EXPECT_NEAR(values(p.value())[0], 0.855, 1e-15);
  EXPECT_NEAR(values(p.value())[1], 2.29, 1e-15);
  EXPECT_NEAR(values(sgd.slots(p)[0])[1], 0.19, 1e-15);

  Parameter q("w", tensor({1, 2}, Shape{2}));
  RMSprop rmsprop(0.1);
  q.accumulate(tensor({0.5, -1}, Shape{2}));
  rmsprop.step({&q});
  // s = 0.1 g^2 = [0.025, 0.1]; w -= 0.1 g / (sqrt(s) + 1e-7)
  EXPECT_NEAR(values(q.value())[0], 1 - 0.05 / (std::sqrt(0.025) + 1e-7), 1e-15);
  EXPECT_NEAR(values(q.value())[1], 2 + 0.1 / (std::sqrt(0.1) + 1e-7), 1e-15);
  EXPECT_NEAR(values(rmsprop.slots(q)[0])[0], 0.025, 1e-15);

  Parameter r("w", tensor({1, 2}, Shape{2}));
  Adam adam(0.1);
  r.accumulate(tensor({0.5, -1}, Shape{2}));
  adam.step({&r});
  // t = 1: m = 0.1 g, v = 0.001 g^2, lr_t = 0.1 sqrt(0.001) / 0.1: a step of
  // about lr against the gradient's sign.
  EXPECT_NEAR(values(r.value())[0], 1 - std::sqrt(0.001) * 0.05 / (std::sqrt(0.001) * 0.5 + 1e-7), 1e-15);
  EXPECT_NEAR(values(r.value())[0], 0.9, 1e-6);
  EXPECT_NEAR(values(r.value())[1], 2.1, 1e-6);
  EXPECT_NEAR(values(adam.slots(r)[0])[1], -0.1, 1e-15);
  EXPECT_NEAR(values(adam.slots(r)[1])[1], 0.001, 1e-15);
  EXPECT_EQ(adam.iterations(), 1);
}

// Five steps of changing gradients, dense, every element against the reference.
TEST(TrainingOptimizers, DenseStepsMatchTheReference) {
  const std::vector<Reference> kinds = {{Reference::kSgd, 0.1, 0.0}, {Reference::kSgd, 0.05, 0.9},
                                        {Reference::kRmsprop, 0.01, 0.9, 0, 1e-7},
                                        {Reference::kAdam, 0.01, 0.9, 0.999, 1e-7}};
  for (const Reference& kind : kinds) {
    SCOPED_TRACE(static_cast<int>(kind.kind));
    std::unique_ptr<Optimizer> optimizer;
    if (kind.kind == Reference::kSgd) optimizer = std::make_unique<SGD>(kind.lr, kind.a);
    if (kind.kind == Reference::kRmsprop) optimizer = std::make_unique<RMSprop>(kind.lr, kind.a, kind.eps);
    if (kind.kind == Reference::kAdam) optimizer = std::make_unique<Adam>(kind.lr, kind.a, kind.b, kind.eps);
    std::vector<double> w0 = uniform(6, 31);
    Parameter p("w", tensor(w0, Shape{2, 3}));
    std::vector<Reference> reference;
    for (double w : w0) {
      reference.push_back(kind);
      reference.back().w = w;
    }
    for (int step = 0; step < 5; ++step) {
      std::vector<double> g = uniform(6, 40 + step);
      p.zero_grad();
      p.accumulate(tensor(g, Shape{2, 3}));
      optimizer->step({&p});
      for (size_t i = 0; i < g.size(); ++i) reference[i].step(g[i]);
      std::vector<double> w = values(p.value());
      for (size_t i = 0; i < w.size(); ++i) EXPECT_NEAR(w[i], reference[i].w, 1e-13) << "step " << step << " i " << i;
    }
  }
}

// Sparse: repeated ids add up, only the looked-up rows (value and state) move,
// and a row absent from a later batch keeps its value and momentum (lazy).
TEST(TrainingOptimizers, SparseStepsUpdateOnlyTheirRows) {
  for (int which = 0; which < 3; ++which) {
    SCOPED_TRACE(which);
    std::unique_ptr<Optimizer> optimizer;
    Reference kind{Reference::kSgd, 0.1, 0.9};
    if (which == 0) optimizer = std::make_unique<SGD>(0.1, 0.9);
    if (which == 1) {
      kind = {Reference::kRmsprop, 0.1, 0.9, 0, 1e-7};
      optimizer = std::make_unique<RMSprop>(0.1, 0.9, 1e-7);
    }
    if (which == 2) {
      kind = {Reference::kAdam, 0.1, 0.9, 0.999, 1e-7};
      optimizer = std::make_unique<Adam>(0.1, 0.9, 0.999, 1e-7);
    }
    Embedding embedding(random(Shape{4, 2}, 51));
    std::vector<double> w0 = values(embedding.table().value());
    std::vector<Reference> reference;
    for (double w : w0) {
      reference.push_back(kind);
      reference.back().w = w;
    }
    // Step 1: ids 1, 3, 1 (row 1 twice); step 2: id 3 only.
    const std::vector<std::vector<int64_t>> batches = {{1, 3, 1}, {3}};
    for (size_t step = 0; step < batches.size(); ++step) {
      const auto& ids = batches[step];
      const int64_t n = static_cast<int64_t>(ids.size());
      embedding.table().zero_grad();
      embedding.forward(to_device(HostTensor::from_vector(ids, Shape{n}), kCpu));
      std::vector<double> g = uniform(n * 2, 60 + step);
      embedding.backward(tensor(g, Shape{n, 2}));
      optimizer->step(embedding.parameters());
      // The reference: each touched row once with its summed gradient.
      std::map<int64_t, std::vector<double>> summed;
      for (int64_t j = 0; j < n; ++j) {
        auto& row = summed[ids[j]];
        row.resize(2, 0.0);
        for (int k = 0; k < 2; ++k) row[k] += g[j * 2 + k];
      }
      for (int64_t row = 0; row < 4; ++row) {
        auto it = summed.find(row);
        if (it == summed.end()) continue;
        for (int k = 0; k < 2; ++k) {
          Reference& e = reference[row * 2 + k];
          // Adam's bias correction counts the optimizer's steps.
          e.t = static_cast<int>(step);
          e.step(it->second[k]);
        }
      }
      std::vector<double> w = values(embedding.table().value());
      for (size_t i = 0; i < w.size(); ++i) EXPECT_NEAR(w[i], reference[i].w, 1e-13) << "step " << step << " i " << i;
    }
    // Rows 0 and 2 never looked up: value and state untouched.
    std::vector<double> w = values(embedding.table().value());
    std::vector<double> slot = values(optimizer->slots(embedding.table())[0]);
    for (int64_t row : {0, 2})
      for (int k = 0; k < 2; ++k) {
        EXPECT_EQ(w[row * 2 + k], w0[row * 2 + k]);
        EXPECT_EQ(slot[row * 2 + k], 0.0);
      }
    EXPECT_EQ(slot[1 * 2], reference[1 * 2].s1);  // row 1's state kept through step 2
  }
}

TEST(TrainingOptimizers, Float32AndBadArguments) {
  Parameter p("w", tensor({1, 2}, Shape{2}, DType::kF32));
  p.accumulate(tensor({0.5, -1}, Shape{2}, DType::kF32));
  Adam adam(0.1);
  adam.step({&p});
  EXPECT_EQ(p.value().dtype(), DType::kF32);
  EXPECT_NEAR(values(p.value())[0], 0.9, 1e-6);
  EXPECT_THROW(SGD(0.1, 1.0), Error);
  EXPECT_THROW(SGD(-0.1), Error);
  EXPECT_THROW(RMSprop(0.1, 0.9, 0.0), Error);
  // A parameter without a gradient is left alone.
  Parameter untouched("u", tensor({3}, Shape{1}));
  adam.step({&untouched});
  EXPECT_EQ(values(untouched.value())[0], 3.0);
}

TEST(TrainingSchedules, ValuesByHand) {
  ConstantSchedule constant(0.3);
  EXPECT_EQ(constant(0), 0.3);
  EXPECT_EQ(constant(1000), 0.3);

  // 0.1 * 0.5^(step / 10)
  ExponentialDecay smooth(0.1, 10, 0.5);
  EXPECT_NEAR(smooth(0), 0.1, 1e-15);
  EXPECT_NEAR(smooth(5), 0.1 / std::sqrt(2.0), 1e-15);
  EXPECT_NEAR(smooth(10), 0.05, 1e-15);
  EXPECT_NEAR(smooth(25), 0.1 * std::pow(0.5, 2.5), 1e-15);
  // Staircase: 0.1 * 0.5^floor(step / 10).
  ExponentialDecay stairs(0.1, 10, 0.5, true);
  EXPECT_NEAR(stairs(0), 0.1, 1e-15);
  EXPECT_NEAR(stairs(9), 0.1, 1e-15);
  EXPECT_NEAR(stairs(10), 0.05, 1e-15);
  EXPECT_NEAR(stairs(19), 0.05, 1e-15);
  EXPECT_NEAR(stairs(25), 0.025, 1e-15);

  // 1.0 for step <= 3, 0.5 for 3 < step <= 7, 0.1 after.
  PiecewiseConstantDecay piecewise({3, 7}, {1.0, 0.5, 0.1});
  EXPECT_EQ(piecewise(0), 1.0);
  EXPECT_EQ(piecewise(3), 1.0);
  EXPECT_EQ(piecewise(4), 0.5);
  EXPECT_EQ(piecewise(7), 0.5);
  EXPECT_EQ(piecewise(8), 0.1);
  EXPECT_EQ(piecewise(100), 0.1);

  EXPECT_THROW(ExponentialDecay(0.1, 0, 0.5), Error);
  EXPECT_THROW(ExponentialDecay(0.1, 10, 0.0), Error);
  EXPECT_THROW(PiecewiseConstantDecay({3, 7}, {1.0, 0.5}), Error);
  EXPECT_THROW(PiecewiseConstantDecay({7, 3}, {1.0, 0.5, 0.1}), Error);
  EXPECT_THROW(ConstantSchedule(-1.0), Error);
  EXPECT_THROW(stairs(-1), Error);
}

// SGD (no momentum) on w = [1], g = [1] every step: w drops by the rate of
// each step, the schedule read at the steps taken before it (0, 1, 2, ...).
TEST(TrainingSchedules, OptimizerTakesTheScheduledRateAtEachStep) {
  Parameter p("w", tensor({1}, Shape{1}));
  SGD sgd(0.7);
  EXPECT_EQ(sgd.schedule(), nullptr);
  // 0.4 for steps 0 and 1, 0.2 for step 2, 0.1 after.
  sgd.set_schedule(std::make_shared<PiecewiseConstantDecay>(std::vector<int64_t>{1, 2},
                                                            std::vector<double>{0.4, 0.2, 0.1}));
  const std::vector<double> rates = {0.4, 0.4, 0.2, 0.1, 0.1};
  double w = 1;
  for (double rate : rates) {
    p.zero_grad();
    p.accumulate(tensor({1}, Shape{1}));
    sgd.step({&p});
    w -= rate;
    EXPECT_EQ(sgd.learning_rate(), rate);
    EXPECT_NEAR(values(p.value())[0], w, 1e-15);
  }
  // A fixed rate drops the schedule.
  sgd.set_learning_rate(0.05);
  EXPECT_EQ(sgd.schedule(), nullptr);
  p.zero_grad();
  p.accumulate(tensor({1}, Shape{1}));
  sgd.step({&p});
  EXPECT_NEAR(values(p.value())[0], w - 0.05, 1e-15);
  EXPECT_THROW(sgd.set_schedule(nullptr), Error);

  // Adam's bias correction uses t as before; its lr is the schedule's:
  // staircase 0.1 * 0.5^floor(step / 1) = 0.1, then 0.05. Two steps of g = 1
  // keep m / sqrt(v) corrected at 1, so w moves by about the rate each step.
  Parameter q("w", tensor({1}, Shape{1}));
  Adam adam(0.9);
  adam.set_schedule(std::make_shared<ExponentialDecay>(0.1, 1, 0.5, true));
  for (double rate : {0.1, 0.05}) {
    q.zero_grad();
    q.accumulate(tensor({1}, Shape{1}));
    adam.step({&q});
    EXPECT_EQ(adam.learning_rate(), rate);
  }
  EXPECT_NEAR(values(q.value())[0], 1 - 0.1 - 0.05, 1e-6);
}

std::vector<int64_t> ids(const DeviceTensor& t) { return to_host(t).to_vector<int64_t>(); }

TEST(TrainingPreprocessing, StringLookupIdsWithOneOovBucket) {
  // Default: 1 OOV bucket (id 0), the vocabulary from 1.
  StringLookup lookup({"thor", "hulk", "loki"});
  EXPECT_EQ(lookup.vocabulary_size(), 4);
  DeviceTensor out = lookup({"hulk", "x", "thor", "loki", "", "hulk"}, Shape{2, 3});
  EXPECT_EQ(out.dtype(), DType::kI64);
  EXPECT_EQ(out.shape(), (Shape{2, 3}));
  EXPECT_EQ(ids(out), (std::vector<int64_t>{2, 0, 1, 3, 0, 2}));

  // With a mask token: mask 0, OOV 1, the vocabulary from 2.
  StringLookup masked({"a", "b"}, {1, std::string("")});
  EXPECT_EQ(masked.vocabulary_size(), 4);
  EXPECT_EQ(ids(masked({"", "zz", "a", "b"}, Shape{4})), (std::vector<int64_t>{0, 1, 2, 3}));
  EXPECT_EQ(masked.vocabulary(), (std::vector<std::string>{"a", "b"}));
}

TEST(TrainingPreprocessing, StringLookupSeveralOovBucketsHashStably) {
  // The published FNV-1a 64 test vectors.
  EXPECT_EQ(fnv1a64(""), 0xcbf29ce484222325ull);
  EXPECT_EQ(fnv1a64("a"), 0xaf63dc4c8601ec8cull);
  EXPECT_EQ(fnv1a64("foobar"), 0x85944171f73967e8ull);
  // 3 buckets (ids 0..2), vocabulary from 3. Buckets: hash % 3:
  // "" -> 0xcbf29ce484222325 % 3 = 2, "a" -> 1, "foobar" -> 0.
  StringLookup lookup({"x", "y"}, {3, std::nullopt});
  EXPECT_EQ(lookup.vocabulary_size(), 5);
  EXPECT_EQ(ids(lookup({"", "a", "foobar", "x", "y", "a"}, Shape{6})), (std::vector<int64_t>{2, 1, 0, 3, 4, 1}));
  // With a mask too, the buckets move up by one: ids 1..3.
  StringLookup masked({"x"}, {3, std::string("[MASK]")});
  EXPECT_EQ(masked.vocabulary_size(), 5);
  EXPECT_EQ(ids(masked({"[MASK]", "", "a", "foobar", "x"}, Shape{5})), (std::vector<int64_t>{0, 3, 2, 1, 4}));
}

TEST(TrainingPreprocessing, StringLookupBadArgumentsAreErrors) {
  EXPECT_THROW(StringLookup({"a", "b", "a"}), Error);
  EXPECT_THROW(StringLookup({"a", ""}, {1, std::string("")}), Error);
  EXPECT_THROW(StringLookup({"a"}, {-1, std::nullopt}), Error);
  StringLookup strict({"a", "b"}, {0, std::nullopt});
  EXPECT_EQ(strict.vocabulary_size(), 2);
  EXPECT_EQ(strict.lookup("b"), 1);
  EXPECT_THROW(strict.lookup("c"), Error);
  StringLookup lookup({"a"});
  EXPECT_THROW(lookup({"a", "b"}, Shape{3}), Error);
}

TEST(TrainingMetrics, MeanOverBatchesAndReset) {
  metrics::Mean mean;
  EXPECT_EQ(mean.result(), 0.0);
  mean.update_state(1.0);
  mean.update_state(2.0);
  EXPECT_DOUBLE_EQ(mean.result(), 1.5);
  // A batch of elements: (1 + 2 + 3 + 4 + 5) / 5 = 3.
  mean.update_state(tensor({3, 4, 5}, Shape{3}, DType::kF32));
  EXPECT_DOUBLE_EQ(mean.result(), 3.0);
  // Weighted: (15 + 2 * 10) / (5 + 2) = 5.
  mean.update_state(10.0, 2.0);
  EXPECT_DOUBLE_EQ(mean.result(), 5.0);
  EXPECT_EQ(mean.count(), 7.0);
  mean.reset_state();
  EXPECT_EQ(mean.result(), 0.0);
  mean.update_state(-4.0);
  EXPECT_EQ(mean.result(), -4.0);
  EXPECT_THROW(mean.update_state(1.0, -1.0), Error);
}

TEST(TrainingMetrics, BinaryAccuracyOverBatchesAndReset) {
  metrics::BinaryAccuracy accuracy;
  // Batch 1: predicted 1, 0, 1, 0 (0.5 is not > 0.5) vs 1, 0, 0, 1: 2 of 4.
  accuracy.update_state(tensor({0.9, 0.1, 0.6, 0.5}, Shape{2, 2}), tensor({1, 0, 0, 1}, Shape{2, 2}));
  EXPECT_DOUBLE_EQ(accuracy.result(), 0.5);
  // Batch 2: predicted 1, 1 vs 1, 1: 4 of 6.
  accuracy.update_state(tensor({0.7, 0.99}, Shape{2}), tensor({1, 1}, Shape{2}));
  EXPECT_DOUBLE_EQ(accuracy.result(), 4.0 / 6.0);
  accuracy.reset_state();
  EXPECT_EQ(accuracy.result(), 0.0);
  accuracy.update_state(tensor({0.2}, Shape{1}, DType::kF32), tensor({0}, Shape{1}, DType::kF32));
  EXPECT_EQ(accuracy.result(), 1.0);
  // Another threshold: 0.6 > 0.7 is false.
  metrics::BinaryAccuracy strict(0.7);
  strict.update_state(tensor({0.6, 0.8}, Shape{2}), tensor({1, 1}, Shape{2}));
  EXPECT_DOUBLE_EQ(strict.result(), 0.5);
  EXPECT_THROW(accuracy.update_state(tensor({0.2}, Shape{1}), tensor({0.5}, Shape{1})), Error);
  EXPECT_THROW(accuracy.update_state(tensor({0.2}, Shape{1}), tensor({0, 1}, Shape{2})), Error);
}

TEST(TrainingMetrics, SparseCategoricalAccuracyOverBatchesAndReset) {
  metrics::SparseCategoricalAccuracy accuracy;
  // Rows' argmax: 2, 0, 1 (the tie 0.5, 0.5 goes to the first) vs labels 2, 1, 1: 2 of 3.
  DeviceTensor logits = tensor({0.1, 0.2, 3.0, 5.0, -1.0, 0.0, 0.0, 0.5, 0.5}, Shape{3, 3});
  accuracy.update_state(logits, to_device(HostTensor::from_vector(std::vector<int64_t>{2, 1, 1}, Shape{3}), kCpu));
  EXPECT_DOUBLE_EQ(accuracy.result(), 2.0 / 3.0);
  // Batch 2, i32 labels, leading axes [1, 2]: argmax 1, 0 vs 0, 0: 3 of 5.
  DeviceTensor logits2 = tensor({-1, 1, 2, 1}, Shape{1, 2, 2}, DType::kF32);
  accuracy.update_state(logits2, to_device(HostTensor::from_vector(std::vector<int32_t>{0, 0}, Shape{1, 2}), kCpu));
  EXPECT_DOUBLE_EQ(accuracy.result(), 3.0 / 5.0);
  accuracy.reset_state();
  EXPECT_EQ(accuracy.result(), 0.0);
  EXPECT_THROW(accuracy.update_state(logits, tensor({2, 1, 1}, Shape{3})), Error);
}

}  // namespace
}  // namespace meshrt::training

// Synchronous data-parallel training (training/data_parallel.h) at 1, 2, 3
// and 4 ranks: after every step, each rank's weights equal those of one
// process that trained the same model on the whole batch (computed on every
// rank beside it), for dense models (SGD with momentum, Adam; MSE), for an
// embedding -> mean -> dense(sigmoid) model with sparse gradients (RMSprop,
// binary cross-entropy), with uneven shards, with ranks that get no rows,
// and with the dense gradients split over many buckets. Also: rank 0's
// initial values reach every rank, a rank with a different model is refused
// on every rank, metrics sum over the ranks. cpu device (MPI).
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <memory>
#include <random>
#include <set>

#include "comm/communicator.h"
#include "comm/world.h"
#include "device/error.h"
#include "kernels/elementwise.h"
#include "kernels/movement.h"
#include "training/data_parallel.h"
#include "training/model.h"
#include "training_test_util.h"

namespace meshrt::training {
namespace {

using testing::kCpu;
using testing::tensor;
using testing::values;

// The same values on every rank (a fixed seed).
DeviceTensor random(const Shape& shape, uint64_t seed, double lo = -1, double hi = 1) {
  return testing::random(shape, seed, DType::kF64, lo, hi);
}

DeviceTensor random_ids(const Shape& shape, int64_t vocabulary, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int64_t> v(static_cast<size_t>(shape.numel()));
  for (int64_t& e : v) e = static_cast<int64_t>(rng() % static_cast<uint64_t>(vocabulary));
  return to_device(HostTensor::from_vector(v, shape), kCpu);
}

std::unique_ptr<Sequential> dense_model(uint64_t seed, int64_t hidden = 8) {
  auto m = std::make_unique<Sequential>();
  m->emplace<Dense>(Dense::glorot(4, hidden, Activation::kRelu, DType::kF64, kCpu, seed));
  m->emplace<Dense>(Dense::glorot(hidden, 2, Activation::kNone, DType::kF64, kCpu, seed + 1));
  // Non-zero biases so that their gradients and updates are not trivially alike.
  m->parameters()[1]->set_value(random(Shape{hidden}, seed + 2, -0.1, 0.1));
  return m;
}

std::unique_ptr<Sequential> embedding_model(uint64_t seed) {
  auto m = std::make_unique<Sequential>();
  m->emplace<Embedding>(Embedding::uniform(7, 6, DType::kF64, kCpu, seed));
  m->emplace<Mean>(1);
  m->emplace<Dense>(Dense::glorot(6, 1, Activation::kSigmoid, DType::kF64, kCpu, seed + 1));
  return m;
}

// |a - b| <= 1e-12 (1 + |b|) element by element: the ranks' sums round
// differently from one process's, nothing more.
void expect_same(Sequential& dp, Sequential& one, const std::string& where) {
  std::vector<Parameter*> a = dp.parameters(), b = one.parameters();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    std::vector<double> va = values(a[i]->value()), vb = values(b[i]->value());
    ASSERT_EQ(va.size(), vb.size());
    for (size_t j = 0; j < va.size(); ++j) {
      ASSERT_NEAR(va[j], vb[j], 1e-12 * (1 + std::abs(vb[j])))
          << where << ": parameter " << a[i]->name() << " element " << j << " at rank "
          << World::get().rank() << " of " << World::get().size();
    }
  }
}

struct Case {
  std::function<std::unique_ptr<Sequential>(uint64_t)> model;
  std::function<std::unique_ptr<Optimizer>()> optimizer;
  LossFunction loss;
  // The batch of step s: inputs and targets (the same on every rank).
  std::function<std::pair<DeviceTensor, DeviceTensor>(int s)> batch;
  int steps = 5;
  DataParallelOptions options;
};

// Trains the case data-parallel over the world and alone on the whole batch,
// comparing the weights and the loss after every step.
void run_case(const Case& c, const std::string& what) {
  Communicator comm = Communicator::world(kCpu, "data_parallel_test");
  // Every rank starts from its own initial values: the constructor's
  // broadcast makes them rank 0's, which the reference starts from.
  std::unique_ptr<Sequential> dp_model = c.model(100 + comm.rank());
  std::unique_ptr<Sequential> one_model = c.model(100);
  std::unique_ptr<Optimizer> dp_opt = c.optimizer(), one_opt = c.optimizer();
  DataParallel dp(comm, *dp_model, *dp_opt, c.loss, c.options);
  expect_same(*dp_model, *one_model, what + " after the broadcast");
  for (int s = 0; s < c.steps; ++s) {
    auto [inputs, targets] = c.batch(s);
    StepResult r = dp.step(shard_batch(inputs, comm), shard_batch(targets, comm));

    Loss loss = c.loss(one_model->forward(inputs), targets);
    one_model->backward(loss.grad);
    one_opt->step(one_model->parameters());
    one_model->zero_grad();

    EXPECT_EQ(r.rows, inputs.dim(0)) << what;
    EXPECT_NEAR(r.loss, loss.value, 1e-12 * (1 + std::abs(loss.value))) << what << " step " << s;
    RowShard mine = shard_rows(inputs.dim(0), comm.rank(), comm.size());
    EXPECT_EQ(r.prediction.defined() ? r.prediction.dim(0) : 0, mine.count) << what;
    expect_same(*dp_model, *one_model, what + " step " + std::to_string(s));
  }
  EXPECT_TRUE(dp.parameters_agree()) << what;
}

Case dense_case(int64_t rows, std::function<std::unique_ptr<Optimizer>()> optimizer) {
  Case c;
  c.model = [](uint64_t seed) { return dense_model(seed); };
  c.optimizer = std::move(optimizer);
  c.loss = mean_squared_error;
  c.batch = [rows](int s) {
    return std::make_pair(random(Shape{rows, 4}, 1000 + s), random(Shape{rows, 2}, 2000 + s));
  };
  return c;
}

// One table used three ways: rows of ids column 0 plus rows of ids column 1
// (two sparse parts of one parameter), plus a dense gradient decay * table
// (as a weight decay): the parameter has sparse and dense gradients at once.
class SharedTable : public Layer {
 public:
  SharedTable(DeviceTensor table, double decay) : table_("shared", std::move(table)), decay_(decay) {}
  std::string name() const override { return "shared_table"; }
  DeviceTensor forward(const DeviceTensor& ids) override {
    a_ = kernels::narrow(ids, 1, 0, 1).reshape(Shape{ids.dim(0)});
    b_ = kernels::narrow(ids, 1, 1, 1).reshape(Shape{ids.dim(0)});
    return kernels::add(kernels::embedding(table_.value(), a_), kernels::embedding(table_.value(), b_));
  }
  DeviceTensor backward(const DeviceTensor& grad_out) override {
    table_.accumulate_sparse({a_.clone(), grad_out.clone()});
    table_.accumulate_sparse({b_.clone(), grad_out.clone()});
    table_.accumulate(kernels::scale(table_.value(), decay_));
    return DeviceTensor();
  }
  std::vector<Parameter*> parameters() override { return {&table_}; }

 private:
  Parameter table_;
  double decay_;
  DeviceTensor a_, b_;
};

TEST(DataParallel, ShardRowsIsArraySplit) {
  // numpy.array_split(range(10), 4): 3, 3, 2, 2.
  std::vector<RowShard> expected{{0, 3}, {3, 3}, {6, 2}, {8, 2}};
  for (int r = 0; r < 4; ++r) {
    RowShard s = shard_rows(10, r, 4);
    EXPECT_EQ(s.begin, expected[r].begin);
    EXPECT_EQ(s.count, expected[r].count);
  }
  EXPECT_EQ(shard_rows(2, 3, 4).count, 0);
  EXPECT_EQ(shard_rows(2, 3, 4).begin, 2);
  EXPECT_THROW(shard_rows(2, 4, 4), Error);
}

TEST(DataParallel, DenseSgdMomentumMatchesOneProcess) {
  run_case(dense_case(10, [] { return std::make_unique<SGD>(0.1, 0.9); }), "sgd momentum, 10 rows");
}

TEST(DataParallel, DenseAdamMatchesOneProcess) {
  run_case(dense_case(12, [] { return std::make_unique<Adam>(0.01); }), "adam, 12 rows");
}

TEST(DataParallel, RanksWithoutRowsStillTakePart) {
  // 2 rows: at 3 and 4 ranks some ranks have none.
  run_case(dense_case(2, [] { return std::make_unique<SGD>(0.1, 0.9); }), "sgd, 2 rows");
}

TEST(DataParallel, ManySmallBucketsGiveTheSameWeights) {
  Case c = dense_case(9, [] { return std::make_unique<SGD>(0.05); });
  c.options.bucket_bytes = 64;  // a bucket per parameter (the smallest is 16 bytes)
  run_case(c, "sgd, 64-byte buckets");
  Communicator comm = Communicator::world(kCpu, "buckets");
  auto model = dense_model(1);
  SGD sgd(0.05);
  DataParallel dp(comm, *model, sgd, mean_squared_error, c.options);
  auto [x, y] = c.batch(0);
  dp.step(shard_batch(x, comm), shard_batch(y, comm));
  if (comm.size() > 1) {
    EXPECT_EQ(dp.last_sync().buckets, 4);  // weights of 32 and 16 elements: 256 and 128 bytes, alone
    EXPECT_EQ(dp.last_sync().dense_bytes, (4 * 8 + 8 + 8 * 2 + 2) * 8);
  }
}

TEST(DataParallel, EmbeddingSparseGradientsMatchOneProcess) {
  Case c;
  c.model = embedding_model;
  c.optimizer = [] { return std::make_unique<RMSprop>(0.1); };
  c.loss = [](const DeviceTensor& p, const DeviceTensor& t) { return binary_cross_entropy(p, t); };
  c.batch = [](int s) {
    // 11 rows of 3 ids from a vocabulary of 7: repeats within and across ranks.
    DeviceTensor ids = random_ids(Shape{11, 3}, 7, 300 + s);
    std::vector<double> t = values(random(Shape{11, 1}, 400 + s, 0, 1));
    for (double& e : t) e = e > 0.5 ? 1.0 : 0.0;
    return std::make_pair(ids, tensor(t, Shape{11, 1}));
  };
  run_case(c, "embedding, rmsprop");
  Communicator comm = Communicator::world(kCpu, "sparse");
  auto model = embedding_model(5);
  RMSprop opt(0.1);
  DataParallel dp(comm, *model, opt, c.loss);
  auto [x, y] = c.batch(0);
  dp.step(shard_batch(x, comm), shard_batch(y, comm));
  if (comm.size() > 1) {
    // Every rank's distinct ids and their summed rows (i64 ids, 6 f64 per row).
    std::vector<int64_t> ids = to_host(x).to_vector<int64_t>();
    int64_t distinct = 0;
    for (int r = 0; r < comm.size(); ++r) {
      RowShard shard = shard_rows(11, r, comm.size());
      std::set<int64_t> seen(ids.begin() + shard.begin * 3, ids.begin() + (shard.begin + shard.count) * 3);
      distinct += static_cast<int64_t>(seen.size());
    }
    EXPECT_EQ(dp.last_sync().sparse_parameters, 1);
    EXPECT_EQ(dp.last_sync().sparse_bytes, distinct * 8 + distinct * 6 * 8);
    EXPECT_LT(distinct, 33);  // fewer than the 33 lookups: repeats were summed before the gather
  }
}

TEST(DataParallel, EmbeddingAdamWithEmptyRanksMatchesOneProcess) {
  Case c;
  c.model = embedding_model;
  c.optimizer = [] { return std::make_unique<Adam>(0.05); };
  c.loss = [](const DeviceTensor& p, const DeviceTensor& t) { return binary_cross_entropy(p, t); };
  c.batch = [](int s) {
    return std::make_pair(random_ids(Shape{3, 2}, 7, 500 + s), tensor({1, 0, 1}, Shape{3, 1}));
  };
  run_case(c, "embedding, adam, 3 rows");
}

TEST(DataParallel, ATableWithSeveralSparsePartsAndADenseOneMatchesOneProcess) {
  Case c;
  c.model = [](uint64_t seed) {
    auto m = std::make_unique<Sequential>();
    m->emplace<SharedTable>(random(Shape{9, 4}, seed, -0.5, 0.5), 0.01);
    m->emplace<Dense>(Dense::glorot(4, 1, Activation::kNone, DType::kF64, kCpu, seed + 1));
    return m;
  };
  c.optimizer = [] { return std::make_unique<Adam>(0.05); };
  c.loss = mean_squared_error;
  c.batch = [](int s) { return std::make_pair(random_ids(Shape{7, 2}, 9, 600 + s), random(Shape{7, 1}, 700 + s)); };
  run_case(c, "shared table, adam");
}

TEST(DataParallel, Float32MatchesOneProcessClosely) {
  Communicator comm = Communicator::world(kCpu, "f32");
  auto make = [](uint64_t seed) {
    auto m = std::make_unique<Sequential>();
    m->emplace<Dense>(Dense::glorot(4, 8, Activation::kRelu, DType::kF32, kCpu, seed));
    m->emplace<Dense>(Dense::glorot(8, 1, Activation::kNone, DType::kF32, kCpu, seed + 1));
    return m;
  };
  auto dp_model = make(3), one_model = make(3);
  SGD dp_opt(0.1, 0.9), one_opt(0.1, 0.9);
  DataParallel dp(comm, *dp_model, dp_opt, mean_squared_error);
  for (int s = 0; s < 5; ++s) {
    DeviceTensor x = kernels::cast(random(Shape{10, 4}, 800 + s), DType::kF32);
    DeviceTensor y = kernels::cast(random(Shape{10, 1}, 900 + s), DType::kF32);
    dp.step(shard_batch(x, comm), shard_batch(y, comm));
    Loss loss = mean_squared_error(one_model->forward(x), y);
    one_model->backward(loss.grad);
    one_opt.step(one_model->parameters());
    one_model->zero_grad();
  }
  std::vector<Parameter*> a = dp_model->parameters(), b = one_model->parameters();
  for (size_t i = 0; i < a.size(); ++i) {
    std::vector<double> va = values(a[i]->value()), vb = values(b[i]->value());
    for (size_t j = 0; j < va.size(); ++j) EXPECT_NEAR(va[j], vb[j], 1e-5 * (1 + std::abs(vb[j]))) << a[i]->name();
  }
  EXPECT_TRUE(dp.parameters_agree());
}

TEST(DataParallel, AFailureOnOneRankEndsTheStepOnEveryRank) {
  Communicator comm = Communicator::world(kCpu, "failure");
  auto model = embedding_model(1);
  SGD sgd(0.1);
  DataParallel dp(comm, *model, sgd, [](const DeviceTensor& p, const DeviceTensor& t) {
    return binary_cross_entropy(p, t);
  });
  std::vector<double> before = values(model->parameters()[0]->value());
  const bool last = comm.rank() == comm.size() - 1;
  // The last rank's inputs and targets disagree on their rows: only it sees why.
  DeviceTensor ids = random_ids(Shape{2, 3}, 7, 1);
  DeviceTensor targets = last ? tensor({1, 0, 1}, Shape{3, 1}) : tensor({1, 0}, Shape{2, 1});
  try {
    dp.step(ids, targets);
    ADD_FAILURE() << "the step went on at rank " << comm.rank();
  } catch (const Error& e) {
    std::string message = e.message();
    if (last) {
      EXPECT_NE(message.find("must have the same rows"), std::string::npos) << message;
    } else {
      EXPECT_NE(message.find("rank " + std::to_string(comm.size() - 1)), std::string::npos) << message;
      EXPECT_NE(message.find("failed this step"), std::string::npos) << message;
    }
  }
  // Nothing was applied, and the next step runs on every rank.
  EXPECT_EQ(values(model->parameters()[0]->value()), before);
  StepResult r = dp.step(ids, tensor({1, 0}, Shape{2, 1}));
  EXPECT_EQ(r.rows, 2 * comm.size());
  EXPECT_TRUE(dp.parameters_agree());
}

TEST(DataParallel, ADifferentModelOnOneRankIsRefusedEverywhere) {
  Communicator comm = Communicator::world(kCpu, "mismatch");
  if (comm.size() == 1) GTEST_SKIP() << "needs two ranks";
  auto model = dense_model(1, comm.rank() == comm.size() - 1 ? 9 : 8);
  SGD sgd(0.1);
  try {
    DataParallel dp(comm, *model, sgd, mean_squared_error);
    FAIL() << "a different model was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("different model"), std::string::npos) << e.what();
  }
  // The communicator still works: every rank took part in the same collectives.
  comm.barrier();
}

TEST(DataParallel, MetricsSumOverRanks) {
  Communicator comm = Communicator::world(kCpu, "metrics");
  auto model = dense_model(1);
  SGD sgd(0.1);
  DataParallel dp(comm, *model, sgd, mean_squared_error);
  metrics::Mean m;
  // Rank r adds r + 1 values of r: the mean over ranks is sum r(r+1) / sum (r+1).
  for (int i = 0; i <= comm.rank(); ++i) m.update_state(comm.rank());
  dp.all_reduce(m);
  // Values differ on one rank only: no longer in agreement anywhere.
  if (comm.size() > 1) {
    EXPECT_TRUE(dp.parameters_agree());
    if (comm.rank() == 1) model->parameters()[1]->set_value(random(Shape{8}, 77));
    EXPECT_FALSE(dp.parameters_agree());
  }
  double total = 0, count = 0;
  for (int r = 0; r < comm.size(); ++r) {
    total += r * (r + 1.0);
    count += r + 1.0;
  }
  EXPECT_DOUBLE_EQ(m.count(), count);
  EXPECT_DOUBLE_EQ(m.result(), total / count);
}

TEST(DataParallel, BadArgumentsAreErrors) {
  Communicator comm = Communicator::world(kCpu, "bad");
  auto model = dense_model(1);
  SGD sgd(0.1);
  EXPECT_THROW(DataParallel(comm, *model, sgd, nullptr), Error);
  DataParallelOptions zero;
  zero.bucket_bytes = 0;
  EXPECT_THROW(DataParallel(comm, *model, sgd, mean_squared_error, zero), Error);
  DataParallel dp(comm, *model, sgd, mean_squared_error);
  // Rows of inputs and targets differ: refused before any collective.
  EXPECT_THROW(dp.step(random(Shape{3, 4}, 1), random(Shape{2, 2}, 2)), Error);
  // No rows anywhere: every rank refuses after the exchange.
  EXPECT_THROW(dp.step(random(Shape{0, 4}, 1), random(Shape{0, 2}, 2)), Error);
}

}  // namespace
}  // namespace meshrt::training

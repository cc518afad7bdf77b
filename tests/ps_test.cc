// cluster/ps_server.h and cluster/ps_client.h: a parameter server in this
// process on 127.0.0.1 and clients of it. Updates against the hand-computed
// optimizer formulas, a step id applied at most once, concurrent updates of
// one variable that add up exactly, checkpoints that a fresh server restores
// (values, optimizer state and applied step ids), an absent server as
// Error(kUnavailable) within the deadline, and bad requests refused by name.
#include <gtest/gtest.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "cluster/ps_client.h"
#include "cluster/ps_server.h"
#include "device/error.h"
#include "io/safetensors.h"

namespace meshrt::cluster {
namespace {

namespace fs = std::filesystem;

rpc::ServerOptions local_options() {
  rpc::ServerOptions options;
  options.address = "127.0.0.1";
  options.port = 0;
  return options;
}

std::string address_of(const PsServer& server) { return "127.0.0.1:" + std::to_string(server.port()); }

OptimizerConfig sgd(double lr, double momentum = 0) {
  OptimizerConfig c;
  c.set_kind("sgd");
  c.set_learning_rate(lr);
  c.set_momentum(momentum);
  return c;
}

OptimizerConfig rmsprop(double lr) {
  OptimizerConfig c;
  c.set_kind("rmsprop");
  c.set_learning_rate(lr);
  return c;
}

OptimizerConfig adam(double lr) {
  OptimizerConfig c;
  c.set_kind("adam");
  c.set_learning_rate(lr);
  return c;
}

GradientUpdate dense(const std::string& name, HostTensor g) {
  GradientUpdate u;
  u.name = name;
  u.dense = std::move(g);
  return u;
}

GradientUpdate sparse(const std::string& name, std::vector<int64_t> ids, HostTensor rows) {
  GradientUpdate u;
  u.name = name;
  u.ids = std::move(ids);
  u.rows = std::move(rows);
  return u;
}

// The Error f throws (a failure when it throws none).
template <class F>
Error error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "no error";
  return Error(ErrorKind::kInternal, "no error");
}

// A variable the server does not hold reads as the server having lost it
// (restarted): unavailable, so that the coordinator treats it as the cluster's failure.
void expect_missing(const Error& e, const std::string& fragment) {
  EXPECT_EQ(e.kind(), ErrorKind::kUnavailable) << e.what();
  EXPECT_NE(e.message().find("does not hold"), std::string::npos) << e.message();
  EXPECT_NE(e.message().find(fragment), std::string::npos) << "message: " << e.message() << "\nwanted: " << fragment;
}

void expect_refused(const Error& e, const std::string& fragment) {
  EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument) << e.what();
  EXPECT_NE(e.message().find(fragment), std::string::npos) << "message: " << e.message() << "\nwanted: " << fragment;
  EXPECT_NE(e.message().find("ps 0 (127.0.0.1:"), std::string::npos) << e.message();
}

// A temporary directory, removed at the end.
struct TempDir {
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "meshrt-ps-XXXXXX").string();
    if (!::mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp failed");
    path = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path, ignored);
  }
  std::string path;
};

class Ps : public ::testing::Test {
 protected:
  Ps() : server_(0, local_options()), client_(0, address_of(server_), options()) {}
  static PsClientOptions options() {
    PsClientOptions o;
    o.timeout = std::chrono::milliseconds(20000);
    return o;
  }
  std::vector<float> value(const std::string& name) { return client_.read({name})[0].to_vector<float>(); }

  PsServer server_;
  PsClient client_;
};

TEST_F(Ps, CreateReadRoundTrip) {
  HostTensor w = HostTensor::from_vector<float>({1, 2, 3, 4, 5, 6}, Shape{2, 3});
  HostTensor b = HostTensor::from_vector<double>({-1, 0.5}, Shape{2});
  EXPECT_TRUE(client_.create_variable("dense/w", w, sgd(0.1)));
  EXPECT_TRUE(client_.create_variable("dense/b", b, sgd(0.1)));
  std::vector<HostTensor> values = client_.read({"dense/b", "dense/w"});
  ASSERT_EQ(values.size(), 2u);
  EXPECT_EQ(values[0].dtype(), DType::kF64);
  EXPECT_EQ(values[0].shape(), (Shape{2}));
  EXPECT_EQ(values[0].to_vector<double>(), (std::vector<double>{-1, 0.5}));
  EXPECT_EQ(values[1].dtype(), DType::kF32);
  EXPECT_EQ(values[1].shape(), (Shape{2, 3}));
  EXPECT_EQ(values[1].to_vector<float>(), (std::vector<float>{1, 2, 3, 4, 5, 6}));

  HostTensor rows = client_.read_rows("dense/w", {1, 0, 1});
  EXPECT_EQ(rows.shape(), (Shape{3, 3}));
  EXPECT_EQ(rows.to_vector<float>(), (std::vector<float>{4, 5, 6, 1, 2, 3, 4, 5, 6}));

  StatusResponse status = client_.status();
  EXPECT_EQ(status.task_index(), 0);
  ASSERT_EQ(status.variables_size(), 2);
  EXPECT_EQ(status.variables(1).name(), "dense/w");
  EXPECT_EQ(status.variables(1).dtype(), "f32");
  EXPECT_EQ(std::vector<int64_t>(status.variables(1).shape().begin(), status.variables(1).shape().end()),
            (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(status.updates(), 0);
}

TEST_F(Ps, SecondCreateKeepsTheValue) {
  HostTensor w = HostTensor::from_vector<float>({1, 2}, Shape{2});
  ASSERT_TRUE(client_.create_variable("w", w, sgd(1)));
  client_.apply(1, {dense("w", HostTensor::from_vector<float>({0.5, 0.25}, Shape{2}))});
  // A coordinator that starts again creates its variables again: same dtype
  // and shape keeps the (trained or restored) value.
  EXPECT_FALSE(client_.create_variable("w", HostTensor::from_vector<float>({9, 9}, Shape{2}), sgd(1)));
  EXPECT_EQ(value("w"), (std::vector<float>{0.5, 1.75}));
  expect_refused(error_of([&] { client_.create_variable("w", HostTensor::zeros(Shape{3}, DType::kF32), sgd(1)); }),
                 "exists as f32 [2], not f32 [3]");
  expect_refused(error_of([&] { client_.create_variable("w", HostTensor::zeros(Shape{2}, DType::kF64), sgd(1)); }),
                 "exists as f32 [2], not f64 [2]");
  EXPECT_EQ(value("w"), (std::vector<float>{0.5, 1.75}));
}

TEST_F(Ps, DenseSgdWithMomentumIsTheHandComputation) {
  const std::vector<double> w0{1, -2, 3}, g1{0.5, 1, -4}, g2{-1, 2, 0.25};
  const double lr = 0.1, momentum = 0.9;
  ASSERT_TRUE(client_.create_variable("w", HostTensor::from_vector(w0, Shape{3}), sgd(lr, momentum)));
  ApplyResult r = client_.apply(1, {dense("w", HostTensor::from_vector(g1, Shape{3}))});
  EXPECT_EQ(r.applied, 1);
  EXPECT_EQ(r.duplicates, 0);
  client_.apply(2, {dense("w", HostTensor::from_vector(g2, Shape{3}))});
  std::vector<double> got = client_.read({"w"})[0].to_vector<double>();
  for (size_t i = 0; i < 3; ++i) {
    // Keras: v = momentum v - lr g; w += v.
    double v1 = -lr * g1[i];
    double v2 = momentum * v1 - lr * g2[i];
    EXPECT_NEAR(got[i], w0[i] + v1 + v2, 1e-12) << i;
  }
  StatusResponse status = client_.status();
  EXPECT_EQ(status.updates(), 2);
  EXPECT_EQ(status.update_bytes(), 2 * 3 * 8);
}

TEST_F(Ps, SparseRmspropChangesOnlyTheGivenRows) {
  const double lr = 0.01, rho = 0.9, eps = 1e-7;
  std::vector<float> table(4 * 2);
  for (size_t i = 0; i < table.size(); ++i) table[i] = static_cast<float>(i) * 0.5f;
  ASSERT_TRUE(client_.create_variable("emb", HostTensor::from_vector(table, Shape{4, 2}), rmsprop(lr)));
  // id 1 twice: its rows add up.
  std::vector<float> rows{1, -2, 3, 0.5f, 0.5f, 0.5f};
  ApplyResult r = client_.apply(5, {sparse("emb", {1, 3, 1}, HostTensor::from_vector(rows, Shape{3, 2}))});
  EXPECT_EQ(r.applied, 1);
  std::vector<float> got = value("emb");
  EXPECT_EQ(got[0], table[0]);
  EXPECT_EQ(got[1], table[1]);
  EXPECT_EQ(got[4], table[4]);
  EXPECT_EQ(got[5], table[5]);
  auto updated = [&](double w, double g) {
    double s = (1 - rho) * g * g;
    return w - lr * g / (std::sqrt(s) + eps);
  };
  EXPECT_NEAR(got[2], updated(table[2], 1 + 0.5), 1e-6);
  EXPECT_NEAR(got[3], updated(table[3], -2 + 0.5), 1e-6);
  EXPECT_NEAR(got[6], updated(table[6], 3), 1e-6);
  EXPECT_NEAR(got[7], updated(table[7], 0.5), 1e-6);
  EXPECT_NE(got[2], table[2]);
  // read_rows agrees with read.
  EXPECT_EQ(client_.read_rows("emb", {3, 1}).to_vector<float>(),
            (std::vector<float>{got[6], got[7], got[2], got[3]}));
}

TEST_F(Ps, AStepIdIsAppliedOnce) {
  ASSERT_TRUE(client_.create_variable("a", HostTensor::from_vector<float>({1, 1}, Shape{2}), sgd(0.5)));
  ASSERT_TRUE(client_.create_variable("b", HostTensor::from_vector<float>({2}, Shape{1}), sgd(0.5)));
  std::vector<GradientUpdate> step{dense("a", HostTensor::from_vector<float>({1, 2}, Shape{2})),
                                   dense("b", HostTensor::from_vector<float>({4}, Shape{1}))};
  ApplyResult first = client_.apply(7, step);
  EXPECT_EQ(first.applied, 2);
  EXPECT_EQ(first.duplicates, 0);
  // The step retried (its worker died after sending it).
  ApplyResult again = client_.apply(7, step);
  EXPECT_EQ(again.applied, 0);
  EXPECT_EQ(again.duplicates, 2);
  EXPECT_EQ(value("a"), (std::vector<float>{0.5, 0}));
  EXPECT_EQ(value("b"), (std::vector<float>{0}));
  // Per variable: a step id "a" has but "b" has not.
  ApplyResult mixed = client_.apply(8, {dense("b", HostTensor::from_vector<float>({2}, Shape{1}))});
  EXPECT_EQ(mixed.applied, 1);
  mixed = client_.apply(8, step);
  EXPECT_EQ(mixed.applied, 1);
  EXPECT_EQ(mixed.duplicates, 1);
  EXPECT_EQ(value("a"), (std::vector<float>{0, -1}));
  EXPECT_EQ(value("b"), (std::vector<float>{-1}));
  StatusResponse status = client_.status();
  EXPECT_EQ(status.updates(), 4);
  ASSERT_EQ(status.variables_size(), 2);
  EXPECT_EQ(status.variables(0).updates(), 2);
  EXPECT_EQ(status.variables(1).updates(), 2);
}

// done_below: the coordinator's word that every lower step id finished. A
// late apply of one is dropped, the server keeps only the ids at or above it
// (its memory and checkpoints stay bounded), and the update count goes on.
TEST_F(Ps, StepsBelowDoneBelowAreDroppedAndForgotten) {
  ASSERT_TRUE(client_.create_variable("a", HostTensor::from_vector<float>({0}, Shape{1}), sgd(1)));
  auto g = [] { return std::vector<GradientUpdate>{dense("a", HostTensor::from_vector<float>({1}, Shape{1}))}; };
  for (int64_t step = 0; step < 5; ++step) EXPECT_EQ(client_.apply(step, g()).applied, 1);
  EXPECT_EQ(client_.apply(6, g(), 5).applied, 1);
  // Steps 2 and 4 retried late: their ids are forgotten, the fence (5) drops them.
  EXPECT_EQ(client_.apply(2, g()).duplicates, 1);
  EXPECT_EQ(client_.apply(4, g(), 3).duplicates, 1);
  EXPECT_EQ(value("a"), (std::vector<float>{-6}));
  EXPECT_EQ(client_.status().variables(0).updates(), 6);
  TempDir dir;
  const std::string path = dir.path + "/ps.safetensors";
  client_.save(path);
  EXPECT_EQ(io::read_safetensors_header(path).find("a/applied_steps").shape, (Shape{1}));  // only step 6
  PsServer fresh(0, local_options());
  PsClient restored(0, address_of(fresh), options());
  restored.restore(path);
  EXPECT_EQ(restored.status().variables(0).updates(), 6);
  EXPECT_EQ(restored.apply(6, g()).duplicates, 1);
}

// The atomicity test: concurrent updates of one variable from many clients
// all land, none lost to a race (SGD with rate 1: value = initial - sum).
TEST_F(Ps, ConcurrentUpdatesAddUpExactly) {
  constexpr int kThreads = 8, kSteps = 100, kWidth = 4096;
  ASSERT_TRUE(client_.create_variable("w", HostTensor::zeros(Shape{kWidth}, DType::kF64), sgd(1)));
  ASSERT_TRUE(client_.create_variable("emb", HostTensor::zeros(Shape{4, kWidth}, DType::kF64), sgd(1)));
  // Integers: the sum is exact in any order.
  auto gradient = [](int thread, int step, int i) { return static_cast<double>((thread * 31 + step * 7 + i) % 11 - 5); };
  std::vector<std::thread> threads;
  std::vector<std::string> failures(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      try {
        PsClient client(0, address_of(server_), options());
        for (int s = 0; s < kSteps; ++s) {
          std::vector<double> g(kWidth), rows(2 * kWidth);
          for (int i = 0; i < kWidth; ++i) g[static_cast<size_t>(i)] = gradient(t, s, i);
          for (int i = 0; i < 2 * kWidth; ++i) rows[static_cast<size_t>(i)] = gradient(t, s, i);
          ApplyResult r = client.apply(t * 1000 + s, {dense("w", HostTensor::from_vector(g, Shape{kWidth})),
                                                      sparse("emb", {t % 4, (t + s) % 4},
                                                             HostTensor::from_vector(rows, Shape{2, kWidth}))});
          if (r.applied != 2) failures[static_cast<size_t>(t)] = "applied " + std::to_string(r.applied);
        }
      } catch (const std::exception& e) {
        failures[static_cast<size_t>(t)] = e.what();
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(failures[static_cast<size_t>(t)], "") << "thread " << t;

  std::vector<double> expected(kWidth, 0.0), expected_emb(4 * kWidth, 0.0);
  for (int t = 0; t < kThreads; ++t) {
    for (int s = 0; s < kSteps; ++s) {
      for (int i = 0; i < kWidth; ++i) expected[static_cast<size_t>(i)] -= gradient(t, s, i);
      const int ids[2] = {t % 4, (t + s) % 4};
      for (int j = 0; j < 2; ++j) {
        for (int i = 0; i < kWidth; ++i) {
          expected_emb[static_cast<size_t>(ids[j] * kWidth + i)] -= gradient(t, s, j * kWidth + i);
        }
      }
    }
  }
  std::vector<HostTensor> values = client_.read({"w", "emb"});
  EXPECT_EQ(values[0].to_vector<double>(), expected);
  EXPECT_EQ(values[1].to_vector<double>(), expected_emb);
  StatusResponse status = client_.status();
  EXPECT_EQ(status.updates(), 2 * kThreads * kSteps);
}

TEST_F(Ps, AFreshServerRestoresValuesOptimizerStateAndAppliedSteps) {
  TempDir dir;
  const std::string path = dir.path + "/ps-0.safetensors";
  ASSERT_TRUE(client_.create_variable("emb/part_0", HostTensor::from_vector<float>({1, 2, 3, 4, 5, 6, 7, 8}, Shape{4, 2}),
                                      rmsprop(0.01)));
  ASSERT_TRUE(client_.create_variable("w", HostTensor::from_vector<double>({0.5, -0.5, 2}, Shape{3}), adam(0.1)));
  ASSERT_TRUE(client_.create_variable("v", HostTensor::from_vector<float>({1, 1}, Shape{2}), sgd(0.1, 0.9)));
  ASSERT_TRUE(client_.create_variable("untouched", HostTensor::from_vector<float>({3}, Shape{1}), adam(0.1)));
  for (int64_t step = 1; step <= 3; ++step) {
    float f = static_cast<float>(step);
    client_.apply(step, {sparse("emb/part_0", {step % 4, 0}, HostTensor::from_vector<float>({f, -f, 0.5f, f}, Shape{2, 2})),
                         dense("w", HostTensor::from_vector<double>({f, -2 * f, 0.1}, Shape{3})),
                         dense("v", HostTensor::from_vector<float>({f, 1}, Shape{2}))});
  }
  const int64_t bytes = client_.save(path);
  EXPECT_EQ(bytes, static_cast<int64_t>(fs::file_size(path)));
  EXPECT_FALSE(fs::exists(path + ".partial"));
  // What the file holds, by name.
  io::SafetensorsHeader header = io::read_safetensors_header(path);
  for (const char* name : {"emb/part_0", "emb/part_0/slot_0", "emb/part_0/iterations", "emb/part_0/applied_steps",
                           "w/slot_0", "w/slot_1", "v/slot_0", "untouched", "untouched/applied_steps"}) {
    EXPECT_NO_THROW(header.find(name)) << name;
  }
  EXPECT_EQ(header.find("w/applied_steps").shape, (Shape{3}));
  EXPECT_EQ(header.find("untouched/applied_steps").shape, (Shape{0}));

  PsServer fresh(0, local_options());
  PsClient restored(0, address_of(fresh), options());
  EXPECT_EQ(restored.restore(path), 4);
  const std::vector<std::string> names{"emb/part_0", "w", "v", "untouched"};
  std::vector<HostTensor> before = client_.read(names), after = restored.read(names);
  for (size_t i = 0; i < names.size(); ++i) {
    EXPECT_EQ(after[i].dtype(), before[i].dtype()) << names[i];
    EXPECT_EQ(after[i].shape(), before[i].shape()) << names[i];
    ASSERT_EQ(after[i].nbytes(), before[i].nbytes()) << names[i];
    EXPECT_EQ(std::memcmp(after[i].raw_data(), before[i].raw_data(), after[i].nbytes()), 0) << names[i];
  }
  // The step ids are remembered: step 2 retried against the restored server is a duplicate.
  ApplyResult old = restored.apply(2, {dense("w", HostTensor::from_vector<double>({1, 1, 1}, Shape{3}))});
  EXPECT_EQ(old.applied, 0);
  EXPECT_EQ(old.duplicates, 1);
  // A further step on both: equal values only if the slots (RMSprop's mean
  // square, Adam's moments, the momentum) and Adam's iterations were restored.
  std::vector<GradientUpdate> next{
      sparse("emb/part_0", {0, 2}, HostTensor::from_vector<float>({0.25f, -1, 2, 2}, Shape{2, 2})),
      dense("w", HostTensor::from_vector<double>({0.3, 0.2, -0.1}, Shape{3})),
      dense("v", HostTensor::from_vector<float>({-1, 2}, Shape{2})),
      dense("untouched", HostTensor::from_vector<float>({1}, Shape{1}))};
  EXPECT_EQ(client_.apply(4, next).applied, 4);
  EXPECT_EQ(restored.apply(4, next).applied, 4);
  before = client_.read(names);
  after = restored.read(names);
  for (size_t i = 0; i < names.size(); ++i) {
    EXPECT_EQ(std::memcmp(after[i].raw_data(), before[i].raw_data(), after[i].nbytes()), 0) << names[i];
  }
  StatusResponse a = client_.status(), b = restored.status();
  EXPECT_EQ(a.updates(), b.updates());
  EXPECT_EQ(b.updates(), 3 * 3 + 4);
  // A restore with a fence drops applies of older step ids (the run before
  // the restore, still in flight) and takes newer ones.
  PsServer fenced_server(0, local_options());
  PsClient fenced(0, address_of(fenced_server), options());
  EXPECT_EQ(fenced.restore(path, 1000), 4);
  ApplyResult stale = fenced.apply(999, {dense("w", HostTensor::from_vector<double>({1, 1, 1}, Shape{3}))});
  EXPECT_EQ(stale.applied, 0);
  EXPECT_EQ(stale.duplicates, 1);
  EXPECT_EQ(fenced.apply(1000, {dense("w", HostTensor::from_vector<double>({1, 1, 1}, Shape{3}))}).applied, 1);
  // A coordinator that starts again does not reset the restored variables.
  EXPECT_FALSE(restored.create_variable("v", HostTensor::zeros(Shape{2}, DType::kF32), sgd(0.1, 0.9)));
  EXPECT_EQ(restored.read({"v"})[0].to_vector<float>(), before[2].to_vector<float>());
  // A server whose variable has another shape refuses the checkpoint, and keeps what it has.
  PsServer other(0, local_options());
  PsClient other_client(0, address_of(other), options());
  other_client.create_variable("w", HostTensor::zeros(Shape{4}, DType::kF64), adam(0.1));
  expect_refused(error_of([&] { other_client.restore(path); }), "exists here as f64 [4]");
  EXPECT_EQ(other_client.status().variables_size(), 1);
  expect_refused(error_of([&] { other_client.restore(dir.path + "/absent.safetensors"); }), "absent.safetensors");
  expect_refused(error_of([&] { client_.save(dir.path + "/no/such/dir/ps.safetensors"); }), "no/such/dir");
}

// A port nothing listens on: bound, then closed.
uint16_t unused_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t length = sizeof(address);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    ::close(fd);
    throw std::runtime_error("no free port");
  }
  ::close(fd);
  return ntohs(address.sin_port);
}

TEST(PsClient, AnAbsentServerIsUnavailableWithinTheDeadline) {
  PsClientOptions options;
  options.timeout = std::chrono::milliseconds(2000);
  const std::string address = "127.0.0.1:" + std::to_string(unused_port());
  PsClient client(0, address, options);
  EXPECT_EQ(client.describe(), "ps 0 (" + address + ")");
  auto start = std::chrono::steady_clock::now();
  Error e = error_of([&] { client.status(); });
  auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(e.kind(), ErrorKind::kUnavailable) << e.what();
  EXPECT_NE(e.message().find("ps 0 (" + address + ") is unavailable"), std::string::npos) << e.message();
  // Not a hang: well under the default 30 s deadline (a generous bound).
  EXPECT_LT(elapsed, std::chrono::seconds(20));

  // A server that went away.
  auto server = std::make_unique<PsServer>(0, local_options());
  PsClient gone(0, address_of(*server), options);
  gone.create_variable("w", HostTensor::zeros(Shape{1}, DType::kF32), sgd(1));
  server->shutdown(std::chrono::milliseconds(0));
  server.reset();
  e = error_of([&] { gone.read({"w"}); });
  EXPECT_EQ(e.kind(), ErrorKind::kUnavailable) << e.what();
  EXPECT_NE(e.message().find("is unavailable"), std::string::npos) << e.message();
}

TEST_F(Ps, BadRequestsAreRefusedByName) {
  ASSERT_TRUE(client_.create_variable("emb", HostTensor::zeros(Shape{4, 2}, DType::kF32), sgd(1)));
  ASSERT_TRUE(client_.create_variable("w", HostTensor::zeros(Shape{3}, DType::kF32), sgd(1)));
  auto g3 = [] { return HostTensor::from_vector<float>({1, 2, 3}, Shape{3}); };

  expect_missing(error_of([&] { client_.apply(1, {dense("nope", g3())}); }), "no variable \"nope\"");
  expect_missing(error_of([&] { client_.read({"w", "nope"}); }), "Read");
  expect_missing(error_of([&] { client_.read_rows("nope", {0}); }), "no variable \"nope\"");
  expect_refused(error_of([&] { client_.apply(1, {dense("w", HostTensor::zeros(Shape{4}, DType::kF32))}); }),
                 "a dense gradient f32 [4] does not fit it");
  expect_refused(error_of([&] { client_.apply(1, {dense("w", HostTensor::zeros(Shape{3}, DType::kF64))}); }),
                 "f64 [3] does not fit");
  expect_refused(error_of([&] {
                   client_.apply(1, {sparse("emb", {0, 4}, HostTensor::zeros(Shape{2, 2}, DType::kF32))});
                 }),
                 "id 4 outside [0, 4)");
  expect_refused(error_of([&] {
                   client_.apply(1, {sparse("emb", {0, 1}, HostTensor::zeros(Shape{2, 3}, DType::kF32))});
                 }),
                 "sparse rows f32 [2, 3] for 2 ids");
  expect_refused(error_of([&] { client_.apply(1, {GradientUpdate{"w", {}, {}, {}}}); }), "no gradient");
  expect_refused(error_of([&] { client_.apply(1, {dense("w", g3()), dense("w", g3())}); }), "two gradients");
  // One good gradient and one bad in a step: neither is applied.
  expect_refused(error_of([&] {
                   client_.apply(1, {dense("w", g3()), sparse("emb", {-1}, HostTensor::zeros(Shape{1, 2}, DType::kF32))});
                 }),
                 "id -1 outside [0, 4)");
  expect_refused(error_of([&] { client_.read_rows("emb", {2, 9}); }), "id 9 outside [0, 4)");
  OptimizerConfig unknown;
  unknown.set_kind("adagrad");
  expect_refused(error_of([&] { client_.create_variable("x", g3(), unknown); }), "\"adagrad\"");
  expect_refused(error_of([&] { client_.create_variable("i", HostTensor::zeros(Shape{2}, DType::kI64), sgd(1)); }),
                 "floating-point");
  // Nothing was applied, and the step id is still free.
  EXPECT_EQ(value("w"), (std::vector<float>{0, 0, 0}));
  EXPECT_EQ(client_.status().updates(), 0);
  EXPECT_EQ(client_.apply(1, {dense("w", g3())}).applied, 1);
  EXPECT_EQ(value("w"), (std::vector<float>{-1, -2, -3}));
}

TEST(MakeOptimizer, KerasDefaultsAndUnknownKinds) {
  OptimizerConfig c;
  c.set_kind("sgd");
  EXPECT_DOUBLE_EQ(make_optimizer(c)->learning_rate(), 0.01);
  c.set_kind("rmsprop");
  EXPECT_DOUBLE_EQ(make_optimizer(c)->learning_rate(), 0.001);
  EXPECT_EQ(make_optimizer(c)->num_slots(), 1);
  c.set_kind("adam");
  c.set_learning_rate(0.5);
  EXPECT_DOUBLE_EQ(make_optimizer(c)->learning_rate(), 0.5);
  EXPECT_EQ(make_optimizer(c)->num_slots(), 2);
  c.set_kind("sgd");
  c.set_momentum(0.9);
  EXPECT_EQ(make_optimizer(c)->num_slots(), 1);
  c.set_kind("Adam");
  Error e = error_of([&] { make_optimizer(c); });
  EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
  EXPECT_NE(e.message().find("\"Adam\""), std::string::npos) << e.message();
}

}  // namespace
}  // namespace meshrt::cluster

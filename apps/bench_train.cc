// meshrt-bench-train: steps/s of synchronous data-parallel training
// (training/data_parallel.h) over the ranks of the job, beside its baseline
// measured in the same run: one process (rank 0, the others waiting) training
// the same model on the whole global batch with no communicator.
//
//   mpirun -np 4 meshrt-bench-train [--models regression,avenger,mlp] [--steps 50]
//
// Columns: the example, ranks, the global batch, data-parallel steps/s and
// samples/s, what one step moves per rank (dense all-reduce and sparse
// all-gather, KB), the one-process baseline's steps/s, and the ratio
// data-parallel / one process. The batches are drawn before timing. When
// the ranks share fewer cores than there are ranks, the ratio shows the cost
// of the exchange, not a speed-up. (The other ranks wait in a barrier while
// rank 0 runs the baseline: keep --steps such that it ends within the
// communicator's deadline, MESHRT_COMM_TIMEOUT.)
#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#include "apps/app_common.h"
#include "apps/cli.h"
#include "apps/train_examples.h"
#include "comm/communicator.h"
#include "comm/world.h"

namespace meshrt::apps {
namespace {

struct Options {
  std::string models = "regression,avenger,mlp";
  int steps = 50, warmup = 5;
  int64_t batch = 0, embedding_dim = 16384, hidden = 1024;
  std::string device;
};

std::vector<std::string> split(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (!item.empty()) out.push_back(item);
  }
  MESHRT_CHECK_ARG(!out.empty(), "--models needs at least one example");
  return out;
}

TrainingExampleOptions example_options(const Options& o) {
  TrainingExampleOptions e;
  e.batch = o.batch;
  e.embedding_dim = o.embedding_dim;
  e.hidden = o.hidden;
  return e;
}

int run(const Options& o) {
  MESHRT_CHECK_ARG(o.steps > 0 && o.warmup >= 0, "--steps must be > 0 and --warmup >= 0");
  World& world = World::get();
  Device device = world.device(o.device);
  Communicator comm = Communicator::world(device, "bench_train");
  bool root = comm.rank() == 0;
  if (root) {
    std::printf("# meshrt-bench-train: %d rank(s) on %d node(s), device %s, %s; %d timed steps after %d warm-up\n",
                comm.size(), world.node_count(), device.to_string().c_str(), comm.backend_name(), o.steps,
                o.warmup);
    std::printf("# baseline: one process (rank 0) on the whole global batch, no communicator, same run\n");
    std::printf("%-10s %5s %6s %12s %12s %10s %10s %14s %8s\n", "model", "ranks", "batch", "steps/s", "samples/s",
                "dense KB", "sparse KB", "1-proc steps/s", "ratio");
    std::fflush(stdout);
  }
  for (const std::string& name : split(o.models)) {
    // Data parallel: every rank, its shard of each batch.
    TrainingExample ex = make_training_example(name, example_options(o), device);
    const int pool = 8;
    std::vector<std::pair<DeviceTensor, DeviceTensor>> whole, shards;
    for (int i = 0; i < pool; ++i) {
      whole.push_back(ex.batch_of(i));
      shards.emplace_back(training::shard_batch(whole.back().first, comm).clone(),
                          training::shard_batch(whole.back().second, comm).clone());
    }
    training::DataParallel dp(comm, *ex.model, *ex.optimizer, ex.loss);
    for (int s = 0; s < o.warmup; ++s) dp.step(shards[s % pool].first, shards[s % pool].second);
    comm.barrier();
    auto start = std::chrono::steady_clock::now();
    for (int s = 0; s < o.steps; ++s) dp.step(shards[s % pool].first, shards[s % pool].second);
    comm.barrier();
    double dp_seconds = seconds_since(start);
    training::SyncStats sync = dp.last_sync();

    // The baseline: rank 0 alone, a fresh model, the whole batches.
    double one_seconds = 0;
    if (root) {
      TrainingExample alone = make_training_example(name, example_options(o), device);
      auto step = [&](int s) {
        auto& [x, y] = whole[s % pool];
        training::Loss loss = alone.loss(alone.model->forward(x), y);
        alone.model->backward(loss.grad);
        alone.optimizer->step(alone.model->parameters());
        alone.model->zero_grad();
      };
      for (int s = 0; s < o.warmup; ++s) step(s);
      auto t0 = std::chrono::steady_clock::now();
      for (int s = 0; s < o.steps; ++s) step(s);
      one_seconds = seconds_since(t0);
    }
    comm.barrier();
    if (root) {
      double dp_rate = o.steps / dp_seconds, one_rate = o.steps / one_seconds;
      std::printf("%-10s %5d %6lld %12.1f %12.1f %10.1f %10.1f %14.1f %7.2fx\n", name.c_str(), comm.size(),
                  static_cast<long long>(ex.batch), dp_rate, dp_rate * static_cast<double>(ex.batch),
                  static_cast<double>(sync.dense_bytes) / 1e3, static_cast<double>(sync.sparse_bytes) / 1e3,
                  one_rate, dp_rate / one_rate);
      std::fflush(stdout);
    }
  }
  return 0;
}

}  // namespace
}  // namespace meshrt::apps

int main(int argc, char** argv) {
  meshrt::World::init(&argc, &argv);
  meshrt::apps::Options o;
  meshrt::apps::CommandLine app{
      "meshrt-bench-train: steps/s of synchronous data-parallel training over the job's ranks, beside one\n"
      "process training the same model on the whole batch in the same run. Run it under mpirun, e.g.:\n"
      "  mpirun -np 4 meshrt-bench-train --models regression,avenger,mlp"};
  app.add("--models", o.models, "examples, comma-separated (regression, avenger, mlp; see meshrt-train --help)")
      .show_default();
  app.add("-n,--steps", o.steps, "timed steps per example").show_default();
  app.add("-w,--warmup", o.warmup, "untimed steps first").show_default();
  app.add("--batch", o.batch, "global batch rows (default: each example's own: 64, 32, 256)");
  app.add("--embedding-dim", o.embedding_dim, "avenger's embedding width").show_default();
  app.add("--hidden", o.hidden, "mlp's width").show_default();
  app.add("--device", o.device, "cpu or cuda:N (default: cuda:<local rank> when GPUs exist, else cpu)");
  return meshrt::apps::run_mpi_app("meshrt-bench-train", app, argc, argv, [&] { return meshrt::apps::run(o); });
}

// meshrt-train: synchronous data-parallel training of seed 003's examples
// over every rank of the job (training/data_parallel.h): each rank takes its
// rows of each global batch, gradients are reduced over the ranks (MPI on
// the cpu, NCCL on GPUs), every rank applies the same update.
//
//   mpirun -np 4 meshrt-train --model regression            (5 epochs x 20 steps, loss falling)
//   mpirun -np 4 meshrt-train --model avenger --min-accuracy 0.95
//
// Rank 0 prints one line per epoch (mean loss, accuracy for the classifier,
// steps/s) and at the end whether every rank holds the same weights.
// --min-accuracy and --expect-falling-loss turn the outcome into the exit
// code (1 when not met), for scripts and tests.
#include <cstdio>
#include <string>

#include "apps/app_common.h"
#include "apps/cli.h"
#include "apps/train_examples.h"
#include "comm/communicator.h"
#include "comm/world.h"
#include "training/metrics.h"

namespace meshrt::apps {
namespace {

struct Options {
  std::string model = "regression";
  int epochs = 0, steps_per_epoch = 0;
  TrainingExampleOptions example;
  std::string dtype = "f32";
  int64_t seed = 1;
  double min_accuracy = -1;
  bool expect_falling_loss = false;
  std::string device;
};

int run(Options& o) {
  World& world = World::get();
  Device device = world.device(o.device);
  o.example.dtype = parse_dtype(o.dtype);
  MESHRT_CHECK_ARG(o.seed >= 0, "--seed must be >= 0, got ", o.seed);
  MESHRT_CHECK_ARG(o.epochs >= 0 && o.steps_per_epoch >= 0, "--epochs and --steps-per-epoch must be >= 0 (0: the default)");
  MESHRT_CHECK_ARG(!o.expect_falling_loss || o.epochs != 1, "--expect-falling-loss needs at least two epochs");
  o.example.seed = static_cast<uint64_t>(o.seed);
  MESHRT_CHECK_ARG(o.example.dtype == DType::kF32 || o.example.dtype == DType::kF64,
                   "--dtype must be f32 or f64, got ", o.dtype);
  TrainingExample ex = make_training_example(o.model, o.example, device);
  // The seed's lengths: model.fit(epochs=5, steps_per_epoch=20); the custom loop's 4 epochs of 5 steps.
  int epochs = o.epochs > 0 ? o.epochs : (ex.classifier ? 4 : 5);
  int steps = o.steps_per_epoch > 0 ? o.steps_per_epoch : (ex.classifier ? 5 : 20);
  Communicator comm = Communicator::world(device, "train");
  training::DataParallel dp(comm, *ex.model, *ex.optimizer, ex.loss);
  bool root = comm.rank() == 0;
  if (root) {
    std::printf("meshrt-train: %s: %s\n", ex.name.c_str(), ex.description.c_str());
    std::printf("meshrt-train: %d rank(s) on %d node(s), device %s, %s; %d epochs x %d steps\n", comm.size(),
                world.node_count(), device.to_string().c_str(), comm.backend_name(), epochs, steps);
    std::fflush(stdout);
  }
  training::metrics::Mean loss;
  training::metrics::BinaryAccuracy accuracy(ex.accuracy_threshold);
  double first_loss = 0, last_loss = 0, last_accuracy = 0;
  int64_t step = 0;
  for (int epoch = 0; epoch < epochs; ++epoch) {
    loss.reset_state();
    accuracy.reset_state();
    auto start = std::chrono::steady_clock::now();
    for (int s = 0; s < steps; ++s, ++step) {
      auto [inputs, targets] = ex.batch_of(step);
      DeviceTensor local_targets = training::shard_batch(targets, comm);
      training::StepResult r = dp.step(training::shard_batch(inputs, comm), local_targets);
      // The batch's loss (the same on every rank), weighted by its rows as Keras's loss metric.
      loss.update_state(r.loss, static_cast<double>(r.rows));
      if (ex.classifier && r.prediction.defined()) accuracy.update_state(r.prediction, local_targets);
    }
    double seconds = seconds_since(start);
    dp.all_reduce(accuracy);
    last_loss = loss.result();
    if (epoch == 0) first_loss = last_loss;
    last_accuracy = accuracy.result();
    if (root) {
      std::printf("epoch %d/%d: loss %.6g", epoch + 1, epochs, last_loss);
      if (ex.classifier) std::printf(", accuracy %.6f", last_accuracy);
      std::printf(" (%.1f steps/s)\n", steps / seconds);
      std::fflush(stdout);
    }
  }
  bool agree = dp.parameters_agree();
  int rc = 0;
  if (root) {
    std::printf("meshrt-train: weights %s on all %d rank(s)\n", agree ? "identical" : "DIFFER", comm.size());
    if (!agree) rc = 1;
    if (!training_checks_hold("meshrt-train", o.expect_falling_loss, o.min_accuracy, first_loss, last_loss,
                              last_accuracy)) {
      rc = 1;
    }
  }
  // Every rank exits with rank 0's verdict.
  DeviceTensor verdict = to_device(HostTensor::from_vector(std::vector<int32_t>{rc}, Shape{1}), device);
  comm.broadcast(verdict, 0).wait();
  return to_host(verdict).to_vector<int32_t>()[0];
}

}  // namespace
}  // namespace meshrt::apps

int main(int argc, char** argv) {
  meshrt::World::init(&argc, &argv);
  meshrt::apps::Options o;
  meshrt::apps::CommandLine app{
      "meshrt-train: synchronous data-parallel training of seed 003's examples over every rank of the job:\n"
      "each rank takes its rows of each batch, gradients are reduced over the ranks (MPI on the cpu, NCCL\n"
      "on GPUs) and every rank applies the same update. Run it under mpirun, e.g.:\n"
      "  mpirun -np 4 meshrt-train --model regression\n"
      "  mpirun -np 4 meshrt-train --model avenger --min-accuracy 0.95"};
  app.add("--model", o.model,
          "regression (Dense(10), SGD, MSE), avenger (StringLookup, Embedding, mean, Dense(sigmoid), RMSprop,\n"
          "binary cross-entropy) or mlp (a wider dense model)")
      .one_of(meshrt::apps::training_example_names())
      .show_default();
  app.add("--epochs", o.epochs, "epochs (default: 5 for regression and mlp, 4 for avenger, as the seed)");
  app.add("--steps-per-epoch", o.steps_per_epoch, "steps per epoch (default: 20, 5 for avenger, as the seed)");
  app.add("--batch", o.example.batch, "global batch rows, split over the ranks (default: 64, 32 for avenger, 256 for mlp)");
  app.add("--learning-rate", o.example.learning_rate, "(default: 0.01, 0.1 for avenger)");
  app.add("--embedding-dim", o.example.embedding_dim, "avenger's embedding width").show_default();
  app.add("--hidden", o.example.hidden, "mlp's width").show_default();
  app.add("--seed", o.seed, "seed of the data and the initial weights").show_default();
  app.add("--dtype", o.dtype, "f32 or f64").one_of({"f32", "f64"}).show_default();
  app.add("--min-accuracy", o.min_accuracy, "exit 1 if the last epoch's accuracy is below this (classifier)");
  app.flag("--expect-falling-loss", o.expect_falling_loss, "exit 1 unless the last epoch's loss is below the first's");
  app.add("--device", o.device, "cpu or cuda:N (default: cuda:<local rank> when GPUs exist, else cpu)");
  return meshrt::apps::run_mpi_app("meshrt-train", app, argc, argv, [&] { return meshrt::apps::run(o); });
}

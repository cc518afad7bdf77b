// meshrt-bench-pipeline: pipeline efficiency of the serving engine. p stages
// (one per rank: run it with mpirun -np p), each taking a controlled time per
// batch, m micro-batches per batch, against the ideal m / (m + p - 1) of one
// batch in flight, and with several batches in flight (as the server runs them).
//
//   mpirun -np 4 meshrt-bench-pipeline [--stage-ms 20] [--micro-batches 1,2,4,8] [--stage sleep|gemm]
//
// A stage's work on a batch of R rows takes --stage-ms in all, split over the
// micro-batches by rows: with --stage sleep a wait (a stand-in for a GPU kernel,
// so the overlap is measurable on a machine with fewer cores than ranks), with
// --stage gemm a [rows, k] @ [k, k] GEMM per micro-batch (k = --gemm-size; its
// time is whatever the machine gives, and ranks that share cores cannot overlap).
//
// Columns: p, m, the work of one stage on a batch (T: the stages' forward time
// the engine measured in the one-at-a-time runs, divided by p), then for one batch at a time (Engine::run) and for up to p
// batches in flight (Engine::start): ms per batch and efficiency = T / (ms per
// batch), the share of the p ranks' time spent working, next to its ideal:
// m / (m + p - 1) for one batch at a time, N m / (N m + p - 1) for N batches
// streamed. The sequential baseline (no overlap at all) is efficiency 1 / p.
//
// With --models K (K dividing p): K models of p/K stages each (sleep stages),
// which the engine places on disjoint ranks (model k on ranks k p/K ..), run
// one after another and then all at once (batches started round-robin, up to
// p/K in flight per model, as the server's scheduler keeps them): ms per batch
// of either, and the speedup of running them at once (ideal K: no model waits
// for another's ranks).
#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <sstream>
#include <thread>

#include "apps/app_common.h"
#include "apps/cli.h"
#include "comm/world.h"
#include "kernels/gemm.h"
#include "serving/engine.h"

namespace meshrt::apps {
namespace {

using serving::DTensor;
using serving::Engine;
using serving::ServableDefinition;
using serving::StageModule;

struct Options {
  double stage_ms = 20;
  std::string micro = "1,2,4,8";
  std::string stage = "sleep";
  int64_t rows = 64, gemm_size = 256;
  int batches = 16, warmup = 2;
  int models = 1;
  std::string device;
};

class SleepStage : public StageModule {
 public:
  explicit SleepStage(double us_per_row) : us_per_row_(us_per_row) {}
  DTensor forward(const DTensor& x) override {
    std::this_thread::sleep_for(
        std::chrono::duration<double, std::micro>(us_per_row_ * static_cast<double>(x.global_shape()[0])));
    return x;
  }

 private:
  double us_per_row_;
};

class GemmStage : public StageModule {
 public:
  explicit GemmStage(DeviceTensor w) : w_(std::move(w)) {}
  DTensor forward(const DTensor& x) override {
    DeviceTensor y = kernels::matmul(x.local(), w_);
    return DTensor(y, x.global_shape(), x.mesh(), x.layout(), "activation");
  }

 private:
  DeviceTensor w_;
};

std::vector<int> parse_ints(const std::string& text) {
  std::vector<int> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) out.push_back(std::stoi(item));
  MESHRT_CHECK_ARG(!out.empty(), "--micro-batches needs at least one count");
  for (int m : out) MESHRT_CHECK_ARG(m >= 1, "--micro-batches: counts must be at least 1, got ", m);
  return out;
}

// Streams `batches` batches of each of `models` (round-robin), up to `depth`
// in flight per model; returns the seconds it took.
double stream(Engine& engine, const std::vector<int>& models, const HostTensor& batch, int m, int batches, int depth) {
  std::mutex mutex;
  std::condition_variable cv;
  std::vector<int> outstanding(static_cast<size_t>(engine.servable_count()), 0);
  std::string failed;
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < batches; ++i) {
    for (int model : models) {
      {
        std::unique_lock<std::mutex> lock(mutex);
        cv.wait(lock, [&] { return outstanding[static_cast<size_t>(model)] < depth; });
        ++outstanding[static_cast<size_t>(model)];
      }
      engine.start(model, batch, m, [&, model](HostTensor, std::exception_ptr error, const serving::BatchReport&) {
        std::lock_guard<std::mutex> lock(mutex);
        if (error && failed.empty()) {
          try {
            std::rethrow_exception(error);
          } catch (const std::exception& e) {
            failed = e.what();
          }
        }
        --outstanding[static_cast<size_t>(model)];
        cv.notify_all();
      });
    }
  }
  engine.wait_idle();
  MESHRT_CHECK(failed.empty(), ErrorKind::kInternal, failed);
  return seconds_since(start);
}

// --models K: K models on disjoint ranks, one after another, then at once.
int run_models(const Options& o) {
  World& world = World::get();
  int p = world.size();
  MESHRT_CHECK_ARG(o.models >= 2 && p % o.models == 0, "--models must be at least 2 and divide the ", p,
                   " ranks, got ", o.models);
  Device device = world.device(o.device);
  int stages = p / o.models;
  double us_per_row = o.stage_ms * 1000.0 / static_cast<double>(o.rows);
  std::vector<ServableDefinition> defs;
  for (int k = 0; k < o.models; ++k) {
    ServableDefinition s;
    s.name = "model" + std::to_string(k);
    s.rank_size = stages;
    s.stage_size = stages;
    s.input = {"x", DType::kF32, {-1, 8}};
    s.output = {"y", DType::kF32, {-1, 8}};
    for (int i = 0; i < stages; ++i) {
      s.stages.push_back({8, [us_per_row](const serving::Mesh&) -> std::unique_ptr<StageModule> {
                            return std::make_unique<SleepStage>(us_per_row);
                          }, {}});
    }
    defs.push_back(std::move(s));
  }
  serving::EngineOptions options;
  options.share_ranks = false;  // disjoint, or refused
  Engine engine(defs, device, options);
  if (world.rank() != 0) {
    engine.serve();
    return 0;
  }
  HostTensor batch = HostTensor::full<float>({o.rows, 8}, 1.0f);
  int m = parse_ints(o.micro).front();
  std::printf("# meshrt-bench-pipeline --models %d: %d models of %d stage(s) (a timed wait of %.3f ms per batch each), "
              "each on its own ranks (%s ... %s), %d node(s), %d micro-batch(es); %d batches per model per figure\n",
              o.models, o.models, stages, o.stage_ms, engine.placement(0).c_str(),
              engine.placement(o.models - 1).c_str(), world.node_count(), m, o.batches);
  std::vector<int> all;
  for (int k = 0; k < o.models; ++k) all.push_back(k);
  stream(engine, all, batch, m, o.warmup, stages);
  double apart = 0;
  for (int k = 0; k < o.models; ++k) apart += stream(engine, {k}, batch, m, o.batches, stages);
  double together = stream(engine, all, batch, m, o.batches, stages);
  double per_batch = 1e3 / (o.batches * o.models);
  std::printf("#%7s %14s %14s %9s %6s\n", "models", "apart ms/b", "at once ms/b", "speedup", "ideal");
  std::printf(" %7d %14.3f %14.3f %9.3f %6d\n", o.models, apart * per_batch, together * per_batch, apart / together,
              o.models);
  engine.stop();
  return 0;
}

int run(const Options& o) {
  if (o.models > 1) return run_models(o);
  World& world = World::get();
  int p = world.size();
  Device device = world.device(o.device);
  MESHRT_CHECK_ARG(o.stage == "sleep" || o.stage == "gemm", "--stage must be sleep or gemm, got '", o.stage, "'");
  MESHRT_CHECK_ARG(o.rows >= 1 && o.batches >= 1 && o.stage_ms > 0, "--rows, --batches and --stage-ms must be positive");
  std::vector<int> micro = parse_ints(o.micro);
  int64_t width = o.stage == "gemm" ? o.gemm_size : 8;
  ServableDefinition s;
  s.name = "pipeline";
  s.rank_size = p;
  s.stage_size = p;
  s.input = {"x", DType::kF32, {-1, width}};
  s.output = {"y", DType::kF32, {-1, width}};
  double us_per_row = o.stage_ms * 1000.0 / static_cast<double>(o.rows);
  for (int i = 0; i < p; ++i) {
    s.stages.push_back({width, [&, us_per_row, width](const serving::Mesh&) -> std::unique_ptr<StageModule> {
                          if (o.stage == "sleep") return std::make_unique<SleepStage>(us_per_row);
                          // Scaled so that the activation stays bounded however many stages.
                          HostTensor w = HostTensor::full<float>({width, width}, 1.0f / static_cast<float>(width));
                          return std::make_unique<GemmStage>(to_device(w, device));
                        }, {}});
  }
  Engine engine({s}, device);
  if (world.rank() != 0) {
    engine.serve();
    return 0;
  }
  HostTensor batch = HostTensor::full<float>({o.rows, width}, 1.0f);
  std::printf("# meshrt-bench-pipeline: %d stage(s), one rank each, on %d node(s), device %s; a stage takes T per batch "
              "of %lld rows (%s), split over the micro-batches by rows; %d batches per figure\n",
              p, world.node_count(), device.to_string().c_str(), static_cast<long long>(o.rows),
              o.stage == "sleep" ? "a timed wait" : "a GEMM", o.batches);
  std::printf("# efficiency = T / (time per batch); sequential (no overlap) = 1/p = %.3f\n", 1.0 / p);
  std::printf("#%3s %4s %9s | %-28s | %-28s\n", "p", "m", "T ms", "one batch at a time", "p batches in flight");
  std::printf("#%3s %4s %9s | %9s %8s %9s | %9s %8s %9s\n", "", "", "", "ms/batch", "eff", "ideal", "ms/batch", "eff",
              "ideal");
  for (int m : micro) {
    for (int i = 0; i < o.warmup; ++i) engine.run(0, batch, m);
    double forward = 0;
    auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < o.batches; ++i) {
      serving::BatchReport report;
      engine.run(0, batch, m, &report);
      forward += report.forward_seconds;
    }
    double one = seconds_since(start) / o.batches;
    // T: one stage's work on a batch, as the engine measured it (every stage's
    // forward passes, summed over the stages: p T).
    double stage_seconds = forward / o.batches / p;
    // Streamed: up to p batches in flight, as the server's scheduler keeps them.
    double streamed = stream(engine, {0}, batch, m, o.batches, p) / o.batches;
    int parts = static_cast<int>(std::min<int64_t>(m, o.rows));
    double ideal_one = static_cast<double>(parts) / (parts + p - 1);
    double ideal_streamed = static_cast<double>(o.batches) * parts / (static_cast<double>(o.batches) * parts + p - 1);
    std::printf(" %3d %4d %9.3f | %9.3f %8.3f %9.3f | %9.3f %8.3f %9.3f\n", p, parts, stage_seconds * 1e3, one * 1e3,
                stage_seconds / one, ideal_one, streamed * 1e3, stage_seconds / streamed, ideal_streamed);
    std::fflush(stdout);
  }
  engine.stop();
  return 0;
}

}  // namespace
}  // namespace meshrt::apps

int main(int argc, char** argv) {
  meshrt::World::init(&argc, &argv);
  meshrt::apps::Options o;
  meshrt::apps::CommandLine app{
      "meshrt-bench-pipeline: pipeline efficiency of the serving engine, p stages (one per rank) of a controlled\n"
      "duration and m micro-batches, one batch at a time and p batches in flight, against the ideal m/(m+p-1).\n"
      "Run it under mpirun, e.g.: mpirun -np 4 meshrt-bench-pipeline --stage-ms 20"};
  app.add("--stage-ms", o.stage_ms, "a stage's time per batch (sleep) ").show_default();
  app.add("--micro-batches", o.micro, "micro-batch counts to measure, comma-separated").show_default();
  app.add("--stage", o.stage, "what a stage does: sleep (a timed wait standing in for a GPU kernel) or gemm")
      .show_default();
  app.add("--rows", o.rows, "rows per batch").show_default();
  app.add("--gemm-size", o.gemm_size, "k of a gemm stage's [rows, k] @ [k, k]").show_default();
  app.add("-n,--batches", o.batches, "timed batches per figure").show_default();
  app.add("-w,--warmup", o.warmup, "untimed batches per figure").show_default();
  app.add("--models", o.models,
          "K > 1: K models of p/K sleep stages on disjoint ranks, one after another and then at once (the speedup of "
          "placing them apart; the first --micro-batches count is used)")
      .show_default();
  app.add("--device", o.device, "cpu or cuda:N (default: cuda:<local rank> when GPUs exist, else cpu)");
  return meshrt::apps::run_mpi_app("meshrt-bench-pipeline", app, argc, argv, [&] { return meshrt::apps::run(o); });
}

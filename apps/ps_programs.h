// Seed 003's two examples as parameter-server programs (apps/ps_train.cc):
// the step functions every worker of the binary registers, the per-worker
// datasets, where the variables go, and the evaluation the chief (inline)
// and the sidecar evaluator run.
//
// The chief and the workers must agree on the program's settings (model
// width, batch, seed, partitioner, servers): ProgramConfig travels as the
// JSON arguments of every step, and a worker keeps one model per settings.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "apps/train_examples.h"
#include "cluster/variables.h"
#include "cluster/worker.h"
#include "training/losses.h"

namespace meshrt::apps {

struct ProgramConfig {
  std::string program = "regression";  // "regression" or "avenger"
  int64_t batch = 0;                    // per worker; 0: the seed's (64, 32)
  int64_t embedding_dim = 16384;
  double learning_rate = 0;             // 0: the seed's (0.01, 0.1)
  uint64_t seed = 1;
  // "min" (MinSizePartitioner(256 KiB, num_ps), the seed's), "max:<bytes>",
  // "fixed:<shards>" or "none".
  std::string partitioner = "min";
  int num_ps = 1;
  int step_sleep_ms = 0;                // a slow step's stand-in (tests)
  std::string to_json() const;
  static ProgramConfig from_json(const std::string& text);
};

// A program's fixed parts.
struct Program {
  std::string name;
  bool classifier = false;
  double threshold = 0.5;               // of the model's output (0: a logit)
  int64_t batch = 0;                    // per worker
  int epochs = 0, steps_per_epoch = 0;  // the seed's
  cluster::OptimizerConfig optimizer;
  training::LossFunction loss;
  std::string description;
};

Program make_program(const ProgramConfig& config);
// The model with its initial values (the chief's) on device.
std::unique_ptr<training::Sequential> make_program_model(const ProgramConfig& config, const Device& device);
// Where the model's parameters go (the same on every task for one config).
std::vector<cluster::RemoteVariable> place_program_variables(const ProgramConfig& config,
                                                             training::Sequential& model);
// Registers "<program>.train_step" and "<program>.eval_step" of both programs.
void register_programs(cluster::FunctionRegistry& registry);

// The outcome of steps, summed (what step functions return as JSON).
struct StepTotals {
  double loss_sum = 0;  // loss x rows
  int64_t rows = 0, correct = 0, bytes = 0;
  void add(const std::string& result_json);
  double loss() const { return rows ? loss_sum / static_cast<double>(rows) : 0; }
  double accuracy() const { return rows ? static_cast<double>(correct) / static_cast<double>(rows) : 0; }
};

// Evaluates values (shard name -> value, e.g. a checkpoint's) on the
// program's evaluation data, on the cpu: the sidecar evaluator's step.
StepTotals evaluate_values(const ProgramConfig& config, const std::map<std::string, HostTensor>& values);

}  // namespace meshrt::apps

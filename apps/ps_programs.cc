#include "apps/ps_programs.h"

#include <nlohmann/json.hpp>

#include <chrono>
#include <map>
#include <thread>

#include "device/error.h"
#include "sharding/partitioner.h"

namespace meshrt::apps {

namespace {

using nlohmann::json;

// tf.data's shuffle(n).repeat().shard(workers, index).batch(batch): worker w
// of n takes positions w, w + n, w + 2n, ... of the stream of shuffled
// passes over the examples, batch rows at a time.
class ShardedExamples : public cluster::Dataset {
 public:
  ShardedExamples(ExampleData data, int64_t batch, uint64_t seed, int worker, int workers)
      : data_(std::move(data)), batch_(batch), seed_(seed), worker_(worker), workers_(workers) {}
  cluster::Batch next() override {
    const int64_t n = data_.inputs.dim(0);
    std::vector<int64_t> rows;
    for (int64_t j = 0; j < batch_; ++j, ++position_) {
      int64_t k = position_ * workers_ + worker_;
      if (k / n != pass_) {
        pass_ = k / n;
        order_ = pass_order(n, seed_, pass_);
      }
      rows.push_back(order_[static_cast<size_t>(k % n)]);
    }
    ExampleData picked = pick_rows(data_, rows);
    return {picked.inputs, picked.targets};
  }

 private:
  ExampleData data_;
  int64_t batch_;
  uint64_t seed_;
  int worker_, workers_;
  int64_t position_ = 0, pass_ = -1;
  std::vector<int64_t> order_;
};

TrainingExampleOptions example_options(const ProgramConfig& c) {
  TrainingExampleOptions o;
  o.embedding_dim = c.embedding_dim;
  o.seed = c.seed;
  o.dtype = DType::kF32;
  return o;
}

ExampleData training_data(const ProgramConfig& c) {
  return c.program == "avenger" ? avenger_data(c.seed, DType::kF32) : regression_data(c.seed, DType::kF32);
}

// The seed evaluates the avenger model on 16 new examples; the regression
// has no held-out data (its 10 examples).
ExampleData evaluation_data(const ProgramConfig& c) {
  return c.program == "avenger" ? avenger_data(c.seed + 1000, DType::kF32, 16) : regression_data(c.seed, DType::kF32);
}

cluster::Partitioner partitioner(const ProgramConfig& c) {
  const std::string& p = c.partitioner;
  if (p == "none") return nullptr;
  if (p == "min") return sharding::MinSizePartitioner(256 << 10, c.num_ps);
  auto number = [&](const std::string& prefix) {
    MESHRT_CHECK_ARG(p.size() > prefix.size() && p.find_first_not_of("0123456789", prefix.size()) == std::string::npos,
                     "--partitioner ", p, ": ", prefix, " needs a number");
    return std::stoll(p.substr(prefix.size()));
  };
  if (p.rfind("max:", 0) == 0) return sharding::MaxSizePartitioner(number("max:"));
  if (p.rfind("fixed:", 0) == 0) return sharding::FixedShardsPartitioner(static_cast<int>(number("fixed:")));
  throw Error(ErrorKind::kInvalidArgument,
              "--partitioner " + p + ": none, min (256 KiB shards, at most one per ps), max:<bytes> or fixed:<shards>");
}

// Counts predictions on the right side of the threshold (classifiers).
int64_t count_correct(const Program& program, const DeviceTensor& prediction, const HostTensor& targets) {
  if (!program.classifier) return 0;
  HostTensor p = cast_host(to_host(prediction), DType::kF64), t = cast_host(targets, DType::kF64);
  int64_t correct = 0;
  for (int64_t i = 0; i < p.numel(); ++i) {
    correct += ((p.data<double>()[i] > program.threshold) == (t.data<double>()[i] > 0.5)) ? 1 : 0;
  }
  return correct;
}

std::string totals_json(double loss, int64_t rows, int64_t correct, int64_t bytes) {
  return json{{"loss", loss}, {"rows", rows}, {"correct", correct}, {"bytes", bytes}}.dump();
}

// A worker's model for one configuration.
struct WorkerProgram {
  ProgramConfig config;
  Program program;
  std::unique_ptr<cluster::RemoteModel> remote;
};

WorkerProgram& worker_program(cluster::WorkerContext& ctx, const ProgramConfig& config) {
  return ctx.state<WorkerProgram>("program:" + config.to_json(), [&] {
    auto wp = std::make_unique<WorkerProgram>();
    wp->config = config;
    wp->program = make_program(config);
    std::unique_ptr<training::Sequential> model = make_program_model(config, ctx.device());
    std::vector<cluster::RemoteVariable> variables = place_program_variables(config, *model);
    wp->remote = std::make_unique<cluster::RemoteModel>(std::move(model), std::move(variables), ctx.device());
    return wp;
  });
}

std::string run_batch(cluster::WorkerContext& ctx, WorkerProgram& wp, const cluster::Batch& batch, bool train) {
  wp.remote->pull(ctx.ps(), batch.inputs);
  DeviceTensor x = to_device(batch.inputs, ctx.device()), y = to_device(batch.targets, ctx.device());
  training::Sequential& model = wp.remote->model();
  model.zero_grad();  // a step that failed before its push left its gradients
  DeviceTensor prediction = model.forward(x);
  training::Loss loss = wp.program.loss(prediction, y);
  int64_t bytes = 0;
  if (train) {
    model.backward(loss.grad);
    bytes = wp.remote->push(ctx.ps(), ctx.step_id(), ctx.done_below());
  }
  if (wp.config.step_sleep_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(wp.config.step_sleep_ms));
  return totals_json(loss.value, x.dim(0), count_correct(wp.program, prediction, batch.targets), bytes);
}

std::string train_step(cluster::WorkerContext& ctx, const std::string& args) {
  ProgramConfig config = ProgramConfig::from_json(args);
  WorkerProgram& wp = worker_program(ctx, config);
  int64_t batch = wp.program.batch;
  cluster::Dataset& data = ctx.dataset("train:" + config.to_json(), [&](int worker, int workers) {
    return std::make_unique<ShardedExamples>(training_data(config), batch, config.seed, worker, workers);
  });
  return run_batch(ctx, wp, data.next(), true);
}

std::string eval_step(cluster::WorkerContext& ctx, const std::string& args) {
  ProgramConfig config = ProgramConfig::from_json(args);
  WorkerProgram& wp = worker_program(ctx, config);
  ExampleData eval = evaluation_data(config);
  return run_batch(ctx, wp, {eval.inputs, eval.targets}, false);
}

}  // namespace

std::string ProgramConfig::to_json() const {
  return json{{"program", program},
              {"batch", batch},
              {"embedding_dim", embedding_dim},
              {"learning_rate", learning_rate},
              {"seed", seed},
              {"partitioner", partitioner},
              {"num_ps", num_ps},
              {"step_sleep_ms", step_sleep_ms}}
      .dump();
}

ProgramConfig ProgramConfig::from_json(const std::string& text) {
  ProgramConfig c;
  try {
    json j = json::parse(text);
    c.program = j.at("program").get<std::string>();
    c.batch = j.at("batch").get<int64_t>();
    c.embedding_dim = j.at("embedding_dim").get<int64_t>();
    c.learning_rate = j.at("learning_rate").get<double>();
    c.seed = j.at("seed").get<uint64_t>();
    c.partitioner = j.at("partitioner").get<std::string>();
    c.num_ps = j.at("num_ps").get<int>();
    c.step_sleep_ms = j.at("step_sleep_ms").get<int>();
  } catch (const json::exception& e) {
    throw Error(ErrorKind::kInvalidArgument, std::string("a program's arguments: ") + e.what());
  }
  MESHRT_CHECK_ARG(c.program == "regression" || c.program == "avenger", "unknown program \"", c.program,
                   "\" (regression or avenger)");
  MESHRT_CHECK_ARG(c.batch >= 0 && c.embedding_dim > 0 && c.learning_rate >= 0 && c.num_ps >= 1 &&
                       c.step_sleep_ms >= 0,
                   "a program's arguments are out of range: ", text);
  return c;
}

Program make_program(const ProgramConfig& c) {
  Program p;
  p.name = c.program;
  if (c.program == "avenger") {
    p.classifier = true;
    p.threshold = 0.0;  // the model gives the logit (the sigmoid is in the loss)
    p.batch = c.batch > 0 ? c.batch : 32;
    p.epochs = 4;
    p.steps_per_epoch = 5;
    p.optimizer.set_kind("rmsprop");
    p.optimizer.set_learning_rate(c.learning_rate > 0 ? c.learning_rate : 0.1);
    p.loss = training::binary_cross_entropy_with_logits;
    p.description = "StringLookup -> Embedding(8, " + std::to_string(c.embedding_dim) +
                    ") -> mean -> Dense(1, sigmoid), RMSprop (" + std::to_string(p.optimizer.learning_rate()) +
                    "), binary cross-entropy, batches of " + std::to_string(p.batch) + " per worker";
  } else {
    p.batch = c.batch > 0 ? c.batch : 64;
    p.epochs = 5;
    p.steps_per_epoch = 20;
    p.optimizer.set_kind("sgd");
    p.optimizer.set_learning_rate(c.learning_rate > 0 ? c.learning_rate : 0.01);
    p.loss = training::mean_squared_error;
    p.description = "Dense(10) on 10 random examples, SGD (" + std::to_string(p.optimizer.learning_rate()) +
                    "), MSE, batches of " + std::to_string(p.batch) + " per worker";
  }
  return p;
}

std::unique_ptr<training::Sequential> make_program_model(const ProgramConfig& c, const Device& device) {
  return c.program == "avenger" ? avenger_model(example_options(c), device)
                                : regression_model(example_options(c), device);
}

std::vector<cluster::RemoteVariable> place_program_variables(const ProgramConfig& c, training::Sequential& model) {
  cluster::VariablePlacer placer(c.num_ps, partitioner(c));
  std::vector<cluster::RemoteVariable> out;
  for (size_t i = 0; i < model.size(); ++i) {
    training::Layer& layer = model.layer(i);
    std::string base = layer.name().substr(0, layer.name().find('('));
    bool sparse = dynamic_cast<training::Embedding*>(&layer) != nullptr;
    for (training::Parameter* p : layer.parameters()) {
      out.push_back(placer.place(base + "_" + std::to_string(i) + "/" + p->name(), p->value().shape(),
                                 p->value().dtype(), sparse));
    }
  }
  return out;
}

void register_programs(cluster::FunctionRegistry& registry) {
  for (const char* name : {"regression", "avenger"}) {
    registry.add_function(std::string(name) + ".train_step", train_step);
    registry.add_function(std::string(name) + ".eval_step", eval_step);
  }
}

void StepTotals::add(const std::string& result_json) {
  json j = json::parse(result_json);
  int64_t r = j.at("rows").get<int64_t>();
  loss_sum += j.at("loss").get<double>() * static_cast<double>(r);
  rows += r;
  correct += j.at("correct").get<int64_t>();
  bytes += j.at("bytes").get<int64_t>();
}

StepTotals evaluate_values(const ProgramConfig& config, const std::map<std::string, HostTensor>& values) {
  const Device cpu = Device::cpu();
  std::unique_ptr<training::Sequential> model = make_program_model(config, cpu);
  std::vector<cluster::RemoteVariable> variables = place_program_variables(config, *model);
  std::vector<training::Parameter*> params = model->parameters();
  for (size_t i = 0; i < params.size(); ++i) {
    std::vector<HostTensor> parts;
    for (const cluster::VariableShard& s : variables[i].shards) {
      auto it = values.find(s.name);
      MESHRT_CHECK_ARG(it != values.end(), "the checkpoint has no variable ", s.name);
      parts.push_back(it->second);
    }
    params[i]->set_value(to_device(parts.size() == 1 ? parts[0] : concat_rows(parts), cpu));
  }
  Program program = make_program(config);
  ExampleData eval = evaluation_data(config);
  DeviceTensor prediction = model->forward(to_device(eval.inputs, cpu));
  training::Loss loss = program.loss(prediction, to_device(eval.targets, cpu));
  StepTotals totals;
  totals.add(totals_json(loss.value, eval.inputs.dim(0), count_correct(program, prediction, eval.targets), 0));
  return totals;
}

}  // namespace meshrt::apps

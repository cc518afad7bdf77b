// meshrt-ps-train: parameter-server training (seed 003). One binary serves
// every role of the cluster; TF_CONFIG (or --tf-config-file) says which:
//
//   ps         a parameter server: variables, their optimizers, checkpoints
//   worker     runs the step functions the chief schedules (this binary's)
//   chief      the coordinator: creates the variables on the servers,
//              schedules epochs of steps, checkpoints, evaluates inline
//   evaluator  the sidecar evaluator: evaluates each new checkpoint
//
// --local-cluster starts a cluster on this machine instead (the seed's
// in-process cluster, as separate processes on loopback): --workers workers
// and --ps servers as child processes, then the chief here.
//
//   meshrt-ps-train --local-cluster --workers 3 --ps 2 --program avenger --min-accuracy 0.95
//   TF_CONFIG='{"cluster": {...}, "task": {"type": "worker", "index": 0}}' meshrt-ps-train
//
// Exit codes: 0 done; 1 a --min-accuracy / --expect-falling-loss check
// failed; 2 a bad command line or TF_CONFIG; 4 the cluster failed (a
// parameter server lost: restart the cluster, and the chief restores the
// latest checkpoint of --checkpoint-dir and goes on from its step).
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include <nlohmann/json.hpp>

#include "apps/cli.h"
#include "apps/ps_programs.h"
#include "cluster/checkpoint.h"
#include "cluster/coordinator.h"
#include "cluster/launcher.h"
#include "cluster/ps_server.h"
#include "cluster/worker.h"
#include "device/error.h"
#include "device/log.h"

namespace meshrt::apps {
namespace {

struct Options {
  ProgramConfig program;
  int64_t seed = 1;
  int epochs = 0, steps_per_epoch = 0;
  std::string tf_config_file;
  bool local_cluster = false;
  int workers = 3, ps = 2;
  bool sidecar_evaluator = false;
  std::string checkpoint_dir;
  int max_to_keep = 3;
  bool inline_eval = false;
  int eval_steps = 2;
  double min_accuracy = -1, min_eval_accuracy = -1;
  bool expect_falling_loss = false;
  int step_timeout_ms = 60000, ps_timeout_ms = 10000;
  int evaluator_timeout_s = 600;
  std::string device = "cpu";
};

// Blocks SIGTERM and SIGINT in every thread (call before any thread starts),
// so that wait_for_stop() takes them.
void block_stop_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

int wait_for_stop() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  int signal = 0;
  sigwait(&set, &signal);
  return signal;
}

rpc::ServerOptions server_options(const std::string& address) {
  auto [host, port] = cluster::split_address(address);
  rpc::ServerOptions o;
  o.address = "0.0.0.0";
  o.port = static_cast<uint16_t>(port);
  o.max_message_bytes = 256u << 20;
  return o;
}

int run_ps(const cluster::TaskConfig& config) {
  cluster::PsServer server(config.task.index, server_options(config.cluster.address(config.task)));
  log::info(meshrt::detail::cat("ps ", config.task.index, ": serving on port ", server.port()));
  int signal = wait_for_stop();
  log::info(meshrt::detail::cat("ps ", config.task.index, ": signal ", signal, ", stopping"));
  server.shutdown(std::chrono::milliseconds(2000));
  return 0;
}

int run_worker(const cluster::TaskConfig& config, const Options& o) {
  cluster::FunctionRegistry registry;
  register_programs(registry);
  cluster::WorkerOptions options;
  options.server = server_options(config.cluster.address(config.task));
  options.ps.timeout = std::chrono::milliseconds(o.ps_timeout_ms);
  options.device = Device::parse(o.device);
  cluster::WorkerServer server(config.task.index, config.cluster, registry, options);
  log::info(meshrt::detail::cat("worker ", config.task.index, ": serving on port ", server.port()));
  wait_for_stop();
  server.shutdown(std::chrono::milliseconds(2000));
  return 0;
}

std::vector<cluster::PsClient> ps_clients(const cluster::ClusterSpec& spec, const Options& o) {
  cluster::PsClientOptions options;
  options.timeout = std::chrono::milliseconds(o.ps_timeout_ms);
  std::vector<cluster::PsClient> out;
  for (int i = 0; i < spec.num_tasks(cluster::TaskType::kPs); ++i) {
    out.emplace_back(i, spec.address({cluster::TaskType::kPs, i}), options);
  }
  return out;
}

std::string done_marker(const std::string& dir) { return dir + "/training_done"; }

// Whether a checkpoint of `saved` fits `now`: the same variables on the same servers.
bool same_structure(const ProgramConfig& saved, const ProgramConfig& now) {
  return saved.program == now.program && saved.embedding_dim == now.embedding_dim &&
         saved.partitioner == now.partitioner && saved.num_ps == now.num_ps;
}

// Coordinator::join, with a step's own failure told apart from the
// cluster's: the cluster's (kUnavailable: exit 4) as it is, a step's as an
// internal error (exit 1: not the command line's).
void join(cluster::Coordinator& coordinator) {
  try {
    coordinator.join();
  } catch (const Error& e) {
    if (e.kind() == ErrorKind::kUnavailable) throw;
    throw Error(ErrorKind::kInternal, "a step failed: " + e.message());
  }
}

int run_chief(const cluster::ClusterSpec& spec, Options o) {
  spec.require_parameter_server_cluster();
  o.program.num_ps = spec.num_tasks(cluster::TaskType::kPs);
  const ProgramConfig& config = o.program;
  Program program = make_program(config);
  const int epochs = o.epochs > 0 ? o.epochs : program.epochs;
  const int steps = o.steps_per_epoch > 0 ? o.steps_per_epoch : program.steps_per_epoch;
  std::vector<cluster::PsClient> ps = ps_clients(spec, o);
  std::printf("meshrt-ps-train: %s: %s\n", config.program.c_str(), program.description.c_str());
  std::printf("meshrt-ps-train: %d worker(s), %d parameter server(s); %d epochs x %d steps\n",
              spec.num_tasks(cluster::TaskType::kWorker), o.program.num_ps, epochs, steps);

  // The variables, placed round-robin (and partitioned) over the servers.
  std::unique_ptr<training::Sequential> model = make_program_model(config, Device::cpu());
  std::vector<cluster::RemoteVariable> variables = place_program_variables(config, *model);
  for (const cluster::RemoteVariable& v : variables) {
    std::printf("  variable %-22s %s %-14s", v.name.c_str(), to_string(v.dtype), detail::cat(v.shape).c_str());
    for (const cluster::VariableShard& s : v.shards) {
      std::printf(" %s%s on ps %d", v.shards.size() > 1 ? (s.name.substr(v.name.size() + 1) + " ").c_str() : "",
                  detail::cat(s.shape).c_str(), s.ps);
    }
    std::printf("\n");
  }

  // Every variable is created (a server that has it keeps its value), then
  // the latest checkpoint, if any, is restored over them.
  std::vector<training::Parameter*> params = model->parameters();
  for (size_t i = 0; i < variables.size(); ++i) {
    cluster::create_variable(ps, variables[i], to_host(params[i]->value()), program.optimizer);
  }
  // This run's step ids start above every id an earlier run gave out (its
  // start time in ms, shifted): a restored server drops the earlier run's
  // steps still in flight, and applies each of this run's once.
  const int64_t run_base =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count()
      << 20;
  std::optional<cluster::CheckpointManager> manager;
  if (!o.checkpoint_dir.empty()) {
    manager.emplace(o.checkpoint_dir, o.max_to_keep);
    std::filesystem::remove(done_marker(o.checkpoint_dir));  // an earlier run's
  }
  int start_epoch = 0;
  int64_t steps_before = 0;  // training steps of the runs before this one
  std::optional<cluster::CheckpointInfo> latest = manager ? manager->latest() : std::nullopt;
  if (latest) {
    nlohmann::json extra = nlohmann::json::parse(latest->extra);
    std::string saved = extra.value("config", std::string());
    MESHRT_CHECK_ARG(saved.empty() || same_structure(ProgramConfig::from_json(saved), config), "checkpoint ",
                     latest->path, " was saved by another program or layout (", saved, "); this run is ",
                     config.to_json(), ": use another --checkpoint-dir");
    manager->restore(ps, *latest, run_base);
    start_epoch = extra.value("epoch", 0);
    steps_before = latest->step;
    std::printf("meshrt-ps-train: restored %s (step %lld, after epoch %d)\n", latest->path.c_str(),
                static_cast<long long>(latest->step), start_epoch);
  }
  std::fflush(stdout);

  cluster::CoordinatorOptions coordinator_options;
  coordinator_options.step_timeout = std::chrono::milliseconds(o.step_timeout_ms);
  cluster::Coordinator coordinator(spec, coordinator_options);
  coordinator.set_next_step_id(run_base);
  const std::string args = config.to_json();
  double first_loss = -1, last_loss = 0, last_accuracy = 0, last_eval_accuracy = -1;
  int64_t scheduled_here = 0;
  int64_t last_checkpoint = latest ? latest->step : -1;
  int64_t steps_done = 0;
  for (int epoch = start_epoch; epoch < epochs; ++epoch) {
    auto start = std::chrono::steady_clock::now();
    std::vector<cluster::RemoteValue> results;
    for (int s = 0; s < steps; ++s) results.push_back(coordinator.schedule(config.program + ".train_step", args));
    scheduled_here += steps;
    join(coordinator);  // throws the cluster's failure (a parameter server lost)
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    StepTotals totals;
    for (const cluster::RemoteValue& r : results) totals.add(r.fetch());
    last_loss = totals.loss();
    last_accuracy = totals.accuracy();
    if (first_loss < 0) first_loss = last_loss;
    std::printf("epoch %d/%d: loss %.6g", epoch + 1, epochs, last_loss);
    if (program.classifier) std::printf(", accuracy %.6f", last_accuracy);
    std::printf(" (%.1f steps/s, %.2f MB of gradients, %.1f MB/s to the servers)\n", steps / seconds,
                static_cast<double>(totals.bytes) / 1e6, static_cast<double>(totals.bytes) / 1e6 / seconds);
    steps_done += steps;
    if (manager) {
      nlohmann::json extra = {{"epoch", epoch + 1}, {"config", config.to_json()}};
      cluster::CheckpointInfo saved = manager->save(ps, steps_before + steps_done, extra.dump());
      last_checkpoint = saved.step;
      std::printf("  checkpoint %s\n", saved.path.c_str());
    }
    if (o.inline_eval) {
      StepTotals eval;
      std::vector<cluster::RemoteValue> evals;
      for (int s = 0; s < o.eval_steps; ++s) evals.push_back(coordinator.schedule(config.program + ".eval_step", args));
      join(coordinator);
      for (const cluster::RemoteValue& r : evals) eval.add(r.fetch());
      last_eval_accuracy = eval.accuracy();
      std::printf("  evaluation: loss %.6g", eval.loss());
      if (program.classifier) std::printf(", accuracy %.6f", eval.accuracy());
      std::printf("\n");
    }
    std::fflush(stdout);
  }
  std::printf("meshrt-ps-train: %lld step(s) scheduled here, %lld completed, %lld retried after a worker was lost\n",
              static_cast<long long>(coordinator.scheduled()), static_cast<long long>(coordinator.completed()),
              static_cast<long long>(coordinator.retried()));
  for (const cluster::WorkerStatus& w : coordinator.workers()) {
    std::printf("  worker %d (%s): %lld step(s), lost %lld time(s), restarted %lld time(s)\n", w.index,
                w.address.c_str(), static_cast<long long>(w.steps), static_cast<long long>(w.losses),
                static_cast<long long>(w.restarts));
  }
  // The sidecar evaluator stops once it has evaluated this checkpoint.
  if (manager) std::ofstream(done_marker(o.checkpoint_dir)) << last_checkpoint << "\n";
  int rc = 0;
  if (coordinator.completed() != coordinator.scheduled()) rc = 1;
  // (A run restored after its last epoch trained nothing here: nothing to check.)
  if (scheduled_here > 0 && !training_checks_hold("meshrt-ps-train", o.expect_falling_loss, o.min_accuracy,
                                                  first_loss, last_loss, last_accuracy)) {
    rc = 1;
  }
  if (o.min_eval_accuracy >= 0 && !(last_eval_accuracy >= o.min_eval_accuracy)) {
    std::printf("meshrt-ps-train: the last evaluation's accuracy %.6f is below --min-eval-accuracy %.6f%s\n",
                last_eval_accuracy, o.min_eval_accuracy, o.inline_eval ? "" : " (no --inline-eval)");
    rc = 1;
  }
  std::fflush(stdout);
  return rc;
}

// The sidecar evaluator: evaluates every new checkpoint of --checkpoint-dir
// (read from the files, no server needed), until the chief marks training
// done and the last checkpoint was evaluated.
int run_evaluator(Options o, int num_ps) {
  MESHRT_CHECK_ARG(!o.checkpoint_dir.empty(), "the evaluator needs --checkpoint-dir");
  o.program.num_ps = num_ps;
  cluster::CheckpointManager manager(o.checkpoint_dir, o.max_to_keep);
  Program program = make_program(o.program);
  std::set<int64_t> evaluated;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(o.evaluator_timeout_s);
  for (;;) {
    std::optional<cluster::CheckpointInfo> latest;
    StepTotals t;
    try {
      latest = manager.latest();
      if (latest && !evaluated.count(latest->step)) t = evaluate_values(o.program, manager.read_values(*latest));
    } catch (const Error& e) {
      // A checkpoint removed (max_to_keep) while it was read: the next poll sees the index as it is now.
      log::warn(meshrt::detail::cat("evaluator: ", e.message(), "; trying again"));
      latest.reset();
    }
    if (latest && !evaluated.count(latest->step)) {
      evaluated.insert(latest->step);
      std::printf("evaluator: %s (step %lld): loss %.6g", latest->path.c_str(), static_cast<long long>(latest->step),
                  t.loss());
      if (program.classifier) std::printf(", accuracy %.6f", t.accuracy());
      std::printf("\n");
      std::fflush(stdout);
      std::ofstream(o.checkpoint_dir + "/evaluation.jsonl", std::ios::app)
          << "{\"step\": " << latest->step << ", \"loss\": " << t.loss() << ", \"accuracy\": " << t.accuracy()
          << "}\n";
    }
    if (std::filesystem::exists(done_marker(o.checkpoint_dir))) {
      std::ifstream in(done_marker(o.checkpoint_dir));
      int64_t last = -1;
      in >> last;
      if (last >= 0 && evaluated.count(last)) return 0;
    }
    MESHRT_CHECK(std::chrono::steady_clock::now() < deadline, ErrorKind::kInternal,
                 "evaluator: no finished training in ", o.checkpoint_dir, " within ", o.evaluator_timeout_s, " s");
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

std::string self_path() { return std::filesystem::read_symlink("/proc/self/exe").string(); }

// The options a task of the local cluster gets: the program's and the
// timeouts (TF_CONFIG says the rest).
std::vector<std::string> task_argv(const Options& o) {
  std::vector<std::string> argv{self_path(),
                                "--program", o.program.program,
                                "--device", o.device,
                                "--ps-timeout-ms", std::to_string(o.ps_timeout_ms),
                                "--embedding-dim", std::to_string(o.program.embedding_dim),
                                "--seed", std::to_string(o.seed),
                                "--partitioner", o.program.partitioner,
                                "--max-to-keep", std::to_string(o.max_to_keep)};
  if (!o.checkpoint_dir.empty()) argv.insert(argv.end(), {"--checkpoint-dir", o.checkpoint_dir});
  return argv;
}

int run_local_cluster(const Options& o) {
  cluster::LocalClusterOptions lo;
  lo.workers = o.workers;
  lo.ps = o.ps;
  lo.evaluator = o.sidecar_evaluator;
  cluster::LocalCluster local(lo);
  std::printf("meshrt-ps-train: a local cluster: %s\n", local.spec().to_json().c_str());
  std::vector<cluster::TaskId> tasks;
  for (int i = 0; i < o.ps; ++i) tasks.push_back({cluster::TaskType::kPs, i});
  for (int i = 0; i < o.workers; ++i) tasks.push_back({cluster::TaskType::kWorker, i});
  for (const cluster::TaskId& t : tasks) local.start(t, task_argv(o));
  for (const cluster::TaskId& t : tasks) local.wait_ready(t, std::chrono::seconds(60));
  if (o.sidecar_evaluator) {
    MESHRT_CHECK_ARG(!o.checkpoint_dir.empty(), "--sidecar-evaluator needs --checkpoint-dir");
    std::filesystem::create_directories(o.checkpoint_dir);
    std::filesystem::remove(done_marker(o.checkpoint_dir));  // an earlier run's
    local.start({cluster::TaskType::kEvaluator, 0}, task_argv(o));
  }
  std::fflush(stdout);
  int rc = run_chief(local.spec(), o);
  if (o.sidecar_evaluator) {
    // The evaluator ends once it has evaluated the last checkpoint.
    const cluster::TaskId evaluator{cluster::TaskType::kEvaluator, 0};
    for (int i = 0; i < 600 && local.running(evaluator); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    int status = local.exit_status(evaluator);
    if (status != 0) {
      std::printf("meshrt-ps-train: the sidecar evaluator %s\n",
                  status < 0 ? "did not finish within 60 s" : ("exited with " + std::to_string(status)).c_str());
      rc = 1;
    }
  }
  return rc;
}

int run(Options& o) {
  MESHRT_CHECK_ARG(o.seed >= 0, "--seed must be >= 0");
  MESHRT_CHECK_ARG(o.epochs >= 0 && o.steps_per_epoch >= 0 && o.workers >= 1 && o.ps >= 1 && o.max_to_keep >= 1 &&
                       o.eval_steps >= 1 && o.step_timeout_ms > 0 && o.ps_timeout_ms > 0,
                   "--epochs, --steps-per-epoch must be >= 0; --workers, --ps, --max-to-keep, --eval-steps and the "
                   "timeouts > 0");
  MESHRT_CHECK_ARG(!o.expect_falling_loss || o.epochs != 1, "--expect-falling-loss needs at least two epochs");
  // A step makes a few calls to the servers, each up to --ps-timeout-ms: a
  // shorter step deadline would read a lost server as lost workers.
  MESHRT_CHECK_ARG(o.step_timeout_ms > 3 * o.ps_timeout_ms, "--step-timeout-ms (", o.step_timeout_ms,
                   ") must be more than 3 x --ps-timeout-ms (", o.ps_timeout_ms, ")");
  o.program.seed = static_cast<uint64_t>(o.seed);
  if (o.local_cluster) return run_local_cluster(o);
  std::optional<cluster::TaskConfig> config =
      o.tf_config_file.empty() ? cluster::TaskConfig::from_environment()
                               : std::optional<cluster::TaskConfig>(cluster::TaskConfig::from_file(o.tf_config_file));
  MESHRT_CHECK_ARG(config.has_value(),
                   "no cluster: set TF_CONFIG (or MESHRT_TF_CONFIG_FILE, or --tf-config-file), or use --local-cluster");
  // A parameter server or worker waits for SIGTERM/SIGINT to stop cleanly
  // (blocked here, before any thread starts, and taken by sigwait); the
  // chief and the evaluator end on them at once.
  if (config->task.type == cluster::TaskType::kPs || config->task.type == cluster::TaskType::kWorker) {
    block_stop_signals();
  }
  cluster::exit_with_parent();
  switch (config->task.type) {
    case cluster::TaskType::kPs: return run_ps(*config);
    case cluster::TaskType::kWorker: return run_worker(*config, o);
    case cluster::TaskType::kChief: return run_chief(config->cluster, o);
    case cluster::TaskType::kEvaluator: return run_evaluator(o, config->cluster.num_tasks(cluster::TaskType::kPs));
  }
  return 2;
}

}  // namespace
}  // namespace meshrt::apps

int main(int argc, char** argv) {
  meshrt::log::Options log_options;
  log_options.program = "meshrt-ps-train";
  meshrt::log::configure(log_options);
  meshrt::apps::Options o;
  meshrt::apps::CommandLine app{
      "meshrt-ps-train: parameter-server training of seed 003's examples. One binary serves every role of the\n"
      "cluster (chief, worker, ps, evaluator), named by TF_CONFIG; --local-cluster starts a cluster on this\n"
      "machine (workers and parameter servers as separate processes on loopback) and runs the chief:\n"
      "  meshrt-ps-train --local-cluster --workers 3 --ps 2 --program avenger --min-accuracy 0.95\n"
      "Exit codes: 0 done, 1 a check failed, 2 bad usage or TF_CONFIG, 4 the cluster failed (restart it: the\n"
      "chief restores the latest checkpoint of --checkpoint-dir)."};
  app.add("--program", o.program.program, "regression (Dense(10), SGD, MSE) or avenger (Embedding, mean, Dense, RMSprop, BCE)")
      .one_of({"regression", "avenger"})
      .show_default();
  app.add("--epochs", o.epochs, "epochs (default: the seed's: 5 regression, 4 avenger)");
  app.add("--steps-per-epoch", o.steps_per_epoch, "steps scheduled per epoch (default: 20 regression, 5 avenger)");
  app.add("--batch", o.program.batch, "rows per step on a worker (default: 64 regression, 32 avenger)");
  app.add("--learning-rate", o.program.learning_rate, "(default: 0.01 regression, 0.1 avenger)");
  app.add("--embedding-dim", o.program.embedding_dim, "avenger's embedding width").show_default();
  app.add("--partitioner", o.program.partitioner,
          "how variables are split over the servers: min (MinSizePartitioner(256 KiB, number of ps), the seed's),\n"
          "max:<bytes> (MaxSizePartitioner), fixed:<shards>, none")
      .show_default();
  app.add("--seed", o.seed, "seed of the data and the initial values").show_default();
  app.add("--tf-config-file", o.tf_config_file, "read TF_CONFIG from this file (else the TF_CONFIG variable)");
  app.flag("--local-cluster", o.local_cluster, "start a cluster on this machine and run the chief here");
  app.add("--workers", o.workers, "--local-cluster's workers").show_default();
  app.add("--ps", o.ps, "--local-cluster's parameter servers").show_default();
  app.flag("--sidecar-evaluator", o.sidecar_evaluator, "--local-cluster: also start an evaluator task (needs --checkpoint-dir)");
  app.add("--checkpoint-dir", o.checkpoint_dir,
          "save a checkpoint after every epoch here; the chief restores the latest one at start");
  app.add("--max-to-keep", o.max_to_keep, "checkpoints kept").show_default();
  app.flag("--inline-eval", o.inline_eval, "schedule evaluation steps after every epoch");
  app.add("--eval-steps", o.eval_steps, "evaluation steps per epoch with --inline-eval").show_default();
  app.add("--min-accuracy", o.min_accuracy, "exit 1 if the last epoch's accuracy is below this (avenger)");
  app.add("--min-eval-accuracy", o.min_eval_accuracy,
          "exit 1 if the last inline evaluation's accuracy is below this (with --inline-eval)");
  app.flag("--expect-falling-loss", o.expect_falling_loss, "exit 1 unless the last epoch's loss is below the first's");
  app.add("--step-timeout-ms", o.step_timeout_ms, "a step's deadline on a worker (past it the worker is lost)")
      .show_default();
  app.add("--ps-timeout-ms", o.ps_timeout_ms, "the deadline of every call to a parameter server").show_default();
  app.add("--step-sleep-ms", o.program.step_sleep_ms, "workers sleep this long in every step (a slow step, for tests)");
  app.add("--evaluator-timeout-s", o.evaluator_timeout_s, "the evaluator gives up after this long").show_default();
  app.add("--device", o.device, "the workers' device: cpu or cuda:N").show_default();
  if (std::optional<int> code = app.parse(argc, argv)) return *code;
  try {
    return meshrt::apps::run(o);
  } catch (const meshrt::Error& e) {
    std::fprintf(stderr, "meshrt-ps-train: %s\n", e.message().c_str());
    if (e.kind() == meshrt::ErrorKind::kInvalidArgument || e.kind() == meshrt::ErrorKind::kShape) return 2;
    if (e.kind() == meshrt::ErrorKind::kUnavailable || e.kind() == meshrt::ErrorKind::kDeadlineExceeded) return 4;
    return 1;
  }
}

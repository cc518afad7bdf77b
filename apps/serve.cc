// meshrt-serve: distributed inference over HTTP and gRPC (KServe v2 / Open
// Inference Protocol). Every rank loads the model repository; rank 0 answers.
//
//   mpirun -np 4 meshrt-serve --model-repository examples/models --http-port 8000
//
// Drain and stop: SIGTERM (or Ctrl-C) to rank 0, or SIGUSR1 to mpirun.
//
// Supervised (a lost rank is healed: serving/supervisor.h):
//
//   meshrt-serve --supervise --ranks 4 --model-repository examples/models --http-port 8000
//
// runs meshrt-supervisor (next to this executable) with the other arguments,
// which owns the port and runs the MPI job as its child.
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "comm/world.h"
#include "device/log.h"
#include "apps/app_common.h"
#include "apps/cli.h"
#include "serving/server.h"

namespace {

// With --supervise anywhere in argv, becomes meshrt-supervisor (the file next to
// this executable) with the other arguments, before MPI starts; returns only on failure.
int exec_supervisor_if_asked(int argc, char** argv) {
  std::vector<char*> args;
  bool supervise = false;
  for (int i = 0; i < argc; ++i) {
    if (i > 0 && std::strcmp(argv[i], "--supervise") == 0) {
      supervise = true;
    } else {
      args.push_back(argv[i]);
    }
  }
  if (!supervise) return 0;
  std::string self(4096, '\0');
  ssize_t n = ::readlink("/proc/self/exe", self.data(), self.size() - 1);
  std::string folder = n > 0 ? self.substr(0, static_cast<size_t>(n)) : std::string(argv[0]);
  folder = folder.find('/') == std::string::npos ? "." : folder.substr(0, folder.rfind('/'));
  std::string supervisor = folder + "/meshrt-supervisor";
  args[0] = supervisor.data();
  args.push_back(nullptr);
  ::execv(supervisor.c_str(), args.data());
  std::fprintf(stderr, "meshrt-serve: --supervise: cannot run %s: %s\n", supervisor.c_str(), std::strerror(errno));
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (int failed = exec_supervisor_if_asked(argc, argv)) return failed;
  meshrt::World::init(&argc, &argv);
  meshrt::serving::install_drain_signal_handlers();
  meshrt::serving::ServerOptions o;
  double comm_timeout = 60;
  int result_timeout_ms = static_cast<int>(o.result_timeout.count());
  std::string batching = "on";
  meshrt::apps::CommandLine app{"meshrt-serve: serves the models of a repository over HTTP and gRPC (KServe v2 / Open Inference Protocol)\n"
               "on the ranks of the job: pipeline stages on the 'stage' axis, tensor parallel within; a model smaller than\n"
               "the job runs on ranks of its own (--exclusive-ranks: never shared), models load and unload while it serves\n"
               "with --model-control-mode explicit or poll.\n"
               "Run it under mpirun with at least the largest model's rank_size ranks, e.g.:\n"
               "  mpirun -np 4 meshrt-serve --model-repository examples/models --http-port 8000\n"
               "Stop it with SIGTERM to rank 0 (or SIGUSR1 to mpirun): it drains, then exits 0.\n"
               "With --supervise (first, or anywhere) it runs meshrt-supervisor instead, which owns the HTTP port, runs\n"
               "the job under mpirun itself and relaunches it when a rank is lost (see meshrt-supervisor --help):\n"
               "  meshrt-serve --supervise --ranks 4 --model-repository examples/models --http-port 8000"};
  app.add("--model-repository", o.repository, "folder with one folder per model (config.json + weights)").required();
  app.add("--model", o.models, "load only this model at start (repeatable; default: every model, none with "
                               "--model-control-mode explicit)");
  std::vector<std::string> load_models;
  app.add("--load-model", load_models, "the same as --model (Triton's name): a model to load at start (repeatable)");
  app.add("--model-control-mode", o.model_control_mode,
          "none: models load at start only; explicit: also load and unload on request (POST "
          "/v2/repository/models/<m>/load|unload, gRPC RepositoryModelLoad/Unload); poll: the repository is watched "
          "and new, changed and removed models are loaded, reloaded and unloaded")
      .one_of({"none", "explicit", "poll"})
      .show_default();
  double poll_secs = 5;
  app.add("--repository-poll-secs", poll_secs, "with --model-control-mode poll: how often the repository is looked at")
      .show_default();
  int64_t unload_timeout_secs = 60;
  app.add("--unload-timeout-secs", unload_timeout_secs,
          "how long an unload waits for the requests the model accepted before it gives up (the model stays loaded, "
          "closed to new requests)")
      .show_default();
  bool exclusive_ranks = false;
  app.flag("--exclusive-ranks", exclusive_ranks, "never let two models share ranks: a model that finds no free ranks is refused, "
          "saying which models hold them (default: it shares the least busy ones)");
  std::vector<std::string> servable_libraries;
  app.add("--servable-library", servable_libraries,
          "<model>=<path>: the model's servable is defined by this shared library (a C++ servable built with "
          "serving/servable_plugin.h against this meshrt), over its config.json's servable_library (repeatable)");
  app.add("--http-port", o.http.port, "HTTP port on rank 0 (0: any free port)").show_default();
  app.add("--http-address", o.http.address, "address to listen on").show_default();
  app.add("--http-threads", o.http.threads, "HTTP threads").show_default();
  int grpc_port = o.grpc.port;
  app.add("--grpc-port", grpc_port, "KServe v2 gRPC port on rank 0 (0: any free port; -1: no gRPC)").show_default();
  app.add("--grpc-address", o.grpc.address, "address gRPC listens on").show_default();
  app.add("--grpc-port-file", o.grpc_port_file, "rank 0 writes the gRPC port it listens on here");
  app.add("--max-body-bytes", o.http.max_body_bytes, "largest request body accepted (413 above)").show_default();
  app.add("--http-max-connections", o.http.max_connections, "open HTTP connections at most (more are closed at once)")
      .show_default();
  app.add("--http-max-connections-per-client", o.http.max_connections_per_client,
          "open HTTP connections from one client address at most (so one client cannot lock out the others)")
      .show_default();
  int64_t header_timeout_ms = o.http.header_timeout.count(), body_timeout_ms = o.http.body_timeout.count();
  app.add("--http-header-timeout-ms", header_timeout_ms,
          "a new connection must send its request headers within this time, else it is closed")
      .show_default();
  app.add("--http-body-timeout-ms", body_timeout_ms,
          "once the headers are in, the request body must arrive within this time, else the connection is closed")
      .show_default();
  app.add("--batching", batching, "dynamic batching: on (per the model configs) or off (each request alone)")
      .one_of({"on", "off"})
      .show_default();
  app.add("--result-timeout-ms", result_timeout_ms, "how long rank 0 waits for a batch before declaring a worker lost")
      .show_default();
  app.add("--comm-timeout", comm_timeout,
                 "deadline of every collective, in seconds (keep it below --result-timeout-ms, so a stuck rank "
                 "reports before rank 0 gives up on it)")
      .show_default();
  app.add("--trace-file", o.trace_file,
          "write a Chrome trace (chrome://tracing, Perfetto) of every batch's stages: each rank writes "
          "<file>.<rank>.json when the server stops");
  int grace_ms = 0;
  app.add("--drain-grace-ms", grace_ms, "after draining, stay up (not ready) this long before exiting")
      .show_default();
  int64_t exit_timeout_secs = o.drain_timeout.count();
  app.add("--exit-timeout-secs", exit_timeout_secs,
          "after SIGTERM (or SIGINT, SIGUSR1), how long the drain may take at most: accepted requests and generations "
          "finish within it, then the server exits anyway (Triton's name); --drain-grace-ms is waited after it")
      .show_default();
  int metrics_port = 8002;
  app.add("--metrics-port", metrics_port,
          "port of a second HTTP server on rank 0 that answers GET /metrics alone (Triton's metrics port), on "
          "--http-address; 0: any free port, -1: none. /metrics on the HTTP port answers either way")
      .show_default();
  app.add("--metrics-port-file", o.metrics_port_file, "rank 0 writes the metrics port it listens on here");
  meshrt::log::Options log;
  log.program = "meshrt-serve";
  app.add("--log-verbose", log.verbose_level, "verbose log lines up to this level (1: a line per HTTP request)")
      .show_default();
  app.add("--log-format", log.format,
          "log lines as 'default' (\"meshrt-serve: ...\") or 'json' (one object a line: time, level, rank, message)")
      .one_of({"default", "json"})
      .show_default();
  app.add("--log-info", log.info, "print info lines").show_default();
  app.add("--log-warning", log.warning, "print warnings").show_default();
  app.add("--log-error", log.error, "print errors").show_default();
  app.add("--device", o.device, "cpu or cuda:N (default: cuda:<local rank> when GPUs exist, else cpu)");
  app.add("--port-file", o.port_file, "rank 0 writes the HTTP port it listens on here");
  app.add("--pid-file", o.pid_file,
          "rank 0 writes its process id here (send it SIGTERM to drain); every rank writes its own to <file>.<rank>");
  int64_t finalize_timeout_ms = meshrt::World::finalize_timeout().count();
  app.add("--finalize-timeout-ms", finalize_timeout_ms,
          "at exit, how long the ranks wait for each other; past it the job is aborted naming the ranks that did not "
          "answer (a stopped or stuck rank)")
      .show_default();
  return meshrt::apps::run_mpi_app("meshrt-serve", app, argc, argv, [&] {
    log.rank = meshrt::World::get().rank();
    meshrt::log::configure(log);
    MESHRT_CHECK_ARG(exit_timeout_secs >= 0, "--exit-timeout-secs must not be negative, got ", exit_timeout_secs);
    MESHRT_CHECK_ARG(metrics_port >= -1 && metrics_port <= 65535, "--metrics-port must be a port (0: any free "
                     "port) or -1 (none), got ", metrics_port);
    o.drain_timeout = std::chrono::seconds(exit_timeout_secs);
    o.metrics_port = metrics_port;
    MESHRT_CHECK_ARG(header_timeout_ms > 0 && body_timeout_ms > 0, "--http-header-timeout-ms and --http-body-timeout-ms must be "
                     "positive, got ", header_timeout_ms, " and ", body_timeout_ms);
    MESHRT_CHECK_ARG(o.http.max_connections > 0 && o.http.max_connections_per_client > 0,
                     "--http-max-connections and --http-max-connections-per-client must be positive");
    MESHRT_CHECK_ARG(grpc_port >= -1 && grpc_port <= 65535, "--grpc-port must be a port (0: any free one) or -1 (no gRPC), got ",
                     grpc_port);
    o.grpc_enabled = grpc_port >= 0;
    if (o.grpc_enabled) o.grpc.port = static_cast<uint16_t>(grpc_port);
    o.http.header_timeout = std::chrono::milliseconds(header_timeout_ms);
    o.http.body_timeout = std::chrono::milliseconds(body_timeout_ms);
    meshrt::apps::raise_open_file_limit();
    meshrt::World::set_finalize_timeout(std::chrono::milliseconds(finalize_timeout_ms));
    o.batching = batching == "on";
    for (const std::string& given : servable_libraries) {
      size_t eq = given.find('=');
      MESHRT_CHECK_ARG(eq != std::string::npos && eq > 0 && eq + 1 < given.size(),
                       "--servable-library expects <model>=<path>, got '", given, "'");
      std::string model = given.substr(0, eq);
      MESHRT_CHECK_ARG(!o.servable_libraries.count(model), "--servable-library names model '", model, "' twice");
      std::string path = given.substr(eq + 1);
      // Relative to the working directory (dlopen would search the library path for a bare name).
      o.servable_libraries[model] = path.find('/') == std::string::npos ? "./" + path : path;
    }
    o.drain_grace = std::chrono::milliseconds(grace_ms);
    MESHRT_CHECK_ARG(poll_secs > 0 && unload_timeout_secs > 0, "--repository-poll-secs and --unload-timeout-secs must "
                     "be positive, got ", poll_secs, " and ", unload_timeout_secs);
    o.repository_poll = std::chrono::milliseconds(static_cast<long long>(poll_secs * 1000));
    o.unload_timeout = std::chrono::seconds(unload_timeout_secs);
    o.share_ranks = !exclusive_ranks;
    o.models.insert(o.models.end(), load_models.begin(), load_models.end());
    o.result_timeout = std::chrono::milliseconds(result_timeout_ms);
    MESHRT_CHECK_ARG(comm_timeout > 0, "--comm-timeout must be positive, got ", comm_timeout);
    o.comm_timeout = std::chrono::milliseconds(static_cast<long long>(comm_timeout * 1000));
    return meshrt::serving::run_server(o);
  });
}

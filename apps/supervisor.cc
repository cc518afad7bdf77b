// meshrt-supervisor: owns the public HTTP port of a meshrt-serve job and runs
// the job as its child, relaunching it when it is lost (serving/supervisor.h).
//
//   meshrt-supervisor --ranks 4 --model-repository examples/models --http-port 8000
//   meshrt-serve --supervise --ranks 4 --model-repository examples/models --http-port 8000   # the same
//
// Not an MPI program: it starts mpirun. Stop it with SIGTERM (or Ctrl-C): the
// job drains, then it exits 0.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <sstream>

#include "apps/app_common.h"
#include "device/log.h"
#include "apps/cli.h"
#include "serving/supervisor.h"

#ifndef MESHRT_MPIEXEC
#define MESHRT_MPIEXEC "mpirun"
#endif

namespace {

namespace fs = std::filesystem;

// The folder of this executable (its siblings: meshrt-serve).
fs::path own_folder() {
  std::error_code error;
  fs::path self = fs::read_symlink("/proc/self/exe", error);
  return error ? fs::path(".") : self.parent_path();
}

std::vector<std::string> split_words(const std::string& text) {
  std::istringstream in(text);
  std::vector<std::string> out;
  for (std::string word; in >> word;) out.push_back(word);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  using meshrt::serving::SupervisorOptions;
  meshrt::serving::install_supervisor_signal_handlers();
  SupervisorOptions o;
  o.http.port = 8000;
  o.mpirun = fs::exists(MESHRT_MPIEXEC) ? MESHRT_MPIEXEC : "mpirun";
  o.serve = (own_folder() / "meshrt-serve").string();
  meshrt::apps::CommandLine app{
      "meshrt-supervisor (also: meshrt-serve --supervise): owns the HTTP and gRPC ports of a meshrt-serve job and runs the job\n"
      "as its child (mpirun -np <ranks> meshrt-serve ... on 127.0.0.1, any port), relaying every request to its rank 0.\n"
      "When the job ends unasked (kill -9 of any rank makes OpenMPI end it), it is relaunched; meanwhile every request\n"
      "gets 503 with Retry-After, /v2/health/live stays 200 and /v2/health/ready is 503. Options it does not know go to\n"
      "meshrt-serve, e.g.:\n"
      "  meshrt-supervisor --ranks 4 --model-repository examples/models --http-port 8000\n"
      "Stop it with SIGTERM (or Ctrl-C): the job drains (SIGTERM to its rank 0), then it exits 0."};
  app.allow_extras();
  app.add("--ranks", o.ranks, "ranks of the job (mpirun -np): the models' rank_size").required();
  app.add("--mpirun", o.mpirun, "the MPI launcher").show_default();
  std::string mpirun_args;
  app.add("--mpirun-args", mpirun_args, "more arguments of the launcher, split at spaces (e.g. \"--bind-to none\")");
  app.add("--serve", o.serve, "the meshrt-serve executable to run").show_default();
  app.add("--http-port", o.http.port, "public HTTP port (0: any free port)").show_default();
  app.add("--http-address", o.http.address, "public address to listen on").show_default();
  int grpc_port = o.grpc.port;
  app.add("--grpc-port", grpc_port,
          "public KServe v2 gRPC port, relayed call by call to the job's (0: any free port; -1: no gRPC)")
      .show_default();
  app.add("--grpc-address", o.grpc.address, "public address of gRPC").show_default();
  app.add("--grpc-port-file", o.grpc_port_file, "the supervisor writes its public gRPC port here");
  app.add("--http-threads", o.http.threads, "HTTP threads of the public side").show_default();
  app.add("--max-body-bytes", o.http.max_body_bytes,
          "largest request body accepted (413 above); passed on to meshrt-serve too").show_default();
  app.add("--http-max-connections", o.http.max_connections, "open public connections at most").show_default();
  app.add("--http-max-connections-per-client", o.http.max_connections_per_client,
          "open public connections from one client address at most").show_default();
  int64_t header_timeout_ms = o.http.header_timeout.count(), body_timeout_ms = o.http.body_timeout.count();
  app.add("--http-header-timeout-ms", header_timeout_ms, "a new connection must send its request headers within this time")
      .show_default();
  app.add("--http-body-timeout-ms", body_timeout_ms, "the request body must arrive within this time").show_default();
  app.add("--port-file", o.port_file, "the supervisor writes its public HTTP port here");
  app.add("--pid-file", o.pid_file, "the supervisor writes its process id here (send it SIGTERM to stop)");
  app.add("--work-dir", o.work_dir,
          "folder for the job's files: job.port, job.pid (rank 0), job.pid.<rank> (default: a new temp folder, removed at exit)");
  int64_t restart_delay_ms = o.restart_delay.count();
  app.add("--restart-delay-ms", restart_delay_ms, "after the job is lost, wait this long before relaunching it").show_default();
  app.add("--max-restarts", o.max_restarts, "relaunches at most, then exit 1 (-1: no limit)").show_default();
  app.add("--retry-after-s", o.retry_after_s, "Retry-After of the 503 answers while the job is down").show_default();
  int64_t start_timeout_s = o.start_timeout.count(), stop_timeout_s = o.stop_timeout.count(),
          upstream_timeout_s = o.upstream_timeout.count();
  app.add("--start-timeout-s", start_timeout_s, "a launch not ready within this time is killed and relaunched").show_default();
  app.add("--stop-timeout-s", stop_timeout_s, "after SIGTERM, the job may drain this long, then it is killed").show_default();
  app.add("--upstream-timeout-s", upstream_timeout_s, "one request relayed to rank 0 may take this long (503 after)")
      .show_default();
  app.add("--proxy-threads", o.proxy_threads, "requests relayed to rank 0 at the same time, one connection each (more wait their turn; at most 250)")
      .show_default();
  meshrt::log::Options log;
  log.program = "meshrt-supervisor";
  app.add("--log-format", log.format, "log lines of the supervisor and of the job: default or json (see meshrt-serve --help)")
      .one_of({"default", "json"})
      .show_default();
  if (std::optional<int> code = app.parse(argc, argv)) return *code;
  try {
    meshrt::log::configure(log);
    MESHRT_CHECK_ARG(header_timeout_ms > 0 && body_timeout_ms > 0, "--http-header-timeout-ms and --http-body-timeout-ms must be positive");
    MESHRT_CHECK_ARG(restart_delay_ms >= 0 && start_timeout_s > 0 && stop_timeout_s > 0 && upstream_timeout_s > 0,
                     "--restart-delay-ms must not be negative, the timeouts must be positive");
    MESHRT_CHECK_ARG(grpc_port >= -1 && grpc_port <= 65535, "--grpc-port must be a port (0: any free one) or -1 (no gRPC), got ",
                     grpc_port);
    o.grpc_enabled = grpc_port >= 0;
    if (o.grpc_enabled) o.grpc.port = static_cast<uint16_t>(grpc_port);
    o.http.header_timeout = std::chrono::milliseconds(header_timeout_ms);
    o.http.body_timeout = std::chrono::milliseconds(body_timeout_ms);
    o.restart_delay = std::chrono::milliseconds(restart_delay_ms);
    o.start_timeout = std::chrono::seconds(start_timeout_s);
    o.stop_timeout = std::chrono::seconds(stop_timeout_s);
    o.upstream_timeout = std::chrono::seconds(upstream_timeout_s);
    o.mpirun_args = split_words(mpirun_args);
    o.serve_args = app.extras();
    o.serve_args.insert(o.serve_args.end(), {"--max-body-bytes", std::to_string(o.http.max_body_bytes),
                                             "--log-format", log.format});
    meshrt::apps::raise_open_file_limit();
    return meshrt::serving::run_supervisor(o);
  } catch (const meshrt::Error& e) {
    meshrt::log::error(e.message());
    return 2;
  }
}

// meshrt-supervisor's core: owns the public HTTP (and gRPC) port of a meshrt-serve job and
// runs the job (mpirun -np <ranks> meshrt-serve ...) as its child, relaunching
// it whenever it ends without being asked to, so that losing a rank (kill -9 of
// any rank makes OpenMPI end the whole job) costs a restart, not the service.
//
// Every request to the public port is answered:
//   - /v2/health/live: 200 by the supervisor itself, always, while it runs;
//   - /v2/health/ready: 200 while the job is up and rank 0 said ready to the
//     supervisor's last probe (every 250 ms), else 503 {"ready": false};
//   - while the job is up (launched, listening, and said ready once), any other
//     request is relayed to the job's rank 0 (method, target, the end-to-end
//     headers, body) and its answer relayed back (status, body, headers);
//   - while the job is starting, lost or restarting, and when an exchange with
//     rank 0 fails (the job died under it), the answer is 503 with a
//     Retry-After header and {"error": "...restarting..."}; /v2/health/ready
//     answers 503 {"ready": false} then. /metrics has the supervisor's
//     counters (meshrt_supervisor_*) after the job's own lines.
// The public gRPC port (grpc, unless off) is relayed the same way, call by
// call (rpc/relay.h) to the job's gRPC port on loopback: while the job is up
// every call goes through (streams too), otherwise it gets UNAVAILABLE with
// the same reason; a call in flight when the job is lost ends UNAVAILABLE.
// Nothing is re-sent on its own: an exchange that failed before a byte was
// written (connection refused) gets 503 at once, like one that failed later (the
// request may or may not have run); only GET and HEAD, being idempotent, are
// tried again once on a fresh connection when a kept-alive one fails.
//
// The job runs in its own process group, with /dev/null as stdin and the
// supervisor's stdout and stderr. The supervisor is a child subreaper: ranks
// orphaned by a dying mpirun become its children and are killed and reaped
// before the next launch. SIGTERM or SIGINT to the supervisor: not ready,
// SIGTERM to the job's rank 0 (it drains: accepted requests finish, new ones
// get its 503), the job is waited for up to stop_timeout and then killed
// (SIGKILL to its process group and every descendant), and the supervisor
// exits 0.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "rpc/server.h"
#include "serving/http_server.h"

namespace meshrt::serving {

struct SupervisorOptions {
  HttpServerOptions http;   // the public side (address, port, limits)
  // The public gRPC port (relayed to the job's); grpc_enabled false: none,
  // and the job serves no gRPC either.
  rpc::ServerOptions grpc{"0.0.0.0", 8001};
  bool grpc_enabled = true;
  std::string grpc_port_file;  // the supervisor writes its public gRPC port here
  int ranks = 1;            // mpirun -np
  std::string mpirun;       // the launcher (a path, or a name looked up on PATH)
  std::vector<std::string> mpirun_args;  // before -np
  std::string serve;        // the meshrt-serve executable
  // Passed on to meshrt-serve (not the HTTP address, port, port and pid files;
  // "--metrics-port 0" is added unless they name a metrics port).
  std::vector<std::string> serve_args;
  std::string port_file, pid_file;       // the supervisor's own HTTP port and process id
  // Where the job's port and pid files go (job.port, job.pid, job.pid.<rank>);
  // empty: a new folder under the temp directory, removed at exit.
  std::string work_dir;
  std::chrono::milliseconds restart_delay{1000};  // after a loss, before relaunching
  int max_restarts = -1;                          // -1: relaunch forever
  int retry_after_s = 2;                          // the Retry-After of the supervisor's 503 answers
  std::chrono::seconds start_timeout{300};        // a launch not ready by then is killed and relaunched
  std::chrono::seconds stop_timeout{90};          // after SIGTERM, how long the job may drain
  std::chrono::seconds upstream_timeout{300};     // one exchange with rank 0, at most
  int proxy_threads = 64;                         // exchanges with rank 0 at the same time (one connection each)
};

// Installs the SIGTERM and SIGINT handlers of the supervisor (call first thing in main).
void install_supervisor_signal_handlers();

// Runs until SIGTERM or SIGINT. Returns the exit code: 0 after a stop asked by
// a signal; 2 when the first launch ended before it was ever ready (a bad
// command line or model repository: relaunching would not help); 1 when
// max_restarts relaunches were used up. Throws Error(kUnavailable) when the
// public port cannot be bound.
int run_supervisor(const SupervisorOptions& options);

}  // namespace meshrt::serving

// meshrt-serve's server: every rank reads the model repository and builds its
// stages of the models placed on it (engine.h: each model on rank_size ranks
// of its own where the job has them); rank 0 serves KServe v2 over HTTP and
// gRPC, batches requests, drives the engine and loads and unloads models
// (model_control.h); the other ranks run what rank 0 sends.
//
// Draining: SIGTERM or SIGINT to rank 0 (or SIGUSR1 to mpirun, which forwards
// it to every rank) makes readiness false and new inference requests get 503;
// requests already accepted finish; then every rank exits with 0. Call
// install_drain_signal_handlers() in main after World::init.
#pragma once

#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "rpc/server.h"
#include "serving/http_server.h"

namespace meshrt::serving {

struct ServerOptions {
  std::string repository;
  std::vector<std::string> models;  // to load at start; empty: every model of the repository (mode explicit: none)
  // Triton's model control mode (model_control.h): "none", "explicit", "poll".
  std::string model_control_mode = "none";
  std::chrono::milliseconds repository_poll{5000};  // "poll": how often the repository is looked at
  // How long an unload waits for the requests the model accepted.
  std::chrono::milliseconds unload_timeout{60000};
  // false: a model that finds no free ranks is refused (EngineOptions::share_ranks).
  bool share_ranks = true;
  // Model name -> the shared library that defines its servable, over its
  // config.json's "servable_library" (serving/servable_plugin.h).
  std::map<std::string, std::string> servable_libraries;
  HttpServerOptions http;
  // KServe v2 over gRPC on rank 0 (grpc_frontend.h); its port: 8001 by
  // default, 0 any free port, and no gRPC at all when grpc_enabled is false.
  // Its message limit is http.max_body_bytes (one limit for both protocols).
  rpc::ServerOptions grpc{"0.0.0.0", 8001};
  bool grpc_enabled = true;
  bool batching = true;             // false: every request runs alone (dynamic batching off)
  std::chrono::milliseconds result_timeout{120000};
  std::chrono::milliseconds comm_timeout{60000};  // below result_timeout (see EngineOptions)
  std::string trace_file;  // EngineOptions::trace_file: "" = no trace
  // How long a drain may take at most (meshrt-serve --exit-timeout-secs): the
  // generations accepted and the responses being written; then it exits anyway.
  std::chrono::seconds drain_timeout{60};
  // After draining, keep answering (not ready; 503 to inference) this long
  // before exiting, so that load balancers see the server go unready.
  std::chrono::milliseconds drain_grace{0};
  // Rank 0 writes its HTTP port / process id / gRPC port there; every rank
  // also writes its process id to "<pid_file>.<rank>".
  std::string port_file, pid_file, grpc_port_file;
  // A second HTTP server on rank 0 that answers GET /metrics alone (Triton's
  // metrics port), on http's address with one thread: its port (0: any free
  // port), or -1 for none. Rank 0 writes the port it listens on to
  // metrics_port_file, if given. /metrics on the HTTP port answers as well.
  int metrics_port = -1;
  std::string metrics_port_file;
  std::string device;               // "cpu", "cuda:N"; empty: the World's default
};

// Installs handlers for SIGTERM, SIGINT and SIGUSR1 that ask the server to drain
// (on any thread the signal lands on: MPI's own threads do not block signals).
// On ranks other than 0 the signals are then ignored: rank 0 tells them when to stop.
void install_drain_signal_handlers();

// Runs the server on this rank until drained. Returns the process exit code:
// 0 after a clean drain, 2 when the models cannot be loaded (the reason is printed
// by rank 0).
int run_server(const ServerOptions& options);

}  // namespace meshrt::serving

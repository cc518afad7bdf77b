#include "serving/server.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <set>
#include <thread>

#include "comm/world.h"
#include "device/log.h"
#include "models/tokenizer.h"
#include "serving/engine.h"
#include "serving/frontend.h"
#include "serving/generator.h"
#include "serving/grpc_frontend.h"
#include "serving/http_router.h"
#include "serving/metrics.h"
#include "serving/model_control.h"
#include "serving/protocol.h"
#include "serving/scheduler.h"
#include "serving/signal_pipe.h"

namespace meshrt::serving {

void install_drain_signal_handlers() {
  // The writing end never blocks: extra signals are dropped when nobody reads
  // (on the other ranks, or once draining started).
  route_signals_to_pipe({SIGTERM, SIGINT, SIGUSR1});
}

namespace {

HttpResponse json_response(int status, std::string body) { return {status, std::move(body), "application/json", {}}; }
HttpResponse error_response(int status, const std::string& message) { return json_response(status, error_json(message)); }

// The KServe v2 routes on rank 0, over the protocol-neutral core (frontend.h).
class HttpFrontend {
 public:
  HttpFrontend(Frontend& core, Metrics& metrics)
      : core_(core), metrics_(metrics), router_(error_response), metrics_router_(error_response) {
    RouteHandler metrics_route = [this](const HttpRequest&, const RouteParams&, const Responder& respond) {
      respond({200, metrics_.render(), "text/plain; version=0.0.4", {}});
    };
    router_.add("GET", "/metrics", metrics_route);
    metrics_router_.add("GET", "/metrics", metrics_route);  // the metrics port's one route
    router_.add("GET", "/v2", [](const HttpRequest&, const RouteParams&, const Responder& respond) {
      respond(json_response(200, server_metadata_json()));
    });
    router_.add("GET", "/v2/health/live", [](const HttpRequest&, const RouteParams&, const Responder& respond) {
      respond(json_response(200, R"({"live": true})"));
    });
    router_.add("GET", "/v2/health/ready", [this](const HttpRequest&, const RouteParams&, const Responder& respond) {
      bool ready = core_.ready();
      respond(json_response(ready ? 200 : 503, ready ? R"({"ready": true})" : R"({"ready": false})"));
    });
    // The model repository extension's index: the models loaded, by version, with their state.
    router_.add("POST", "/v2/repository/index", [this](const HttpRequest& request, const RouteParams&,
                                                       const Responder& respond) {
      bool ready_only;
      try {
        ready_only = parse_repository_index_request(request.body);
      } catch (const Error& e) {
        return respond(error_response(400, e.message()));
      }
      respond(json_response(200, repository_index_json(core_.repository_index(ready_only))));
    });
    // Load and unload (model_control.h): refused unless the server runs in
    // model control mode explicit, as Triton does. They answer when done.
    for (const std::string action : {"load", "unload"}) {
      router_.add("POST", "/v2/repository/models/{model}/" + action,
                  [this, action](const HttpRequest& request, const RouteParams& params, const Responder& respond) {
                    try {
                      check_repository_load_request(request.body);
                    } catch (const Error& e) {
                      return respond(error_response(400, action + " '" + params.at("model") + "': " + e.message()));
                    }
                    Outcome o = action == "load" ? core_.load_model(params.at("model"))
                                                 : core_.unload_model(params.at("model"));
                    respond(o.ok() ? json_response(200, "{}") : error_response(o.status, o.error));
                  });
    }
    // The statistics extension: every model's (before the model routes, so that
    // "stats" is not taken for a model's name).
    router_.add("GET", "/v2/models/stats", [this](const HttpRequest&, const RouteParams&, const Responder& respond) {
      respond(json_response(200, statistics_json(core_.statistics("", ""))));
    });
    // Every model route with and without /versions/{version}.
    for (const std::string& base : {std::string("/v2/models/{model}"), std::string("/v2/models/{model}/versions/{version}")}) {
      // The model configuration extension (Triton's ModelConfig JSON) and one
      // model's statistics (every version of it unless the path names one).
      router_.add("GET", base + "/config", model_route([this](int model, const HttpRequest&, const Responder& respond) {
        respond(json_response(200, model_config_json(core_.config(model))));
      }));
      router_.add("GET", base + "/stats",
                  [this](const HttpRequest&, const RouteParams& params, const Responder& respond) {
                    auto version = params.find("version");
                    const std::string v = version == params.end() ? "" : version->second;
                    std::string error;
                    if (core_.find(params.at("model"), v, &error) < 0) return respond(error_response(404, error));
                    respond(json_response(200, statistics_json(core_.statistics(params.at("model"), v))));
                  });
      router_.add("GET", base, model_route([this](int model, const HttpRequest&, const Responder& respond) {
        const ModelSignature& s = core_.signature(model);
        respond(json_response(200, model_metadata_json(s, core_.model_failure(model), core_.versions(s.name))));
      }));
      router_.add("GET", base + "/ready", model_route([this](int model, const HttpRequest&, const Responder& respond) {
        std::string reason;
        bool ready = core_.model_ready(model, &reason);
        respond(json_response(ready ? 200 : 503, model_ready_json(core_.servable(model).name, ready, reason)));
      }));
      router_.add("POST", base + "/infer", model_route([this](int model, const HttpRequest& r, const Responder& respond) {
        infer(model, r, respond);
      }));
      router_.add("POST", base + "/generate", model_route([this](int model, const HttpRequest& r, const Responder& respond) {
        generate(model, r, respond, false);
      }));
      router_.add("POST", base + "/generate_stream",
                  model_route([this](int model, const HttpRequest& r, const Responder& respond) {
                    generate(model, r, respond, true);
                  }));
    }
  }

  void handle(const HttpRequest& request, const Responder& respond) {
    if (!log::verbose_enabled(1)) {
      return router_.handle(request, [this, respond](HttpResponse r) {
        metrics_.http_request(r.status);
        respond(std::move(r));
      });
    }
    // At --log-verbose 1, a line per request (its method and target kept only then).
    auto arrival = std::chrono::steady_clock::now();
    router_.handle(request, [this, respond, arrival, method = request.method, target = request.target](HttpResponse r) {
      metrics_.http_request(r.status);
      double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - arrival).count();
      char took[32];
      std::snprintf(took, sizeof took, "%.3f", ms);
      log::verbose(1, detail::cat("HTTP ", method, " ", target, ": ", r.status, " in ", took, " ms",
                                  r.stream ? " (streamed: until its first bytes)" : ""));
      respond(std::move(r));
    });
  }
  void handle_metrics_port(const HttpRequest& request, const Responder& respond) { metrics_router_.handle(request, respond); }

 private:
  // A route of one model: finds the model (and version) the path names, or answers 404.
  RouteHandler model_route(std::function<void(int model, const HttpRequest&, const Responder&)> f) {
    return [this, f](const HttpRequest& request, const RouteParams& params, const Responder& respond) {
      auto version = params.find("version");
      std::string error;
      int model = core_.find(params.at("model"), version == params.end() ? "" : version->second, &error);
      if (model < 0) return respond(error_response(404, error));
      f(model, request, respond);
    };
  }

  void infer(int model, const HttpRequest& request, const Responder& respond) {
    auto arrival = std::chrono::steady_clock::now();
    auto answer = [this, model, respond, arrival](HttpResponse r) {
      core_.answered(model, r.status, arrival);
      respond(std::move(r));
    };
    auto parsed = std::make_shared<InferRequest>();
    const ModelSignature& signature = core_.signature(model);
    try {
      std::optional<size_t> header_length = parse_header_length(request.header("Inference-Header-Content-Length"));
      *parsed = parse_infer_request(request.body, header_length, signature, core_.servable(model).batching.max_batch_size);
    } catch (const RequestError& e) {
      return answer(error_response(e.status(), e.what()));
    } catch (const Error& e) {
      return answer(error_response(400, e.message()));
    }
    std::vector<HostTensor> inputs = std::move(parsed->inputs);
    core_.infer(model, std::move(inputs), [&signature, parsed, answer](const Outcome& outcome, std::vector<HostTensor> outputs) {
      if (!outcome.ok()) return answer(error_response(outcome.status, outcome.error));
      HttpResponse r;
      try {
        HttpPayload payload = make_infer_response(signature, *parsed, outputs);
        r = {200, std::move(payload.body), payload.content_type, {}};
        if (payload.header_length) r.headers.emplace_back("Inference-Header-Content-Length", std::to_string(*payload.header_length));
      } catch (const std::exception& e) {
        r = error_response(500, std::string("internal error: ") + e.what());
      }
      answer(std::move(r));
    });
  }

  // POST .../generate: the whole answer once generation ends; .../generate_stream:
  // server-sent events, one per token as it is generated ("data: {...output_ids:
  // [id], finish_reason: null}"), then one with the finish reason (an error:
  // "event: error" with {"error": ...}). A streaming client that goes away
  // cancels its generation (a non-streamed one runs to its end).
  void generate(int model, const HttpRequest& request, const Responder& respond, bool streamed) {
    const ServableDefinition& def = core_.servable(model);
    auto arrival = std::chrono::steady_clock::now();
    auto answer = [this, model, respond, arrival](HttpResponse r) {
      core_.answered(model, r.status, arrival);
      respond(std::move(r));
    };
    if (!core_.generates(model)) {
      return answer(error_response(400, "model '" + def.name + "' does not generate: generate is for Hugging Face decoder-only models (use infer)"));
    }
    GenerateRequest parsed;
    try {
      parsed = parse_generate_request(request.body);
    } catch (const RequestError& e) {
      return answer(error_response(e.status(), e.what()));
    }
    // The tokenizer, when the request came as text (the answer then carries text too).
    auto tokenizer = std::make_shared<std::shared_ptr<const models::Tokenizer>>();
    if (streamed) {
      // Events written before the response is handed over wait in the stream.
      auto stream = std::make_shared<HttpStream>();
      // Each event's text: what the new token completes (a character split over tokens comes whole).
      auto text = std::make_shared<std::unique_ptr<models::DecodeStream>>();
      Outcome admitted = core_.generate(model, std::move(parsed), [this, model, &def, stream, tokenizer, text, arrival](const GenerateUpdate& u) {
        bool open = true;
        if (u.status != 200) {
          stream->write("event: error\ndata: " + error_json(u.error) + "\n\n");
        } else {
          std::optional<std::string> piece;
          if (*tokenizer && !*text) *text = std::make_unique<models::DecodeStream>(**tokenizer);
          if (*text) piece = u.done() ? (*text)->finish() : (*text)->step(u.tokens);
          open = stream->write("data: " + generate_response_json(def.name, def.version, u.tokens, u.finish_reason, piece) +
                               "\n\n");
        }
        if (u.done()) {
          stream->close();
          // A streamed request lasts until its last event.
          core_.lasted(model, arrival, u.status == 200);
        } else if (!open) {
          core_.lasted(model, arrival, false);  // the client went away: no more updates come
        }
        return open;
      }, tokenizer.get());
      if (!admitted.ok()) return answer(error_response(admitted.status, admitted.error));
      core_.answered(model, 200);
      return respond({200, "", "text/event-stream", {{"Cache-Control", "no-cache"}}, stream});
    }
    auto tokens = std::make_shared<std::vector<int64_t>>();
    Outcome admitted = core_.generate(model, std::move(parsed), [&def, tokens, tokenizer, answer](const GenerateUpdate& u) {
      tokens->insert(tokens->end(), u.tokens.begin(), u.tokens.end());
      if (u.status != 200) {
        answer(error_response(u.status, u.error));
      } else if (!u.finish_reason.empty()) {
        HttpResponse r;
        try {
          std::optional<std::string> text;
          if (*tokenizer) text = (*tokenizer)->decode(*tokens);
          r = json_response(200, generate_response_json(def.name, def.version, *tokens, u.finish_reason, text));
        } catch (const std::exception& e) {
          r = error_response(500, std::string("internal error: ") + e.what());
        }
        answer(std::move(r));
      }
      // A non-streamed generation runs to its end even if its client left (nothing tells it).
      return true;
    }, tokenizer.get());
    if (!admitted.ok()) answer(error_response(admitted.status, admitted.error));
  }

  Frontend& core_;
  Metrics& metrics_;
  HttpRouter router_;
  HttpRouter metrics_router_;
};

void write_file(const std::string& path, const std::string& text) {
  if (path.empty()) return;
  std::ofstream out(path + ".partial", std::ios::trunc);
  out << text << "\n";
  out.close();
  std::rename((path + ".partial").c_str(), path.c_str());
}

}  // namespace

int run_server(const ServerOptions& o) {
  World& world = World::get();
  int rank = world.rank();
  auto say = [&](const std::string& line) {
    if (rank == 0) log::info(line);
  };
  std::vector<ServableDefinition> servables;
  Device device = world.device(o.device);
  ModelControlMode mode;
  // A model's servables, each version its policy selects (every rank reads the same files).
  auto servables_of = [&o, &world, device](const ModelConfig& c) {
    MESHRT_CHECK_ARG(c.rank_size <= world.size(), "model '", c.name, "' (", c.config_path, ") has rank_size ",
                     c.rank_size, " but meshrt-serve runs on ", world.size(), " rank(s): start it with mpirun -np ",
                     c.rank_size, " (or more), or load other models with --model");
    ServableDefinition s = servable_from_config(c, device);
    if (!o.batching) s.batching.enabled = false;
    return s;
  };
  try {
    mode = parse_model_control_mode(o.model_control_mode);
    std::vector<std::string> names = repository_models(o.repository);
    std::set<std::string> wanted(o.models.begin(), o.models.end());
    for (const std::string& name : wanted) {
      MESHRT_CHECK_ARG(std::find(names.begin(), names.end(), name) != names.end(), "model '", name,
                       "' is not in the repository ", o.repository);
    }
    // Mode explicit loads only the models named at start (maybe none).
    if (mode != ModelControlMode::kExplicit || !wanted.empty()) {
      for (const ModelConfig& c : load_repository(o.repository, o.servable_libraries)) {
        if (!wanted.empty() && !wanted.count(c.name)) continue;
        servables.push_back(servables_of(c));
      }
    }
  } catch (const Error& e) {
    if (rank == 0) log::error(e.message());  // every rank read the same files and fails alike
    return 2;
  }
  // Every rank's process id, for operators and tests (rank 0's also at pid_file).
  if (!o.pid_file.empty()) write_file(o.pid_file + "." + std::to_string(rank), std::to_string(::getpid()));
  EngineOptions engine_options;
  engine_options.result_timeout = o.result_timeout;
  engine_options.comm_timeout = o.comm_timeout;
  engine_options.trace_file = o.trace_file;
  engine_options.share_ranks = o.share_ranks;
  // A load request names a model of the repository (rank 0 checked the name).
  engine_options.loader = [&o, &servables_of](const std::string& name) {
    auto library = o.servable_libraries.find(name);
    std::vector<ServableDefinition> out;
    for (const ModelConfig& c : load_model_versions(o.repository + "/" + name,
                                                    library == o.servable_libraries.end() ? "" : library->second)) {
      out.push_back(servables_of(c));
    }
    return out;
  };
  std::unique_ptr<Engine> engine_holder;
  try {
    engine_holder = std::make_unique<Engine>(servables, device, engine_options);
  } catch (const Error& e) {
    if (rank == 0) log::error(e.message());  // the placement is the same on every rank: all refuse alike
    return 2;
  }
  Engine& engine = *engine_holder;
  for (int m = 0; m < engine.servable_count(); ++m) {
    const ServableDefinition& s = engine.servable(m);
    say(detail::cat("loaded model '", s.name, "' version ", s.version, " on ", engine.placement(m),
                    ": rank_size ", s.rank_size, ", stage_size ", s.stage_size, " (", s.rank_size / s.stage_size,
                    "-way tensor parallel per stage), batching ", s.batching.enabled ? "on" : "off",
                    ", max_batch_size ", s.batching.max_batch_size));
  }
  if (rank != 0) {
    engine.serve();
    return 0;
  }

  Metrics metrics;
  Scheduler scheduler(engine, metrics);
  Frontend frontend(engine, scheduler, metrics);
  ModelControl control({mode, o.repository, o.repository_poll, o.unload_timeout}, engine, frontend);
  frontend.set_model_control(&control);
  HttpFrontend http_frontend(frontend, metrics);
  HttpServer http(o.http, [&](const HttpRequest& r, Responder respond) { http_frontend.handle(r, respond); });
  // gRPC, and the metrics port (Triton's): /metrics alone, on a server of its
  // own, so that scraping does not queue behind inference connections. Either
  // failing to bind ends the job (the other ranks are told to stop).
  std::unique_ptr<GrpcFrontend> grpc;
  std::unique_ptr<HttpServer> metrics_http;
  try {
    if (o.grpc_enabled) {
      rpc::ServerOptions grpc_options = o.grpc;
      grpc_options.max_message_bytes = o.http.max_body_bytes;
      try {
        grpc = std::make_unique<GrpcFrontend>(frontend, metrics, grpc_options);
      } catch (const Error& e) {
        throw Error(e.kind(), e.message() + ": choose another port with --grpc-port (0: any free port), or turn gRPC off "
                                            "with --grpc-port -1");
      }
    }
    if (o.metrics_port >= 0) {
      HttpServerOptions m = o.http;
      m.port = static_cast<uint16_t>(o.metrics_port);
      m.threads = 1;
      try {
        metrics_http = std::make_unique<HttpServer>(
            m, [&](const HttpRequest& r, Responder respond) { http_frontend.handle_metrics_port(r, respond); });
      } catch (const Error& e) {
        throw Error(e.kind(), "the metrics port (--metrics-port " + std::to_string(o.metrics_port) +
                                  "; 0: any free port, -1: none): " + e.message());
      }
    }
  } catch (const Error& e) {
    log::error(e.message());
    grpc.reset();
    http.stop();
    scheduler.drain();  // stops the other ranks
    return 2;
  }
  // The port files once every port is bound (none is left pointing at a server that is not there).
  if (grpc) write_file(o.grpc_port_file, std::to_string(grpc->port()));
  if (metrics_http) write_file(o.metrics_port_file, std::to_string(metrics_http->port()));
  write_file(o.port_file, std::to_string(http.port()));
  write_file(o.pid_file, std::to_string(::getpid()));
  metrics.ready(true);
  say(detail::cat("listening on http://", o.http.address, ":", http.port(), " (", world.size(), " rank(s), device ",
                  device.to_string(), ")"));
  if (grpc) say(detail::cat("listening on grpc://", o.grpc.address, ":", grpc->port(), " (KServe v2 gRPC)"));
  if (metrics_http) say(detail::cat("metrics on http://", o.http.address, ":", metrics_http->port(), "/metrics"));
  std::thread metrics_thread;
  if (metrics_http) metrics_thread = std::thread([&] { metrics_http->run(); });

  if (signal_pipe_fd() < 0) install_drain_signal_handlers();
  std::thread signals([&] {
    unsigned char signal = 0;
    while (::read(signal_pipe_fd(), &signal, 1) < 0 && errno == EINTR) {
    }
    say(detail::cat("signal ", static_cast<int>(signal), ": draining (not ready; finishing accepted requests)"));
    // One deadline for the whole drain (--exit-timeout-secs): the generations
    // accepted, then the responses still being written.
    auto deadline = std::chrono::steady_clock::now() + o.drain_timeout;
    frontend.set_draining();
    control.stop();  // no poll starts a load now (one running ends first: the engine stops after it)
    metrics.ready(false);
    frontend.drain_generators(o.drain_timeout);  // generations accepted run to their end (or the drain timeout)
    scheduler.drain();  // runs what is queued, then stops the other ranks
    auto busy = [&] { return http.in_flight() > 0 || (grpc && grpc->in_flight() > 0); };
    while (busy() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    if (o.drain_grace.count() > 0) std::this_thread::sleep_for(o.drain_grace);
    say("drained; exiting");
    // Streams still open (a client that keeps its ModelStreamInfer open) are cancelled.
    if (grpc) grpc->shutdown(std::chrono::milliseconds(100));
    http.stop();
    if (metrics_http) metrics_http->stop();
  });
  http.run();
  signals.join();
  if (metrics_thread.joinable()) metrics_thread.join();
  return 0;
}

}  // namespace meshrt::serving

// Rank 0's inference core, the same for every protocol: finds models, says
// whether the server and each model are ready, queues checked infer requests
// on the scheduler and generation requests on their generator, and answers
// every refusal the same way. The KServe v2 front ends (HTTP routes in
// server.cc, gRPC in grpc_frontend.h) only translate between their wire format
// and this; statuses are HTTP's (the gRPC one maps them with rpc/status.h).
#pragma once

#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <string>
#include <vector>

#include "device/tensor.h"
#include "serving/engine.h"
#include "serving/generator.h"
#include "serving/metrics.h"
#include "serving/model_reports.h"
#include "serving/protocol.h"
#include "serving/scheduler.h"
#include "serving/signature.h"

namespace meshrt::models {
class Tokenizer;
}

namespace meshrt::serving {

class ModelControl;

// How a request ended: 200, or an HTTP status with a message.
struct Outcome {
  int status = 200;
  std::string error;
  bool ok() const { return status == 200; }
};

class Frontend {
 public:
  Frontend(Engine& engine, Scheduler& scheduler, Metrics& metrics);
  ~Frontend();

  int model_count() const { return engine_.servable_count(); }
  // The model of this name and version ("" or absent: its latest), or -1
  // with *error saying whether the name is unknown, not loaded, or has no
  // such version (404).
  int find(const std::string& name, const std::string& version, std::string* error) const;
  const ServableDefinition& servable(int model) const { return engine_.servable(model); }
  const ModelSignature& signature(int model) const;
  // Triton's model configuration of a model (serving/model_reports.h).
  TritonModelConfig config(int model) const;
  // The statistics of the models of this name ("": every model) and version
  // ("": every version) loaded now, as Triton's statistics extension reports them.
  std::vector<ModelStatistics> statistics(const std::string& name, const std::string& version) const;
  // Every served version of the model of this name, in the order loaded.
  std::vector<std::string> versions(const std::string& name) const;
  // The repository's models, each version, with their state (ready_only: the
  // ready ones): every model of the repository with a model control
  // (unloaded ones too, UNAVAILABLE with why), else the loaded ones.
  std::vector<RepositoryEntry> repository_index(bool ready_only) const;

  // The repository extension's load and unload (model_control.h): 200, or
  // 400 with why (model control mode none: always).
  void set_model_control(ModelControl* control) { control_ = control; }
  Outcome load_model(const std::string& name);
  Outcome unload_model(const std::string& name);
  // Models the engine loaded while serving: their queues, signatures and generators.
  void add(const std::vector<int>& models);
  // Takes model out of service: find() no longer returns it, it takes no new
  // requests (503), those it accepted finish (up to `within`), then the
  // engine drops it. Returns "" or why it could not (it is then closed, and
  // still loaded).
  std::string retire(int model, std::chrono::milliseconds within);

  // Strict readiness (as Triton's): not ready while draining or while any model is failed.
  bool ready() const;
  // Whether model can take requests; when not, *reason says why.
  bool model_ready(int model, std::string* reason) const;
  // "" unless the model failed (then why).
  std::string model_failure(int model) const;
  void set_draining() { draining_ = true; }
  bool draining() const { return draining_; }
  // Finishes the generations accepted (before the scheduler stops the other ranks).
  void drain_generators(std::chrono::milliseconds within);

  using Clock = std::chrono::steady_clock;
  // Counts an answer to a request for model (the infer and generate metrics)
  // and, given its arrival, its end-to-end duration (arrival to answer).
  void answered(int model, int status, std::optional<Clock::time_point> arrival = std::nullopt) const;
  // A streamed answer (counted when it began) ended, well or not (a failure
  // mid-stream, a client gone): its duration, arrival to last response.
  void lasted(int model, Clock::time_point arrival, bool ok) const;

  // Queues a request whose inputs the wire checked (InferInputs): in the
  // model's order. done is called exactly once, from any thread: with the
  // outputs (one per output of the signature), or with the refusal (overloaded,
  // draining, model failed: 503; inputs that do not fit together: 400).
  using InferDone = std::function<void(const Outcome&, std::vector<HostTensor> outputs)>;
  void infer(int model, std::vector<HostTensor> inputs, InferDone done);

  // Whether model generates (a Hugging Face decoder-only model).
  bool generates(int model) const { return generator(model) != nullptr; }
  // Queues a generation: text_input (if any) is tokenized with the model's
  // tokenizer (then *tokenizer is set, for the answer's text), the request is
  // checked and queued. Returns 200 when queued (then sink is called until an
  // update is done()), else the refusal (sink never called).
  Outcome generate(int model, GenerateRequest request, GenerateSink sink,
                   std::shared_ptr<const models::Tokenizer>* tokenizer);

 private:
  Generator* generator(int model) const;
  // A refusal of a model no longer serving (being unloaded), or nullopt.
  std::optional<Outcome> unloaded(int model) const;

  Engine& engine_;
  Scheduler& scheduler_;
  Metrics& metrics_;
  ModelControl* control_ = nullptr;
  // Per servable of the engine (deques: add() keeps references valid), under models_mutex_.
  mutable std::shared_mutex models_mutex_;
  std::deque<std::unique_ptr<Generator>> generators_;  // null unless it generates
  std::deque<ModelSignature> signatures_;
  std::atomic<bool> draining_{false};
};

}  // namespace meshrt::serving

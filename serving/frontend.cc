#include "serving/frontend.h"

#include "models/tokenizer.h"

namespace meshrt::serving {

Frontend::Frontend(Engine& engine, Scheduler& scheduler, Metrics& metrics)
    : engine_(engine), scheduler_(scheduler), metrics_(metrics) {
  for (int i = 0; i < engine_.servable_count(); ++i) {
    signatures_.push_back(signature_of(engine_.servable(i)));
    generators_.push_back(engine_.servable(i).generation ? std::make_unique<Generator>(engine_, i, metrics_) : nullptr);
  }
}

Frontend::~Frontend() = default;

int Frontend::find(const std::string& name, const std::string& version, std::string* error) const {
  int model = engine_.find(name, version);
  if (model < 0 && error) {
    *error = engine_.find(name) >= 0 ? "model '" + name + "' has no version '" + version + "'"
                                     : "unknown model '" + name + "'";
  }
  return model;
}

bool Frontend::ready() const {
  bool ready = !draining_;
  for (int m = 0; ready && m < engine_.servable_count(); ++m) ready = scheduler_.model_ready(m);
  return ready;
}

bool Frontend::model_ready(int model, std::string* reason) const {
  bool ready = !draining_ && scheduler_.model_ready(model);
  if (!ready && reason) *reason = draining_ ? "the server is shutting down" : scheduler_.model_failure(model);
  return ready;
}

std::string Frontend::model_failure(int model) const { return scheduler_.model_failure(model); }

void Frontend::drain_generators(std::chrono::milliseconds within) {
  for (auto& g : generators_) {
    if (g) g->drain(within);
  }
}

TritonModelConfig Frontend::config(int model) const {
  return triton_model_config(engine_.servable(model), signature(model), engine_.device());
}

std::vector<ModelStatistics> Frontend::statistics(const std::string& name, const std::string& version) const {
  std::vector<ModelStatistics> out;
  for (ModelStatistics& s : metrics_.statistics()) {
    if ((name.empty() || s.name == name) && (version.empty() || s.version == version)) out.push_back(std::move(s));
  }
  return out;
}

std::vector<std::string> Frontend::versions(const std::string& name) const {
  std::vector<std::string> out;
  for (int m = 0; m < engine_.servable_count(); ++m) {
    if (engine_.servable(m).name == name) out.push_back(engine_.servable(m).version);
  }
  return out;
}

std::vector<RepositoryEntry> Frontend::repository_index(bool ready_only) const {
  std::vector<RepositoryEntry> out;
  for (int m = 0; m < engine_.servable_count(); ++m) {
    std::string reason;
    bool ready = model_ready(m, &reason);
    if (ready_only && !ready) continue;
    const ServableDefinition& def = engine_.servable(m);
    out.push_back({def.name, def.version, ready ? "READY" : "UNAVAILABLE", ready ? "" : reason});
  }
  return out;
}

void Frontend::answered(int model, int status, std::optional<Clock::time_point> arrival) const {
  const ServableDefinition& def = engine_.servable(model);
  metrics_.request(def.name, def.version, status);
  if (arrival) lasted(model, *arrival, status == 200);
}

void Frontend::lasted(int model, Clock::time_point arrival, bool ok) const {
  const ServableDefinition& def = engine_.servable(model);
  metrics_.outcome(def.name, def.version, ok, std::chrono::duration<double>(Clock::now() - arrival).count());
}

void Frontend::infer(int model, std::vector<HostTensor> inputs, InferDone done) {
  const ServableDefinition& def = engine_.servable(model);
  HostTensor input;
  try {
    // Several wire inputs become the engine's one input (checked together: 400 when they do not fit).
    input = def.pack_inputs ? def.pack_inputs(inputs) : inputs.at(0);
  } catch (const RequestError& e) {
    return done({e.status(), e.what()}, {});
  } catch (const Error& e) {
    return done({400, e.message()}, {});
  }
  Admission admitted = scheduler_.submit(model, std::move(input), [done](InferOutcome outcome) {
    if (outcome.status != 200) return done({outcome.status, outcome.error}, {});
    done({}, {std::move(outcome.output)});
  });
  switch (admitted) {
    case Admission::kQueued: return;
    case Admission::kQueueFull:
      return done({503, "model '" + def.name + "' is overloaded: its queue holds " +
                            std::to_string(def.batching.max_queue_size) + " requests; retry later"},
                  {});
    case Admission::kDraining: return done({503, "the server is shutting down"}, {});
    case Admission::kModelUnavailable:
      return done({503, "model '" + def.name + "' is unavailable: " + scheduler_.model_failure(model)}, {});
  }
}

Outcome Frontend::generate(int model, GenerateRequest request, GenerateSink sink,
                           std::shared_ptr<const models::Tokenizer>* tokenizer) {
  const ServableDefinition& def = engine_.servable(model);
  Generator* g = generators_.at(static_cast<size_t>(model)).get();
  if (!g) {
    return {400, "model '" + def.name + "' does not generate: generate is for Hugging Face decoder-only models (use infer)"};
  }
  const GenerationSpec& spec = *def.generation;
  try {
    // Text in (the tokenizer as pre-processing) means text out as well.
    if (request.text_input) {
      if (!spec.tokenizer) {
        return {400, "model '" + def.name + "' takes no \"text_input\" (" + spec.no_tokenizer + "): send \"input_ids\""};
      }
      if (tokenizer) *tokenizer = spec.tokenizer;
      request.input_ids = spec.tokenizer->encode(*request.text_input);
      if (request.input_ids.empty()) return {400, "\"text_input\" gives no tokens"};
    }
    g->check(request);
  } catch (const RequestError& e) {
    return {e.status(), e.what()};
  } catch (const Error& e) {
    return {400, e.message()};
  }
  int64_t blocks = g->blocks_needed(request);
  switch (g->submit(std::move(request), std::move(sink))) {
    case GenerateAdmission::kQueued: return {};
    case GenerateAdmission::kNeverFits:
      return {503, detail::cat("the request needs ", blocks, " KV-cache blocks of ", spec.block_size,
                               " tokens (its prompt and max_tokens) but model '", def.name, "' has ", spec.num_blocks,
                               " in all: it can never fit")};
    case GenerateAdmission::kQueueFull:
      return {503, "model '" + def.name + "' is overloaded: its generate queue holds " +
                       std::to_string(def.batching.max_queue_size) + " requests; retry later"};
    case GenerateAdmission::kDraining: return {503, "the server is shutting down"};
    case GenerateAdmission::kModelUnavailable:
      return {503, "model '" + def.name + "' is unavailable: " + engine_.failure(model)};
  }
  return {500, "internal error: unknown admission"};
}

}  // namespace meshrt::serving

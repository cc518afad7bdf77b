#include "serving/frontend.h"

#include "models/tokenizer.h"
#include "serving/model_control.h"

namespace meshrt::serving {

Frontend::Frontend(Engine& engine, Scheduler& scheduler, Metrics& metrics)
    : engine_(engine), scheduler_(scheduler), metrics_(metrics) {
  // The scheduler made its queues for these already.
  std::unique_lock<std::shared_mutex> lock(models_mutex_);
  for (int i = 0; i < engine_.servable_count(); ++i) {
    signatures_.push_back(signature_of(engine_.servable(i)));
    generators_.push_back(engine_.servable(i).generation ? std::make_unique<Generator>(engine_, i, metrics_) : nullptr);
  }
}

Frontend::~Frontend() = default;

void Frontend::add(const std::vector<int>& models) {
  scheduler_.add(models);
  std::unique_lock<std::shared_mutex> lock(models_mutex_);
  for (int m : models) {
    if (signatures_.size() <= static_cast<size_t>(m)) {
      signatures_.resize(static_cast<size_t>(m) + 1);
      generators_.resize(static_cast<size_t>(m) + 1);
    }
    signatures_[static_cast<size_t>(m)] = signature_of(engine_.servable(m));
    if (engine_.servable(m).generation) generators_[static_cast<size_t>(m)] = std::make_unique<Generator>(engine_, m, metrics_);
  }
}

const ModelSignature& Frontend::signature(int model) const {
  std::shared_lock<std::shared_mutex> lock(models_mutex_);
  return signatures_.at(static_cast<size_t>(model));
}

Generator* Frontend::generator(int model) const {
  std::shared_lock<std::shared_mutex> lock(models_mutex_);
  return generators_.at(static_cast<size_t>(model)).get();
}

std::string Frontend::retire(int model, std::chrono::milliseconds within) {
  const ServableDefinition& def = engine_.servable(model);
  engine_.close(model);
  scheduler_.close(model, "model '" + def.name + "' version " + def.version + " is being unloaded");
  // The generations it accepted run to their end; then the scheduler's batches.
  if (Generator* g = generator(model)) g->drain(within);
  if (!scheduler_.wait_idle(model, within)) {
    return detail::cat("model '", def.name, "' version ", def.version, " still had requests after ", within.count(),
                       " ms (closed to new ones; try the unload again)");
  }
  try {
    engine_.unload(model);
  } catch (const Error& e) {
    return e.message();
  }
  scheduler_.close(model, "model '" + def.name + "' version " + def.version + " was unloaded");
  return "";
}

std::optional<Outcome> Frontend::unloaded(int model) const {
  if (engine_.state(model) == ServableState::kServing) return std::nullopt;
  const ServableDefinition& def = engine_.servable(model);
  return Outcome{503, "model '" + def.name + "' version " + def.version + " is unavailable: it was unloaded"};
}

int Frontend::find(const std::string& name, const std::string& version, std::string* error) const {
  int model = engine_.find(name, version);
  if (model < 0 && error) {
    bool known = false;
    for (int m = 0; !known && m < engine_.servable_count(); ++m) known = engine_.servable(m).name == name;
    if (engine_.find(name) >= 0) {
      *error = "model '" + name + "' has no version '" + version + "'";
    } else if (known) {
      *error = "model '" + name + "' is not loaded (it was unloaded)";
    } else {
      *error = "unknown model '" + name + "'";
    }
  }
  return model;
}

bool Frontend::ready() const {
  bool ready = !draining_;
  for (int m = 0; ready && m < engine_.servable_count(); ++m) {
    ready = engine_.state(m) != ServableState::kServing || scheduler_.model_ready(m);
  }
  return ready;
}

bool Frontend::model_ready(int model, std::string* reason) const {
  bool ready = !draining_ && scheduler_.model_ready(model);
  if (!ready && reason) *reason = draining_ ? "the server is shutting down" : scheduler_.model_failure(model);
  return ready;
}

std::string Frontend::model_failure(int model) const { return scheduler_.model_failure(model); }

void Frontend::drain_generators(std::chrono::milliseconds within) {
  std::shared_lock<std::shared_mutex> lock(models_mutex_);
  for (auto& g : generators_) {
    if (g) g->drain(within);
  }
}

Outcome Frontend::load_model(const std::string& name) {
  if (!control_) {
    return {400, "cannot load model '" + name + "': models are loaded when the server starts (model control mode "
                 "none; start meshrt-serve with --model-control-mode explicit)"};
  }
  return control_->load(name);
}

Outcome Frontend::unload_model(const std::string& name) {
  if (!control_) {
    return {400, "cannot unload model '" + name + "': models are loaded when the server starts (model control mode "
                 "none; start meshrt-serve with --model-control-mode explicit)"};
  }
  return control_->unload(name);
}

TritonModelConfig Frontend::config(int model) const {
  return triton_model_config(engine_.servable(model), signature(model), engine_.device());
}

std::vector<ModelStatistics> Frontend::statistics(const std::string& name, const std::string& version) const {
  std::vector<ModelStatistics> out;
  for (ModelStatistics& s : metrics_.statistics()) {
    if ((name.empty() || s.name == name) && (version.empty() || s.version == version) && engine_.find(s.name, s.version) >= 0) {
      out.push_back(std::move(s));  // the versions loaded now (an unloaded one's counts come back with it)
    }
  }
  return out;
}

std::vector<std::string> Frontend::versions(const std::string& name) const {
  std::vector<std::string> out;
  for (int m = 0; m < engine_.servable_count(); ++m) {
    if (engine_.servable(m).name == name && engine_.state(m) == ServableState::kServing) {
      out.push_back(engine_.servable(m).version);
    }
  }
  return out;
}

std::vector<RepositoryEntry> Frontend::repository_index(bool ready_only) const {
  if (control_) return control_->index(ready_only);
  std::vector<RepositoryEntry> out;
  for (int m = 0; m < engine_.servable_count(); ++m) {
    if (engine_.state(m) != ServableState::kServing) continue;
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
  // A model being unloaded: its queue is closed (Scheduler::close), which refuses with why.
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
  Generator* g = generator(model);
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
    case GenerateAdmission::kDraining:
      // A retired model's generator was drained: it refuses as the server's drain does.
      if (auto refused = unloaded(model)) return *refused;
      return {503, "the server is shutting down"};
    case GenerateAdmission::kModelUnavailable:
      return {503, "model '" + def.name + "' is unavailable: " + engine_.failure(model)};
  }
  return {500, "internal error: unknown admission"};
}

}  // namespace meshrt::serving

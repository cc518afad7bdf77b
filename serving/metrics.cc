#include "serving/metrics.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>

#include "serving/system_metrics.h"

namespace meshrt::serving {

namespace {
std::string number(double v) { return metric_number(v); }

// A label value as the text format requires: backslash, double quote and line
// feed escaped (model names and versions come from configs and folder names).
std::string label_value(const std::string& value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    switch (c) {
      case '\\': out += "\\\\"; break;
      case '"': out += "\\\""; break;
      case '\n': out += "\\n"; break;
      default: out += c;
    }
  }
  return out;
}

std::string labels(const std::string& model, const std::string& version) {
  return "model=\"" + label_value(model) + "\",version=\"" + label_value(version) + "\"";
}
}  // namespace

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double value) {
  size_t i = 0;
  while (i < bounds_.size() && value > bounds_[i]) ++i;
  ++counts_[i];
  sum_ += value;
  ++count_;
}

void Summary::observe(double value) {
  if (recent_.size() < window_) {
    recent_.push_back(value);
  } else {
    recent_[next_] = value;
  }
  next_ = (next_ + 1) % window_;
  sum_ += value;
  ++count_;
}

double Summary::quantile(double q) const {
  if (recent_.empty()) return 0;
  std::vector<double> sorted = recent_;
  auto k = static_cast<size_t>(std::ceil(q * static_cast<double>(sorted.size())));
  k = std::min(sorted.size() - 1, k == 0 ? 0 : k - 1);
  std::nth_element(sorted.begin(), sorted.begin() + static_cast<std::ptrdiff_t>(k), sorted.end());
  return sorted[k];
}

void Summary::render(std::string& out, const std::string& name, const std::string& labels) const {
  for (double q : {0.5, 0.9, 0.99}) {
    out += name + "{" + labels + ",quantile=\"" + number(q) + "\"} " + number(quantile(q)) + "\n";
  }
  out += name + "_sum{" + labels + "} " + number(sum_) + "\n";
  out += name + "_count{" + labels + "} " + std::to_string(count_) + "\n";
}

void Histogram::render(std::string& out, const std::string& name, const std::string& labels) const {
  long long cumulative = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    cumulative += counts_[i];
    std::string le = i < bounds_.size() ? number(bounds_[i]) : "+Inf";
    out += name + "_bucket{" + labels + ",le=\"" + le + "\"} " + std::to_string(cumulative) + "\n";
  }
  out += name + "_sum{" + labels + "} " + number(sum_) + "\n";
  out += name + "_count{" + labels + "} " + std::to_string(count_) + "\n";
}

void DurationStat::add(double seconds, uint64_t times) {
  count += times;
  ns += static_cast<uint64_t>(std::max(0.0, seconds) * 1e9) * times;
}

Metrics::Model& Metrics::model(const std::string& model, const std::string& version) {
  Model& m = models_[{model, version}];
  if (m.stats.name.empty()) {
    m.stats.name = model;
    m.stats.version = version;
  }
  return m;
}

void Metrics::outcome(const std::string& m, const std::string& v, bool ok, double seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  Model& x = model(m, v);
  x.duration.observe(seconds);
  ModelStatistics& s = x.stats;
  (ok ? s.success : s.fail).add(seconds);
  s.last_inference_ms = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count());
}

std::vector<ModelStatistics> Metrics::statistics() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<ModelStatistics> out;
  for (const auto& [key, m] : models_) out.push_back(m.stats);
  return out;
}

void Metrics::add_model(const std::string& m, const std::string& v) {
  std::lock_guard<std::mutex> lock(mutex_);
  model(m, v);
}

void Metrics::request(const std::string& m, const std::string& v, int status) {
  std::lock_guard<std::mutex> lock(mutex_);
  Model& x = model(m, v);
  ++x.requests[status];
  if (status >= 400) ++x.failures;
}

void Metrics::grpc_request(const std::string& method, const std::string& code) {
  std::lock_guard<std::mutex> lock(mutex_);
  ++grpc_[{method, code}];
}

void Metrics::request_duration(const std::string& m, const std::string& v, double seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  model(m, v).duration.observe(seconds);
}

void Metrics::http_request(int status) {
  std::lock_guard<std::mutex> lock(mutex_);
  ++http_[status];
}

ModelStatistics* Metrics::execution(Model& x, int64_t size, int64_t requests, const std::vector<double>& queue_seconds,
                                    double compute_seconds, bool ok) {
  x.batch_rows.observe(static_cast<double>(size));
  x.batch_requests.observe(static_cast<double>(requests));
  for (double q : queue_seconds) x.queue.observe(q);
  x.compute.observe(compute_seconds);
  if (!ok) return nullptr;
  ModelStatistics& s = x.stats;
  ++s.execution_count;
  for (double q : queue_seconds) s.queue.add(q);
  BatchStat& b = s.batches[size];
  b.compute_infer.add(compute_seconds);
  b.compute_input.add(0);
  b.compute_output.add(0);
  return &s;
}

void Metrics::batch(const std::string& m, const std::string& v, int64_t rows, int64_t requests,
                    const std::vector<double>& queue_seconds, double compute_seconds, bool ok) {
  std::lock_guard<std::mutex> lock(mutex_);
  ModelStatistics* stats = execution(model(m, v), rows, requests, queue_seconds, compute_seconds, ok);
  if (!stats) return;
  ModelStatistics& s = *stats;
  s.inference_count += static_cast<uint64_t>(rows);
  const auto n = static_cast<uint64_t>(requests);
  s.compute_infer.add(compute_seconds, n);
  s.compute_input.add(0, n);
  s.compute_output.add(0, n);
}

void Metrics::generation_step(const std::string& m, const std::string& v, int64_t sequences,
                              const std::vector<double>& prefill_queue_seconds, double compute_seconds, bool ok) {
  std::lock_guard<std::mutex> lock(mutex_);
  ModelStatistics* stats = execution(model(m, v), sequences, sequences, prefill_queue_seconds, compute_seconds, ok);
  if (!stats) return;
  ModelStatistics& s = *stats;
  const auto started = static_cast<uint64_t>(prefill_queue_seconds.size());
  s.inference_count += started;
  // One count per request (when it starts), the time of every step it is in.
  DurationStat charged;
  charged.add(compute_seconds, static_cast<uint64_t>(sequences));
  s.compute_infer.count += started;
  s.compute_infer.ns += charged.ns;
  s.compute_input.add(0, started);
  s.compute_output.add(0, started);
}

void Metrics::engine(const std::string& m, const std::string& v, double engine_seconds, double forward_seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  Model& x = model(m, v);
  x.engine.observe(engine_seconds);
  x.forward.observe(forward_seconds);
  x.overhead.observe(engine_seconds - forward_seconds);
}

void Metrics::queue_size(const std::string& m, const std::string& v, int64_t waiting) {
  std::lock_guard<std::mutex> lock(mutex_);
  model(m, v).waiting = waiting;
}

void Metrics::first_token(const std::string& m, const std::string& v, double seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  model(m, v).first_token.observe(seconds);
}

void Metrics::inter_token(const std::string& m, const std::string& v, double seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  model(m, v).inter_token.observe(seconds);
}

void Metrics::tokens_generated(const std::string& m, const std::string& v, int64_t tokens) {
  std::lock_guard<std::mutex> lock(mutex_);
  model(m, v).tokens += tokens;
}

void Metrics::kv_blocks(const std::string& m, const std::string& v, int64_t in_use, int64_t total) {
  std::lock_guard<std::mutex> lock(mutex_);
  Model& x = model(m, v);
  x.kv_in_use = in_use;
  x.kv_total = total;
}

void Metrics::ready(bool ready) {
  std::lock_guard<std::mutex> lock(mutex_);
  ready_ = ready;
}

std::string Metrics::render() const {
  std::unique_lock<std::mutex> lock(mutex_);
  std::string out;
  out += "# HELP meshrt_ready Whether the server takes inference requests (0 while draining).\n";
  out += "# TYPE meshrt_ready gauge\nmeshrt_ready " + std::string(ready_ ? "1" : "0") + "\n";
  out += "# HELP meshrt_http_requests_total HTTP requests answered, by status code.\n";
  out += "# TYPE meshrt_http_requests_total counter\n";
  for (const auto& [code, n] : http_) out += "meshrt_http_requests_total{code=\"" + std::to_string(code) + "\"} " + std::to_string(n) + "\n";
  out += "# HELP meshrt_grpc_requests_total gRPC calls answered, by method and status code.\n";
  out += "# TYPE meshrt_grpc_requests_total counter\n";
  for (const auto& [key, n] : grpc_) {
    out += "meshrt_grpc_requests_total{method=\"" + key.first + "\",code=\"" + key.second + "\"} " + std::to_string(n) + "\n";
  }
  out += "# HELP meshrt_inference_requests_total Inference requests answered, by status code.\n";
  out += "# TYPE meshrt_inference_requests_total counter\n";
  for (const auto& [key, m] : models_) {
    for (const auto& [code, n] : m.requests) {
      out += "meshrt_inference_requests_total{" + labels(key.first, key.second) + ",code=\"" + std::to_string(code) +
             "\"} " + std::to_string(n) + "\n";
    }
  }
  out += "# HELP meshrt_inference_failures_total Inference requests answered with an error.\n";
  out += "# TYPE meshrt_inference_failures_total counter\n";
  for (const auto& [key, m] : models_) {
    out += "meshrt_inference_failures_total{" + labels(key.first, key.second) + "} " + std::to_string(m.failures) + "\n";
  }
  out += "# HELP meshrt_queue_requests Requests waiting for a batch.\n# TYPE meshrt_queue_requests gauge\n";
  for (const auto& [key, m] : models_) {
    out += "meshrt_queue_requests{" + labels(key.first, key.second) + "} " + std::to_string(m.waiting) + "\n";
  }
  out += "# HELP meshrt_generation_tokens_total Tokens generated.\n# TYPE meshrt_generation_tokens_total counter\n";
  for (const auto& [key, m] : models_) {
    if (m.kv_total >= 0) out += "meshrt_generation_tokens_total{" + labels(key.first, key.second) + "} " + std::to_string(m.tokens) + "\n";
  }
  out += "# HELP meshrt_kv_cache_blocks_in_use KV-cache blocks reserved by requests.\n# TYPE meshrt_kv_cache_blocks_in_use gauge\n";
  for (const auto& [key, m] : models_) {
    if (m.kv_total >= 0) out += "meshrt_kv_cache_blocks_in_use{" + labels(key.first, key.second) + "} " + std::to_string(m.kv_in_use) + "\n";
  }
  out += "# HELP meshrt_kv_cache_blocks KV-cache blocks of each rank's pool.\n# TYPE meshrt_kv_cache_blocks gauge\n";
  for (const auto& [key, m] : models_) {
    if (m.kv_total >= 0) out += "meshrt_kv_cache_blocks{" + labels(key.first, key.second) + "} " + std::to_string(m.kv_total) + "\n";
  }
  struct Family {
    const char* name;
    const char* help;
    Histogram Model::*member;
  };
  const Family families[] = {
      {"meshrt_request_duration_seconds",
       "Time from an infer or generate request's arrival to its answer (a streamed one: to its last event).",
       &Model::duration},
      {"meshrt_inference_queue_seconds",
       "Time from a request's arrival to its batch's dispatch (a generate request: to its prefill step).",
       &Model::queue},
      {"meshrt_inference_compute_seconds", "Time of each batch (and generation step) in the engine (all stages).",
       &Model::compute},
      {"meshrt_batch_size", "Rows per batch (sequences per generation step).", &Model::batch_rows},
      {"meshrt_batch_requests", "Requests per batch (sequences per generation step).", &Model::batch_requests},
      {"meshrt_generation_time_to_first_token_seconds", "Time from a generate request's arrival to its first token.",
       &Model::first_token},
      {"meshrt_generation_inter_token_seconds", "Time between a generate request's consecutive tokens.",
       &Model::inter_token},
  };
  for (const Family& f : families) {
    out += std::string("# HELP ") + f.name + " " + f.help + "\n# TYPE " + f.name + " histogram\n";
    for (const auto& [key, m] : models_) (m.*f.member).render(out, f.name, labels(key.first, key.second));
  }
  struct SummaryFamily {
    const char* name;
    const char* help;
    Summary Model::*member;
  };
  const SummaryFamily summaries[] = {
      {"meshrt_inference_engine_seconds", "Time of each batch in the engine, from its start to its result on rank 0 "
       "(quantiles of the last 1000 batches).", &Model::engine},
      {"meshrt_inference_forward_seconds", "The stages' forward passes of each batch, summed over the stages "
       "(quantiles of the last 1000 batches).", &Model::forward},
      {"meshrt_inference_engine_overhead_seconds", "Engine time minus forward time of each batch: commands, input, "
       "activations and result between the ranks (quantiles of the last 1000 batches).", &Model::overhead},
  };
  for (const SummaryFamily& f : summaries) {
    out += std::string("# HELP ") + f.name + " " + f.help + "\n# TYPE " + f.name + " summary\n";
    for (const auto& [key, m] : models_) (m.*f.member).render(out, f.name, labels(key.first, key.second));
  }
  lock.unlock();  // what follows reads /proc and asks NVML
  render_process_metrics(out);
  render_gpu_metrics(out);
  return out;
}

}  // namespace meshrt::serving

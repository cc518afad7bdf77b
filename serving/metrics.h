// Server metrics in the Prometheus text format (GET /metrics):
//   meshrt_inference_requests_total{model,version,code}   counter: answered infer requests by HTTP status
//   meshrt_inference_failures_total{model,version}         counter: infer requests answered with an error
//   meshrt_request_duration_seconds{model,version}         histogram: infer and generate requests, from
//                                                          arrival to answer (a streamed one: to its last event)
//   meshrt_inference_queue_seconds{model,version}          histogram: time from arrival to dispatch
//                                                          (a generate request: to its prefill step)
//   meshrt_inference_compute_seconds{model,version}        histogram: time of each batch in the engine
//                                                          (and of each generation step)
//   meshrt_inference_engine_seconds{model,version,quantile} summary over the last 1000 batches: the
//                                                          same time (from start to result on rank 0)
//   meshrt_inference_forward_seconds{model,version,quantile} summary: the stages' forward passes of
//                                                          each batch, summed over the stages
//   meshrt_inference_engine_overhead_seconds{model,version,quantile} summary: engine - forward of each
//                                                          batch: what moving it between ranks cost
//   meshrt_batch_size{model,version}                       histogram: rows per batch (sequences per
//                                                          generation step)
//   meshrt_batch_requests{model,version}                   histogram: requests per batch (and step)
//   meshrt_queue_requests{model,version}                   gauge: requests waiting
//   meshrt_generation_time_to_first_token_seconds{model,version} histogram: arrival to the first token
//   meshrt_generation_inter_token_seconds{model,version}  histogram: between a request's tokens
//   meshrt_generation_tokens_total{model,version}          counter: tokens generated
//   meshrt_kv_cache_blocks_in_use{model,version}           gauge: KV-cache blocks reserved (of meshrt_kv_cache_blocks)
//   meshrt_http_requests_total{code}                       counter: every HTTP request by status
//   meshrt_grpc_requests_total{method,code}                counter: every gRPC call by method and status code
//   meshrt_ready                                           gauge: 1 while ready, 0 when draining
// and, read when rendered (serving/system_metrics.h):
//   process_cpu_seconds_total, process_resident_memory_bytes, process_virtual_memory_bytes,
//   process_start_time_seconds, process_open_fds, process_max_fds   this process, named as
//                                                          Prometheus' standard process collector names them
//   meshrt_gpu_utilization_ratio{gpu}                      gauge: busy time of each GPU (NVML), 0-1
//   meshrt_gpu_memory_used_bytes{gpu}, meshrt_gpu_memory_total_bytes{gpu}  gauges: each GPU's memory
//                                                          (none without NVML's libnvidia-ml.so.1)
// Thread-safe.
#pragma once

#include <map>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

namespace meshrt::serving {

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double value);
  // Lines "<name>_bucket{<labels>,le=...} n", "<name>_sum{...}", "<name>_count{...}".
  void render(std::string& out, const std::string& name, const std::string& labels) const;
  double sum() const { return sum_; }
  long long count() const { return count_; }

 private:
  std::vector<double> bounds_;
  std::vector<long long> counts_;  // per bucket (not cumulative)
  double sum_ = 0;
  long long count_ = 0;
};

// A Prometheus summary: quantiles 0.5, 0.9 and 0.99 of the last `window`
// observations, and the sum and count of all of them.
class Summary {
 public:
  explicit Summary(size_t window = 1000) : window_(window) {}
  void observe(double value);
  // The q-quantile of the window (nearest rank), 0 when empty.
  double quantile(double q) const;
  void render(std::string& out, const std::string& name, const std::string& labels) const;
  long long count() const { return count_; }

 private:
  size_t window_;
  std::vector<double> recent_;  // a ring of the last window_ values
  size_t next_ = 0;
  double sum_ = 0;
  long long count_ = 0;
};

// Triton's statistics extension (GET /v2/models/{m}/stats, gRPC
// ModelStatistics): per model and version, since the server started.
struct DurationStat {
  uint64_t count = 0, ns = 0;
  void add(double seconds, uint64_t times = 1);
};
struct BatchStat {
  DurationStat compute_input, compute_infer, compute_output;
};
struct ModelStatistics {
  std::string name, version;
  uint64_t last_inference_ms = 0;  // the last request's answer, ms since the epoch
  // Infer: rows of the successful batches (Triton counts each row).
  // Generate: requests whose prefill step succeeded (each request once).
  uint64_t inference_count = 0;
  uint64_t execution_count = 0;    // successful batches (generation: prefill and decode steps)
  // success and fail: requests and their durations from arrival to answer;
  // queue: each request's wait until its batch started; compute_infer: each
  // request's batch time in the engine (one count per request, as Triton
  // counts). meshrt does not time input and output preparation apart from
  // the engine: compute_input and compute_output count the same requests with
  // 0 ns. No response cache: cache_hit and cache_miss stay 0.
  // Generate: queue is arrival to the request's prefill; compute_infer counts
  // the request once (at its prefill) and adds every step it is part of, so
  // its ns are the requests' whole time in the engine (see generation_step).
  DurationStat success, fail, queue, compute_input, compute_infer, compute_output, cache_hit, cache_miss;
  std::map<int64_t, BatchStat> batches;  // by batch size (rows; generation: sequences): one count per batch
};

class Metrics {
 public:
  void add_model(const std::string& model, const std::string& version);
  void request(const std::string& model, const std::string& version, int status);
  // An infer or generate request answered (any status), seconds after it arrived.
  void request_duration(const std::string& model, const std::string& version, double seconds);
  void http_request(int status);
  // code: the gRPC status code's name ("OK", "INVALID_ARGUMENT", ...).
  void grpc_request(const std::string& method, const std::string& code);
  // A batch the engine ran (ok: it succeeded; the statistics count only those).
  void batch(const std::string& model, const std::string& version, int64_t rows, int64_t requests,
             const std::vector<double>& queue_seconds, double compute_seconds, bool ok = true);
  // A generation step the engine ran (serving/generator.h: a prefill or a
  // decode step over `sequences` sequences; ok: it succeeded, and only then
  // is it counted in the statistics). Triton counts one model execution per
  // batch, so a step is one execution of batch size `sequences`; a request is
  // one inference, counted once, by the step that prefills it:
  // prefill_queue_seconds holds the waits (arrival to this step) of the
  // requests it prefills (empty for a decode step). compute_infer counts
  // those requests and charges the step's time to each of the `sequences`,
  // as a batch's time is charged to each of its requests.
  void generation_step(const std::string& model, const std::string& version, int64_t sequences,
                       const std::vector<double>& prefill_queue_seconds, double compute_seconds, bool ok);
  // An infer or generate request ended (ok or not), seconds after it arrived:
  // its request_duration, and the statistics' success / fail and last inference.
  void outcome(const std::string& model, const std::string& version, bool ok, double seconds);
  // Every model's statistics (name, version order).
  std::vector<ModelStatistics> statistics() const;
  // What the engine measured of a batch that succeeded (serving/engine.h BatchReport).
  void engine(const std::string& model, const std::string& version, double engine_seconds, double forward_seconds);
  void queue_size(const std::string& model, const std::string& version, int64_t waiting);
  // Generation (serving/generator.h).
  void first_token(const std::string& model, const std::string& version, double seconds);
  void inter_token(const std::string& model, const std::string& version, double seconds);
  void tokens_generated(const std::string& model, const std::string& version, int64_t tokens);
  void kv_blocks(const std::string& model, const std::string& version, int64_t in_use, int64_t total);
  void ready(bool ready);
  std::string render() const;

 private:
  struct Model {
    std::map<int, long long> requests;  // by status
    long long failures = 0;
    Histogram duration{{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120}};
    Histogram queue{{0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}};
    Histogram compute{{0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}};
    Histogram batch_rows{{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024}};
    Histogram batch_requests{{1, 2, 4, 8, 16, 32, 64, 128, 256}};
    Histogram first_token{{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}};
    Histogram inter_token{{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}};
    Summary engine, forward, overhead;
    int64_t waiting = 0;
    long long tokens = 0;
    int64_t kv_in_use = 0, kv_total = -1;  // -1: the model does not generate
    ModelStatistics stats;
  };
  Model& model(const std::string& model, const std::string& version);
  // Under the lock: one execution of `size` rows (or sequences) in the
  // histograms, and (ok) in the statistics' execution count and batch_stats.
  // Returns the statistics to add the requests' counts to, or null when not ok.
  ModelStatistics* execution(Model& x, int64_t size, int64_t requests, const std::vector<double>& queue_seconds,
                             double compute_seconds, bool ok);

  mutable std::mutex mutex_;
  std::map<std::pair<std::string, std::string>, Model> models_;
  std::map<int, long long> http_;
  std::map<std::pair<std::string, std::string>, long long> grpc_;  // (method, code)
  bool ready_ = false;
};

}  // namespace meshrt::serving

// meshrt-loadgen: a client and load generator for a KServe v2 server. For each
// concurrency level and format (HTTP with JSON or binary tensors, gRPC with raw
// contents) it sends requests from that many connections at once and prints
// requests per second, p50/p90/p99 latency, and, from the server's /metrics,
// the mean queue and compute time, so that the front end's overhead per request
// (latency - queue - compute) shows; then each format's requests per second
// against HTTP binary's at the same level (the baseline of the same run).
//
//   meshrt-loadgen --url localhost:8000 --grpc-url localhost:8001 --format all --concurrency 1,8,64
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <mutex>
#include <sstream>
#include <thread>

#include <cstring>
#include <functional>
#include <map>

#include <grpcpp/grpcpp.h>

#include "apps/cli.h"
#include "rpc/client.h"
#include "rpc/proto/grpc_service.grpc.pb.h"
#include "rpc/status.h"
#include "serving/grpc_wire.h"
#include "serving/http_client.h"
#include "serving/protocol.h"

namespace {

using meshrt::serving::HttpClient;
using meshrt::serving::HttpResponse;

struct Options {
  std::string url = "localhost:8000", grpc_url = "localhost:8001", model = "matmul_neg", concurrency = "1,8,64",
              format = "both";
  int requests = 200, warmup = 20;
  int64_t rows = 1;
  double value = 1.0;
  double expect = 0;
  bool check = false;
};

// The value of the first series line of metrics that starts with
// name{model="<model>" and contains `with` (0 when there is none).
double series_value(const std::string& metrics, const std::string& name, const std::string& model,
                    const std::string& with = "") {
  std::string key = name + "{model=\"" + model + "\"";
  for (size_t at = metrics.find(key); at != std::string::npos; at = metrics.find(key, at + 1)) {
    std::string line = metrics.substr(at, metrics.find('\n', at) - at);
    if (line.find(with) != std::string::npos) return std::stod(line.substr(line.find("} ") + 2));
  }
  return 0;
}

// Sum and count of a Prometheus histogram series for a model.
std::pair<double, double> histogram(const std::string& metrics, const std::string& name, const std::string& model) {
  return {series_value(metrics, name + "_sum", model), series_value(metrics, name + "_count", model)};
}

// The median of a Prometheus summary series for a model (0 when absent).
double median(const std::string& metrics, const std::string& name, const std::string& model) {
  return series_value(metrics, name, model, "quantile=\"0.5\"");
}

struct Request {
  std::string body;
  meshrt::serving::HttpHeaders headers;
};

Request make_request(const meshrt::serving::ModelSignature& model, int64_t rows, double value, bool binary) {
  using namespace meshrt;
  const serving::TensorSpec& input = model.inputs.at(0);
  HostTensor data = cast_host(HostTensor::full<double>({rows, input.shape[1]}, value), input.dtype);
  serving::HttpPayload payload = serving::make_infer_request(input, data, binary, "loadgen");
  Request r{std::move(payload.body), {{"Content-Type", payload.content_type}}};
  if (payload.header_length) r.headers.emplace_back("Inference-Header-Content-Length", std::to_string(*payload.header_length));
  return r;
}

// Whether every output value equals expected.
bool output_is(const HttpResponse& r, double expected) {
  std::optional<size_t> header_length;
  if (auto h = r.header("Inference-Header-Content-Length")) header_length = std::stoull(*h);
  std::vector<double> values =
      meshrt::cast_host(meshrt::serving::parse_infer_response(r.body, header_length), meshrt::DType::kF64).to_vector<double>();
  return !values.empty() && std::all_of(values.begin(), values.end(), [&](double v) { return v == expected; });
}

// The gRPC request of the same data: raw_input_contents, as tritonclient sends it.
inference::ModelInferRequest make_grpc_request(const std::string& model_name, const meshrt::serving::ModelSignature& model,
                                               int64_t rows, double value) {
  using namespace meshrt;
  const serving::TensorSpec& input = model.inputs.at(0);
  HostTensor data = cast_host(HostTensor::full<double>({rows, input.shape[1]}, value), input.dtype);
  inference::ModelInferRequest r;
  r.set_model_name(model_name);
  r.set_id("loadgen");
  serving::add_raw_input(r, input.name, data);
  return r;
}

// Whether every element of the first output equals expected (false for a malformed response).
bool grpc_output_is(const inference::ModelInferResponse& r, double expected) {
  using namespace meshrt;
  HostTensor t;
  try {
    t = serving::raw_output(r);
  } catch (const Error&) {
    return false;
  }
  std::vector<double> values = cast_host(t, DType::kF64).to_vector<double>();
  return !values.empty() && std::all_of(values.begin(), values.end(), [&](double v) { return v == expected; });
}

double percentile(std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  size_t i = static_cast<size_t>(p / 100.0 * static_cast<double>(sorted.size() - 1) + 0.5);
  return sorted[std::min(i, sorted.size() - 1)];
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  meshrt::apps::CommandLine app{"meshrt-loadgen: load generator for a KServe v2 server (meshrt-serve): throughput and latency at\n"
               "several concurrency levels, JSON and binary tensors, and the server's queue and compute time."};
  app.add("--url", o.url, "server host:port (HTTP)").show_default();
  app.add("--grpc-url", o.grpc_url, "server host:port of gRPC (the grpc format)").show_default();
  app.add("--model", o.model, "model name").show_default();
  app.add("--concurrency", o.concurrency, "comma-separated numbers of concurrent connections").show_default();
  app.add("--requests", o.requests, "requests per concurrency level").show_default();
  app.add("--warmup", o.warmup, "untimed requests before each level").show_default();
  app.add("--rows", o.rows, "rows per request (the batch axis)").show_default();
  app.add("--value", o.value, "every input element").show_default();
  app.add("--format", o.format,
          "json, binary (HTTP), grpc, both (json and binary) or all (json, binary and grpc, with each one's req/s against "
          "binary's)")
      .one_of({"json", "binary", "grpc", "both", "all"})
      .show_default();
  auto expect = app.add("--expect", o.expect, "check that every output element equals this value");
  if (auto exit_code = app.parse(argc, argv)) return *exit_code;
  o.check = expect.given();

  size_t colon = o.url.rfind(':');
  std::string host = colon == std::string::npos ? o.url : o.url.substr(0, colon);
  uint16_t port = colon == std::string::npos ? 8000 : static_cast<uint16_t>(std::stoi(o.url.substr(colon + 1)));
  std::vector<int> levels;
  std::stringstream in(o.concurrency);
  for (std::string item; std::getline(in, item, ',');) levels.push_back(std::stoi(item));
  try {
    HttpClient control(host, port);
    HttpResponse meta = control.request("GET", "/v2/models/" + o.model);
    if (meta.status != 200) {
      std::fprintf(stderr, "meshrt-loadgen: GET /v2/models/%s: %d %s\n", o.model.c_str(), meta.status, meta.body.c_str());
      return 1;
    }
    meshrt::serving::ModelSignature metadata = meshrt::serving::parse_model_metadata(meta.body);
    std::printf("# meshrt-loadgen: %s model %s, %lld row(s) per request, %d requests per level\n", o.url.c_str(),
                o.model.c_str(), static_cast<long long>(o.rows), o.requests);
    std::printf("#%6s %11s %9s %9s %9s %9s %9s %7s %9s %9s %9s %9s %9s %9s %9s %11s %11s\n", "format", "concurrency", "req/s",
                "p50 ms", "p90 ms", "p99 ms", "mean ms", "errors", "queue ms", "batch ms", "rows/bat", "overhead",
                "eng us", "fwd us", "eng-fwd", "rows/s", "fwd rows/s");
    bool all_ok = true;
    std::map<std::pair<std::string, int>, double> rates;  // (format, level) -> req/s
    for (std::string format : {"json", "binary", "grpc"}) {
      bool wanted = o.format == format || o.format == "all" || (o.format == "both" && format != "grpc");
      if (!wanted) continue;
      Request request = make_request(metadata, o.rows, o.value, format == "binary");
      inference::ModelInferRequest grpc_request = make_grpc_request(o.model, metadata, o.rows, o.value);
      // One request of this format on a client of its own (each thread has
      // one: a connection each); "" when answered right, else what went wrong.
      using Sender = std::function<std::string()>;
      auto make_sender = [&]() -> Sender {
        if (format == "grpc") {
          auto stub = inference::GRPCInferenceService::NewStub(meshrt::rpc::make_channel(o.grpc_url, 64u << 20, true));
          return [&, stub = std::shared_ptr<inference::GRPCInferenceService::Stub>(std::move(stub))]() -> std::string {
            grpc::ClientContext context;
            meshrt::rpc::set_timeout(context, std::chrono::seconds(300));
            inference::ModelInferResponse response;
            grpc::Status status = stub->ModelInfer(&context, grpc_request, &response);
            if (!status.ok()) return std::string(meshrt::rpc::code_name(status.error_code())) + ": " + status.error_message();
            return !o.check || grpc_output_is(response, o.expect) ? "" : "a wrong answer";
          };
        }
        auto client = std::make_shared<HttpClient>(host, port);
        return [&, client]() -> std::string {
          HttpResponse r = client->request("POST", "/v2/models/" + o.model + "/infer", request.body, request.headers);
          if (r.status != 200) return std::to_string(r.status) + ": " + r.body.substr(0, 200);
          return !o.check || output_is(r, o.expect) ? "" : "a wrong answer";
        };
      };
      for (int level : levels) {
        // Warm up, then read the server's counters before and after the timed requests.
        Sender warm = make_sender();
        for (int i = 0; i < o.warmup; ++i) warm();
        std::string before = control.request("GET", "/metrics").body;
        std::atomic<int> next{0};
        std::atomic<int> errors{0};
        std::string first_error;  // with mutex
        std::mutex mutex;
        std::vector<double> latencies;
        auto start = std::chrono::steady_clock::now();
        std::vector<std::thread> threads;
        for (int t = 0; t < level; ++t) {
          threads.emplace_back([&] {
            Sender send = make_sender();
            std::vector<double> mine;
            while (next.fetch_add(1) < o.requests) {
              auto t0 = std::chrono::steady_clock::now();
              std::string failed;
              try {
                failed = send();
              } catch (const std::exception& e) {
                failed = e.what();
              }
              if (!failed.empty()) {
                ++errors;
                std::lock_guard<std::mutex> lock(mutex);
                if (first_error.empty()) first_error = failed;
              }
              mine.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
            }
            std::lock_guard<std::mutex> lock(mutex);
            latencies.insert(latencies.end(), mine.begin(), mine.end());
          });
        }
        for (auto& t : threads) t.join();
        double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        std::string after = control.request("GET", "/metrics").body;
        auto delta = [&](const char* name) {
          auto [s0, c0] = histogram(before, name, o.model);
          auto [s1, c1] = histogram(after, name, o.model);
          return std::make_pair(s1 - s0, c1 - c0);
        };
        auto [queue_sum, queue_count] = delta("meshrt_inference_queue_seconds");
        auto [compute_sum, batches] = delta("meshrt_inference_compute_seconds");
        auto [rows_sum, rows_batches] = delta("meshrt_batch_size");
        std::sort(latencies.begin(), latencies.end());
        double mean = 0;
        for (double l : latencies) mean += l;
        mean /= std::max<size_t>(1, latencies.size());
        double queue_ms = queue_count > 0 ? 1e3 * queue_sum / queue_count : 0;
        double batch_ms = batches > 0 ? 1e3 * compute_sum / batches : 0;
        // Medians over the server's last 1000 batches (of this level when it had that many).
        double engine_us = 1e6 * median(after, "meshrt_inference_engine_seconds", o.model);
        double forward_us = 1e6 * median(after, "meshrt_inference_forward_seconds", o.model);
        double engine_overhead_us = 1e6 * median(after, "meshrt_inference_engine_overhead_seconds", o.model);
        std::printf(" %6s %11d %9.1f %9.2f %9.2f %9.2f %9.2f %7d %9.2f %9.2f %9.1f %9.2f %9.1f %9.1f %9.1f %11.0f %11.0f\n",
                    format.c_str(), level, latencies.size() / seconds, percentile(latencies, 50),
                    percentile(latencies, 90), percentile(latencies, 99), mean, errors.load(), queue_ms, batch_ms,
                    rows_batches > 0 ? rows_sum / rows_batches : 0.0, mean - queue_ms - batch_ms, engine_us,
                    forward_us, engine_overhead_us, static_cast<double>(latencies.size() * o.rows) / seconds,
                    forward_us > 0 && rows_batches > 0 ? 1e6 * (rows_sum / rows_batches) / forward_us : 0.0);
        if (!first_error.empty()) std::printf("#   the first error: %s\n", first_error.c_str());
        std::fflush(stdout);
        rates[{format, level}] = latencies.size() / seconds;
        all_ok = all_ok && errors.load() == 0;
      }
    }
    if (rates.count({"binary", levels.front()})) {
      std::printf("# req/s against HTTP binary at the same concurrency (this run's baseline):\n");
      for (int level : levels) {
        double base = rates[{"binary", level}];
        std::printf("#   concurrency %3d:", level);
        for (std::string format : {"json", "binary", "grpc"}) {
          auto it = rates.find({format, level});
          if (it != rates.end() && base > 0) std::printf("  %s %.2fx", format.c_str(), it->second / base);
        }
        std::printf("\n");
      }
    }
    std::printf("# overhead = mean latency - mean queue time - mean batch compute time (HTTP or gRPC, parsing, copies)\n"
                "# eng us, fwd us, eng-fwd: medians of the server's engine time per batch, of its stages' forward\n"
                "#   time, and of the difference (what the engine itself cost); rows/s: rows served per second;\n"
                "#   fwd rows/s: the raw batched compute, rows per batch / median forward time\n");
    return all_ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "meshrt-loadgen: %s\n", e.what());
    return 1;
  }
}

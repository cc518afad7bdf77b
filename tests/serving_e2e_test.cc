// End-to-end: real meshrt-serve jobs under mpiexec, spoken to over loopback HTTP
// (KServe v2). This binary is not an MPI program itself: it starts the jobs.
#include <gtest/gtest.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "serving/http_client.h"
#include "hf_test_util.h"
#include "server_job.h"
#include "spawn_util.h"
#include "zlib_util.h"
#include "io/safetensors.h"


namespace meshrt::serving {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

const std::string kExamples = MESHRT_SOURCE_DIR "/examples/models";

std::string infer_body(const std::string& input, int64_t rows, int64_t width, double value, const std::string& id = "") {
  json body = {{"inputs", {{{"name", input}, {"datatype", "FP32"}, {"shape", {rows, width}},
                            {"data", std::vector<double>(static_cast<size_t>(rows * width), value)}}}}};
  if (!id.empty()) body["id"] = id;
  return body.dump();
}

const std::vector<std::pair<std::string, std::string>> kJson = {{"Content-Type", "application/json"}};

// A server shared by the tests of a suite: started before the first, drained
// (SIGTERM, exit 0) after the last. Suite: a fixture deriving from SharedServer<Suite>.
template <class Suite>
class SharedServer : public ::testing::Test {
 protected:
  static void start(int ranks, const std::string& repository, std::vector<std::string> extra) {
    job_ = new ServerJob(ranks, repository, std::move(extra));
    ASSERT_TRUE(job_->wait_ready()) << job_->log();
  }
  static void TearDownTestSuite() {
    job_->signal_rank0(SIGTERM);
    EXPECT_TRUE(job_->exited(std::chrono::seconds(60))) << job_->log();
    EXPECT_EQ(job_->exit_code(), 0) << job_->log();
    delete job_;
    job_ = nullptr;
  }
  void SetUp() override {
    if (!job_ || job_->port() == 0) GTEST_SKIP() << "the server did not start";
  }
  static inline ServerJob* job_ = nullptr;
};

// The shared 4-rank server of the example repository; its log lines are JSON,
// with a line per HTTP request (Examples.JsonLogLines).
class Examples : public SharedServer<Examples> {
 protected:
  static void SetUpTestSuite() {
    start(4, kExamples, {"--max-body-bytes", "1048576", "--log-format", "json", "--log-verbose", "1",
                         "--exit-timeout-secs", "30"});
  }
};

TEST_F(Examples, HealthAndMetadata) {
  HttpClient c = job_->client();
  EXPECT_EQ(c.request("GET", "/v2/health/live").status, 200);
  HttpResponse ready = c.request("GET", "/v2/health/ready");
  EXPECT_EQ(ready.status, 200);
  EXPECT_EQ(json::parse(ready.body)["ready"], true);
  json server = json::parse(c.request("GET", "/v2").body);
  EXPECT_EQ(server["name"], "meshrt");
  EXPECT_NE(server["extensions"].dump().find("binary_tensor_data"), std::string::npos);
  HttpResponse meta = c.request("GET", "/v2/models/matmul_neg");
  ASSERT_EQ(meta.status, 200);
  json m = json::parse(meta.body);
  EXPECT_EQ(m["inputs"][0]["name"], "x");
  EXPECT_EQ(m["inputs"][0]["shape"], json({-1, 96}));
  EXPECT_EQ(m["outputs"][0]["datatype"], "FP32");
  EXPECT_EQ(c.request("GET", "/v2/models/matmul_neg/versions/1").status, 200);
  EXPECT_EQ(c.request("GET", "/v2/models/matmul_neg/ready").status, 200);
  EXPECT_EQ(c.request("GET", "/v2/models/mlp/versions/1/ready").status, 200);
  HttpResponse unknown = c.request("GET", "/v2/models/nothing");
  EXPECT_EQ(unknown.status, 404);
  EXPECT_EQ(json::parse(unknown.body)["error"], "unknown model 'nothing'");
  EXPECT_EQ(c.request("GET", "/v2/models/matmul_neg/versions/7").status, 404);
  EXPECT_EQ(c.request("POST", "/v2/models/nothing/infer", "{}").status, 404);
  EXPECT_EQ(c.request("GET", "/v3/whatever").status, 404);
  EXPECT_EQ(c.request("GET", "/v2/models/matmul_neg/infer").status, 405);
  EXPECT_EQ(c.request("DELETE", "/v2/health/live").status, 405);
}

TEST_F(Examples, MatMulNegGivesMinus48) {
  HttpClient c = job_->client();
  HttpResponse r = c.request("POST", "/v2/models/matmul_neg/infer", infer_body("x", 128, 96, 1.0, "req-1"), kJson);
  ASSERT_EQ(r.status, 200) << r.body;
  json out = json::parse(r.body);
  EXPECT_EQ(out["id"], "req-1");
  EXPECT_EQ(out["model_name"], "matmul_neg");
  EXPECT_EQ(out["outputs"][0]["name"], "y");
  EXPECT_EQ(out["outputs"][0]["shape"], json({128, 16}));
  ASSERT_EQ(out["outputs"][0]["data"].size(), 128u * 16u);
  for (const auto& v : out["outputs"][0]["data"]) ASSERT_EQ(v.get<double>(), -48.0);
  // The same version explicitly.
  EXPECT_EQ(c.request("POST", "/v2/models/matmul_neg/versions/1/infer", infer_body("x", 1, 96, 2.0), kJson).status, 200);
}

TEST_F(Examples, BinaryTensorDataBothWays) {
  HttpClient c = job_->client();
  json header = {{"inputs", {{{"name", "x"}, {"datatype", "FP32"}, {"shape", {3, 96}}, {"parameters", {{"binary_data_size", 3 * 96 * 4}}}}}},
                 {"outputs", {{{"name", "y"}, {"parameters", {{"binary_data", true}}}}}}};
  std::string body = header.dump();
  size_t header_length = body.size();
  std::vector<float> ones(3 * 96, 1.0f);
  body.append(reinterpret_cast<const char*>(ones.data()), ones.size() * 4);
  HttpResponse r = c.request("POST", "/v2/models/matmul_neg/infer", body,
                             {{"Inference-Header-Content-Length", std::to_string(header_length)},
                              {"Content-Type", "application/octet-stream"}});
  ASSERT_EQ(r.status, 200) << r.body.substr(0, 300);
  std::string length;
  for (const auto& [k, v] : r.headers) {
    if (strcasecmp(k.c_str(), "Inference-Header-Content-Length") == 0) length = v;
  }
  ASSERT_FALSE(length.empty());
  size_t n = std::stoull(length);
  json out = json::parse(r.body.substr(0, n));
  EXPECT_EQ(out["outputs"][0]["parameters"]["binary_data_size"], 3 * 16 * 4);
  ASSERT_EQ(r.body.size() - n, 3u * 16u * 4u);
  for (size_t i = 0; i < 3 * 16; ++i) {
    float v;
    std::memcpy(&v, r.body.data() + n + i * 4, 4);
    ASSERT_EQ(v, -48.0f);
  }
}

TEST_F(Examples, ConcurrentRequestsAreBatchedAndAllCorrect) {
  std::atomic<int> wrong{0}, done{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 16; ++t) {
    threads.emplace_back([&, t] {
      HttpClient c = job_->client();
      for (int i = 0; i < 8; ++i) {
        int64_t rows = 1 + (t + i) % 5;
        double value = 1.0 + t;  // -(96 x value x 0.5)
        HttpResponse r = c.request("POST", "/v2/models/matmul_neg/infer", infer_body("x", rows, 96, value), kJson);
        if (r.status != 200) {
          ++wrong;
          continue;
        }
        json out = json::parse(r.body);
        if (out["outputs"][0]["shape"] != json({rows, 16})) ++wrong;
        for (const auto& v : out["outputs"][0]["data"]) {
          if (v.get<double>() != -48.0 * value) {
            ++wrong;
            break;
          }
        }
        ++done;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(done.load(), 16 * 8);
  // Batching observed: some batch carried more than one request.
  std::string metrics = job_->client().request("GET", "/metrics").body;
  auto number = [&](const std::string& key) {
    size_t at = metrics.find(key);
    EXPECT_NE(at, std::string::npos) << key;
    return at == std::string::npos ? 0.0 : std::stod(metrics.substr(metrics.find("} ", at) + 2));
  };
  double batches = number("meshrt_batch_requests_count{model=\"matmul_neg\"");
  double single = number("meshrt_batch_requests_bucket{model=\"matmul_neg\",version=\"1\",le=\"1\"}");
  double requests = number("meshrt_batch_requests_sum{model=\"matmul_neg\"");
  EXPECT_GT(requests, batches) << "no batch held more than one request:\n" << metrics;
  EXPECT_LT(single, batches);
  EXPECT_NE(metrics.find("meshrt_inference_requests_total{model=\"matmul_neg\",version=\"1\",code=\"200\"}"), std::string::npos);
  EXPECT_NE(metrics.find("meshrt_inference_compute_seconds_sum{model=\"matmul_neg\""), std::string::npos);
}

TEST_F(Examples, MlpAnswersProbabilities) {
  HttpResponse r = job_->client().request("POST", "/v2/models/mlp/infer", infer_body("features", 5, 32, 0.25), kJson);
  ASSERT_EQ(r.status, 200) << r.body;
  json out = json::parse(r.body);
  ASSERT_EQ(out["outputs"][0]["shape"], json({5, 8}));
  const auto& data = out["outputs"][0]["data"];
  for (int row = 0; row < 5; ++row) {
    double sum = 0;
    for (int c = 0; c < 8; ++c) sum += data[static_cast<size_t>(row * 8 + c)].get<double>();
    EXPECT_NEAR(sum, 1.0, 1e-5);
  }
}

TEST_F(Examples, MalformedRequestsGet400WithTheReason) {
  HttpClient c = job_->client();
  struct Case {
    std::string body;
    std::vector<std::pair<std::string, std::string>> headers;
    int status;
    std::string fragment;
  };
  std::string good_header = json({{"inputs", {{{"name", "x"}, {"datatype", "FP32"}, {"shape", {1, 96}},
                                                {"parameters", {{"binary_data_size", 384}}}}}}}).dump();
  std::vector<Case> cases = {
      {"{\"inputs\": [", kJson, 400, "not valid JSON"},
      {"[1, 2]", kJson, 400, "must be a JSON object"},
      {"{}", kJson, 400, "no \"inputs\" list"},
      {R"({"inputs": []})", kJson, 400, "input 'x' is missing"},
      {infer_body("z", 1, 96, 1), kJson, 400, "has no input 'z' (its input is 'x')"},
      {R"({"inputs": [{"name": "x", "datatype": "INT32", "shape": [1, 96], "data": [1]}]})", kJson, 400,
       "input 'x': expected datatype FP32, got INT32"},
      {infer_body("x", 2, 95, 1), kJson, 400, "input 'x': expected shape [n, 96] with n >= 1 (the model's [-1, 96]), got [2, 95]"},
      {R"({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 96], "data": [1, 2, 3]}]})", kJson, 400,
       "shape [2, 96] needs 192 values, got 3"},
      {[] {
         json body = json::parse(infer_body("x", 1, 96, 1));
         body["inputs"][0]["data"][5] = "a";
         return body.dump();
       }(),
       kJson, 400, "input 'x': element 5 is \"a\", expected a number for FP32"},
      {infer_body("x", 300, 96, 1), kJson, 400, "300 rows exceed the model's max_batch_size of 256"},
      {good_header + std::string(100, 'a'), {{"Inference-Header-Content-Length", std::to_string(good_header.size())}}, 400,
       "the body ends after 100 of its 384 binary bytes"},
      {good_header + std::string(400, 'a'), {{"Inference-Header-Content-Length", std::to_string(good_header.size())}}, 400,
       "16 bytes after the JSON header"},
      {good_header, {{"Inference-Header-Content-Length", "99999"}}, 400, "Inference-Header-Content-Length is 99999"},
      {good_header, {{"Inference-Header-Content-Length", "ten"}}, 400, "is not a number"},
      {good_header, {{"Inference-Header-Content-Length", "-5"}}, 400, "Inference-Header-Content-Length \"-5\" is not a number"},
      {good_header, {{"Inference-Header-Content-Length", "+12"}}, 400, "Inference-Header-Content-Length \"+12\" is not a number"},
      {good_header, {{"Inference-Header-Content-Length", "1 2"}}, 400, "Inference-Header-Content-Length \"1 2\" is not a number"},
      {good_header, {{"Inference-Header-Content-Length", "12abc"}}, 400, "Inference-Header-Content-Length \"12abc\" is not a number"},
      {[] {
         json body = json::parse(infer_body("x", 1, 96, 1));
         body["inputs"][0]["data"][7] = 1e308;
         return body.dump();
       }(),
       kJson, 400, "input 'x': element 7 = 1e+308 is out of range for FP32"},
      {[] {
         json body = json::parse(infer_body("x", 1, 96, 1));
         body["inputs"][0]["data"][0] = -3.5e38;
         return body.dump();
       }(),
       kJson, 400, "input 'x': element 0 = -3.5e+38 is out of range for FP32"},
      {good_header, kJson, 400, "the Inference-Header-Content-Length header is missing"},
      {std::string(2u << 20, ' '), kJson, 413, "exceeds the limit of 1048576 bytes"},
      {R"({"inputs": [{"name": "x", "datatype": "FP32", "shape": )" + std::string(100000, '[') + "]}]}", kJson, 400,
       "nested deeper than 64 levels"},
      {"{\"inputs\": \"\xff\xfe\"}", kJson, 400, "not valid JSON"},
  };
  for (const Case& k : cases) {
    HttpResponse r = c.request("POST", "/v2/models/matmul_neg/infer", k.body, k.headers);
    EXPECT_EQ(r.status, k.status) << k.fragment << ": " << r.body;
    std::string error;
    try {
      error = json::parse(r.body)["error"].get<std::string>();
    } catch (const std::exception&) {
      error = r.body;
    }
    EXPECT_NE(error.find(k.fragment), std::string::npos) << "\"" << error << "\" lacks \"" << k.fragment << "\"";
  }
  std::vector<std::pair<std::string, std::string>> many;
  for (int i = 0; i < 150; ++i) many.emplace_back("X-Header-" + std::to_string(i), "1");
  EXPECT_EQ(c.request("GET", "/v2/health/live", "", many).status, 431);
  // The server is still well after all that.
  EXPECT_EQ(c.request("POST", "/v2/models/matmul_neg/infer", infer_body("x", 1, 96, 1), kJson).status, 200);
}

// A series' value in a Prometheus text ("name{labels} value"), if present.
std::optional<double> metric_value(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(series + " ", 0) == 0) return std::stod(line.substr(series.size() + 1));
  }
  return std::nullopt;
}

// Triton's metrics port: /metrics alone, on a port of its own, with the
// process's metrics and the requests' durations; /metrics on the HTTP port
// keeps answering.
TEST_F(Examples, MetricsPortServesMetrics) {
  HttpClient c = job_->client();
  ASSERT_EQ(c.request("POST", "/v2/models/matmul_neg/infer", infer_body("x", 2, 96, 1.0), kJson).status, 200);
  ASSERT_EQ(c.request("POST", "/v2/models/matmul_neg/infer", "{not json", kJson).status, 400);
  uint16_t port = job_->metrics_port();
  ASSERT_NE(port, 0);
  ASSERT_NE(port, job_->port());
  HttpClient m("127.0.0.1", port);
  HttpResponse r = m.request("GET", "/metrics");
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.content_type, "text/plain; version=0.0.4");
  const std::string count = "meshrt_request_duration_seconds_count{model=\"matmul_neg\",version=\"1\"}";
  ASSERT_TRUE(metric_value(r.body, count)) << r.body;
  EXPECT_GE(*metric_value(r.body, count), 2) << "both requests, the 400 too";
  EXPECT_GT(*metric_value(r.body, "meshrt_request_duration_seconds_sum{model=\"matmul_neg\",version=\"1\"}"), 0);
  EXPECT_GE(*metric_value(r.body, "meshrt_request_duration_seconds_bucket{model=\"matmul_neg\",version=\"1\",le=\"+Inf\"}"),
            2);
  for (const char* name : {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_start_time_seconds",
                           "process_open_fds"}) {
    std::optional<double> v = metric_value(r.body, name);
    ASSERT_TRUE(v) << name << " is missing:\n" << r.body;
    EXPECT_GT(*v, 0) << name;
  }
  EXPECT_GT(*metric_value(r.body, "process_resident_memory_bytes"), 1 << 20);
  double now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  double started = *metric_value(r.body, "process_start_time_seconds");
  EXPECT_LT(started, now + 5);
  EXPECT_GT(started, now - 3600) << "rank 0 started within the hour";
  // The same exposition on the HTTP port.
  EXPECT_TRUE(metric_value(c.request("GET", "/metrics").body, count));
  // The metrics port has /metrics alone.
  EXPECT_EQ(m.request("GET", "/v2/health/ready").status, 404);
  EXPECT_EQ(m.request("POST", "/v2/models/matmul_neg/infer", infer_body("x", 1, 96, 1.0), kJson).status, 404);
  HttpResponse post = m.request("POST", "/metrics");
  EXPECT_EQ(post.status, 405);
  EXPECT_EQ(post.header("Allow"), "GET, HEAD");
  HttpResponse head = m.request("HEAD", "/metrics");
  EXPECT_EQ(head.status, 200);
  EXPECT_EQ(head.body, "");
}

// HEAD on the health routes (and every GET route): GET's status and headers, no body.
TEST_F(Examples, HeadAnswersAsGetWithoutTheBody) {
  HttpClient c = job_->client();
  for (const char* path : {"/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/matmul_neg/ready",
                           "/v2/models/nothing/ready"}) {
    HttpResponse get = c.request("GET", path), head = c.request("HEAD", path);
    EXPECT_EQ(head.status, get.status) << path;
    EXPECT_EQ(head.body, "") << path;
    EXPECT_EQ(head.header("Content-Length"), std::to_string(get.body.size())) << path;
    EXPECT_EQ(head.content_type, get.content_type) << path;
  }
  HttpResponse not_get = c.request("HEAD", "/v2/models/matmul_neg/infer");
  EXPECT_EQ(not_get.status, 405);
  EXPECT_EQ(not_get.header("Allow"), "POST");
  EXPECT_EQ(c.request("GET", "/v2/health/live").body, R"({"live": true})") << "the connection serves on";
}

// Request bodies in gzip or deflate, responses compressed as Accept-Encoding
// allows; the binary tensor extension's header length counts the bytes once
// decompressed (as Triton's).
TEST_F(Examples, CompressedRequestsAndResponses) {
  HttpClient c = job_->client();
  const std::string infer = "/v2/models/matmul_neg/infer";
  std::string body = infer_body("x", 64, 96, 1.0, "zipped");
  HttpResponse plain = c.request("POST", infer, body, kJson);
  ASSERT_EQ(plain.status, 200) << plain.body;
  EXPECT_FALSE(plain.header("Content-Encoding").has_value()) << "not asked for";
  HttpResponse gz = c.request("POST", infer, testing::gzip(body),
                              {{"Content-Type", "application/json"}, {"Content-Encoding", "gzip"},
                               {"Accept-Encoding", "gzip, deflate"}});
  ASSERT_EQ(gz.status, 200) << gz.body;
  EXPECT_EQ(gz.header("Content-Encoding"), "gzip");
  EXPECT_LT(gz.body.size(), plain.body.size());
  EXPECT_EQ(json::parse(testing::gunzip(gz.body)), json::parse(plain.body));
  HttpResponse deflated = c.request("POST", infer, testing::deflate_zlib(body),
                                    {{"Content-Encoding", "deflate"}, {"Accept-Encoding", "gzip;q=0, deflate"}});
  ASSERT_EQ(deflated.status, 200) << deflated.body;
  EXPECT_EQ(deflated.header("Content-Encoding"), "deflate");
  EXPECT_EQ(json::parse(testing::inflate_zlib(deflated.body)), json::parse(plain.body));

  // Binary tensor data, gzip both ways.
  json header = {{"inputs", {{{"name", "x"}, {"datatype", "FP32"}, {"shape", {64, 96}},
                              {"parameters", {{"binary_data_size", 64 * 96 * 4}}}}}},
                 {"outputs", {{{"name", "y"}, {"parameters", {{"binary_data", true}}}}}}};
  std::string binary = header.dump();
  size_t header_length = binary.size();
  std::vector<float> ones(64 * 96, 1.0f);
  binary.append(reinterpret_cast<const char*>(ones.data()), ones.size() * 4);
  HttpResponse b = c.request("POST", infer, testing::gzip(binary),
                             {{"Inference-Header-Content-Length", std::to_string(header_length)},
                              {"Content-Type", "application/octet-stream"}, {"Content-Encoding", "gzip"},
                              {"Accept-Encoding", "gzip"}});
  ASSERT_EQ(b.status, 200) << b.body;
  ASSERT_EQ(b.header("Content-Encoding"), "gzip");
  std::string out = testing::gunzip(b.body);
  size_t out_header = std::stoul(b.header("Inference-Header-Content-Length").value_or("0"));
  ASSERT_LE(out_header, out.size());
  json meta = json::parse(out.substr(0, out_header));
  EXPECT_EQ(meta["outputs"][0]["parameters"]["binary_data_size"], 64 * 16 * 4);
  ASSERT_EQ(out.size() - out_header, 64u * 16u * 4u);
  std::vector<float> y(64 * 16);
  std::memcpy(y.data(), out.data() + out_header, y.size() * 4);
  for (float v : y) ASSERT_EQ(v, -48.0f);

  // What cannot be decoded.
  EXPECT_EQ(c.request("POST", infer, body, {{"Content-Encoding", "br"}}).status, 415);
  EXPECT_EQ(c.request("POST", infer, "not gzip", {{"Content-Encoding", "gzip"}}).status, 400);
  std::string large = infer_body("x", 4000, 96, 1.0);  // past --max-body-bytes (1 MiB) once decoded
  ASSERT_GT(large.size(), 1u << 20);
  std::string zipped = testing::gzip(large);
  ASSERT_LT(zipped.size(), 1u << 20);
  HttpResponse over = c.request("POST", infer, zipped, {{"Content-Encoding", "gzip"}});
  EXPECT_EQ(over.status, 413) << over.body;
  EXPECT_EQ(c.request("POST", infer, body, kJson).status, 200) << "the server is well after all that";
}

// --log-format json: every line of meshrt-serve's is a JSON object with time,
// level, rank and message; --log-verbose 1 adds a line per HTTP request.
TEST_F(Examples, JsonLogLines) {
  HttpClient c = job_->client();
  ASSERT_EQ(c.request("GET", "/v2/health/live?probe=json-log").status, 200);
  ASSERT_TRUE(job_->log_shows("probe=json-log")) << job_->log();  // mpiexec forwards output late
  std::istringstream log(job_->log());
  int objects = 0;
  bool listening = false, request_line = false;
  for (std::string line; std::getline(log, line);) {
    EXPECT_NE(line.rfind("meshrt-serve:", 0), 0u) << "a line in the default format: " << line;
    if (line.empty() || line[0] != '{') continue;  // mpiexec's own, say
    json j;
    ASSERT_NO_THROW(j = json::parse(line)) << line;
    ASSERT_TRUE(j["time"].is_string() && j["level"].is_string() && j["message"].is_string()) << line;
    ++objects;
    std::string message = j["message"];
    if (message.find("listening on http://") == 0 && j["level"] == "info" && j["rank"] == 0) listening = true;
    if (message.find("HTTP GET /v2/health/live?probe=json-log: 200 in ") == 0 && j["level"] == "verbose") {
      request_line = true;
    }
  }
  EXPECT_GE(objects, 4) << job_->log();
  EXPECT_TRUE(listening) << job_->log();
  EXPECT_TRUE(request_line) << job_->log();
}

// A repository with one slow model (64 x 1024 @ 1024 x 1024 per request, no
// batching) and a queue of 2: floods overflow it.
// start_when_idle: the config key; by default, whether no delay is given (a
// delay given: requests wait for it).
std::string slow_repository(const fs::path& root, int ranks, int64_t queue, int64_t delay_us, bool batching,
                            std::optional<bool> start_when_idle = std::nullopt) {
  fs::create_directories(root / "slow");
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-0.01f, 0.01f);
  HostTensor w = HostTensor::empty({1024, 1024}, DType::kF32);
  for (float& v : w.span<float>()) v = dist(rng);
  for (int64_t i = 0; i < 1024; ++i) w.data<float>()[i * 1024 + i] = 1.0f;  // roughly the identity
  io::write_safetensors_file((root / "slow" / "weights.safetensors").string(), {{"w", w}});
  json config = {{"name", "slow"}, {"rank_size", ranks}, {"stage_size", 1},
                 {"inputs", {{{"name", "x"}, {"datatype", "FP32"}, {"shape", {-1, 1024}}}}},
                 {"outputs", {{{"name", "y"}, {"datatype", "FP32"}, {"shape", {-1, 1024}}}}},
                 {"weights", "weights.safetensors"},
                 {"stages", {{{"layers", {{{"type", "linear"}, {"weight", "w"}, {"parallel", "column"}}, {{"type", "linear"}, {"weight", "w"}, {"parallel", "row"}}}}}}},
                 {"batching", {{"enabled", batching}, {"max_batch_size", 256}, {"max_queue_delay_us", delay_us}, {"max_queue_size", queue},
                               {"start_when_idle", start_when_idle.value_or(delay_us == 0)}}}};
  std::ofstream(root / "slow" / "config.json") << config.dump(2);
  return root.string();
}

// An idle engine starts a batch at once: a lone request does not wait the
// queue delay (10 s here) for company.
TEST(Serving, AnIdleEngineStartsABatchAtOnce) {
  fs::path root = fs::temp_directory_path() / ("meshrt-idle-" + std::to_string(::getpid()));
  ServerJob job(2, slow_repository(root, 2, 64, 10000000, true, true));
  ASSERT_TRUE(job.wait_ready()) << job.log();
  HttpClient c = job.client();
  for (int i = 0; i < 3; ++i) {
    auto start = std::chrono::steady_clock::now();
    HttpResponse r = c.request("POST", "/v2/models/slow/infer", infer_body("x", 1, 1024, 1.0), kJson);
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_EQ(r.status, 200) << r.body;
    EXPECT_LT(seconds, 5.0) << "a lone request waited for company on an idle engine";
  }
  job.signal_rank0(SIGTERM);
  EXPECT_TRUE(job.exited(std::chrono::seconds(60)));
  fs::remove_all(root);
}

// Versions over HTTP: a model with version folders 1, 2 and 3 under the
// policy "specific [1, 3]" (version v multiplies by v): each version answers
// with its own weights at /versions/{v}, no version is the latest (3), an
// unserved or unknown version is 404; its config reports the policy and the
// statistics count each version apart.
TEST(Serving, VersionsAnswerWithTheirOwnWeights) {
  fs::path root = fs::temp_directory_path() / ("meshrt-versions-" + std::to_string(::getpid()));
  fs::create_directories(root / "scale");
  json config = {{"name", "scale"}, {"rank_size", 2}, {"stage_size", 1},
                 {"inputs", {{{"name", "x"}, {"datatype", "FP32"}, {"shape", {-1, 4}}}}},
                 {"outputs", {{{"name", "y"}, {"datatype", "FP32"}, {"shape", {-1, 4}}}}},
                 {"weights", "weights.safetensors"},
                 {"stages", {{{"layers", {{{"type", "linear"}, {"weight", "w"}, {"parallel", "column"}}}}}}},
                 {"version_policy", {{"specific", {{"versions", {1, 3}}}}}}};
  std::ofstream(root / "scale" / "config.json") << config.dump(2);
  for (int v : {1, 2, 3}) {
    fs::create_directories(root / "scale" / std::to_string(v));
    HostTensor w = HostTensor::zeros({4, 4}, DType::kF32);
    for (int i = 0; i < 4; ++i) w.data<float>()[i * 4 + i] = static_cast<float>(v);
    io::write_safetensors_file((root / "scale" / std::to_string(v) / "weights.safetensors").string(), {{"w", w}});
  }
  ServerJob job(2, root.string());
  ASSERT_TRUE(job.wait_ready()) << job.log();
  HttpClient c = job.client();
  auto first_output = [&](const std::string& path) {
    HttpResponse r = c.request("POST", path, infer_body("x", 1, 4, 1.0), kJson);
    EXPECT_EQ(r.status, 200) << path << ": " << r.body;
    return r.status == 200 ? json::parse(r.body)["outputs"][0]["data"][0].get<double>() : -1.0;
  };
  EXPECT_EQ(first_output("/v2/models/scale/versions/1/infer"), 1.0);
  EXPECT_EQ(first_output("/v2/models/scale/versions/3/infer"), 3.0);
  EXPECT_EQ(first_output("/v2/models/scale/infer"), 3.0);  // the latest
  EXPECT_EQ(c.request("POST", "/v2/models/scale/versions/2/infer", infer_body("x", 1, 4, 1.0), kJson).status, 404);
  EXPECT_EQ(c.request("GET", "/v2/models/scale/versions/7").status, 404);
  json metadata = json::parse(c.request("GET", "/v2/models/scale").body);
  EXPECT_EQ(metadata["versions"], json({"1", "3"})) << metadata.dump();
  json cfg = json::parse(c.request("GET", "/v2/models/scale/config").body);
  EXPECT_EQ(cfg["version_policy"], json({{"specific", {{"versions", {1, 3}}}}})) << cfg.dump();
  json stats = json::parse(c.request("GET", "/v2/models/scale/stats").body);
  ASSERT_EQ(stats["model_stats"].size(), 2u) << stats.dump();
  for (const json& m : stats["model_stats"]) {
    EXPECT_EQ(m["inference_stats"]["success"]["count"].get<int>(), m["version"] == "3" ? 2 : 1) << m.dump();
  }
  job.signal_rank0(SIGTERM);
  EXPECT_TRUE(job.exited(std::chrono::seconds(60)));
  fs::remove_all(root);
}

TEST(Serving, QueueOverflowAnswersEveryRequest) {
  fs::path root = fs::temp_directory_path() / ("meshrt-slow-" + std::to_string(::getpid()));
  ServerJob job(2, slow_repository(root, 2, 2, 0, false));
  ASSERT_TRUE(job.wait_ready()) << job.log();
  std::atomic<int> ok{0}, overloaded{0}, other{0};
  std::string other_status;
  std::mutex mutex;
  std::vector<std::thread> threads;
  for (int t = 0; t < 24; ++t) {
    threads.emplace_back([&] {
      HttpClient c = job.client();
      for (int i = 0; i < 4; ++i) {
        HttpResponse r = c.request("POST", "/v2/models/slow/infer", infer_body("x", 64, 1024, 1.0), kJson);
        if (r.status == 200) {
          ++ok;
        } else if (r.status == 503 && r.body.find("is overloaded") != std::string::npos) {
          ++overloaded;
        } else {
          ++other;
          std::lock_guard<std::mutex> lock(mutex);
          other_status = std::to_string(r.status) + " " + r.body;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok + overloaded, 24 * 4) << "lost or odd answers: " << other_status;
  EXPECT_GT(overloaded.load(), 0) << "the queue never overflowed";
  EXPECT_GT(ok.load(), 0);
  job.signal_rank0(SIGTERM);
  EXPECT_TRUE(job.exited(std::chrono::seconds(60)));
  EXPECT_EQ(job.exit_code(), 0) << job.log();
  fs::remove_all(root);
}

TEST(Serving, SigtermDrainsThenExitsZero) {
  // Requests wait up to 5 s for company: SIGTERM arrives while they wait.
  fs::path root = fs::temp_directory_path() / ("meshrt-drain-" + std::to_string(::getpid()));
  ServerJob job(2, slow_repository(root, 2, 64, 5000000, true), {"--drain-grace-ms", "2000"});
  ASSERT_TRUE(job.wait_ready()) << job.log();
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      HttpResponse r = job.client().request("POST", "/v2/models/slow/infer", infer_body("x", 2, 1024, 1.0), kJson);
      if (r.status == 200 && json::parse(r.body)["outputs"][0]["shape"] == json({2, 1024})) ++ok;
    });
  }
  // Wait until all four are queued (the server's gauge says so), then SIGTERM.
  HttpClient c = job.client();
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (c.request("GET", "/metrics").body.find("meshrt_queue_requests{model=\"slow\",version=\"1\"} 4") == std::string::npos) {
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "the requests never queued";
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  job.signal_rank0(SIGTERM);
  bool unready = false;
  for (int i = 0; i < 100 && !unready; ++i) {
    unready = c.request("GET", "/v2/health/ready").status == 503;
    if (!unready) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(unready) << "readiness must turn false while draining";
  HttpResponse late = c.request("POST", "/v2/models/slow/infer", infer_body("x", 1, 1024, 1.0), kJson);
  EXPECT_EQ(late.status, 503);
  EXPECT_NE(late.body.find("shutting down"), std::string::npos) << late.body;
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 4) << "in-flight requests must finish";
  EXPECT_TRUE(job.exited(std::chrono::seconds(60))) << job.log();
  EXPECT_EQ(job.exit_code(), 0) << job.log();
  EXPECT_NE(job.log().find("draining"), std::string::npos);
  fs::remove_all(root);
}

// Waits until GET target answers status (or the bound passes); the time it took.
std::optional<double> seconds_until_status(HttpClient& c, const std::string& target, int status,
                                           std::chrono::seconds bound) {
  auto start = std::chrono::steady_clock::now();
  auto answers = [&] {
    try {
      return c.request("GET", target).status == status;
    } catch (const Error&) {
      return false;
    }
  };
  if (!testing::poll_until(answers, [] { return false; }, bound)) return std::nullopt;
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// A stalled rank (SIGSTOP): the model fails at the collective deadline with an
// error naming the rank that did not answer; the server and the model say they
// are not ready and why; when the rank comes back (SIGCONT) the model recovers
// in place (new communicators, same processes) and answers correctly again.
// Then the rank is stopped again and SIGTERM to rank 0 ends the job within a
// bound, naming the rank that did not answer. Deadlines: collectives 2 s, a
// batch's result 4 s, the exit check-in 3 s.
TEST(Serving, AStalledRankIsNamedTheModelRecoversInPlaceAndShutdownIsBounded) {
  ServerJob job(4, kExamples, {"--model", "matmul_neg", "--comm-timeout", "2", "--result-timeout-ms", "4000",
                               "--finalize-timeout-ms", "3000"});
  ASSERT_TRUE(job.wait_ready()) << job.log();
  std::vector<pid_t> pids;
  for (int r = 0; r < 4; ++r) pids.push_back(job.rank_pid(r));
  for (pid_t p : pids) ASSERT_GT(p, 0) << "every rank writes its pid file";
  HttpClient c = job.client();
  auto minus48 = [&](const HttpResponse& r) {
    if (r.status != 200) return false;
    json out = json::parse(r.body)["outputs"][0]["data"];
    return !out.empty() && std::all_of(out.begin(), out.end(), [](const json& v) { return v.get<double>() == -48.0; });
  };
  ASSERT_TRUE(minus48(c.request("POST", "/v2/models/matmul_neg/infer", infer_body("x", 4, 96, 1.0), kJson)));

  // Stall rank 2 (stage 1); a request fails at the deadline, naming it.
  ASSERT_EQ(::kill(pids[2], SIGSTOP), 0);
  auto stalled_at = std::chrono::steady_clock::now();
  HttpResponse failed = c.request("POST", "/v2/models/matmul_neg/infer", infer_body("x", 4, 96, 1.0), kJson);
  double to_503 = std::chrono::duration<double>(std::chrono::steady_clock::now() - stalled_at).count();
  EXPECT_EQ(failed.status, 503) << failed.body;
  EXPECT_LT(to_503, 2 * 4 + 10) << "the failure must come within the deadlines";
  EXPECT_NE(failed.body.find("world rank 2 (host "), std::string::npos) << failed.body;
  EXPECT_NE(failed.body.find("did not answer"), std::string::npos) << failed.body;
  std::printf("[ MEASURE  ] stalled rank: request answered 503 after %.2f s: %s\n", to_503, failed.body.c_str());
  HttpResponse ready = c.request("GET", "/v2/health/ready");
  EXPECT_EQ(ready.status, 503) << "a failed model makes the server not ready";
  HttpResponse model_ready = c.request("GET", "/v2/models/matmul_neg/ready");
  EXPECT_EQ(model_ready.status, 503);
  EXPECT_NE(json::parse(model_ready.body).value("reason", "").find("world rank 2"), std::string::npos) << model_ready.body;
  json metadata = json::parse(c.request("GET", "/v2/models/matmul_neg").body);
  EXPECT_EQ(metadata.value("state", ""), "UNAVAILABLE") << metadata.dump();
  EXPECT_NE(metadata.value("reason", "").find("world rank 2"), std::string::npos) << metadata.dump();
  EXPECT_TRUE(job.log_shows("model 'matmul_neg' version 1 failed")) << job.log();
  EXPECT_EQ(c.request("GET", "/v2/health/live").status, 200);

  // The rank comes back: the model recovers in place.
  ASSERT_EQ(::kill(pids[2], SIGCONT), 0);
  std::optional<double> recovered = seconds_until_status(c, "/v2/health/ready", 200, std::chrono::seconds(60));
  ASSERT_TRUE(recovered) << "the model did not recover\n" << job.log();
  std::printf("[ MEASURE  ] stalled rank resumed: ready again after %.2f s\n", *recovered);
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(minus48(c.request("POST", "/v2/models/matmul_neg/infer", infer_body("x", 3 + i, 96, 1.0), kJson)));
  }
  for (int r = 0; r < 4; ++r) {
    EXPECT_EQ(job.rank_pid(r), pids[static_cast<size_t>(r)]) << "rank " << r << " restarted";
    EXPECT_EQ(::kill(pids[static_cast<size_t>(r)], 0), 0) << "rank " << r << " is gone";
  }
  EXPECT_TRUE(job.log_shows("recovered")) << job.log();

  // Shutdown with a stalled rank is bounded and names it.
  ASSERT_EQ(::kill(pids[2], SIGSTOP), 0);
  auto term_at = std::chrono::steady_clock::now();
  job.signal_rank0(SIGTERM);
  bool exited = job.exited(std::chrono::seconds(2 * 3 + 10));
  double to_exit = std::chrono::duration<double>(std::chrono::steady_clock::now() - term_at).count();
  if (!exited) ::kill(pids[2], SIGCONT);
  ASSERT_TRUE(exited) << "SIGTERM with a stalled rank must end the job within a bound\n" << job.log();
  std::printf("[ MEASURE  ] SIGTERM with a stalled rank: the job exited after %.2f s (code %d)\n", to_exit,
              job.exit_code());
  EXPECT_NE(job.log().find("world rank 2 (host "), std::string::npos) << job.log();
  EXPECT_NE(job.log().find("did not check in for the exit"), std::string::npos) << job.log();
  if (std::getenv("MESHRT_E2E_SHOW_LOG")) std::printf("%s\n", job.log().c_str());
  std::string log = job.log();
  size_t named = log.find("aborting the job instead of finalising");
  if (named != std::string::npos) std::printf("[ MEASURE  ] %s\n", log.substr(named, log.find('\n', named) - named).c_str());
  for (pid_t p : pids) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (::kill(p, 0) == 0 && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    EXPECT_NE(::kill(p, 0), 0) << "a rank outlived the job";
  }
}

// A rank stopped under load, so most likely inside a batch (its peers wait in
// the collective): every request is answered (200, or 503 once the model
// failed), and after SIGCONT the model recovers in place and serves again.
TEST(Serving, ARankStoppedUnderLoadRecoversInPlace) {
  fs::path root = fs::temp_directory_path() / ("meshrt-stall-" + std::to_string(::getpid()));
  ServerJob job(2, slow_repository(root, 2, 64, 0, true),
                {"--comm-timeout", "2", "--result-timeout-ms", "4000", "--finalize-timeout-ms", "5000"});
  ASSERT_TRUE(job.wait_ready()) << job.log();
  pid_t worker = job.rank_pid(1);
  ASSERT_GT(worker, 0);
  std::atomic<bool> stop{false};
  std::atomic<int> ok{0}, unavailable{0}, other{0};
  std::string odd;
  std::mutex mutex;
  std::vector<std::thread> load;
  for (int t = 0; t < 3; ++t) {
    load.emplace_back([&] {
      HttpClient c = job.client();
      while (!stop) {
        HttpResponse r = c.request("POST", "/v2/models/slow/infer", infer_body("x", 64, 1024, 1.0), kJson);
        if (r.status == 200) {
          ++ok;
        } else if (r.status == 503) {
          ++unavailable;
          std::this_thread::sleep_for(std::chrono::milliseconds(50));
        } else {
          ++other;
          std::lock_guard<std::mutex> lock(mutex);
          odd = std::to_string(r.status) + " " + r.body;
        }
      }
    });
  }
  HttpClient c = job.client();
  auto wait_for = [](const std::function<bool()>& f, std::chrono::seconds bound) {
    return testing::poll_until(f, [] { return false; }, bound);
  };
  ASSERT_TRUE(wait_for([&] { return ok >= 5; }, std::chrono::seconds(60)));
  ASSERT_EQ(::kill(worker, SIGSTOP), 0);
  bool unready = wait_for([&] { return c.request("GET", "/v2/health/ready").status == 503; }, std::chrono::seconds(2 * 4 + 10));
  ASSERT_EQ(::kill(worker, SIGCONT), 0);
  EXPECT_TRUE(unready) << "the model never failed while rank 1 was stopped\n" << job.log();
  auto resumed = std::chrono::steady_clock::now();
  bool recovered = wait_for([&] { return c.request("GET", "/v2/health/ready").status == 200; }, std::chrono::seconds(60));
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - resumed).count();
  EXPECT_TRUE(recovered) << job.log();
  int before = ok;
  EXPECT_TRUE(wait_for([&] { return ok >= before + 5; }, std::chrono::seconds(60))) << "no answers after the recovery";
  stop = true;
  for (auto& t : load) t.join();
  std::printf("[ MEASURE  ] rank stopped under load: ready again %.2f s after SIGCONT; %d answered 200, %d 503\n",
              seconds, ok.load(), unavailable.load());
  EXPECT_EQ(other.load(), 0) << odd;
  EXPECT_EQ(job.rank_pid(1), worker);
  EXPECT_EQ(::kill(worker, 0), 0) << "rank 1 restarted";
  job.signal_rank0(SIGTERM);
  EXPECT_TRUE(job.exited(std::chrono::seconds(2 * 5 + 10))) << job.log();
  std::printf("[ MEASURE  ] exit code after the recovery: %d\n", job.exit_code());
  fs::remove_all(root);
}

// A Hugging Face Llama checkpoint (examples/hf/llama-tiny: sharded safetensors,
// grouped-query attention) and the hub's GPT-2 files, served on 4 ranks as their
// meshrt.json says (2 pipeline stages x 2-way tensor parallel), read over KServe v2.
class HuggingFace : public SharedServer<HuggingFace> {
 protected:
  static void SetUpTestSuite() {
    start(4, MESHRT_SOURCE_DIR "/examples/hf", {"--model", "llama-tiny", "--model", "gpt2-tiny-hub"});
  }
};

json token_request(const std::vector<int64_t>& ids, int64_t rows, int64_t seq, const std::vector<int64_t>& mask = {}) {
  json body = {{"inputs", {{{"name", "input_ids"}, {"datatype", "INT64"}, {"shape", {rows, seq}}, {"data", ids}}}}};
  if (!mask.empty()) {
    body["inputs"].push_back({{"name", "attention_mask"}, {"datatype", "INT64"}, {"shape", {rows, seq}}, {"data", mask}});
  }
  return body;
}

TEST_F(HuggingFace, MetadataShowsTokensInLogitsOut) {
  HttpResponse r = job_->client().request("GET", "/v2/models/llama-tiny");
  ASSERT_EQ(r.status, 200) << r.body;
  json m = json::parse(r.body);
  EXPECT_EQ(m["inputs"][0], json({{"name", "input_ids"}, {"datatype", "INT64"}, {"shape", {-1, -1}}}));
  EXPECT_EQ(m["inputs"][1],
            json({{"name", "attention_mask"}, {"datatype", "INT64"}, {"shape", {-1, -1}}, {"optional", true}}));
  EXPECT_EQ(m["outputs"][0], json({{"name", "logits"}, {"datatype", "FP32"}, {"shape", {-1, -1, 503}}}));
  EXPECT_EQ(m["parameters"]["rank_size"], 4);
  EXPECT_EQ(m["parameters"]["stage_size"], 2);
}

TEST_F(HuggingFace, LogitsMatchTheReference) {
  if (!meshrt::testing::reference_can_run()) GTEST_SKIP() << "python3-numpy is not installed: the reference cannot run";
  for (const std::string model : {"llama-tiny", "gpt2-tiny-hub"}) {
    meshrt::testing::TokenInput in = meshrt::testing::make_token_input(503, 2, 7);
    std::vector<double> expected = meshrt::testing::run_reference(MESHRT_SOURCE_DIR, MESHRT_SOURCE_DIR "/examples/hf/" + model, in);
    ASSERT_EQ(expected.size(), static_cast<size_t>(2 * 7 * 503)) << "the reference did not run";
    HttpResponse r = job_->client().request("POST", "/v2/models/" + model + "/infer",
                                            token_request(in.ids, 2, 7, in.mask).dump(), kJson);
    ASSERT_EQ(r.status, 200) << r.body;
    json out = json::parse(r.body)["outputs"][0];
    EXPECT_EQ(out["name"], "logits");
    EXPECT_EQ(out["datatype"], "FP32");
    ASSERT_EQ(out["shape"], json({2, 7, 503}));
    std::vector<double> got = out["data"].get<std::vector<double>>();
    ASSERT_EQ(got.size(), expected.size());
    EXPECT_LT(meshrt::testing::worst_relative_error(expected, got.data(), in, 503), 1e-4) << model;
  }
}

// Prefixes of one sequence, sent at once: requests of one length are batched
// together, other lengths run in other batches, and each prefix's logits are
// the full sequence's first positions (causal attention).
TEST_F(HuggingFace, ConcurrentRequestsOfDifferentLengthsAreAllRight) {
  std::vector<int64_t> ids = {11, 402, 7, 99, 250, 3, 501, 42};
  auto logits = [&](size_t length) {
    std::vector<int64_t> prefix(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(length));
    HttpResponse r = job_->client().request("POST", "/v2/models/llama-tiny/infer",
                                            token_request(prefix, 1, static_cast<int64_t>(length)).dump(), kJson);
    EXPECT_EQ(r.status, 200) << r.body;
    if (r.status != 200) return std::vector<double>();
    return json::parse(r.body)["outputs"][0]["data"].get<std::vector<double>>();
  };
  std::vector<double> full = logits(ids.size());
  ASSERT_EQ(full.size(), ids.size() * 503);
  std::vector<std::vector<double>> got(16);
  std::vector<std::thread> clients;
  for (size_t k = 0; k < got.size(); ++k) clients.emplace_back([&, k] { got[k] = logits(1 + k % ids.size()); });
  for (std::thread& t : clients) t.join();
  for (size_t k = 0; k < got.size(); ++k) {
    size_t length = 1 + k % ids.size();
    ASSERT_EQ(got[k].size(), length * 503) << "request " << k;
    double worst = 0;
    for (size_t i = 0; i < got[k].size(); ++i) worst = std::max(worst, std::abs(got[k][i] - full[i]));
    EXPECT_LT(worst, 1e-4) << "prefix of " << length;
  }
}

TEST_F(HuggingFace, BadTokenRequestsGet400WithTheReason) {
  HttpClient c = job_->client();
  auto expect_400 = [&](const json& body, const std::string& fragment) {
    HttpResponse r = c.request("POST", "/v2/models/llama-tiny/infer", body.dump(), kJson);
    EXPECT_EQ(r.status, 400) << body.dump();
    EXPECT_NE(r.body.find(fragment), std::string::npos) << r.body;
  };
  expect_400(token_request({1, 503}, 1, 2), "token ids are 0 to 502");
  expect_400(token_request({1, 2}, 1, 2, {1, 1, 1}), "attention_mask");
  json mask_only = {{"inputs", {{{"name", "attention_mask"}, {"datatype", "INT64"}, {"shape", {1, 1}}, {"data", {1}}}}}};
  expect_400(mask_only, "input 'input_ids' is missing");
  json floats = {{"inputs", {{{"name", "input_ids"}, {"datatype", "FP32"}, {"shape", {1, 1}}, {"data", {1.0}}}}}};
  expect_400(floats, "INT64");
  json mismatched = token_request({1, 2}, 1, 2);
  mismatched["inputs"].push_back({{"name", "attention_mask"}, {"datatype", "INT64"}, {"shape", {1, 3}}, {"data", {1, 1, 1}}});
  expect_400(mismatched, "must have the shape of 'input_ids'");
  // The server still answers.
  EXPECT_EQ(c.request("POST", "/v2/models/llama-tiny/infer", token_request({1, 2}, 1, 2).dump(), kJson).status, 200);
}

json generate_body(const std::vector<int64_t>& ids, int64_t max_tokens) {
  return {{"input_ids", ids}, {"max_tokens", max_tokens}};
}

// Greedy generation over HTTP equals the float64 reference (full recompute per token).
TEST_F(HuggingFace, GenerateEqualsTheReference) {
  if (!meshrt::testing::reference_can_run()) GTEST_SKIP() << "python3-numpy is not installed: the reference cannot run";
  std::vector<int64_t> prompt = {60, 193, 243};
  std::string file = (fs::temp_directory_path() / ("meshrt-e2e-gen-" + std::to_string(::getpid()) + ".json")).string();
  std::string command = std::string("/usr/bin/python3 ") + MESHRT_SOURCE_DIR + "/tests/hf_reference.py --model " +
                        MESHRT_SOURCE_DIR + "/examples/hf/llama-tiny --input-ids '[[60, 193, 243]]' --generate 32 > " + file;
  ASSERT_EQ(std::system(command.c_str()), 0);
  json reference = json::parse(read_file(file));
  fs::remove(file);
  HttpResponse r = job_->client().request("POST", "/v2/models/llama-tiny/generate", generate_body(prompt, 32).dump(), kJson);
  ASSERT_EQ(r.status, 200) << r.body;
  json out = json::parse(r.body);
  EXPECT_EQ(out["model_name"], "llama-tiny");
  EXPECT_EQ(out["output_ids"], reference["tokens"][0]);
  EXPECT_EQ(out["finish_reason"], "length");
  // A stop token ends it, and is the last token given.
  int64_t third = reference["tokens"][0][2].get<int64_t>();
  json stop = generate_body(prompt, 32);
  stop["stop_token_ids"] = {third};
  r = job_->client().request("POST", "/v2/models/llama-tiny/generate", stop.dump(), kJson);
  ASSERT_EQ(r.status, 200) << r.body;
  out = json::parse(r.body);
  EXPECT_EQ(out["finish_reason"], "stop");
  ASSERT_EQ(out["output_ids"].size(), 3u);
  EXPECT_EQ(out["output_ids"][2], third);
}

// 16 generations of different prompts and lengths at once: each equals its solo result.
TEST_F(HuggingFace, ConcurrentGenerationsEqualTheirSoloResults) {
  auto generate = [&](size_t k) {
    std::vector<int64_t> prompt = {static_cast<int64_t>(10 + k), static_cast<int64_t>(200 + 3 * k), 7};
    prompt.resize(1 + k % 3);
    HttpResponse r = job_->client().request("POST", "/v2/models/llama-tiny/generate",
                                            generate_body(prompt, static_cast<int64_t>(4 + k)).dump(), kJson);
    EXPECT_EQ(r.status, 200) << r.body;
    return r.status == 200 ? json::parse(r.body)["output_ids"] : json();
  };
  std::vector<json> solo, together(16);
  for (size_t k = 0; k < 16; ++k) solo.push_back(generate(k));
  std::vector<std::thread> clients;
  for (size_t k = 0; k < 16; ++k) clients.emplace_back([&, k] { together[k] = generate(k); });
  for (std::thread& t : clients) t.join();
  for (size_t k = 0; k < 16; ++k) {
    EXPECT_EQ(together[k], solo[k]) << "request " << k;
    EXPECT_EQ(solo[k].size(), 4 + k) << "request " << k;
  }
}

// generate_stream: server-sent events, one per token as it comes, then the finish reason;
// the tokens are generate's.
TEST_F(HuggingFace, GenerateStreamSendsOneEventPerToken) {
  std::string body = generate_body({60, 193, 243}, 12).dump();
  HttpResponse whole = job_->client().request("POST", "/v2/models/llama-tiny/generate", body, kJson);
  ASSERT_EQ(whole.status, 200) << whole.body;
  std::string received;
  std::vector<std::chrono::steady_clock::time_point> arrivals;
  HttpResponse r = job_->client().request_stream("POST", "/v2/models/llama-tiny/generate_stream", body, kJson,
                                                 [&](std::string_view chunk) {
                                                   received += chunk;
                                                   arrivals.push_back(std::chrono::steady_clock::now());
                                                 });
  ASSERT_EQ(r.status, 200) << received;
  EXPECT_EQ(r.header("Content-Type").value_or(""), "text/event-stream");
  std::vector<json> events;
  for (size_t at = 0; (at = received.find("data: ", at)) != std::string::npos;) {
    size_t end = received.find("\n\n", at);
    ASSERT_NE(end, std::string::npos) << received;
    events.push_back(json::parse(received.substr(at + 6, end - at - 6)));
    at = end;
  }
  ASSERT_EQ(events.size(), 13u) << received;
  std::vector<int64_t> tokens;
  for (size_t i = 0; i < 12; ++i) {
    ASSERT_EQ(events[i]["output_ids"].size(), 1u);
    EXPECT_TRUE(events[i]["finish_reason"].is_null());
    tokens.push_back(events[i]["output_ids"][0].get<int64_t>());
  }
  EXPECT_EQ(events[12]["finish_reason"], "length");
  EXPECT_EQ(events[12]["output_ids"].size(), 0u);
  EXPECT_EQ(json(tokens), json::parse(whole.body)["output_ids"]);
  // A bad request is refused before any event.
  HttpResponse bad = job_->client().request("POST", "/v2/models/llama-tiny/generate_stream", R"({"input_ids": [1], "top_k": -2})", kJson);
  EXPECT_EQ(bad.status, 400);
}

// The tokenizer reference (tests/tokenizer_reference.py) on requests; null when it cannot run.
json tokenizer_reference(const std::string& tokenizer, const json& requests) {
  fs::path dir = fs::temp_directory_path() / ("meshrt-tok-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::ofstream(dir / "requests.json") << requests.dump();
  std::string command = std::string("/usr/bin/python3 ") + MESHRT_SOURCE_DIR + "/tests/tokenizer_reference.py --tokenizer " +
                        tokenizer + " --requests " + (dir / "requests.json").string() + " > " + (dir / "out.json").string();
  json out = std::system(command.c_str()) == 0 ? json::parse(read_file((dir / "out.json").string())) : json();
  fs::remove_all(dir);
  return out;
}

// text_input in, text_output out (the folder's tokenizer.json as pre- and
// post-processing), checked against the independent tokenizer reference;
// streamed, each event carries the text its token completes.
TEST_F(HuggingFace, TextInTextOut) {
  if (std::system("/usr/bin/python3 -c 'import regex' > /dev/null 2>&1") != 0) GTEST_SKIP() << "python3-regex is missing";
  std::string text = "Hello, world. The quick brown fox!";
  std::string tokenizer = MESHRT_SOURCE_DIR "/examples/hf/llama-tiny/tokenizer.json";
  json encoded = tokenizer_reference(tokenizer, {{"encode", {text}}});
  ASSERT_FALSE(encoded.is_null()) << "the tokenizer reference did not run";
  json by_text = {{"text_input", text}, {"max_tokens", 12}};
  HttpResponse r = job_->client().request("POST", "/v2/models/llama-tiny/generate", by_text.dump(), kJson);
  ASSERT_EQ(r.status, 200) << r.body;
  json out = json::parse(r.body);
  HttpResponse ids = job_->client().request("POST", "/v2/models/llama-tiny/generate",
                                            generate_body(encoded["encode"][0].get<std::vector<int64_t>>(), 12).dump(), kJson);
  ASSERT_EQ(ids.status, 200) << ids.body;
  EXPECT_EQ(out["output_ids"], json::parse(ids.body)["output_ids"]) << "text_input is encoded as the reference encodes it";
  json decoded = tokenizer_reference(tokenizer, {{"decode", {out["output_ids"]}}});
  EXPECT_EQ(out["text_output"], decoded["decode"][0]);
  // Streamed: the events' text joined is the whole text.
  std::string received;
  r = job_->client().request_stream("POST", "/v2/models/llama-tiny/generate_stream", by_text.dump(), kJson,
                                    [&](std::string_view chunk) { received += chunk; });
  ASSERT_EQ(r.status, 200);
  std::string joined;
  for (size_t at = 0; (at = received.find("data: ", at)) != std::string::npos;) {
    size_t end = received.find("\n\n", at);
    joined += json::parse(received.substr(at + 6, end - at - 6))["text_output"].get<std::string>();
    at = end;
  }
  EXPECT_EQ(joined, out["text_output"].get<std::string>());
}

TEST_F(HuggingFace, BadGenerateRequestsGet400WithTheReason) {
  HttpClient c = job_->client();
  auto expect = [&](int status, const std::string& model, const std::string& body, const std::string& fragment) {
    HttpResponse r = c.request("POST", "/v2/models/" + model + "/generate", body, kJson);
    EXPECT_EQ(r.status, status) << body << " " << r.body;
    EXPECT_NE(json::parse(r.body).value("error", "").find(fragment), std::string::npos) << r.body;
  };
  expect(400, "llama-tiny", R"({"input_ids": [1, 503]})", "\"input_ids\"[1] is 503");
  expect(400, "llama-tiny", R"({"input_ids": []})", "needs \"input_ids\"");
  expect(400, "llama-tiny", R"({"input_ids": [1], "temperature": -1})", "\"temperature\" must be >= 0");
  expect(400, "llama-tiny", R"({"input_ids": [1], "top_p": 0})", "\"top_p\" must be in (0, 1]");
  expect(400, "llama-tiny", R"({"input_ids": [1], "max_tokens": "many"})", "\"max_tokens\" must be an integer");
  expect(400, "llama-tiny", R"({"input_ids": [1], "beams": 4})", "unknown field \"beams\"");
  expect(400, "llama-tiny", R"({"prompt": "hi"})", "unknown field \"prompt\"");
  expect(400, "llama-tiny", "[1, 2]", "must be a JSON object");
  expect(404, "nothing", R"({"input_ids": [1]})", "unknown model");
}

// A model with a pool of 4 blocks of 8 tokens and a queue of 2: a request that
// could never fit gets 503 at once; of many that fit, each is answered
// (queued ones when blocks come back, the ones past the queue 503).
TEST(Serving, TheKvPoolRunsOutCleanly) {
  fs::path root = fs::temp_directory_path() / ("meshrt-kv-" + std::to_string(::getpid()));
  fs::create_directories(root / "llama-small");
  for (const auto& entry : fs::directory_iterator(MESHRT_SOURCE_DIR "/examples/hf/llama-tiny")) {
    if (entry.path().filename() != "meshrt.json") fs::copy(entry.path(), root / "llama-small" / entry.path().filename());
  }
  std::ofstream(root / "llama-small" / "meshrt.json")
      << R"({"rank_size": 2, "stage_size": 2, "kv_cache": {"block_size": 8, "num_blocks": 4},
            "batching": {"max_queue_size": 2}})";
  ServerJob job(2, root.string());
  ASSERT_TRUE(job.wait_ready()) << job.log();
  HttpClient c = job.client();
  HttpResponse never = c.request("POST", "/v2/models/llama-small/generate", generate_body({1, 2, 3}, 62).dump(), kJson);
  EXPECT_EQ(never.status, 503);
  EXPECT_NE(never.body.find("needs 8 KV-cache blocks of 8 tokens"), std::string::npos) << never.body;
  EXPECT_NE(never.body.find("can never fit"), std::string::npos) << never.body;
  // Each needs 2 blocks (3 + 12 tokens): two run at once, two wait, the rest are turned away.
  std::vector<int> status(12);
  std::vector<size_t> tokens(12);
  std::vector<std::thread> clients;
  for (size_t k = 0; k < status.size(); ++k) {
    clients.emplace_back([&, k] {
      HttpResponse r = job.client().request("POST", "/v2/models/llama-small/generate",
                                            generate_body({1, 2, static_cast<int64_t>(k)}, 12).dump(), kJson);
      status[k] = r.status;
      if (r.status == 200) tokens[k] = json::parse(r.body)["output_ids"].size();
    });
  }
  for (std::thread& t : clients) t.join();
  int ok = 0;
  for (size_t k = 0; k < status.size(); ++k) {
    EXPECT_TRUE(status[k] == 200 || status[k] == 503) << status[k];
    if (status[k] == 200) {
      ++ok;
      EXPECT_EQ(tokens[k], 12u);
    }
  }
  EXPECT_GE(ok, 2);
  std::string metrics = c.request("GET", "/metrics").body;
  EXPECT_NE(metrics.find("meshrt_kv_cache_blocks_in_use{model=\"llama-small\",version=\"1\"} 0"), std::string::npos) << metrics;
  job.signal_rank0(SIGTERM);
  EXPECT_TRUE(job.exited(std::chrono::seconds(60))) << job.log();
  fs::remove_all(root);
}

// A metrics port that is taken: the job ends, saying which port and why.
TEST(Serving, ABusyMetricsPortFailsClearly) {
  int taken = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(taken, 0);
  sockaddr_in any{};
  any.sin_family = AF_INET;
  any.sin_addr.s_addr = htonl(INADDR_ANY);
  socklen_t size = sizeof any;
  ASSERT_EQ(::bind(taken, reinterpret_cast<sockaddr*>(&any), sizeof any), 0);
  ASSERT_EQ(::listen(taken, 1), 0);
  ASSERT_EQ(::getsockname(taken, reinterpret_cast<sockaddr*>(&any), &size), 0);
  std::string port = std::to_string(ntohs(any.sin_port));
  fs::path root = fs::temp_directory_path() / ("meshrt-busy-metrics-" + std::to_string(::getpid()));
  ServerJob job(2, slow_repository(root, 2, 4, 0, false), {"--metrics-port", port});
  EXPECT_TRUE(job.exited(std::chrono::seconds(120))) << job.log();
  EXPECT_NE(job.exit_code(), 0) << job.log();
  EXPECT_TRUE(job.log_shows("the metrics port (--metrics-port " + port)) << job.log();
  EXPECT_NE(job.log().find("cannot listen on 0.0.0.0:" + port), std::string::npos) << job.log();
  ::close(taken);
  fs::remove_all(root);
}

TEST(Serving, RankCountMustMatchRankSize) {
  ServerJob job(2, kExamples);
  ASSERT_TRUE(job.exited(std::chrono::seconds(60)));
  EXPECT_NE(job.exit_code(), 0);
  EXPECT_NE(job.log().find("has rank_size 4 but meshrt-serve runs on 2 rank(s): start it with mpirun -np 4"), std::string::npos)
      << job.log();
}

}  // namespace
}  // namespace meshrt::serving

// End-to-end over gRPC: a real 4-rank meshrt-serve job serving the MatMul+Neg
// servable and a Llama checkpoint (a repository of links to the examples),
// driven through every RPC of inference.GRPCInferenceService with C++ stubs
// generated from meshrt's own proto, compared with the HTTP answers of the
// same job; then the Python client (tests/grpc_client_test.py, python3-grpcio)
// against the same job.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "rpc/client.h"
#include "rpc/proto/grpc_service.grpc.pb.h"
#include "server_job.h"

namespace meshrt::serving {
namespace {

using json = nlohmann::json;
using inference::GRPCInferenceService;
using inference::ModelInferRequest;
using inference::ModelInferResponse;
using inference::ModelStreamInferResponse;

const std::vector<std::pair<std::string, std::string>> kJson = {{"Content-Type", "application/json"}};

class Grpc : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // One job serves both kinds of model: a repository of links to the examples.
    repository_ = fs::temp_directory_path() / ("meshrt-grpc-e2e-" + std::to_string(::getpid()));
    fs::create_directories(repository_);
    fs::create_directory_symlink(MESHRT_SOURCE_DIR "/examples/models/matmul_neg", repository_ / "matmul_neg");
    fs::create_directory_symlink(MESHRT_SOURCE_DIR "/examples/hf/llama-tiny", repository_ / "llama-tiny");
    job_ = new ServerJob(4, repository_.string(), {"--max-body-bytes", "1048576"});
    ASSERT_TRUE(job_->wait_ready()) << job_->log();
    ASSERT_GT(job_->grpc_port(), 0) << job_->log();
  }
  // Drains with a stream left open and idle (as tritonclient's start_stream
  // leaves one): it does not hold the drain back (the exit timeout is 60 s).
  static void TearDownTestSuite() {
    if (job_) {
      if (job_->rank0() > 0 && job_->grpc_port() > 0) {
        auto stub = GRPCInferenceService::NewStub(rpc::make_channel("127.0.0.1:" + std::to_string(job_->grpc_port())));
        grpc::ClientContext idle;
        auto stream = stub->ModelStreamInfer(&idle);
        ModelStreamInferResponse response;
        EXPECT_TRUE(stream->Write(matmul_request(1, 1.0f, true, "before-drain")));
        EXPECT_TRUE(stream->Read(&response));  // the stream is up, answered, and now idle
        auto signalled = std::chrono::steady_clock::now();
        job_->signal_rank0(SIGTERM);
        EXPECT_TRUE(job_->exited(std::chrono::seconds(120))) << job_->log();
        EXPECT_LT(std::chrono::steady_clock::now() - signalled, std::chrono::seconds(30))
            << "an idle stream held the drain back";
        EXPECT_EQ(job_->exit_code(), 0) << job_->log();
        idle.TryCancel();
      }
      delete job_;
      job_ = nullptr;
    }
    std::error_code ignored;
    fs::remove_all(repository_, ignored);
  }
  void SetUp() override {
    if (!job_ || job_->grpc_port() == 0) GTEST_SKIP() << "the server did not start";
    stub_ = GRPCInferenceService::NewStub(rpc::make_channel("127.0.0.1:" + std::to_string(job_->grpc_port())));
  }

  // A context with a generous deadline (every call has one).
  static std::unique_ptr<grpc::ClientContext> context() {
    auto c = std::make_unique<grpc::ClientContext>();
    rpc::set_timeout(*c, std::chrono::seconds(120));
    return c;
  }

  // matmul_neg's request: rows x 96 of value, as typed contents or raw bytes.
  static ModelInferRequest matmul_request(int64_t rows, float value, bool raw, const std::string& id = "") {
    ModelInferRequest r;
    r.set_model_name("matmul_neg");
    r.set_id(id);
    auto* in = r.add_inputs();
    in->set_name("x");
    in->set_datatype("FP32");
    in->add_shape(rows);
    in->add_shape(96);
    std::vector<float> data(static_cast<size_t>(rows * 96), value);
    if (raw) {
      r.add_raw_input_contents(reinterpret_cast<const char*>(data.data()), data.size() * sizeof(float));
    } else {
      for (float v : data) in->mutable_contents()->add_fp32_contents(v);
    }
    return r;
  }

  static std::vector<float> floats(const std::string& raw) {
    std::vector<float> out(raw.size() / sizeof(float));
    std::memcpy(out.data(), raw.data(), out.size() * sizeof(float));
    return out;
  }

  static ModelInferRequest generate_request(const std::vector<int64_t>& prompt, int64_t max_tokens, const std::string& id) {
    ModelInferRequest r;
    r.set_model_name("llama-tiny");
    r.set_id(id);
    auto* in = r.add_inputs();
    in->set_name("input_ids");
    in->set_datatype("INT64");
    in->add_shape(static_cast<int64_t>(prompt.size()));
    for (int64_t t : prompt) in->mutable_contents()->add_int64_contents(t);
    (*r.mutable_parameters())["max_tokens"].set_int64_param(max_tokens);
    return r;
  }

  // Sends requests on one stream, closes its side, reads every response.
  std::vector<ModelStreamInferResponse> stream(const std::vector<ModelInferRequest>& requests, grpc::Status* status) {
    auto c = context();
    auto s = stub_->ModelStreamInfer(c.get());
    for (const ModelInferRequest& r : requests) EXPECT_TRUE(s->Write(r));
    s->WritesDone();
    std::vector<ModelStreamInferResponse> out;
    ModelStreamInferResponse response;
    while (s->Read(&response)) out.push_back(response);
    *status = s->Finish();
    return out;
  }

  static bool final_flag(const ModelInferResponse& r) {
    auto it = r.parameters().find("triton_final_response");
    return it != r.parameters().end() && it->second.bool_param();
  }

  static inline fs::path repository_;
  static inline ServerJob* job_ = nullptr;
  std::unique_ptr<GRPCInferenceService::Stub> stub_;
};

TEST_F(Grpc, HealthAndMetadata) {
  inference::ServerLiveResponse live;
  ASSERT_TRUE(stub_->ServerLive(context().get(), {}, &live).ok());
  EXPECT_TRUE(live.live());
  inference::ServerReadyResponse ready;
  ASSERT_TRUE(stub_->ServerReady(context().get(), {}, &ready).ok());
  EXPECT_TRUE(ready.ready());
  inference::ServerMetadataResponse server;
  ASSERT_TRUE(stub_->ServerMetadata(context().get(), {}, &server).ok());
  EXPECT_EQ(server.name(), "meshrt");

  inference::ModelReadyRequest model_ready;
  model_ready.set_name("matmul_neg");
  inference::ModelReadyResponse model_ready_response;
  ASSERT_TRUE(stub_->ModelReady(context().get(), model_ready, &model_ready_response).ok());
  EXPECT_TRUE(model_ready_response.ready());
  model_ready.set_version("1");
  ASSERT_TRUE(stub_->ModelReady(context().get(), model_ready, &model_ready_response).ok());
  model_ready.set_version("7");
  grpc::Status no_version = stub_->ModelReady(context().get(), model_ready, &model_ready_response);
  EXPECT_EQ(no_version.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(no_version.error_message(), "model 'matmul_neg' has no version '7'");
  model_ready.set_name("nope");
  model_ready.set_version("");
  EXPECT_EQ(stub_->ModelReady(context().get(), model_ready, &model_ready_response).error_code(), grpc::StatusCode::NOT_FOUND);

  inference::ModelMetadataRequest metadata;
  metadata.set_name("matmul_neg");
  inference::ModelMetadataResponse m;
  ASSERT_TRUE(stub_->ModelMetadata(context().get(), metadata, &m).ok());
  EXPECT_EQ(m.name(), "matmul_neg");
  ASSERT_EQ(m.versions_size(), 1);
  EXPECT_EQ(m.versions(0), "1");
  EXPECT_EQ(m.platform(), "meshrt");
  ASSERT_EQ(m.inputs_size(), 1);
  EXPECT_EQ(m.inputs(0).name(), "x");
  EXPECT_EQ(m.inputs(0).datatype(), "FP32");
  EXPECT_EQ(std::vector<int64_t>(m.inputs(0).shape().begin(), m.inputs(0).shape().end()), (std::vector<int64_t>{-1, 96}));
  ASSERT_EQ(m.outputs_size(), 1);
  EXPECT_EQ(m.outputs(0).name(), "y");
  metadata.set_name("llama-tiny");
  ASSERT_TRUE(stub_->ModelMetadata(context().get(), metadata, &m).ok());
  EXPECT_EQ(m.inputs(0).name(), "input_ids");
  EXPECT_EQ(m.inputs(0).datatype(), "INT64");
}

TEST_F(Grpc, ModelInferTypedAndRawContents) {
  for (bool raw : {false, true}) {
    ModelInferResponse r;
    grpc::Status s = stub_->ModelInfer(context().get(), matmul_request(3, 1.0f, raw, "req-7"), &r);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(r.model_name(), "matmul_neg");
    EXPECT_EQ(r.model_version(), "1");
    EXPECT_EQ(r.id(), "req-7");
    ASSERT_EQ(r.outputs_size(), 1);
    EXPECT_EQ(r.outputs(0).name(), "y");
    EXPECT_EQ(r.outputs(0).datatype(), "FP32");
    EXPECT_EQ(std::vector<int64_t>(r.outputs(0).shape().begin(), r.outputs(0).shape().end()), (std::vector<int64_t>{3, 16}));
    ASSERT_EQ(r.raw_output_contents_size(), 1);
    std::vector<float> y = floats(r.raw_output_contents(0));
    ASSERT_EQ(y.size(), 3u * 16u);
    for (float v : y) ASSERT_EQ(v, -48.0f);
  }
  // A version named explicitly.
  ModelInferRequest versioned = matmul_request(1, 2.0f, true);
  versioned.set_model_version("1");
  ModelInferResponse r;
  ASSERT_TRUE(stub_->ModelInfer(context().get(), versioned, &r).ok());
  EXPECT_EQ(floats(r.raw_output_contents(0)).at(0), -96.0f);
}

// The same mistakes get the same messages as over HTTP, with Triton's status codes.
TEST_F(Grpc, BadRequestsGetTheirStatusAndTheHttpMessage) {
  auto infer = [&](const ModelInferRequest& request) {
    ModelInferResponse r;
    return stub_->ModelInfer(context().get(), request, &r);
  };
  ModelInferRequest wrong_type = matmul_request(2, 1.0f, true);
  wrong_type.mutable_inputs(0)->set_datatype("INT64");
  grpc::Status s = infer(wrong_type);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(s.error_message(), "input 'x': expected datatype FP32, got INT64");
  // The HTTP answer to the same mistake.
  json http_body = {{"inputs", {{{"name", "x"}, {"datatype", "INT64"}, {"shape", {2, 96}}, {"data", std::vector<int>(192, 1)}}}}};
  HttpResponse http = job_->client().request("POST", "/v2/models/matmul_neg/infer", http_body.dump(), kJson);
  EXPECT_EQ(http.status, 400);
  EXPECT_EQ(json::parse(http.body)["error"], s.error_message());

  ModelInferRequest wrong_shape = matmul_request(2, 1.0f, false);
  wrong_shape.mutable_inputs(0)->set_shape(1, 95);
  s = infer(wrong_shape);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("expected shape [n, 96]"), std::string::npos) << s.error_message();

  ModelInferRequest short_raw = matmul_request(2, 1.0f, true);
  short_raw.mutable_raw_input_contents(0)->resize(100);
  s = infer(short_raw);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("raw_input_contents holds 100 bytes but FP32[2, 96] needs 768"), std::string::npos)
      << s.error_message();

  ModelInferRequest few_values = matmul_request(2, 1.0f, false);
  few_values.mutable_inputs(0)->mutable_contents()->mutable_fp32_contents()->RemoveLast();
  s = infer(few_values);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("needs 192 values"), std::string::npos) << s.error_message();

  ModelInferRequest wrong_field = matmul_request(1, 1.0f, false);
  wrong_field.mutable_inputs(0)->mutable_contents()->clear_fp32_contents();
  for (int i = 0; i < 96; ++i) wrong_field.mutable_inputs(0)->mutable_contents()->add_int64_contents(1);
  s = infer(wrong_field);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("fp32_contents"), std::string::npos) << s.error_message();

  s = infer(matmul_request(257, 1.0f, true));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("exceed the model's max_batch_size of 256"), std::string::npos) << s.error_message();

  ModelInferRequest unknown_output = matmul_request(1, 1.0f, true);
  unknown_output.add_outputs()->set_name("z");
  s = infer(unknown_output);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("has no output 'z'"), std::string::npos) << s.error_message();

  ModelInferRequest missing = matmul_request(1, 1.0f, false);
  missing.clear_inputs();
  s = infer(missing);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(s.error_message(), "input 'x' is missing");

  ModelInferRequest unknown_model = matmul_request(1, 1.0f, true);
  unknown_model.set_model_name("nope");
  s = infer(unknown_model);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(s.error_message(), "unknown model 'nope'");

  // Larger than the message limit (--max-body-bytes 1048576): gRPC's own RESOURCE_EXHAUSTED.
  s = infer(matmul_request(256 * 12, 1.0f, true));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << s.error_message();
}

// 64 calls at once: every answer right, and batched as HTTP requests are.
// The value of a metrics line that starts with `series` (-1 when absent).
double metric(const std::string& metrics, const std::string& series) {
  size_t at = metrics.find(series + " ");
  return at == std::string::npos ? -1 : std::stod(metrics.substr(at + series.size() + 1));
}

TEST_F(Grpc, SixtyFourConcurrentCallsAreAllRight) {
  constexpr int kCalls = 64;
  const std::string batched = "meshrt_batch_requests_sum{model=\"matmul_neg\",version=\"1\"}";
  const std::string ok_calls = "meshrt_grpc_requests_total{method=\"ModelInfer\",code=\"OK\"}";
  std::string before = job_->client().request("GET", "/metrics").body;
  std::vector<std::string> errors(kCalls);
  std::vector<std::thread> clients;
  for (int k = 0; k < kCalls; ++k) {
    clients.emplace_back([&, k] {
      int64_t rows = 1 + k % 5;
      float value = static_cast<float>(k % 7);
      ModelInferResponse r;
      grpc::Status s = stub_->ModelInfer(context().get(), matmul_request(rows, value, k % 2 == 0, std::to_string(k)), &r);
      if (!s.ok()) {
        errors[static_cast<size_t>(k)] = s.error_message();
        return;
      }
      std::vector<float> y = floats(r.raw_output_contents(0));
      bool right = r.id() == std::to_string(k) && y.size() == static_cast<size_t>(rows * 16);
      for (float v : y) right = right && v == -48.0f * value;
      if (!right) errors[static_cast<size_t>(k)] = "wrong answer";
    });
  }
  for (std::thread& t : clients) t.join();
  for (int k = 0; k < kCalls; ++k) EXPECT_EQ(errors[static_cast<size_t>(k)], "") << "call " << k;
  // The calls are counted on /metrics, and each went through the dynamic batcher.
  std::string after = job_->client().request("GET", "/metrics").body;
  EXPECT_EQ(metric(after, ok_calls) - std::max(0.0, metric(before, ok_calls)), kCalls) << after;
  EXPECT_EQ(metric(after, batched) - std::max(0.0, metric(before, batched)), kCalls) << after;
}

// The logits of a Llama checkpoint are the same bytes over gRPC as over HTTP.
TEST_F(Grpc, LogitsEqualTheHttpAnswer) {
  std::vector<int64_t> ids = {11, 402, 7, 99, 250};
  ModelInferRequest request;
  request.set_model_name("llama-tiny");
  auto* in = request.add_inputs();
  in->set_name("input_ids");
  in->set_datatype("INT64");
  in->add_shape(1);
  in->add_shape(5);
  for (int64_t t : ids) in->mutable_contents()->add_int64_contents(t);
  ModelInferResponse r;
  grpc::Status s = stub_->ModelInfer(context().get(), request, &r);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(r.outputs_size(), 1);
  EXPECT_EQ(r.outputs(0).name(), "logits");
  std::vector<float> grpc_logits = floats(r.raw_output_contents(0));
  ASSERT_EQ(grpc_logits.size(), 5u * 503u);

  json body = {{"inputs", {{{"name", "input_ids"}, {"datatype", "INT64"}, {"shape", {1, 5}}, {"data", ids}}}}};
  HttpResponse http = job_->client().request("POST", "/v2/models/llama-tiny/infer", body.dump(), kJson);
  ASSERT_EQ(http.status, 200) << http.body;
  std::vector<float> http_logits = json::parse(http.body)["outputs"][0]["data"].get<std::vector<float>>();
  ASSERT_EQ(http_logits.size(), grpc_logits.size());
  for (size_t i = 0; i < grpc_logits.size(); ++i) ASSERT_EQ(grpc_logits[i], http_logits[i]) << "logit " << i;
}

// Token streaming as Triton's decoupled models do it: one response per token,
// then a final one; the tokens are those of HTTP's generate.
TEST_F(Grpc, StreamInferStreamsTokensThenAFinalResponse) {
  std::vector<int64_t> prompt = {60, 193, 243};
  grpc::Status status;
  std::vector<ModelStreamInferResponse> responses = stream({generate_request(prompt, 8, "gen-1")}, &status);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(responses.size(), 9u);
  std::vector<int64_t> tokens;
  for (size_t i = 0; i < 8; ++i) {
    const ModelInferResponse& r = responses[i].infer_response();
    ASSERT_EQ(responses[i].error_message(), "");
    EXPECT_EQ(r.id(), "gen-1");
    EXPECT_FALSE(final_flag(r));
    ASSERT_EQ(r.outputs_size(), 1);
    EXPECT_EQ(r.outputs(0).name(), "output_ids");
    EXPECT_EQ(r.outputs(0).datatype(), "INT64");
    ASSERT_EQ(r.raw_output_contents(0).size(), sizeof(int64_t));
    int64_t t = 0;
    std::memcpy(&t, r.raw_output_contents(0).data(), sizeof t);
    tokens.push_back(t);
  }
  const ModelInferResponse& last = responses[8].infer_response();
  EXPECT_TRUE(final_flag(last));
  EXPECT_EQ(last.outputs_size(), 0);
  EXPECT_EQ(last.parameters().at("finish_reason").string_param(), "length");

  json body = {{"input_ids", prompt}, {"max_tokens", 8}};
  HttpResponse http = job_->client().request("POST", "/v2/models/llama-tiny/generate", body.dump(), kJson);
  ASSERT_EQ(http.status, 200) << http.body;
  EXPECT_EQ(json::parse(http.body)["output_ids"].get<std::vector<int64_t>>(), tokens);
}

// Text in, text out: the pieces of the stream make HTTP's text_output.
TEST_F(Grpc, StreamInferTextInputGivesText) {
  ModelInferRequest request;
  request.set_model_name("llama-tiny");
  auto* in = request.add_inputs();
  in->set_name("text_input");
  in->set_datatype("BYTES");
  in->add_shape(1);
  in->mutable_contents()->add_bytes_contents("the cat");
  auto* max_tokens = request.add_inputs();
  max_tokens->set_name("max_tokens");
  max_tokens->set_datatype("INT32");
  max_tokens->add_shape(1);
  max_tokens->mutable_contents()->add_int_contents(6);
  grpc::Status status;
  std::vector<ModelStreamInferResponse> responses = stream({request}, &status);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_GE(responses.size(), 2u);
  std::string text;
  for (const auto& response : responses) {
    ASSERT_EQ(response.error_message(), "");
    const ModelInferResponse& r = response.infer_response();
    for (int o = 0; o < r.outputs_size(); ++o) {
      if (r.outputs(o).name() != "text_output") continue;
      const std::string& raw = r.raw_output_contents(o);
      ASSERT_GE(raw.size(), 4u);
      uint32_t n = 0;
      std::memcpy(&n, raw.data(), 4);
      ASSERT_EQ(raw.size(), 4u + n);
      text += raw.substr(4);
    }
  }
  EXPECT_TRUE(final_flag(responses.back().infer_response()));
  json body = {{"text_input", "the cat"}, {"max_tokens", 6}};
  HttpResponse http = job_->client().request("POST", "/v2/models/llama-tiny/generate", body.dump(), kJson);
  ASSERT_EQ(http.status, 200) << http.body;
  EXPECT_EQ(json::parse(http.body)["text_output"].get<std::string>(), text);
}

// On one stream: a bad request answered with an error response, an infer
// request on a model that does not generate (one final response), and a
// generation; the stream ends OK after all of them.
TEST_F(Grpc, StreamCarriesErrorsAndInferRequestsAndGoesOn) {
  ModelInferRequest unknown = matmul_request(1, 1.0f, true, "bad-1");
  unknown.set_model_name("nope");
  ModelInferRequest bad_parameter = generate_request({60, 193}, 2, "bad-2");
  (*bad_parameter.mutable_parameters())["nonsense"].set_int64_param(1);
  grpc::Status status;
  std::vector<ModelStreamInferResponse> responses =
      stream({unknown, bad_parameter, matmul_request(2, 1.0f, true, "mm"), generate_request({60, 193}, 2, "gen")}, &status);
  ASSERT_TRUE(status.ok()) << status.error_message();
  std::map<std::string, std::vector<ModelStreamInferResponse>> by_id;
  for (const auto& r : responses) by_id[r.infer_response().id()].push_back(r);
  ASSERT_EQ(by_id["bad-1"].size(), 1u);
  EXPECT_EQ(by_id["bad-1"][0].error_message(), "NOT_FOUND: unknown model 'nope'");
  ASSERT_EQ(by_id["bad-2"].size(), 1u);
  EXPECT_NE(by_id["bad-2"][0].error_message().find("INVALID_ARGUMENT: unknown input or parameter 'nonsense'"),
            std::string::npos)
      << by_id["bad-2"][0].error_message();
  ASSERT_EQ(by_id["mm"].size(), 1u);
  EXPECT_TRUE(final_flag(by_id["mm"][0].infer_response()));
  EXPECT_EQ(floats(by_id["mm"][0].infer_response().raw_output_contents(0)).at(0), -48.0f);
  ASSERT_EQ(by_id["gen"].size(), 3u);  // two tokens, then the final response
  EXPECT_TRUE(final_flag(by_id["gen"][2].infer_response()));
}

// A client that cancels its stream mid-generation: the server stays well (the
// next call is answered) and the cancelled generation leaves the batch.
TEST_F(Grpc, CancelledStreamLeavesTheServerWell) {
  const std::string tokens = "meshrt_generation_tokens_total{model=\"llama-tiny\",version=\"1\"}";
  const std::string cancelled = "meshrt_grpc_requests_total{method=\"ModelStreamInfer\",code=\"CANCELLED\"}";
  std::string before = job_->client().request("GET", "/metrics").body;
  constexpr int kAsked = 200;
  {
    auto c = context();
    auto s = stub_->ModelStreamInfer(c.get());
    ASSERT_TRUE(s->Write(generate_request({60, 193, 243}, kAsked, "long")));
    ModelStreamInferResponse first;
    ASSERT_TRUE(s->Read(&first));
    c->TryCancel();
    EXPECT_EQ(s->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  ModelInferResponse r;
  ASSERT_TRUE(stub_->ModelInfer(context().get(), matmul_request(1, 1.0f, true), &r).ok());
  // The server saw the cancel, and the generation left the batch: its count of
  // tokens stops short of what was asked, and its KV-cache blocks come back.
  bool settled = false;
  std::string metrics;
  for (int i = 0; i < 600 && !settled; ++i) {
    metrics = job_->client().request("GET", "/metrics").body;
    settled = metric(metrics, cancelled) > std::max(0.0, metric(before, cancelled)) &&
              metrics.find("meshrt_kv_cache_blocks_in_use{model=\"llama-tiny\",version=\"1\"} 0") != std::string::npos;
    if (!settled) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(settled) << metrics;
  double generated = metric(metrics, tokens) - std::max(0.0, metric(before, tokens));
  EXPECT_GE(generated, 1);
  EXPECT_LT(generated, kAsked) << "the cancelled generation ran to its end";
}

// Shapes whose element count would overflow a byte count, or that the
// message could not carry: refused before anything is allocated, on ModelInfer
// and on a stream (which goes on).
TEST_F(Grpc, HugeShapesAreRefusedBeforeAllocation) {
  ModelInferRequest huge;
  huge.set_model_name("llama-tiny");
  auto* in = huge.add_inputs();
  in->set_name("input_ids");
  in->set_datatype("INT64");
  in->add_shape(1);
  in->add_shape(int64_t{1} << 61);
  huge.add_raw_input_contents("");
  ModelInferResponse r;
  grpc::Status s = stub_->ModelInfer(context().get(), huge, &r);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("raw_input_contents holds 0 bytes but INT64[1, 2305843009213693952] needs far more"),
            std::string::npos)
      << s.error_message();

  ModelInferRequest huge_parameter = generate_request({60, 193}, 2, "huge");
  huge_parameter.clear_parameters();
  auto* max_tokens = huge_parameter.add_inputs();
  max_tokens->set_name("max_tokens");
  max_tokens->set_datatype("INT64");
  max_tokens->add_shape(int64_t{1} << 61);
  huge_parameter.add_raw_input_contents(std::string(2 * sizeof(int64_t), 0));  // input_ids: two tokens of id 0
  huge_parameter.add_raw_input_contents("");
  huge_parameter.mutable_inputs(0)->clear_contents();
  grpc::Status status;
  std::vector<ModelStreamInferResponse> responses =
      stream({huge_parameter, matmul_request(1, 1.0f, true, "after")}, &status);
  ASSERT_TRUE(status.ok()) << status.error_message();
  std::map<std::string, std::string> errors;
  for (const auto& response : responses) errors[response.infer_response().id()] = response.error_message();
  EXPECT_NE(errors["huge"].find("INVALID_ARGUMENT: input 'max_tokens': raw_input_contents holds 0 bytes"), std::string::npos)
      << errors["huge"];
  EXPECT_EQ(errors.count("after"), 1u);
  EXPECT_EQ(errors["after"], "");
}

// Runs a Python check of the running job (its gRPC and HTTP ports, the
// generated stubs): it prints OK and exits 0 when every check passes.
void run_python_check(const char* script, int grpc_port, int http_port) {
  if (std::system("/usr/bin/python3 -c 'import grpc, google.protobuf, numpy' > /dev/null 2>&1") != 0) {
    GTEST_SKIP() << "python3-grpcio, python3-protobuf or python3-numpy is not installed (./run.sh installs them)";
  }
  std::string command = std::string("/usr/bin/python3 " MESHRT_SOURCE_DIR "/tests/") + script + " --port " +
                        std::to_string(grpc_port) + " --http-port " + std::to_string(http_port) +
                        " --stubs " MESHRT_RPC_PYTHON_DIR " 2>&1";
  FILE* pipe = ::popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string output;
  char buffer[4096];
  while (size_t n = std::fread(buffer, 1, sizeof buffer, pipe)) output.append(buffer, n);
  int rc = ::pclose(pipe);
  EXPECT_EQ(rc, 0) << output;
  EXPECT_NE(output.find("OK"), std::string::npos) << output;
}

// The Python client (python3-grpcio, stubs generated from the same proto).
TEST_F(Grpc, PythonClient) { run_python_check("grpc_client_test.py", job_->grpc_port(), job_->port()); }

// Triton's model configuration and statistics extensions, over HTTP and
// gRPC, read by Python written against Triton's documented formats.
TEST_F(Grpc, ConfigAndStatisticsAsTritonReportsThem) {
  run_python_check("model_reports_test.py", job_->grpc_port(), job_->port());
}

}  // namespace
}  // namespace meshrt::serving

// End-to-end model management: models of different rank_size on disjoint
// ranks of one job, load and unload under traffic (--model-control-mode
// explicit), and a polled repository (poll), on real meshrt-serve jobs
// under mpiexec spoken to over loopback HTTP.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "io/safetensors.h"
#include "rpc/client.h"
#include "rpc/proto/grpc_service.grpc.pb.h"
#include "serving/http_client.h"
#include "server_job.h"
#include "test_util.h"

namespace meshrt::serving {
namespace {

using json = nlohmann::json;
const std::vector<std::pair<std::string, std::string>> kJson = {{"Content-Type", "application/json"}};

// A model of the repository at root/name: y = factor * x for x of [-1, 4],
// over rank_size ranks in stage_size stages (a column-parallel linear
// layer, then a negation in each later stage: with 2 stages factor counts
// negative, with 3 positive again). version_dirs: weights in these version folders (version v
// multiplies by v * factor), else beside the config.
void write_model(const fs::path& root, const std::string& name, int rank_size, int stage_size, float factor,
                 std::vector<int> version_dirs = {}) {
  fs::create_directories(root / name);
  json layers = {{{"layers", {{{"type", "linear"}, {"weight", "w"}, {"parallel", "column"}}}}}};
  for (int s = 1; s < stage_size; ++s) layers.push_back({{"layers", {{{"type", "neg"}}}}});
  json config = {{"name", name}, {"rank_size", rank_size}, {"stage_size", stage_size},
                 {"inputs", {{{"name", "x"}, {"datatype", "FP32"}, {"shape", {-1, 4}}}}},
                 {"outputs", {{{"name", "y"}, {"datatype", "FP32"}, {"shape", {-1, 4}}}}},
                 {"weights", "weights.safetensors"}, {"stages", layers}};
  auto weights = [&](const fs::path& dir, float scale) {
    HostTensor w = HostTensor::zeros({4, 4}, DType::kF32);
    for (int i = 0; i < 4; ++i) w.data<float>()[i * 4 + i] = scale;
    io::write_safetensors_file((dir / "weights.safetensors").string(), {{"w", w}});
  };
  if (version_dirs.empty()) {
    weights(root / name, factor);
  } else {
    config["version_policy"] = {{"all", json::object()}};
    for (int v : version_dirs) {
      fs::create_directories(root / name / std::to_string(v));
      weights(root / name / std::to_string(v), factor * static_cast<float>(v));
    }
  }
  std::ofstream(root / name / "config.json") << config.dump(2);
}

std::string infer_body(double value) {
  return json({{"inputs", {{{"name", "x"}, {"datatype", "FP32"}, {"shape", {1, 4}}, {"data", {value, value, value, value}}}}}})
      .dump();
}

// The first output value of an answer, or nullopt for anything but a 200.
std::optional<double> first_value(const HttpResponse& r) {
  if (r.status != 200) return std::nullopt;
  return json::parse(r.body)["outputs"][0]["data"][0].get<double>();
}

fs::path temp_root(const std::string& what) {
  fs::path root = fs::temp_directory_path() / ("meshrt-" + what + "-" + std::to_string(::getpid()));
  fs::remove_all(root);
  fs::create_directories(root);
  return root;
}

// Requests to one model from a thread until stopped, each answer checked:
// 200 with value * factor (one of the factors the model may have at the
// time), or, only where allowed, 404 / 503 (the model is not there). Anything
// else (a 500, a wrong value, a lost connection) is counted as lost.
class Traffic {
 public:
  Traffic(ServerJob& job, std::string model, std::vector<double> factors)
      : client_(job.client()), model_(std::move(model)), factors_(std::move(factors)) {
    thread_ = std::thread([this] { run(); });
  }
  ~Traffic() { stop(); }
  void allow_absent(bool allowed) { absent_allowed_ = allowed; }
  void stop() {
    stopping_ = true;
    if (thread_.joinable()) thread_.join();
  }
  int ok() const { return ok_; }
  int absent() const { return absent_; }
  std::vector<std::string> lost() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return lost_;
  }

 private:
  void run() {
    double value = 1;
    while (!stopping_) {
      value = value >= 50 ? 1 : value + 1;
      HttpResponse r;
      try {
        r = client_.request("POST", "/v2/models/" + model_ + "/infer", infer_body(value), kJson);
      } catch (const std::exception& e) {
        note(std::string("no answer: ") + e.what());
        continue;
      }
      if (auto got = first_value(r)) {
        bool right = false;
        for (double f : factors_) right = right || *got == value * f;
        if (right) {
          ++ok_;
        } else {
          note("wrong value " + std::to_string(*got) + " for " + std::to_string(value));
        }
      } else if ((r.status == 404 || r.status == 503) && absent_allowed_) {  // read after the answer: set before the unload was asked
        ++absent_;
      } else {
        note(std::to_string(r.status) + ": " + r.body);
      }
    }
  }
  void note(const std::string& what) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (lost_.size() < 10) lost_.push_back(what);
    ++lost_count_;
  }
  HttpClient client_;
  std::string model_;
  std::vector<double> factors_;
  std::atomic<bool> stopping_{false}, absent_allowed_{false};
  std::atomic<int> ok_{0}, absent_{0}, lost_count_{0};
  mutable std::mutex mutex_;
  std::vector<std::string> lost_;
  std::thread thread_;
};

json index_of(HttpClient& c) {
  HttpResponse r = c.request("POST", "/v2/repository/index", "{}", kJson);
  EXPECT_EQ(r.status, 200) << r.body;
  return json::parse(r.body);
}

// The index entry of model (and version, "" for a model not loaded), or null.
json entry(const json& index, const std::string& model, const std::string& version) {
  for (const json& e : index) {
    if (e["name"] == model && e.value("version", "") == version) return e;
  }
  return nullptr;
}

template <class F>
bool eventually(F f, std::chrono::seconds within = std::chrono::seconds(60)) {
  auto deadline = std::chrono::steady_clock::now() + within;
  while (std::chrono::steady_clock::now() < deadline) {
    if (f()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return f();
}

// Whether the job's log has (or gets, soon) a line with text: log lines pass
// through mpirun on their way to the file, after the answers they go with.
bool logged(ServerJob& job, const std::string& text) {
  return eventually([&] { return job.log().find(text) != std::string::npos; }, std::chrono::seconds(30));
}

// Two models of different rank_size in a 4-rank job, each on its own ranks
// (--exclusive-ranks: sharing would be refused), answering at once: "pipe"
// (3 pipeline stages) on ranks 0-2, "solo" (one rank) on rank 3, where rank
// 0, the front end, is not: its batches travel there and back.
TEST(ModelManagement, TwoModelsOfDifferentRankSizeAnswerAtOnce) {
  fs::path root = temp_root("placement");
  write_model(root, "pipe", 3, 3, 3.0f);  // 3 stages: x * 3, negated twice
  write_model(root, "solo", 1, 1, 5.0f);
  write_model(root, "extra", 1, 1, 7.0f);  // the three do not fit 4 ranks: loaded only in the next job
  ServerJob job(4, root.string(), {"--exclusive-ranks", "--model", "pipe", "--model", "solo"});
  ASSERT_TRUE(job.wait_ready()) << job.log();
  EXPECT_TRUE(logged(job, "model 'pipe' version 1 on ranks 0-2")) << job.log();
  EXPECT_TRUE(logged(job, "model 'solo' version 1 on rank 3")) << job.log();
  {
    Traffic pipe(job, "pipe", {3.0}), solo(job, "solo", {5.0}), solo2(job, "solo", {5.0});
    ASSERT_TRUE(eventually([&] { return pipe.ok() >= 30 && solo.ok() >= 30 && solo2.ok() >= 30; })) << job.log();
    pipe.stop();
    solo.stop();
    solo2.stop();
    EXPECT_EQ(pipe.lost(), std::vector<std::string>{});
    EXPECT_EQ(solo.lost(), std::vector<std::string>{});
    EXPECT_EQ(solo2.lost(), std::vector<std::string>{});
  }
  // Batches of several rows over the travelling path too.
  HttpClient c = job.client();
  json body = {{"inputs", {{{"name", "x"}, {"datatype", "FP32"}, {"shape", {3, 4}},
                            {"data", {1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3}}}}}};
  HttpResponse r = c.request("POST", "/v2/models/solo/infer", body.dump(), kJson);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(json::parse(r.body)["outputs"][0]["data"][8].get<double>(), 15.0) << r.body;
  job.signal_rank0(SIGTERM);
  EXPECT_TRUE(job.exited(std::chrono::seconds(60)));
  EXPECT_EQ(job.exit_code(), 0) << job.log();

  // All three do not fit 4 ranks without sharing: refused, saying who holds the ranks.
  ServerJob refused(4, root.string(), {"--exclusive-ranks"});
  ASSERT_TRUE(refused.exited(std::chrono::seconds(60)));
  EXPECT_EQ(refused.exit_code(), 2) << refused.log();
  EXPECT_NE(refused.log().find("model 'solo' version 1 needs 1 consecutive free ranks and this job of 4 has none"),
            std::string::npos)
      << refused.log();
  EXPECT_NE(refused.log().find("rank 0: 'extra' version 1; rank 1: 'pipe' version 1"), std::string::npos) << refused.log();
  fs::remove_all(root);
}

// Model control mode explicit under traffic: loading a model, reloading one
// (new weights) and unloading one while requests flow loses none: every
// answer is the old or the new right value, or (once an unload began, for
// that model only) a 404 or 503; the other model never misses a request.
TEST(ModelManagement, LoadReloadAndUnloadUnderTrafficLoseNothing) {
  fs::path root = temp_root("control");
  write_model(root, "steady", 2, 1, 2.0f);
  write_model(root, "moving", 2, 2, 3.0f);  // -3x, on the other two ranks
  ServerJob job(4, root.string(), {"--model-control-mode", "explicit", "--load-model", "steady"});
  ASSERT_TRUE(job.wait_ready()) << job.log();
  HttpClient c = job.client();
  json index = index_of(c);
  EXPECT_EQ(entry(index, "steady", "1").value("state", ""), "READY") << index.dump();
  EXPECT_EQ(entry(index, "moving", "").value("reason", ""), "not loaded") << index.dump();
  EXPECT_EQ(c.request("POST", "/v2/models/moving/infer", infer_body(1), kJson).status, 404);

  Traffic steady(job, "steady", {2.0});
  HttpResponse r = c.request("POST", "/v2/repository/models/moving/load", "", kJson);
  ASSERT_EQ(r.status, 200) << r.body << job.log();
  EXPECT_TRUE(logged(job, "loaded model 'moving' version 1 on ranks 2-3")) << job.log();
  {
    Traffic moving(job, "moving", {-3.0, -7.0});
    ASSERT_TRUE(eventually([&] { return moving.ok() >= 20; })) << job.log();
    // Reload with new weights while it answers: old or new values, never a miss.
    write_model(root, "moving", 2, 2, 7.0f);
    r = c.request("POST", "/v2/repository/models/moving/load", "{}", kJson);
    ASSERT_EQ(r.status, 200) << r.body << job.log();
    int before = moving.ok();
    ASSERT_TRUE(eventually([&] { return moving.ok() >= before + 20; })) << job.log();
    EXPECT_EQ(first_value(c.request("POST", "/v2/models/moving/infer", infer_body(1), kJson)), -7.0);
    // Unload while it answers: from now on 404 or 503 are right answers too.
    moving.allow_absent(true);
    r = c.request("POST", "/v2/repository/models/moving/unload", "", kJson);
    ASSERT_EQ(r.status, 200) << r.body << job.log();
    ASSERT_TRUE(eventually([&] { return moving.absent() >= 5; })) << job.log();
    moving.stop();
    EXPECT_EQ(moving.lost(), std::vector<std::string>{}) << job.log();
  }
  HttpResponse gone = c.request("POST", "/v2/models/moving/infer", infer_body(1), kJson);
  EXPECT_EQ(gone.status, 404) << gone.body;
  EXPECT_NE(gone.body.find("not loaded"), std::string::npos) << gone.body;
  index = index_of(c);
  EXPECT_EQ(entry(index, "moving", "").value("reason", ""), "unloaded") << index.dump();
  EXPECT_TRUE(entry(index, "moving", "1").is_null()) << index.dump();

  // Refusals, each with its reason; nothing changes.
  r = c.request("POST", "/v2/repository/models/nowhere/load", "", kJson);
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body.find("has no model of that name"), std::string::npos) << r.body;
  r = c.request("POST", "/v2/repository/models/moving/unload", "", kJson);
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body.find("no version of it is loaded"), std::string::npos) << r.body;
  r = c.request("POST", "/v2/repository/models/moving/load", R"({"parameters": {"config": "{}"}})", kJson);
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body.find("load parameters (\\\"config\\\") are not supported"), std::string::npos) << r.body;
  for (const auto& [body, says] : std::vector<std::pair<std::string, std::string>>{
           {"nope", "the request body is not JSON"},
           {"[1]", "must be a JSON object"},
           {R"({"config": "{}"})", "unknown field \\\"config\\\""},
           {R"({"parameters": 3})", "\\\"parameters\\\" must be an object"}}) {
    r = c.request("POST", "/v2/repository/models/moving/load", body, kJson);
    EXPECT_EQ(r.status, 400) << body;
    EXPECT_NE(r.body.find(says), std::string::npos) << body << ": " << r.body;
  }
  write_model(root, "broken", 3, 1, 1.0f);  // 3 consecutive ranks: it would share ranks 0-2, but its weights are gone
  fs::remove(root / "broken" / "weights.safetensors");
  r = c.request("POST", "/v2/repository/models/broken/load", "", kJson);
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body.find("failed to load 'broken'"), std::string::npos) << r.body;
  index = index_of(c);
  EXPECT_NE(entry(index, "broken", "").value("reason", "").find("weights"), std::string::npos) << index.dump();

  // Loaded again after all that: it serves, and steady never missed a request.
  r = c.request("POST", "/v2/repository/models/moving/load", "", kJson);
  ASSERT_EQ(r.status, 200) << r.body << job.log();
  EXPECT_EQ(first_value(c.request("POST", "/v2/models/moving/infer", infer_body(2), kJson)), -14.0);
  steady.stop();
  EXPECT_GT(steady.ok(), 0);
  EXPECT_EQ(steady.lost(), std::vector<std::string>{}) << job.log();
  EXPECT_EQ(c.request("GET", "/v2/health/ready").status, 200);
  job.signal_rank0(SIGTERM);
  EXPECT_TRUE(job.exited(std::chrono::seconds(60)));
  EXPECT_EQ(job.exit_code(), 0) << job.log();
  fs::remove_all(root);
}

// Model control mode none (the default) refuses load and unload, as Triton
// does; the index lists the models --model left out as not loaded.
TEST(ModelManagement, ModeNoneRefusesLoadAndListsEveryModel) {
  fs::path root = temp_root("none");
  write_model(root, "in", 2, 1, 2.0f);
  write_model(root, "out", 2, 1, 3.0f);
  ServerJob job(2, root.string(), {"--model", "in"});
  ASSERT_TRUE(job.wait_ready()) << job.log();
  HttpClient c = job.client();
  HttpResponse r = c.request("POST", "/v2/repository/models/out/load", "", kJson);
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body.find("model control mode none"), std::string::npos) << r.body;
  EXPECT_EQ(c.request("POST", "/v2/repository/models/in/unload", "", kJson).status, 400);
  json index = index_of(c);
  EXPECT_EQ(entry(index, "in", "1").value("state", ""), "READY") << index.dump();
  EXPECT_EQ(entry(index, "out", "").value("state", ""), "UNAVAILABLE") << index.dump();
  job.signal_rank0(SIGTERM);
  EXPECT_TRUE(job.exited(std::chrono::seconds(60)));
  fs::remove_all(root);
}

// Model control mode poll: a model copied into the repository is loaded, a
// new version folder is served, a removed model is unloaded; load requests
// are refused (the repository decides).
TEST(ModelManagement, PollFollowsTheRepository) {
  fs::path root = temp_root("poll");
  write_model(root, "first", 2, 1, 2.0f, {1});
  ServerJob job(2, root.string(), {"--model-control-mode", "poll", "--repository-poll-secs", "0.2"});
  ASSERT_TRUE(job.wait_ready()) << job.log();
  HttpClient c = job.client();
  EXPECT_EQ(first_value(c.request("POST", "/v2/models/first/infer", infer_body(1), kJson)), 2.0);
  // A new model: written aside, then moved in whole (as a deployment would).
  fs::path staging = temp_root("poll-staging");
  write_model(staging, "second", 2, 1, 3.0f);
  fs::rename(staging / "second", root / "second");
  EXPECT_TRUE(eventually([&] { return first_value(c.request("POST", "/v2/models/second/infer", infer_body(1), kJson)) == 3.0; }))
      << job.log();
  // A new version of the first (policy all): both are served, no version means the latest.
  write_model(root, "first", 2, 1, 2.0f, {1, 2});
  EXPECT_TRUE(eventually([&] { return first_value(c.request("POST", "/v2/models/first/infer", infer_body(1), kJson)) == 4.0; }))
      << job.log();
  EXPECT_EQ(first_value(c.request("POST", "/v2/models/first/versions/1/infer", infer_body(1), kJson)), 2.0);
  // Removed from the repository: unloaded.
  fs::remove_all(root / "second");
  EXPECT_TRUE(eventually([&] { return c.request("POST", "/v2/models/second/infer", infer_body(1), kJson).status == 404; }))
      << job.log();
  HttpResponse r = c.request("POST", "/v2/repository/models/second/load", "", kJson);
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body.find("model control mode poll"), std::string::npos) << r.body;
  EXPECT_EQ(c.request("GET", "/v2/health/ready").status, 200);
  job.signal_rank0(SIGTERM);
  EXPECT_TRUE(job.exited(std::chrono::seconds(60)));
  EXPECT_EQ(job.exit_code(), 0) << job.log();
  fs::remove_all(root);
  fs::remove_all(staging);
}

// The same over gRPC (Triton's RepositoryModelLoad / RepositoryModelUnload /
// RepositoryIndex): load, serve, unload; parameters and unknown models refused.
TEST(ModelManagement, LoadAndUnloadOverGrpc) {
  using namespace inference;
  fs::path root = temp_root("grpc-control");
  write_model(root, "m", 2, 1, 2.0f);
  ServerJob job(2, root.string(), {"--model-control-mode", "explicit"});
  ASSERT_TRUE(job.wait_ready()) << job.log();
  auto stub = GRPCInferenceService::NewStub(rpc::make_channel("127.0.0.1:" + std::to_string(job.grpc_port())));
  auto call = [&](auto method, const auto& request, auto* response) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
    return ((*stub).*method)(&context, request, response);
  };
  RepositoryModelLoadRequest load;
  load.set_model_name("m");
  RepositoryModelLoadResponse loaded;
  grpc::Status s = call(&GRPCInferenceService::Stub::RepositoryModelLoad, load, &loaded);
  ASSERT_TRUE(s.ok()) << s.error_message() << job.log();
  HttpClient c = job.client();
  EXPECT_EQ(first_value(c.request("POST", "/v2/models/m/infer", infer_body(3), kJson)), 6.0);
  RepositoryIndexRequest index_request;
  index_request.set_ready(true);
  RepositoryIndexResponse index;
  ASSERT_TRUE(call(&GRPCInferenceService::Stub::RepositoryIndex, index_request, &index).ok());
  ASSERT_EQ(index.models_size(), 1);
  EXPECT_EQ(index.models(0).name(), "m");
  EXPECT_EQ(index.models(0).state(), "READY");

  RepositoryModelLoadRequest with_parameters = load;
  (*with_parameters.mutable_parameters())["config"].set_string_param("{}");
  s = call(&GRPCInferenceService::Stub::RepositoryModelLoad, with_parameters, &loaded);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("parameters are not supported"), std::string::npos) << s.error_message();
  RepositoryModelLoadRequest unknown;
  unknown.set_model_name("nowhere");
  s = call(&GRPCInferenceService::Stub::RepositoryModelLoad, unknown, &loaded);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  RepositoryModelUnloadRequest unload;
  unload.set_model_name("m");
  RepositoryModelUnloadResponse unloaded;
  s = call(&GRPCInferenceService::Stub::RepositoryModelUnload, unload, &unloaded);
  ASSERT_TRUE(s.ok()) << s.error_message() << job.log();
  EXPECT_EQ(c.request("POST", "/v2/models/m/infer", infer_body(3), kJson).status, 404);
  index.Clear();
  ASSERT_TRUE(call(&GRPCInferenceService::Stub::RepositoryIndex, index_request, &index).ok());
  EXPECT_EQ(index.models_size(), 0);  // ready only: nothing
  job.signal_rank0(SIGTERM);
  EXPECT_TRUE(job.exited(std::chrono::seconds(60)));
  EXPECT_EQ(job.exit_code(), 0) << job.log();
  fs::remove_all(root);
}

}  // namespace
}  // namespace meshrt::serving

// End-to-end: meshrt-serve --supervise (meshrt-supervisor) owns the HTTP port
// and runs the MPI job as its child. A rank killed with SIGKILL under load ends
// the job (OpenMPI); the supervisor relaunches it, and meanwhile every request
// gets an HTTP answer: no connection is refused or reset. Not an MPI program.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <thread>

#include "io/safetensors.h"
#include "serving/http_client.h"
#include "rpc/client.h"
#include "rpc/proto/grpc_service.grpc.pb.h"
#include "rpc/status.h"
#include "spawn_util.h"


namespace meshrt::serving {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::string read_file(const fs::path& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

long read_number(const fs::path& path) {
  try {
    return std::stol(read_file(path));
  } catch (const std::exception&) {
    return 0;
  }
}

// Whether pid is a live process (not a zombie).
bool alive(pid_t pid) {
  std::string stat = read_file(fs::path("/proc") / std::to_string(pid) / "stat");
  size_t close = stat.rfind(')');
  return close != std::string::npos && close + 2 < stat.size() && stat[close + 2] != 'Z';
}

// Live processes whose command line mentions text.
std::vector<pid_t> processes_mentioning(const std::string& text) {
  std::vector<pid_t> out;
  for (const auto& entry : fs::directory_iterator("/proc")) {
    std::string name = entry.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string cmdline = read_file(entry.path() / "cmdline");
    std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
    pid_t pid = static_cast<pid_t>(std::stol(name));
    if (pid != ::getpid() && cmdline.find(text) != std::string::npos && alive(pid)) out.push_back(pid);
  }
  return out;
}

// A 2-rank model whose output is its input: y = x @ I @ I, column- then
// row-parallel over the 2 ranks (so every request crosses both ranks).
std::string identity_repository(const fs::path& root, int64_t width) {
  fs::create_directories(root / "ident");
  HostTensor w = HostTensor::zeros({width, width}, DType::kF32);
  for (int64_t i = 0; i < width; ++i) w.data<float>()[i * width + i] = 1.0f;
  io::write_safetensors_file((root / "ident" / "weights.safetensors").string(), {{"w", w}});
  json config = {{"name", "ident"}, {"rank_size", 2}, {"stage_size", 1},
                 {"inputs", {{{"name", "x"}, {"datatype", "FP32"}, {"shape", {-1, width}}}}},
                 {"outputs", {{{"name", "y"}, {"datatype", "FP32"}, {"shape", {-1, width}}}}},
                 {"weights", "weights.safetensors"},
                 {"stages", {{{"layers", {{{"type", "linear"}, {"weight", "w"}, {"parallel", "column"}},
                                          {{"type", "linear"}, {"weight", "w"}, {"parallel", "row"}}}}}}},
                 {"batching", {{"enabled", true}, {"max_batch_size", 64}, {"max_queue_delay_us", 500}, {"max_queue_size", 256}}}};
  std::ofstream(root / "ident" / "config.json") << config.dump(2);
  return root.string();
}

// meshrt-serve --supervise ... on a free port, its files in a folder of its own.
class Supervised : public testing::Spawned {
 public:
  static constexpr int kStopTimeoutS = 20;

  Supervised(const std::string& repository, int ranks, std::vector<std::string> extra = {}) {
    dir_ = fs::temp_directory_path() / ("meshrt-sup-e2e-" + std::to_string(::getpid()) + "-" + std::to_string(counter_++));
    fs::create_directories(dir_);
    std::vector<std::string> args = {MESHRT_SERVE, "--supervise", "--ranks", std::to_string(ranks),
                                     "--model-repository", repository, "--http-port", "0",
                                     "--port-file", (dir_ / "port").string(), "--pid-file", (dir_ / "pid").string(),
                                     "--work-dir", (dir_ / "job").string(), "--restart-delay-ms", "200",
                                     "--retry-after-s", "1", "--stop-timeout-s", std::to_string(kStopTimeoutS),
                                     "--grpc-port", "0", "--grpc-port-file", (dir_ / "grpc_port").string()};
    args.insert(args.end(), extra.begin(), extra.end());
    start(args, (dir_ / "log").string());
  }

  ~Supervised() {
    if (pid_ > 1 && !exited_) {
      ::kill(pid_, SIGTERM);
      if (!exited(std::chrono::seconds(2 * kStopTimeoutS + 10))) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, nullptr, 0);
      }
    }
    for (pid_t p : processes_mentioning(dir_.string())) {
      if (p > 1) ::kill(p, SIGKILL);  // never leave a job behind
    }
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }

  // Waits until the supervisor listens and says ready; false if it ended first.
  bool wait_ready(std::chrono::seconds timeout = std::chrono::seconds(120)) {
    auto ready = [&] {
      try {
        return port() > 0 && client().request("GET", "/v2/health/ready").status == 200;
      } catch (const Error&) {
        return false;
      }
    };
    return testing::poll_until(ready, [&] { return exited(std::chrono::milliseconds(0)); }, timeout);
  }


  uint16_t port() {
    if (port_ == 0 && fs::exists(dir_ / "port")) port_ = static_cast<uint16_t>(read_number(dir_ / "port"));
    return port_;
  }
  HttpClient client() { return HttpClient("127.0.0.1", port()); }
  // The supervisor's public gRPC port (relayed to the job's).
  uint16_t grpc_port() const { return static_cast<uint16_t>(read_number(dir_ / "grpc_port")); }
  std::unique_ptr<inference::GRPCInferenceService::Stub> grpc_stub() const {
    return inference::GRPCInferenceService::NewStub(rpc::make_channel("127.0.0.1:" + std::to_string(grpc_port())));
  }
  // The pid a rank of the current launch wrote (0 if none yet).
  pid_t rank_pid(int rank) const { return static_cast<pid_t>(read_number(dir_ / "job" / ("job.pid." + std::to_string(rank)))); }
  std::string log() const { return read_file(dir_ / "log"); }
  const fs::path& dir() const { return dir_; }

 private:
  static inline int counter_ = 0;
  fs::path dir_;
  uint16_t port_ = 0;
};

constexpr int64_t kWidth = 128;

std::string infer_body(int64_t rows, double value) {
  json body = {{"inputs", {{{"name", "x"}, {"datatype", "FP32"}, {"shape", {rows, kWidth}},
                            {"data", std::vector<double>(static_cast<size_t>(rows * kWidth), value)}}}}};
  return body.dump();
}

const std::vector<std::pair<std::string, std::string>> kJson = {{"Content-Type", "application/json"}};

// Whether r is the identity's answer to rows x kWidth of value.
bool correct(const HttpResponse& r, int64_t rows, double value) {
  try {
    json out = json::parse(r.body);
    if (out["outputs"][0]["shape"] != json({rows, kWidth})) return false;
    for (const auto& v : out["outputs"][0]["data"]) {
      if (v.get<double>() != value) return false;
    }
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

enum Outcome { kOk, kWrong, kRetryLater, kOtherStatus, kNoAnswer };

struct Sample {
  Clock::time_point sent;
  Outcome outcome;
};

TEST(Supervisor, RankKilledUnderLoadIsRelaunchedAndEveryRequestIsAnswered) {
  fs::path root = fs::temp_directory_path() / ("meshrt-sup-model-" + std::to_string(::getpid()));
  Supervised job(identity_repository(root, kWidth), 2);
  ASSERT_TRUE(job.wait_ready()) << job.log();

  std::atomic<bool> stop{false}, recovered{false};
  std::atomic<long> ok_after_recovery{0}, health_failures{0}, ok{0};
  std::mutex mutex;
  std::vector<Sample> samples;
  std::string odd;  // the last unexpected answer or failure
  std::vector<std::thread> load;
  for (int t = 0; t < 4; ++t) {
    load.emplace_back([&, t] {
      HttpClient c = job.client();
      std::vector<Sample> mine;
      for (int i = 0; !stop; ++i) {
        int64_t rows = 1 + (t + i) % 4;
        double value = t * 1000 + i % 1000;
        Sample s{Clock::now(), kNoAnswer};
        try {
          HttpResponse r = c.request("POST", "/v2/models/ident/infer", infer_body(rows, value), kJson);
          if (r.status == 200) {
            s.outcome = correct(r, rows, value) ? kOk : kWrong;
            if (s.outcome == kOk) {
              ++ok;
              if (recovered) ++ok_after_recovery;
            }
          } else if (r.status == 503 && r.header("Retry-After")) {
            s.outcome = kRetryLater;
          } else {
            s.outcome = kOtherStatus;
          }
          if (s.outcome == kWrong || s.outcome == kOtherStatus) {
            std::lock_guard<std::mutex> lock(mutex);
            odd = std::to_string(r.status) + " " + r.body.substr(0, 300);
          }
        } catch (const Error& e) {  // refused, reset, timed out: what must not happen
          std::lock_guard<std::mutex> lock(mutex);
          odd = e.what();
        }
        mine.push_back(s);
        if (s.outcome == kRetryLater) std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      std::lock_guard<std::mutex> lock(mutex);
      samples.insert(samples.end(), mine.begin(), mine.end());
    });
  }

  // gRPC through the supervisor's relay, at the same time: every call is
  // answered OK (and right) or, while the job is down, UNAVAILABLE.
  std::atomic<long> grpc_ok{0}, grpc_unavailable{0}, grpc_other{0}, grpc_ok_after_recovery{0};
  std::string grpc_odd;
  std::vector<Sample> grpc_samples;  // the load thread's own until it ends
  std::thread grpc_load([&] {
    auto stub = job.grpc_stub();
    for (int i = 0; !stop; ++i) {
      inference::ModelInferRequest request;
      request.set_model_name("ident");
      auto* in = request.add_inputs();
      in->set_name("x");
      in->set_datatype("FP32");
      in->add_shape(1);
      in->add_shape(kWidth);
      std::vector<float> data(kWidth, static_cast<float>(i % 1000));
      request.add_raw_input_contents(reinterpret_cast<const char*>(data.data()), data.size() * sizeof(float));
      grpc::ClientContext context;
      rpc::set_timeout(context, std::chrono::seconds(60));
      inference::ModelInferResponse response;
      Sample sample{Clock::now(), kNoAnswer};
      grpc::Status status = stub->ModelInfer(&context, request, &response);
      sample.outcome = status.ok() ? kOk : status.error_code() == grpc::StatusCode::UNAVAILABLE ? kRetryLater : kOtherStatus;
      grpc_samples.push_back(sample);
      if (status.ok()) {
        float first = -1;
        if (response.raw_output_contents_size() == 1 && response.raw_output_contents(0).size() == kWidth * sizeof(float)) {
          std::memcpy(&first, response.raw_output_contents(0).data(), sizeof first);
        }
        if (first == static_cast<float>(i % 1000)) {
          ++grpc_ok;
          if (recovered) ++grpc_ok_after_recovery;
        } else {
          ++grpc_other;
          std::lock_guard<std::mutex> lock(mutex);
          grpc_odd = "a wrong answer: " + std::to_string(first) + " for " + std::to_string(i % 1000);
        }
      } else if (status.error_code() == grpc::StatusCode::UNAVAILABLE) {
        ++grpc_unavailable;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      } else {
        ++grpc_other;
        std::lock_guard<std::mutex> lock(mutex);
        grpc_odd = std::string(rpc::code_name(status.error_code())) + ": " + status.error_message();
      }
    }
  });

  // Liveness and readiness, every 25 ms.
  std::atomic<bool> killed{false}, saw_unready{false};
  Clock::time_point ready_again;  // set once, before recovered
  std::thread health([&] {
    HttpClient c = job.client();
    while (!stop) {
      try {
        if (c.request("GET", "/v2/health/live").status != 200) ++health_failures;
        int ready = c.request("GET", "/v2/health/ready").status;
        if (killed && ready == 503) saw_unready = true;
        if (saw_unready && ready == 200 && !recovered) {
          std::lock_guard<std::mutex> lock(mutex);
          ready_again = Clock::now();
          recovered = true;
        }
      } catch (const Error& e) {
        ++health_failures;
        std::lock_guard<std::mutex> lock(mutex);
        odd = std::string("health: ") + e.what();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
  });

  auto wait_until = [](auto condition, std::chrono::seconds timeout) {
    auto deadline = Clock::now() + timeout;
    while (!condition() && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    return condition();
  };
  bool loaded = wait_until([&] { return ok >= 20; }, std::chrono::seconds(30));
  pid_t victim = job.rank_pid(1);
  std::string victim_command = read_file(fs::path("/proc") / std::to_string(victim) / "cmdline");
  bool can_kill = loaded && victim > 1 && victim_command.find("meshrt-serve") != std::string::npos;
  Clock::time_point kill_time = Clock::now();
  if (can_kill) {
    ::kill(victim, SIGKILL);
    killed = true;
  }
  bool healed = can_kill && wait_until([&] { return recovered.load(); }, std::chrono::seconds(120));
  if (healed) {
    wait_until([&] { return ok_after_recovery >= 20 && grpc_ok_after_recovery >= 5; }, std::chrono::seconds(30));
  }
  stop = true;
  for (auto& t : load) t.join();
  health.join();
  grpc_load.join();
  ASSERT_TRUE(loaded) << "no load got through before the kill: " << odd << "\n" << job.log();
  ASSERT_TRUE(can_kill) << "rank 1's pid " << victim << " is not a meshrt-serve process: " << victim_command;
  ASSERT_TRUE(healed) << "the job never got ready again after the kill\n" << job.log();

  long sent = 0, answered = 0, no_answer = 0, wrong = 0, other = 0;
  long during_sent = 0, during_answered = 0, during_ok = 0, during_retry = 0;
  for (const Sample& s : samples) {
    ++sent;
    answered += s.outcome != kNoAnswer;
    no_answer += s.outcome == kNoAnswer;
    wrong += s.outcome == kWrong;
    other += s.outcome == kOtherStatus;
    if (s.sent >= kill_time && s.sent <= ready_again) {
      ++during_sent;
      during_answered += s.outcome != kNoAnswer;
      during_ok += s.outcome == kOk;
      during_retry += s.outcome == kRetryLater;
    }
  }
  double restart_s = std::chrono::duration<double>(ready_again - kill_time).count();
  std::printf("restart after kill -9 of rank 1: %.2f s until /v2/health/ready was 200 again\n", restart_s);
  std::printf("requests sent during the restart: %ld, answered: %ld (200: %ld, 503 with Retry-After: %ld)\n", during_sent,
              during_answered, during_ok, during_retry);
  std::printf("requests sent in all: %ld, answered: %ld, refused/reset/timed out: %ld, wrong results: %ld, other statuses: %ld\n",
              sent, answered, no_answer, wrong, other);
  EXPECT_EQ(no_answer, 0) << "connections refused or reset: " << odd;
  EXPECT_EQ(wrong, 0) << odd;
  EXPECT_EQ(other, 0) << odd;
  EXPECT_EQ(health_failures.load(), 0) << "/v2/health/live must stay 200: " << odd;
  EXPECT_TRUE(saw_unready.load());
  EXPECT_GT(during_retry, 0) << "no request saw the restart";
  EXPECT_GE(ok_after_recovery.load(), 20) << "results after the recovery";
  std::printf("gRPC through the relay: %ld OK, %ld UNAVAILABLE (the job down), %ld otherwise\n", grpc_ok.load(),
              grpc_unavailable.load(), grpc_other.load());
  EXPECT_EQ(grpc_other.load(), 0) << grpc_odd;
  EXPECT_GE(grpc_ok_after_recovery.load(), 5) << "gRPC results after the recovery";
  long grpc_ok_before_kill = 0, grpc_unavailable_during = 0;
  for (const Sample& s : grpc_samples) {
    grpc_ok_before_kill += s.outcome == kOk && s.sent < kill_time;
    grpc_unavailable_during += s.outcome == kRetryLater && s.sent >= kill_time && s.sent <= ready_again;
  }
  EXPECT_GT(grpc_ok_before_kill, 0) << "no gRPC call went through the relay before the kill";
  EXPECT_GT(grpc_unavailable_during, 0) << "no gRPC call saw the restart";

  // A stream through the relay, after the recovery.
  {
    auto stub = job.grpc_stub();
    grpc::ClientContext context;
    rpc::set_timeout(context, std::chrono::seconds(60));
    auto stream = stub->ModelStreamInfer(&context);
    for (int k = 0; k < 3; ++k) {
      inference::ModelInferRequest request;
      request.set_model_name("ident");
      request.set_id("s" + std::to_string(k));
      auto* in = request.add_inputs();
      in->set_name("x");
      in->set_datatype("FP32");
      in->add_shape(1);
      in->add_shape(kWidth);
      std::vector<float> data(kWidth, 7.0f + static_cast<float>(k));
      request.add_raw_input_contents(reinterpret_cast<const char*>(data.data()), data.size() * sizeof(float));
      EXPECT_TRUE(stream->Write(request));
    }
    stream->WritesDone();
    inference::ModelStreamInferResponse response;
    std::map<std::string, float> answers;
    while (stream->Read(&response)) {
      EXPECT_EQ(response.error_message(), "");
      const auto& r = response.infer_response();
      float first = -1;
      if (r.raw_output_contents_size() == 1 && r.raw_output_contents(0).size() == kWidth * sizeof(float)) {
        std::memcpy(&first, r.raw_output_contents(0).data(), sizeof first);
      }
      answers[r.id()] = first;
    }
    EXPECT_TRUE(stream->Finish().ok());
    EXPECT_EQ(answers, (std::map<std::string, float>{{"s0", 7.0f}, {"s1", 8.0f}, {"s2", 9.0f}}));
  }

  std::string log = job.log();
  std::istringstream lines(log);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("meshrt-supervisor:", 0) == 0) std::printf("  %s\n", line.c_str());
  }
  EXPECT_NE(log.find("restarting the job"), std::string::npos) << log;
  EXPECT_NE(log.find("since the job was lost"), std::string::npos) << log;
  HttpClient c = job.client();
  std::string metrics = c.request("GET", "/metrics").body;
  EXPECT_NE(metrics.find("meshrt_supervisor_restarts_total 1\n"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("meshrt_ready 1"), std::string::npos) << "the job's own metrics are relayed";

  // Binary tensors both ways: Inference-Header-Content-Length is relayed.
  json header = {{"inputs", {{{"name", "x"}, {"datatype", "FP32"}, {"shape", {2, kWidth}}, {"parameters", {{"binary_data_size", 2 * kWidth * 4}}}}}},
                 {"outputs", {{{"name", "y"}, {"parameters", {{"binary_data", true}}}}}}};
  std::string body = header.dump();
  size_t header_length = body.size();
  std::vector<float> values(2 * kWidth, 3.0f);
  body.append(reinterpret_cast<const char*>(values.data()), values.size() * 4);
  HttpResponse binary = c.request("POST", "/v2/models/ident/infer", body,
                                  {{"Inference-Header-Content-Length", std::to_string(header_length)},
                                   {"Content-Type", "application/octet-stream"}});
  ASSERT_EQ(binary.status, 200) << binary.body.substr(0, 300);
  std::optional<std::string> length = binary.header("Inference-Header-Content-Length");
  ASSERT_TRUE(length.has_value());
  ASSERT_EQ(binary.body.size() - std::stoull(*length), 2u * kWidth * 4u);
  float first;
  std::memcpy(&first, binary.body.data() + std::stoull(*length), 4);
  EXPECT_EQ(first, 3.0f);
  EXPECT_EQ(c.request("GET", "/v2/models/nothing").status, 404) << "the job's own answers are relayed";

  // SIGTERM: the job drains and ends, the supervisor exits 0, nothing is left.
  pid_t rank0 = job.rank_pid(0), rank1 = job.rank_pid(1);
  EXPECT_GT(rank0, 1);
  EXPECT_NE(rank1, victim);
  auto term = Clock::now();
  ASSERT_GT(job.pid(), 1);
  ::kill(job.pid(), SIGTERM);
  ASSERT_TRUE(job.exited(std::chrono::seconds(2 * Supervised::kStopTimeoutS + 10))) << job.log();
  std::printf("the supervisor stopped %.2f s after SIGTERM\n", std::chrono::duration<double>(Clock::now() - term).count());
  EXPECT_EQ(job.exit_code(), 0) << job.log();
  EXPECT_FALSE(rank0 > 1 && alive(rank0)) << "rank 0 outlived the supervisor";
  EXPECT_FALSE(rank1 > 1 && alive(rank1)) << "rank 1 outlived the supervisor";
  EXPECT_TRUE(processes_mentioning(job.dir().string()).empty()) << "a process of the job outlived the supervisor";
  EXPECT_NE(job.log().find("SIGTERM to the job's rank 0"), std::string::npos) << job.log();
  fs::remove_all(root);
}

// While the job is not up (here a launcher that only sleeps: the job stays
// "starting"), a gRPC call through the relay gets UNAVAILABLE with the reason.
TEST(Supervisor, GrpcWhileTheJobIsDownIsUnavailable) {
  fs::path root = fs::temp_directory_path() / ("meshrt-sup-grpc-" + std::to_string(::getpid()));
  fs::create_directories(root);
  fs::path launcher = root / "sleeping-launcher.sh";
  {
    std::ofstream out(launcher);
    out << "#!/bin/sh\nexec sleep 300\n";
  }
  fs::permissions(launcher, fs::perms::owner_all);
  Supervised job(identity_repository(root / "models", kWidth), 2, {"--mpirun", launcher.string()});
  auto deadline = Clock::now() + std::chrono::seconds(60);
  while (job.grpc_port() == 0 && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_GT(job.grpc_port(), 0) << job.log();
  auto stub = job.grpc_stub();
  grpc::ClientContext context;
  rpc::set_timeout(context, std::chrono::seconds(30));
  inference::ServerReadyResponse ready;
  grpc::Status status = stub->ServerReady(&context, {}, &ready);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  EXPECT_NE(status.error_message().find("the inference job is starting"), std::string::npos) << status.error_message();
  ::kill(job.pid(), SIGTERM);
  EXPECT_TRUE(job.exited(std::chrono::seconds(2 * Supervised::kStopTimeoutS + 10))) << job.log();
  EXPECT_EQ(job.exit_code(), 0) << job.log();
  fs::remove_all(root);
}

TEST(Supervisor, AJobThatNeverStartsIsNotRelaunched) {
  // 1 rank for a 2-rank model: meshrt-serve refuses; relaunching cannot help.
  fs::path root = fs::temp_directory_path() / ("meshrt-sup-bad-" + std::to_string(::getpid()));
  Supervised job(identity_repository(root, kWidth), 1);
  ASSERT_TRUE(job.exited(std::chrono::seconds(120))) << job.log();
  EXPECT_EQ(job.exit_code(), 2) << job.log();
  std::string log = job.log();
  EXPECT_NE(log.find("has rank_size 2 but meshrt-serve runs on 1 rank(s)"), std::string::npos) << log;
  EXPECT_NE(log.find("not relaunching"), std::string::npos) << log;
  fs::remove_all(root);
}

}  // namespace
}  // namespace meshrt::serving

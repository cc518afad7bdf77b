// A real meshrt-serve job under mpiexec for end-to-end tests (HTTP and gRPC
// on free ports of loopback). The test binary is not an MPI program itself.
// Needs MPIEXEC_EXECUTABLE and MESHRT_SERVE defined.
#pragma once

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "device/error.h"
#include "serving/http_client.h"
#include "spawn_util.h"

namespace meshrt::serving {
namespace fs = std::filesystem;

inline std::string read_file(const std::string& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// A meshrt-serve job: mpiexec -n ranks meshrt-serve --model-repository ... on a free port.
class ServerJob : public testing::Spawned {
 public:
  ServerJob(int ranks, const std::string& repository, std::vector<std::string> extra = {}) {
    dir_ = fs::temp_directory_path() / ("meshrt-e2e-" + std::to_string(::getpid()) + "-" + std::to_string(counter_++));
    fs::create_directories(dir_);
    std::vector<std::string> args = {MPIEXEC_EXECUTABLE, "-n", std::to_string(ranks), MESHRT_SERVE,
                                     "--model-repository", repository, "--http-port", "0",
                                     "--port-file", (dir_ / "port").string(), "--pid-file", (dir_ / "pid").string(),
                                     "--grpc-port-file", (dir_ / "grpc_port").string(),
                                     "--metrics-port-file", (dir_ / "metrics_port").string()};
    // Any free gRPC and metrics port unless the test names one: jobs run side by side.
    for (const char* flag : {"--grpc-port", "--metrics-port"}) {
      if (std::find(extra.begin(), extra.end(), flag) == extra.end()) args.insert(args.end(), {flag, "0"});
    }
    args.insert(args.end(), extra.begin(), extra.end());
    start(args, (dir_ / "log").string());
  }

  ~ServerJob() {
    if (pid_ > 0 && !exited_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }

  // Waits until rank 0 listens and says ready; false if the job ended first.
  bool wait_ready(std::chrono::seconds timeout = std::chrono::seconds(120)) {
    auto ready = [&] {
      if (!fs::exists(dir_ / "port") || !fs::exists(dir_ / "pid")) return false;
      port_ = static_cast<uint16_t>(std::stoi(read_file((dir_ / "port").string())));
      rank0_ = std::stoi(read_file((dir_ / "pid").string()));
      try {
        return HttpClient("127.0.0.1", port_).request("GET", "/v2/health/ready").status == 200;
      } catch (const Error&) {
        return false;
      }
    };
    return testing::poll_until(ready, [&] { return exited(std::chrono::milliseconds(0)); }, timeout);
  }


  // Sends signal to rank 0 (never to pid 0 or -1, which would reach the test's
  // own process group or every process: rank 0's pid is known once ready).
  void signal_rank0(int signal) const {
    ASSERT_GT(rank0_, 0) << "rank 0's pid is not known (the job never got ready)";
    ::kill(rank0_, signal);
  }
  // The process id of a rank (meshrt-serve writes <pid-file>.<rank>), or -1.
  pid_t rank_pid(int rank) const {
    fs::path file = dir_ / ("pid." + std::to_string(rank));
    if (!fs::exists(file)) return -1;
    pid_t pid = std::stoi(read_file(file.string()));
    return pid > 0 ? pid : -1;
  }
  uint16_t port() const { return port_; }
  // The metrics port (--metrics-port 0: rank 0 writes it before it listens on the HTTP port).
  uint16_t metrics_port() const {
    return static_cast<uint16_t>(std::stoi(read_file((dir_ / "metrics_port").string())));
  }
  // The gRPC port (0 when the job serves no gRPC).
  uint16_t grpc_port() const {
    fs::path file = dir_ / "grpc_port";
    return fs::exists(file) ? static_cast<uint16_t>(std::stoi(read_file(file.string()))) : 0;
  }
  pid_t rank0() const { return rank0_; }
  std::string log() const { return read_file((dir_ / "log").string()); }
  // Whether the log shows text within a while (mpiexec forwards output late).
  bool log_shows(const std::string& text, std::chrono::seconds within = std::chrono::seconds(10)) const {
    auto deadline = std::chrono::steady_clock::now() + within;
    while (log().find(text) == std::string::npos) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return true;
  }
  HttpClient client() const { return HttpClient("127.0.0.1", port_); }

 private:
  static inline int counter_ = 0;
  fs::path dir_;
  pid_t rank0_ = -1;
  uint16_t port_ = 0;
};

}  // namespace meshrt::serving

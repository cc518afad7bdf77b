// Starting a process for the end-to-end tests: its stdout and stderr go to a log file.
#pragma once

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>

#include <chrono>
#include <functional>
#include <optional>
#include <stdexcept>
#include <thread>
#include <string>
#include <vector>

extern char** environ;

namespace meshrt::testing {

// Starts args[0] (a path) with args, stdout and stderr into log; returns its pid.
inline pid_t spawn_with_log(std::vector<std::string> args, const std::string& log) {
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t files;
  posix_spawn_file_actions_init(&files);
  posix_spawn_file_actions_addopen(&files, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&files, 1, 2);
  pid_t pid = -1;
  int rc = posix_spawn(&pid, argv[0], &files, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&files);
  if (rc != 0) throw std::runtime_error("cannot start " + args[0]);
  return pid;
}

// Waits up to timeout for child pid to end; its exit code (128 + the signal if
// a signal ended it), or nothing if it still runs. Reaps it.
inline std::optional<int> wait_for_exit(pid_t pid, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  do {
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  } while (std::chrono::steady_clock::now() < deadline);
  return std::nullopt;
}

// A started process and how it ended.
class Spawned {
 public:
  pid_t pid() const { return pid_; }
  // Whether it ended within timeout; its exit code in exit_code().
  bool exited(std::chrono::milliseconds timeout) {
    if (exited_) return true;
    std::optional<int> code = wait_for_exit(pid_, timeout);
    if (!code) return false;
    exited_ = true;
    exit_code_ = *code;
    return true;
  }
  int exit_code() const { return exit_code_; }

 protected:
  void start(std::vector<std::string> args, const std::string& log) { pid_ = spawn_with_log(std::move(args), log); }
  pid_t pid_ = -1;
  bool exited_ = false;
  int exit_code_ = -1;
};

// Polls ready() every 50 ms until it is true (returns true), gone() is true or
// the timeout passes (returns false).
inline bool poll_until(const std::function<bool()>& ready, const std::function<bool()>& gone,
                       std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (gone()) return false;
    if (ready()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

}  // namespace meshrt::testing

#include "cluster/launcher.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <thread>

#include "device/error.h"

extern char** environ;

namespace meshrt::cluster {

namespace {

// A waitpid status as a shell reports it.
int decode(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status); }

// Waits for pid to end until deadline, then kills it (SIGKILL); reaps it and
// returns its status as decode() reads it.
int reap(pid_t pid, std::chrono::steady_clock::time_point deadline) {
  int status = 0;
  while (::waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return decode(status);
}

}  // namespace

int free_port(const std::string& host) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  MESHRT_CHECK(fd >= 0, ErrorKind::kUnavailable, "free_port: socket: ", std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = 0;
  if (::inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) {
    ::close(fd);
    throw Error(ErrorKind::kInvalidArgument, "free_port: \"" + host + "\" is not an IPv4 address");
  }
  socklen_t len = sizeof(addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    int e = errno;
    ::close(fd);
    throw Error(ErrorKind::kUnavailable, std::string("free_port: ") + std::strerror(e));
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

LocalCluster::LocalCluster(LocalClusterOptions options) {
  MESHRT_CHECK_ARG(options.workers >= 1 && options.ps >= 1, "LocalCluster: at least one worker and one ps, got ",
                   options.workers, " and ", options.ps);
  std::map<TaskType, std::vector<std::string>> tasks;
  auto add = [&](TaskType type, int n) {
    for (int i = 0; i < n; ++i) tasks[type].push_back(options.host + ":" + std::to_string(free_port(options.host)));
  };
  if (options.chief) add(TaskType::kChief, 1);
  add(TaskType::kWorker, options.workers);
  add(TaskType::kPs, options.ps);
  if (options.evaluator) add(TaskType::kEvaluator, 1);
  spec_ = ClusterSpec(std::move(tasks));
}

LocalCluster::~LocalCluster() {
  for (auto& [name, c] : children_) {
    if (c.pid > 0) ::kill(c.pid, SIGTERM);
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  for (auto& [name, c] : children_) {
    if (c.pid <= 0) continue;
    c.status = reap(c.pid, deadline);
    c.pid = -1;
  }
}

std::string LocalCluster::tf_config(const TaskId& task) const {
  TaskConfig c;
  c.cluster = spec_;
  c.task = task;
  return c.to_json();
}

LocalCluster::Child& LocalCluster::child(const TaskId& task) {
  auto it = children_.find(task.to_string());
  MESHRT_CHECK_ARG(it != children_.end(), "LocalCluster: ", task.to_string(), " was never started");
  return it->second;
}

void LocalCluster::start(const TaskId& task, const std::vector<std::string>& argv, const std::string& log) {
  MESHRT_CHECK_ARG(spec_.has(task), "LocalCluster: no ", task.to_string(), " in the cluster");
  MESHRT_CHECK_ARG(!argv.empty(), "LocalCluster::start: no program");
  Child& c = children_[task.to_string()];
  MESHRT_CHECK_ARG(c.pid <= 0, "LocalCluster: ", task.to_string(), " is running already (pid ", c.pid, ")");
  c.argv = argv;
  c.log = log;
  c.status = -1;
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::strncmp(*e, "TF_CONFIG=", 10) != 0 && std::strncmp(*e, "MESHRT_EXIT_WITH_PARENT=", 24) != 0) {
      env.emplace_back(*e);
    }
  }
  env.push_back("TF_CONFIG=" + tf_config(task));
  env.push_back("MESHRT_EXIT_WITH_PARENT=" + std::to_string(::getpid()));
  std::vector<char*> envp, args;
  for (std::string& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::vector<std::string> argv_copy = argv;
  for (std::string& a : argv_copy) args.push_back(a.data());
  args.push_back(nullptr);
  posix_spawn_file_actions_t files;
  posix_spawn_file_actions_init(&files);
  if (!log.empty()) {
    posix_spawn_file_actions_addopen(&files, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&files, 1, 2);
  }
  // The child starts with no signal blocked and TERM, INT and PIPE at their
  // defaults, whatever this process (its threads, a test harness) set.
  posix_spawnattr_t attributes;
  posix_spawnattr_init(&attributes);
  sigset_t none, defaults;
  sigemptyset(&none);
  sigemptyset(&defaults);
  sigaddset(&defaults, SIGTERM);
  sigaddset(&defaults, SIGINT);
  sigaddset(&defaults, SIGPIPE);
  posix_spawnattr_setsigmask(&attributes, &none);
  posix_spawnattr_setsigdefault(&attributes, &defaults);
  posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  pid_t pid = -1;
  int rc = posix_spawn(&pid, args[0], &files, &attributes, args.data(), envp.data());
  posix_spawnattr_destroy(&attributes);
  posix_spawn_file_actions_destroy(&files);
  MESHRT_CHECK(rc == 0, ErrorKind::kUnavailable, "LocalCluster: cannot start ", argv[0], " as ", task.to_string(),
               ": ", std::strerror(rc));
  c.pid = pid;
}

void LocalCluster::restart(const TaskId& task) {
  Child& c = child(task);
  MESHRT_CHECK_ARG(c.pid <= 0, "LocalCluster: ", task.to_string(), " is still running");
  start(task, c.argv, c.log);
}

void LocalCluster::kill(const TaskId& task, int signal) {
  Child& c = child(task);
  if (c.pid <= 0) return;
  ::kill(c.pid, signal);
  c.status = reap(c.pid, std::chrono::steady_clock::now() + std::chrono::seconds(10));
  c.pid = -1;
}

bool LocalCluster::running(const TaskId& task) {
  Child& c = child(task);
  if (c.pid <= 0) return false;
  int status = 0;
  if (::waitpid(c.pid, &status, WNOHANG) == c.pid) {
    c.pid = -1;
    c.status = decode(status);
    return false;
  }
  return true;
}

int LocalCluster::exit_status(const TaskId& task) {
  if (running(task)) return -1;
  return child(task).status;
}

pid_t LocalCluster::pid(const TaskId& task) const {
  auto it = children_.find(task.to_string());
  return it == children_.end() ? -1 : it->second.pid;
}

void LocalCluster::wait_ready(const TaskId& task, std::chrono::milliseconds timeout) {
  auto [host, port] = split_address(spec_.address(task));
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    MESHRT_CHECK(running(task), ErrorKind::kUnavailable, "LocalCluster: ", task.to_string(),
                 " ended before it served", child(task).log.empty() ? "" : " (its log: " + child(task).log + ")");
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    ::inet_pton(AF_INET, host.c_str(), &addr.sin_addr);
    bool ok = fd >= 0 && ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    if (fd >= 0) ::close(fd);
    if (ok) return;
    MESHRT_CHECK(std::chrono::steady_clock::now() < deadline, ErrorKind::kUnavailable, "LocalCluster: ",
                 task.to_string(), " (", spec_.address(task), ") did not serve within ", timeout.count(), " ms");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

void exit_with_parent() {
  const char* text = std::getenv("MESHRT_EXIT_WITH_PARENT");
  if (text == nullptr || *text == '\0') return;
  pid_t parent = static_cast<pid_t>(std::atol(text));
  if (parent <= 1) return;
  std::thread([parent] {
    for (;;) {
      if (::getppid() != parent) std::_Exit(3);
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  }).detach();
}

}  // namespace meshrt::cluster

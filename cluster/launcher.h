// A cluster on this machine (the counterpart of the seed's in-process
// cluster): every task a separate process on loopback, for tests and the
// demo. It picks a free port per task, starts each task's process with its
// TF_CONFIG in the environment, and can kill and restart tasks (the fault
// tests). Children get MESHRT_EXIT_WITH_PARENT=<pid>, so a task started here
// ends when the launcher's process does (cluster/launcher.h's
// exit_with_parent, which the tasks' main calls).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "cluster/cluster_spec.h"

namespace meshrt::cluster {

struct LocalClusterOptions {
  int workers = 3, ps = 2;
  bool chief = true;      // a chief address (the launcher's process, or a child)
  bool evaluator = false;
  std::string host = "127.0.0.1";
};

class LocalCluster {
 public:
  explicit LocalCluster(LocalClusterOptions options);
  // Ends every task still running: SIGTERM, then SIGKILL after a second.
  ~LocalCluster();
  LocalCluster(const LocalCluster&) = delete;
  LocalCluster& operator=(const LocalCluster&) = delete;

  const ClusterSpec& spec() const { return spec_; }
  // The TF_CONFIG of a task.
  std::string tf_config(const TaskId& task) const;

  // Starts task's process: argv[0] a path, its output to log (appended; "" for
  // the launcher's own). Throws Error(kUnavailable) when it cannot start.
  void start(const TaskId& task, const std::vector<std::string>& argv, const std::string& log = "");
  // Starts it again with the argv and log of its last start (after kill).
  void restart(const TaskId& task);
  // Sends signal and waits (up to 10 s) for it to end; reaps it.
  void kill(const TaskId& task, int signal);
  bool running(const TaskId& task);
  // How the task's last process ended: its exit code, 128 + the signal that
  // ended it, or -1 while it runs (or was never started).
  int exit_status(const TaskId& task);
  // Waits until the task's port accepts a connection; throws Error(kUnavailable)
  // after timeout, or at once when the process ended (with its exit status).
  void wait_ready(const TaskId& task, std::chrono::milliseconds timeout);
  pid_t pid(const TaskId& task) const;

 private:
  struct Child {
    pid_t pid = -1;
    int status = -1;
    std::vector<std::string> argv;
    std::string log;
  };
  Child& child(const TaskId& task);
  ClusterSpec spec_;
  std::map<std::string, Child> children_;  // by TaskId::to_string()
};

// Picks a free TCP port on host (binds port 0, reads it, closes).
int free_port(const std::string& host = "127.0.0.1");

// For a task's main: when MESHRT_EXIT_WITH_PARENT names a pid, a thread ends
// this process (exit code 3) once that process is gone.
void exit_with_parent();

}  // namespace meshrt::cluster

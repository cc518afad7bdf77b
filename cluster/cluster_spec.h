// The cluster of parameter-server training (seed 003): a chief (the
// coordinator), workers, parameter servers (ps) and an evaluator, each a
// "host:port", described as TensorFlow's TF_CONFIG does:
//
//   {"cluster": {"chief": ["host0:2222"], "worker": ["host1:2222", "host2:2222"],
//                "ps": ["host3:2222", "host4:2222"]},
//    "task": {"type": "worker", "index": 1}}
//
// The evaluator may be left out of "cluster" (TensorFlow's sidecar evaluator
// is not part of the training cluster); every other task type must list the
// task. Task types other than these four are refused, as are addresses
// without a host or with a port outside 1..65535, an address given twice,
// and more than one chief.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

namespace meshrt::cluster {

enum class TaskType { kChief, kWorker, kPs, kEvaluator };
// "chief", "worker", "ps", "evaluator".
const char* to_string(TaskType type);
// Throws Error(kInvalidArgument) naming the four for anything else.
TaskType parse_task_type(const std::string& name);

struct TaskId {
  TaskType type = TaskType::kWorker;
  int index = 0;
  // "/job:worker/task:1", as TensorFlow names devices' tasks.
  std::string to_string() const;
  bool operator==(const TaskId&) const = default;
};

class ClusterSpec {
 public:
  ClusterSpec() = default;
  // {"worker": ["h:p", ...], "ps": [...], ...}; throws Error(kInvalidArgument)
  // saying what is wrong.
  static ClusterSpec from_json(const std::string& text);
  // The same from a map (the local launcher builds one).
  explicit ClusterSpec(std::map<TaskType, std::vector<std::string>> tasks);

  // The addresses of a task type, in index order (empty if none).
  const std::vector<std::string>& tasks(TaskType type) const;
  int num_tasks(TaskType type) const { return static_cast<int>(tasks(type).size()); }
  // Throws Error(kInvalidArgument) when the cluster has no such task.
  const std::string& address(const TaskId& task) const;
  bool has(const TaskId& task) const;
  // The JSON object of from_json (task types in the order chief, worker, ps, evaluator).
  std::string to_json() const;
  // Parameter-server training needs at least one worker and one ps (and at
  // most one chief): throws Error(kInvalidArgument) otherwise.
  void require_parameter_server_cluster() const;

 private:
  std::map<TaskType, std::vector<std::string>> tasks_;
};

// Splits "host:port" (an IPv6 host in brackets: "[::1]:2222"); throws
// Error(kInvalidArgument) for no host, no port, or a port outside 1..65535.
std::pair<std::string, int> split_address(const std::string& address);

// TF_CONFIG: the cluster and this process's task.
struct TaskConfig {
  ClusterSpec cluster;
  TaskId task;
  std::string rpc_layer = "grpc";  // only grpc
  // The JSON above; throws Error(kInvalidArgument) when a part is missing or
  // wrong, or when the task is not in the cluster (an evaluator may be absent).
  static TaskConfig parse(const std::string& json);
  // From the environment: TF_CONFIG (the JSON itself, as TensorFlow reads
  // it), else MESHRT_TF_CONFIG_FILE (a file holding it); nullopt when
  // neither is set. Errors name the variable or the file.
  static std::optional<TaskConfig> from_environment();
  // From a file (--tf-config-file): errors name the file.
  static TaskConfig from_file(const std::string& path);
  std::string to_json() const;
};

}  // namespace meshrt::cluster

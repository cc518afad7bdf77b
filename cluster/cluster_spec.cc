#include "cluster/cluster_spec.h"

#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>

#include "device/error.h"
#include "io/json_limits.h"

namespace meshrt::cluster {
namespace {

using nlohmann::json;
namespace jl = io::json_limits;

constexpr TaskType kTypes[] = {TaskType::kChief, TaskType::kWorker, TaskType::kPs, TaskType::kEvaluator};

[[noreturn]] void bad(const std::string& message) { throw Error(ErrorKind::kInvalidArgument, message); }

json parse_object(const std::string& text, const std::string& what) {
  json j;
  try {
    j = jl::parse(text);
  } catch (const std::exception& e) {
    bad(what + " is not JSON: " + e.what());
  }
  if (!j.is_object()) bad(what + " must be a JSON object, got " + jl::brief(j));
  return j;
}

ClusterSpec cluster_from(const json& j, const std::string& what) {
  if (!j.is_object()) bad(what + " must be an object of task types, got " + jl::brief(j));
  std::map<TaskType, std::vector<std::string>> tasks;
  for (const auto& [name, list] : j.items()) {
    TaskType type;
    try {
      type = parse_task_type(name);
    } catch (const Error& e) {
      bad(what + ": " + e.message());
    }
    if (!list.is_array()) bad(what + "[\"" + name + "\"] must be a list of \"host:port\", got " + jl::brief(list));
    for (const json& a : list) {
      if (!a.is_string()) bad(what + "[\"" + name + "\"] holds " + jl::brief(a) + ", not a \"host:port\" string");
      tasks[type].push_back(a.get<std::string>());
    }
  }
  try {
    return ClusterSpec(std::move(tasks));
  } catch (const Error& e) {
    bad(what + ": " + e.message());
  }
}

}  // namespace

const char* to_string(TaskType type) {
  switch (type) {
    case TaskType::kChief: return "chief";
    case TaskType::kWorker: return "worker";
    case TaskType::kPs: return "ps";
    case TaskType::kEvaluator: return "evaluator";
  }
  return "?";
}

TaskType parse_task_type(const std::string& name) {
  for (TaskType t : kTypes) {
    if (name == to_string(t)) return t;
  }
  bad("unknown task type \"" + name + "\" (chief, worker, ps or evaluator)");
}

std::string TaskId::to_string() const {
  return std::string("/job:") + cluster::to_string(type) + "/task:" + std::to_string(index);
}

std::pair<std::string, int> split_address(const std::string& address) {
  size_t colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == address.size()) {
    bad("address \"" + address + "\" is not \"host:port\"");
  }
  std::string host = address.substr(0, colon), port_text = address.substr(colon + 1);
  if (host.front() == '[') {
    if (host.size() < 3 || host.back() != ']') bad("address \"" + address + "\": a bracketed host needs its ']'");
  } else if (host.find(':') != std::string::npos) {
    bad("address \"" + address + "\": an IPv6 host goes in brackets, as \"[::1]:2222\"");
  }
  int port = 0;
  for (char c : port_text) {
    if (c < '0' || c > '9' || port > 65535) bad("address \"" + address + "\": port \"" + port_text + "\" is not 1..65535");
    port = port * 10 + (c - '0');
  }
  if (port < 1 || port > 65535) bad("address \"" + address + "\": port " + port_text + " is not 1..65535");
  return {host, port};
}

ClusterSpec::ClusterSpec(std::map<TaskType, std::vector<std::string>> tasks) : tasks_(std::move(tasks)) {
  std::set<std::string> seen;
  for (const auto& [type, list] : tasks_) {
    for (size_t i = 0; i < list.size(); ++i) {
      split_address(list[i]);
      if (!seen.insert(list[i]).second) {
        bad("address " + list[i] + " is given twice (again as " + TaskId{type, static_cast<int>(i)}.to_string() +
            "): every task needs its own");
      }
    }
  }
  if (num_tasks(TaskType::kChief) > 1) {
    bad("a cluster has at most one chief, got " + std::to_string(num_tasks(TaskType::kChief)));
  }
}

ClusterSpec ClusterSpec::from_json(const std::string& text) {
  return cluster_from(parse_object(text, "the cluster spec"), "the cluster spec");
}

const std::vector<std::string>& ClusterSpec::tasks(TaskType type) const {
  static const std::vector<std::string> kNone;
  auto it = tasks_.find(type);
  return it == tasks_.end() ? kNone : it->second;
}

bool ClusterSpec::has(const TaskId& task) const { return task.index >= 0 && task.index < num_tasks(task.type); }

const std::string& ClusterSpec::address(const TaskId& task) const {
  if (!has(task)) {
    bad("the cluster has no " + task.to_string() + " (" + std::to_string(num_tasks(task.type)) + " " +
        to_string(task.type) + " task(s))");
  }
  return tasks(task.type)[static_cast<size_t>(task.index)];
}

std::string ClusterSpec::to_json() const {
  json j = json::object();
  for (TaskType t : kTypes) {
    if (num_tasks(t) > 0) j[to_string(t)] = tasks(t);
  }
  return j.dump();
}

void ClusterSpec::require_parameter_server_cluster() const {
  if (num_tasks(TaskType::kWorker) < 1 || num_tasks(TaskType::kPs) < 1) {
    bad("parameter-server training needs at least one worker and one ps; the cluster has " +
        std::to_string(num_tasks(TaskType::kWorker)) + " worker(s) and " + std::to_string(num_tasks(TaskType::kPs)) +
        " ps");
  }
}

TaskConfig TaskConfig::parse(const std::string& text) {
  json j = parse_object(text, "TF_CONFIG");
  if (!j.contains("cluster")) bad("TF_CONFIG has no \"cluster\"");
  if (!j.contains("task")) bad("TF_CONFIG has no \"task\" (this process's {\"type\": ..., \"index\": ...})");
  TaskConfig c;
  c.cluster = cluster_from(j["cluster"], "TF_CONFIG's \"cluster\"");
  const json& task = j["task"];
  if (!task.is_object() || !task.contains("type") || !task["type"].is_string()) {
    bad("TF_CONFIG's \"task\" needs a \"type\" string, got " + jl::brief(task));
  }
  try {
    c.task.type = parse_task_type(task["type"].get<std::string>());
  } catch (const Error& e) {
    bad("TF_CONFIG's \"task\": " + e.message());
  }
  if (task.contains("index")) {
    if (!task["index"].is_number_integer() || task["index"].get<int64_t>() < 0 ||
        task["index"].get<int64_t>() > 1000000) {
      bad("TF_CONFIG's \"task\" index must be an integer in 0..1000000, got " + jl::brief(task["index"]));
    }
    c.task.index = task["index"].get<int>();
  }
  if (j.contains("rpc_layer")) {
    if (!j["rpc_layer"].is_string() || j["rpc_layer"].get<std::string>() != "grpc") {
      bad("TF_CONFIG's \"rpc_layer\" must be \"grpc\" (the only transport), got " + jl::brief(j["rpc_layer"]));
    }
  }
  // A sidecar evaluator need not be in the cluster; every other task must.
  if (!(c.task.type == TaskType::kEvaluator && c.cluster.num_tasks(TaskType::kEvaluator) == 0) &&
      !c.cluster.has(c.task)) {
    bad("TF_CONFIG's task " + c.task.to_string() + " is not in the cluster (" +
        std::to_string(c.cluster.num_tasks(c.task.type)) + " " + to_string(c.task.type) + " task(s))");
  }
  return c;
}

TaskConfig TaskConfig::from_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) bad("cannot read the TF_CONFIG file " + path);
  std::stringstream text;
  text << in.rdbuf();
  try {
    return parse(text.str());
  } catch (const Error& e) {
    bad(path + ": " + e.message());
  }
}

std::optional<TaskConfig> TaskConfig::from_environment() {
  if (const char* text = std::getenv("TF_CONFIG"); text != nullptr && *text != '\0') {
    try {
      return parse(text);
    } catch (const Error& e) {
      bad("the environment variable TF_CONFIG: " + e.message());
    }
  }
  if (const char* path = std::getenv("MESHRT_TF_CONFIG_FILE"); path != nullptr && *path != '\0') {
    return from_file(path);
  }
  return std::nullopt;
}

std::string TaskConfig::to_json() const {
  json j;
  j["cluster"] = json::parse(cluster.to_json());
  j["task"] = {{"type", to_string(task.type)}, {"index", task.index}};
  j["rpc_layer"] = rpc_layer;
  return j.dump();
}

}  // namespace meshrt::cluster

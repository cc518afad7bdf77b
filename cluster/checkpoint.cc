#include "cluster/checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "device/error.h"
#include "io/file.h"
#include "io/json_limits.h"
#include "io/safetensors.h"

namespace meshrt::cluster {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string join(const std::string& a, const std::string& b) { return a + "/" + b; }

// Writes text to path atomically: a temporary file, fsync, rename, the folder synced.
void write_atomically(const std::string& path, const std::string& text) {
  const std::string temp = path + ".partial";
  {
    io::File file(temp, O_WRONLY | O_CREAT | O_TRUNC);
    file.write_at(text.data(), text.size(), 0);
    file.sync();
  }
  if (std::rename(temp.c_str(), path.c_str()) != 0) io::io_error("cannot commit", path);
  io::sync_directory(fs::path(path).parent_path().string());
}

// The JSON in a file; throws Error(kInvalidArgument) naming it when it cannot be read or parsed.
json read_json(const std::string& path) {
  std::ifstream in(path);
  MESHRT_CHECK_ARG(static_cast<bool>(in), "cannot read ", path);
  std::stringstream text;
  text << in.rdbuf();
  try {
    return io::json_limits::parse(text.str());
  } catch (const std::exception& e) {
    throw Error(ErrorKind::kInvalidArgument, path + " is not JSON: " + e.what());
  }
}

}  // namespace

std::string CheckpointInfo::ps_file(int i) const { return join(path, "ps-" + std::to_string(i) + ".safetensors"); }

CheckpointManager::CheckpointManager(std::string directory, int max_to_keep)
    : directory_(std::move(directory)), max_to_keep_(max_to_keep) {
  MESHRT_CHECK_ARG(!directory_.empty(), "CheckpointManager: no directory");
  MESHRT_CHECK_ARG(max_to_keep >= 1, "CheckpointManager: max_to_keep must be >= 1, got ", max_to_keep);
  std::error_code ec;
  fs::create_directories(directory_, ec);
  MESHRT_CHECK(!ec, ErrorKind::kUnavailable, "cannot create the checkpoint folder ", directory_, ": ", ec.message());
}

CheckpointInfo CheckpointManager::read_info(const std::string& name) const {
  const std::string path = join(join(directory_, name), "checkpoint.json");
  json j = read_json(path);
  MESHRT_CHECK_ARG(j.is_object() && j.contains("step") && j["step"].is_number_integer() && j.contains("num_ps") &&
                       j["num_ps"].is_number_integer(),
                   path, " needs an integer \"step\" and \"num_ps\"");
  CheckpointInfo info;
  info.step = j["step"].get<int64_t>();
  info.num_ps = j["num_ps"].get<int>();
  info.path = join(directory_, name);
  info.extra = j.contains("extra") ? j["extra"].dump() : "{}";
  return info;
}

std::vector<std::string> CheckpointManager::kept_names() const {
  const std::string index = join(directory_, "checkpoint");
  if (!fs::exists(index)) return {};
  json j = read_json(index);
  MESHRT_CHECK_ARG(j.is_object() && j.contains("all") && j["all"].is_array(), index,
                   " needs \"all\", a list of checkpoint names");
  std::vector<std::string> out;
  for (const json& name : j["all"]) {
    MESHRT_CHECK_ARG(name.is_string(), index, ": a checkpoint name is not a string");
    out.push_back(name.get<std::string>());
  }
  return out;
}

std::vector<CheckpointInfo> CheckpointManager::all() const {
  std::vector<CheckpointInfo> out;
  for (const std::string& name : kept_names()) out.push_back(read_info(name));
  return out;
}

// Only the newest's record is read (the sidecar evaluator asks at every poll).
std::optional<CheckpointInfo> CheckpointManager::latest() const {
  std::vector<std::string> names = kept_names();
  if (names.empty()) return std::nullopt;
  return read_info(names.back());
}

CheckpointInfo CheckpointManager::save(std::vector<PsClient>& ps, int64_t step, const std::string& extra) {
  MESHRT_CHECK_ARG(step >= 0, "CheckpointManager::save: step ", step, " < 0");
  json extra_json;
  try {
    extra_json = io::json_limits::parse(extra);
  } catch (const std::exception& e) {
    throw Error(ErrorKind::kInvalidArgument, std::string("CheckpointManager::save: extra is not JSON: ") + e.what());
  }
  const std::string name = "ckpt-" + std::to_string(step);
  std::vector<std::string> names = kept_names();
  for (const std::string& kept : names) {
    MESHRT_CHECK_ARG(kept != name, "checkpoint ", name, " exists in ", directory_,
                     ": a step is saved once (its files are not overwritten in place)");
  }
  std::error_code ec;
  fs::remove_all(join(directory_, name), ec);  // the files of a save that did not finish
  CheckpointInfo info;
  info.step = step;
  info.path = join(directory_, name);
  info.num_ps = static_cast<int>(ps.size());
  info.extra = extra_json.dump();
  fs::create_directories(info.path, ec);
  MESHRT_CHECK(!ec, ErrorKind::kUnavailable, "cannot create ", info.path, ": ", ec.message());
  for (PsClient& server : ps) server.save(info.ps_file(server.index()));
  json record = {{"step", step}, {"num_ps", info.num_ps}, {"extra", extra_json}};
  write_atomically(join(info.path, "checkpoint.json"), record.dump());

  names.push_back(name);
  std::vector<std::string> dropped;
  while (static_cast<int>(names.size()) > max_to_keep_) {
    dropped.push_back(names.front());
    names.erase(names.begin());
  }
  write_atomically(join(directory_, "checkpoint"), json{{"latest", name}, {"all", names}}.dump());
  // Only after the index no longer names them.
  for (const std::string& d : dropped) fs::remove_all(join(directory_, d), ec);
  return info;
}

std::map<std::string, HostTensor> CheckpointManager::read_values(const CheckpointInfo& info) const {
  std::map<std::string, HostTensor> out;
  for (int i = 0; i < info.num_ps; ++i) {
    const std::string path = info.ps_file(i);
    io::SafetensorsHeader header = io::read_safetensors_header(path);
    auto it = header.metadata.find("meshrt.ps.optimizers");
    MESHRT_CHECK_ARG(it != header.metadata.end(), path, " is not a parameter server's checkpoint (no meshrt.ps.optimizers)");
    json variables = io::json_limits::parse(it->second);
    MESHRT_CHECK_ARG(variables.is_object(), path, ": meshrt.ps.optimizers is not an object");
    io::File file(path, O_RDONLY);
    for (const auto& [name, _] : variables.items()) {
      const io::SafetensorsEntry& e = header.find(name);
      HostTensor t = HostTensor::empty(e.shape, e.dtype);
      MESHRT_CHECK_ARG(e.end - e.begin == t.nbytes(), path, ": ", name, " has ", e.end - e.begin, " bytes, not ",
                       t.nbytes());
      if (t.nbytes() > 0) file.read_at(t.raw_data(), t.nbytes(), header.data_start + e.begin);
      out.emplace(name, std::move(t));
    }
  }
  return out;
}

void CheckpointManager::restore(std::vector<PsClient>& ps, const CheckpointInfo& info, int64_t fence_step_id) const {
  MESHRT_CHECK_ARG(static_cast<int>(ps.size()) == info.num_ps, "checkpoint ", info.path, " was saved by ",
                   info.num_ps, " parameter servers; the cluster has ", ps.size());
  for (PsClient& server : ps) server.restore(info.ps_file(server.index()), fence_step_id);
}

}  // namespace meshrt::cluster

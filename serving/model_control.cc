#include "serving/model_control.h"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <set>

#include "device/log.h"
#include "serving/model_config.h"

namespace meshrt::serving {

ModelControlMode parse_model_control_mode(const std::string& text) {
  if (text == "none") return ModelControlMode::kNone;
  if (text == "explicit") return ModelControlMode::kExplicit;
  if (text == "poll") return ModelControlMode::kPoll;
  throw Error(ErrorKind::kInvalidArgument, "unknown model control mode '" + text + "' (none, explicit or poll)");
}

const char* to_string(ModelControlMode mode) {
  switch (mode) {
    case ModelControlMode::kNone: return "none";
    case ModelControlMode::kExplicit: return "explicit";
    case ModelControlMode::kPoll: return "poll";
  }
  return "?";
}

namespace {
// The entries of a folder, sorted ("" when it cannot be read).
std::vector<std::string> entries(const std::string& dir) {
  std::vector<std::string> out;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (dirent* e = ::readdir(d)) {
      std::string name = e->d_name;
      if (name != "." && name != "..") out.push_back(name);
    }
    ::closedir(d);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// "name size mtime" of path, and of the entries below it down to depth more levels.
void describe(const std::string& path, const std::string& name, int depth, std::string* out) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return;
  *out += detail::cat(name, " ", static_cast<long long>(st.st_size), " ", static_cast<long long>(st.st_mtim.tv_sec), ".",
                      static_cast<long long>(st.st_mtim.tv_nsec), "\n");
  if (S_ISDIR(st.st_mode) && depth > 0) {
    for (const std::string& e : entries(path)) describe(path + "/" + e, name + "/" + e, depth - 1, out);
  }
}
}  // namespace

ModelControl::ModelControl(ModelControlOptions options, Engine& engine, Frontend& frontend)
    : options_(std::move(options)), engine_(engine), frontend_(frontend) {
  for (int m = 0; m < engine_.servable_count(); ++m) {
    const std::string& name = engine_.servable(m).name;
    if (engine_.state(m) == ServableState::kServing) fingerprints_[name] = fingerprint(name);
  }
  if (options_.mode == ModelControlMode::kPoll) {
    poller_ = std::thread([this] {
      std::unique_lock<std::mutex> lock(mutex_);
      while (!stop_cv_.wait_for(lock, options_.poll_interval, [&] { return stopped_; })) {
        lock.unlock();
        try {
          poll();
        } catch (const std::exception& e) {
          log::error(std::string("polling the model repository failed: ") + e.what());
        }
        lock.lock();
      }
    });
  }
}

ModelControl::~ModelControl() { stop(); }

void ModelControl::stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopped_ = true;
  }
  stop_cv_.notify_all();
  if (poller_.joinable()) poller_.join();
}

std::string ModelControl::fingerprint(const std::string& name) const {
  std::string out;
  // The config and the weights beside it, and each version folder's files (and one level below them).
  describe(options_.repository + "/" + name, name, 3, &out);
  return out;
}

std::vector<int> ModelControl::loaded(const std::string& name) const {
  std::vector<int> out;
  for (int m = 0; m < engine_.servable_count(); ++m) {
    ServableState state = engine_.state(m);
    if (engine_.servable(m).name == name && (state == ServableState::kServing || state == ServableState::kClosed)) {
      out.push_back(m);
    }
  }
  return out;
}

Outcome ModelControl::load(const std::string& name) {
  if (options_.mode != ModelControlMode::kExplicit) {
    return {400, "cannot load model '" + name + "': the server runs in model control mode " + to_string(options_.mode) +
                     (options_.mode == ModelControlMode::kPoll ? " (it loads what the repository holds)"
                                                               : " (models load when it starts)") +
                     ": start meshrt-serve with --model-control-mode explicit"};
  }
  std::unique_lock<std::mutex> acting(action_mutex_, std::try_to_lock);
  if (!acting.owns_lock()) return busy("load", name);
  return load_locked(name, fingerprint(name));
}

Outcome ModelControl::busy(const std::string& action, const std::string& name) {
  // One load or unload at a time; the others are refused rather than left to
  // hold the front end's threads while it runs.
  return {503, "cannot " + action + " model '" + name + "' now: another load or unload is running; retry when it ends"};
}

Outcome ModelControl::unload(const std::string& name) {
  if (options_.mode != ModelControlMode::kExplicit) {
    return {400, "cannot unload model '" + name + "': the server runs in model control mode " +
                     to_string(options_.mode) + ": start meshrt-serve with --model-control-mode explicit"};
  }
  if (frontend_.draining()) return {503, "cannot unload model '" + name + "': the server is shutting down"};
  std::unique_lock<std::mutex> acting(action_mutex_, std::try_to_lock);
  if (!acting.owns_lock()) return busy("unload", name);
  return unload_locked(name);
}

Outcome ModelControl::load_locked(const std::string& name, const std::string& folder) {
  if (frontend_.draining()) return {503, "cannot load model '" + name + "': the server is shutting down"};
  auto refuse = [&](const std::string& why) {
    note(name, why);
    log::error("loading model '" + name + "' failed: " + why);
    return Outcome{400, "failed to load '" + name + "': " + why};
  };
  std::vector<std::string> models;
  try {
    models = repository_models(options_.repository);
  } catch (const Error& e) {
    return refuse(e.message());
  }
  if (std::find(models.begin(), models.end(), name) == models.end()) {
    return {400, "failed to load '" + name + "': the repository " + options_.repository +
                     " has no model of that name (no folder with a config.json or a meshrt.json)"};
  }
  std::vector<int> old = loaded(name);
  auto began = std::chrono::steady_clock::now();
  std::vector<int> added;
  try {
    added = engine_.load(name);
  } catch (const Error& e) {
    return refuse(e.message());
  } catch (const std::exception& e) {
    return refuse(e.what());
  }
  frontend_.add(added);
  engine_.publish(added);
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
  for (int m : added) {
    const ServableDefinition& s = engine_.servable(m);
    log::info(detail::cat(old.empty() ? "loaded" : "reloaded", " model '", s.name, "' version ", s.version, " on ",
                          engine_.placement(m), " in ", static_cast<int64_t>(seconds * 1000), " ms"));
  }
  // A reload: the new versions serve already; the old ones finish what they took.
  for (int m : old) {
    std::string why = frontend_.retire(m, options_.unload_timeout);
    if (!why.empty()) log::warn("retiring the replaced version of model '" + name + "': " + why);
  }
  std::lock_guard<std::mutex> lock(mutex_);
  notes_.erase(name);
  fingerprints_[name] = folder;  // what it looked like before loading: a change during the load is seen next time
  return {};
}

Outcome ModelControl::unload_locked(const std::string& name) {
  std::vector<int> versions = loaded(name);
  if (versions.empty()) return {400, "failed to unload '" + name + "': no version of it is loaded"};
  std::string failed;
  for (int m : versions) {
    std::string why = frontend_.retire(m, options_.unload_timeout);
    if (!why.empty()) failed += (failed.empty() ? "" : "; ") + why;
  }
  std::lock_guard<std::mutex> lock(mutex_);
  fingerprints_.erase(name);  // poll: looked at again (a failed unload too), whatever the folder holds then
  if (!failed.empty()) return {400, "failed to unload '" + name + "': " + failed};
  notes_[name] = "unloaded";
  log::info("unloaded model '" + name + "'");
  return {};
}

std::vector<RepositoryEntry> ModelControl::index(bool ready_only) const {
  std::set<std::string> names;
  try {
    for (const std::string& n : repository_models(options_.repository)) names.insert(n);
  } catch (const Error&) {
    // the repository folder is gone: the loaded models are still listed
  }
  for (int m = 0; m < engine_.servable_count(); ++m) {
    if (engine_.state(m) != ServableState::kUnloaded) names.insert(engine_.servable(m).name);
  }
  std::map<std::string, std::string> notes;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    notes = notes_;
  }
  std::vector<RepositoryEntry> out;
  for (const std::string& name : names) {
    bool any = false;
    for (int m = 0; m < engine_.servable_count(); ++m) {
      if (engine_.servable(m).name != name || engine_.state(m) != ServableState::kServing) continue;
      any = true;
      std::string reason;
      bool ready = frontend_.model_ready(m, &reason);
      if (ready_only && !ready) continue;
      out.push_back({name, engine_.servable(m).version, ready ? "READY" : "UNAVAILABLE", ready ? "" : reason});
    }
    if (any || ready_only) continue;
    auto note = notes.find(name);
    out.push_back({name, "", "UNAVAILABLE", note == notes.end() ? "not loaded" : note->second});
  }
  return out;
}

void ModelControl::note(const std::string& name, const std::string& why) {
  std::lock_guard<std::mutex> lock(mutex_);
  notes_[name] = why;
}

void ModelControl::poll() {
  std::lock_guard<std::mutex> acting(action_mutex_);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopped_) return;
  }
  std::vector<std::string> models = repository_models(options_.repository);
  std::set<std::string> present(models.begin(), models.end());
  for (const std::string& name : models) {
    std::string now = fingerprint(name);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto seen = fingerprints_.find(name);
      if (seen != fingerprints_.end() && seen->second == now) continue;  // unchanged (or failed, unchanged since)
      fingerprints_[name] = now;  // a load that fails is tried again once the folder changes
    }
    if (Outcome o = load_locked(name, now); !o.ok()) log::warn("poll: " + o.error);
  }
  std::set<std::string> gone;
  for (int m = 0; m < engine_.servable_count(); ++m) {
    const std::string& name = engine_.servable(m).name;
    ServableState state = engine_.state(m);
    // Closed ones too: an unload that timed out is tried again.
    if (!present.count(name) && (state == ServableState::kServing || state == ServableState::kClosed)) gone.insert(name);
  }
  for (const std::string& name : gone) {
    if (Outcome o = unload_locked(name); !o.ok()) log::warn("poll: " + o.error);
  }
}

}  // namespace meshrt::serving

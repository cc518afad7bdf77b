// Rank 0: the model repository extension's load and unload, and the
// repository's index, under Triton's model control modes:
//   none      models load when the server starts; load and unload are refused
//   explicit  load and unload on request (POST /v2/repository/models/{m}/load,
//             gRPC RepositoryModelLoad); --load-model names those loaded at start
//   poll      the repository is looked at every poll interval: new models and
//             changed ones (their config, their version folders, the files in
//             them) are loaded, models whose folder is gone are unloaded; load and
//             unload requests are refused, as Triton does
//
// Loading builds the model's servables on every rank of their placements
// (Engine::load) while the others serve; a reload loads the new ones first and
// then retires the old ones, so requests always find a version. Unloading
// takes each version out of find() (later requests: 404), refuses what comes
// for it after that (503), lets the requests it accepted finish, then drops it
// on every rank (Frontend::retire). One load or unload runs at a time.
#pragma once

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "serving/engine.h"
#include "serving/frontend.h"
#include "serving/model_reports.h"

namespace meshrt::serving {

enum class ModelControlMode { kNone, kExplicit, kPoll };
// "none", "explicit", "poll"; throws Error(kInvalidArgument) listing them.
ModelControlMode parse_model_control_mode(const std::string& text);
const char* to_string(ModelControlMode mode);

struct ModelControlOptions {
  ModelControlMode mode = ModelControlMode::kNone;
  std::string repository;
  // kPoll: how often the repository is looked at.
  std::chrono::milliseconds poll_interval{5000};
  // How long an unload (or the retiring of a reload's old versions) waits for
  // the requests a version accepted.
  std::chrono::milliseconds unload_timeout{60000};
};

class ModelControl {
 public:
  // The engine must have been made with a loader (EngineOptions::loader) that
  // reads options.repository. In kPoll, polling starts here.
  ModelControl(ModelControlOptions options, Engine& engine, Frontend& frontend);
  ~ModelControl();

  // Loads (or reloads) model name from the repository, every version its
  // policy selects: 200, or 400 with why (mode none or poll, a name that is
  // not a model of the repository, a config that does not parse, a model that
  // does not fit the job, a rank that could not build it; nothing changed),
  // 503 while another load or unload runs or the server drains.
  Outcome load(const std::string& name);
  // Unloads every version of model name: 200 once they are dropped, or 400
  // with why (not loaded, mode none or poll, requests still running after
  // unload_timeout: the model is then closed to new ones and still loaded),
  // 503 while another load or unload runs or the server drains.
  Outcome unload(const std::string& name);
  // Every model of the repository and every loaded one: each loaded version
  // with READY or UNAVAILABLE (and why), a model not loaded as one entry
  // without a version, UNAVAILABLE with why (not loaded, unloaded, or its
  // load's error). ready_only: the ready ones.
  std::vector<RepositoryEntry> index(bool ready_only) const;
  // One look at the repository (kPoll's thread calls it every poll_interval):
  // loads new and changed models, unloads those whose folder is gone. A model
  // whose load failed is tried again once its folder changes.
  void poll();
  // Stops polling (before the server drains). Idempotent.
  void stop();

 private:
  // folder: the model folder's fingerprint before loading (kept as what was loaded).
  Outcome load_locked(const std::string& name, const std::string& folder);
  static Outcome busy(const std::string& action, const std::string& name);
  void note(const std::string& name, const std::string& why);  // notes_[name] = why
  Outcome unload_locked(const std::string& name);
  // The engine's indices of name's versions still loaded (serving, or closed by an unload that timed out).
  std::vector<int> loaded(const std::string& name) const;
  // What the model's folder looks like: its files and version folders' names, sizes and times.
  std::string fingerprint(const std::string& name) const;

  ModelControlOptions options_;
  Engine& engine_;
  Frontend& frontend_;
  std::mutex action_mutex_;                           // one load, unload or poll at a time
  mutable std::mutex mutex_;                          // the maps and stopped_ (held briefly)
  std::map<std::string, std::string> notes_;          // model -> why it is not loaded
  std::map<std::string, std::string> fingerprints_;   // kPoll: each model's folder when last loaded (or tried)
  std::condition_variable stop_cv_;
  bool stopped_ = false;
  std::thread poller_;
};

}  // namespace meshrt::serving

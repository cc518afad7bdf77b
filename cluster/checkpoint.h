// Checkpoints of parameter-server training (seed 003: a coordinator or
// parameter-server failure loses no progress): every server's variables,
// their optimizers' state and the step ids they applied, plus the
// coordinator's step, in a folder of checkpoints of which the newest
// max_to_keep are kept (TensorFlow's CheckpointManager).
//
//   <directory>/ckpt-<step>/ps-<i>.safetensors   written by server i (PsClient::save: atomic)
//   <directory>/ckpt-<step>/checkpoint.json      {"step": ..., "num_ps": ..., "extra": {...}}
//   <directory>/checkpoint                       the index: {"latest": "ckpt-<step>", "all": [...]}
//
// Each file is written atomically (a temporary file, fsync, rename) and the
// index last, so a checkpoint exists only once every part of it does; a
// save cut short leaves the previous latest in place. The servers write
// their own files (on a shared file system in a real cluster, as
// TensorFlow's parameter servers do).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "cluster/ps_client.h"

namespace meshrt::cluster {

struct CheckpointInfo {
  int64_t step = 0;
  std::string path;   // <directory>/ckpt-<step>
  int num_ps = 0;
  std::string extra;  // the JSON the save was given
  // The file server i writes and reads.
  std::string ps_file(int i) const;
};

class CheckpointManager {
 public:
  // Creates directory if needed. max_to_keep >= 1.
  CheckpointManager(std::string directory, int max_to_keep = 5);
  const std::string& directory() const { return directory_; }

  // Saves checkpoint `step` (extra: a JSON object kept with it) and returns it;
  // deletes the oldest beyond max_to_keep. Throws the servers' errors
  // (Error(kUnavailable) naming a server that is down) and leaves the
  // previous latest as it was.
  CheckpointInfo save(std::vector<PsClient>& ps, int64_t step, const std::string& extra = "{}");
  // The newest complete checkpoint, if any.
  std::optional<CheckpointInfo> latest() const;
  // Every kept checkpoint, oldest first.
  std::vector<CheckpointInfo> all() const;
  // Each server restores its file of info (there must be as many servers as
  // it was saved with), then drops applies of step ids below fence_step_id
  // (the steps of the run before, still in flight).
  void restore(std::vector<PsClient>& ps, const CheckpointInfo& info, int64_t fence_step_id = 0) const;

  // The variables' values in a checkpoint, by shard name, read from the
  // servers' files here (no server needed: the sidecar evaluator's way);
  // optimizer slots and bookkeeping left out.
  std::map<std::string, HostTensor> read_values(const CheckpointInfo& info) const;

  // Reads <directory>/ckpt-<step>/checkpoint.json; throws Error(kInvalidArgument) when absent or malformed.
  CheckpointInfo read_info(const std::string& name) const;

 private:
  // The names the index lists, oldest first.
  std::vector<std::string> kept_names() const;
  std::string directory_;
  int max_to_keep_;
};

}  // namespace meshrt::cluster

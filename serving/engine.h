// The pipeline engine: runs batches of servables across all ranks.
//
// Every servable gets the mesh {stage: stage_size, model: rank_size / stage_size}
// over all ranks; each rank builds its own stage on its slice of the mesh. Rank 0
// (the front end, also a rank of the first stage) tells the other ranks what to
// run over the host Channel, sends the batch to the other ranks of the first
// stage as host tensors, and the batch flows as micro-batches: stage s sends
// each micro-batch's activation to stage s+1 (device tensors: NCCL on GPUs, MPI
// on the cpu) and starts on the next, so the stages work at the same time. The
// last stage moves the result to the host (distributed_postprocessing) and its
// first rank sends it to rank 0.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "comm/channel.h"
#include "serving/servable.h"

namespace meshrt::serving {

struct EngineOptions {
  // How long rank 0 waits for a batch's result before it declares a worker lost.
  std::chrono::milliseconds result_timeout{120000};
  // The deadline of the servables' collectives (0: MESHRT_COMM_TIMEOUT). Keep it
  // below result_timeout, so a stuck rank reports before rank 0 gives up on it.
  std::chrono::milliseconds comm_timeout{0};
};

class Engine {
 public:
  // Collective: every rank passes the same servables in the same order; each
  // builds its stage of each (loading its shards of the weights). Throws
  // Error(kInvalidArgument) when a servable's rank_size differs from the number
  // of ranks, naming both.
  Engine(std::vector<ServableDefinition> servables, const Device& device, EngineOptions options = {});
  ~Engine();

  int servable_count() const { return static_cast<int>(servables_.size()); }
  const ServableDefinition& servable(int index) const { return servables_.at(static_cast<size_t>(index)); }
  // Index of the servable with this name (and version, unless empty), or -1.
  int find(const std::string& name, const std::string& version = "") const;

  // Rank 0 only, one call at a time: runs batch ([rows, input width], host) of
  // servable `index` on every rank in `micro_batches` micro-batches and returns
  // [rows, output width]. Throws Error(kShape) for a batch of the wrong shape
  // (nothing was sent). Any failure once the batch started (on any rank, or the
  // result not coming within result_timeout) marks the servable failed: its
  // communicators are aborted, so no rank can pair a later batch with this one's
  // leftovers, and this and every later run() throws Error(kUnavailable).
  HostTensor run(int index, const HostTensor& batch, int micro_batches);
  // Why servable `index` failed, or "" while it works.
  std::string failure(int index) const { return failures_.at(static_cast<size_t>(index)); }
  // Rank 0: tries to bring failed servable `index` back without restarting any
  // process. Asks every rank to answer (each within `within`); when all do, the
  // ranks drop the servable's old communicators and build new ones (a new
  // generation: commands of older generations still in flight are dropped),
  // and the servable works again. Returns "" on success, else why not (the
  // ranks that did not answer). A rank that answers and then stops before the
  // rebuild holds the others inside the rebuild (MPI_Comm_dup) until it resumes.
  std::string try_recover(int index, std::chrono::milliseconds within);
  // The generation of servable `index`: 1, then one more per recovery.
  uint64_t generation(int index) const { return generations_.at(static_cast<size_t>(index)); }
  // The other ranks: run what rank 0 sends until stop(). Errors of a batch are
  // reported to rank 0 and serving goes on.
  void serve();
  // Rank 0: tells the other ranks to return from serve().
  void stop();

 private:
  struct Placed;
  std::unique_ptr<Placed> place(const ServableDefinition& s);
  void rebuild(int index, uint64_t generation);
  HostTensor run_local(int index, uint64_t batch_id, const std::vector<int64_t>& micro_rows, const HostTensor& input);
  HostTensor await_result(int index, uint64_t batch_id);
  void mark_failed(int index, const std::string& reason);
  // The other ranks: one command from rank 0 (any stale input is consumed).
  void handle_command(const std::string& command);

  std::vector<ServableDefinition> servables_;
  std::vector<std::unique_ptr<Placed>> placed_;
  std::vector<std::string> failures_;     // per servable, "" while it works
  std::vector<uint64_t> generations_;     // per servable, 1 + recoveries
  uint64_t next_ping_ = 1;
  Device device_;
  EngineOptions options_;
  Channel channel_;
  uint64_t next_batch_ = 1;
  bool stopped_ = false;
};

// Rows of each of `parts` micro-batches of `rows` rows (the first ones larger).
std::vector<int64_t> split_rows(int64_t rows, int parts);

}  // namespace meshrt::serving

// The pipeline engine: runs batches of servables across the job's ranks.
//
// Every servable is placed on rank_size consecutive ranks of the job (its
// placement: the first ones no other servable holds; when none are free, the
// least busy ones, whose servables then take turns, unless share_ranks is
// off) and gets the mesh {stage: stage_size, model: rank_size / stage_size}
// over them; each rank of it builds its own stage on its slice of the mesh.
// Rank 0 (the front end) tells the ranks of a placement what to run over the
// host Channel; the placement's first rank (rank 0 itself when it is in it,
// else it receives the batch from rank 0) broadcasts the batch over the first
// stage's "model" communicator (the input leaves rank 0 once). Servables on
// disjoint placements run at the same time. The
// batch flows as micro-batches: stage s sends each micro-batch's activations
// (one or more tensors: the stage definition's outputs) to
// stage s+1 (device tensors: NCCL on GPUs, MPI on the cpu) and goes on with the
// next one, so the stages work at the same time. The last stage moves the result
// to the host (distributed_postprocessing) and its first rank sends it to rank 0.
//
// Several batches are in flight at once: start() returns once rank 0 has done
// its part of stage 0, so stage 0 works on batch b+1 while the later stages work
// on batch b; results come back on rank 0's result thread, which parks on a
// condition variable while nothing is in flight. Every rank runs the batches in
// the order rank 0 started them.
//
// Servables are added and removed while others serve (Engine::load and
// unload, from rank 0, as commands in the same order as the batches): each has
// an index that stays its own for the life of the engine (an unloaded one
// keeps its definition; find() no longer returns it).
#pragma once

#include <chrono>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <sstream>
#include <string>
#include <thread>
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
  // Chrome trace (chrome://tracing, Perfetto) of every batch on every rank:
  // each rank writes "<trace_file>.<world rank>.json" when the engine ends. "" = off.
  std::string trace_file;
  // When the job has no free ranks left for a servable: true places it on the
  // least busy ones (it then takes turns with the servables there); false
  // refuses it (Error(kInvalidArgument) saying which servables hold the ranks).
  bool share_ranks = true;
  // Every rank: the servables a load request names (Engine::load), in order;
  // each rank calls it with the same request and must get the same list (the
  // same files). Null: the engine refuses loads.
  std::function<std::vector<ServableDefinition>(const std::string& request)> loader;
  // How long Engine::load waits for every rank to have built its part.
  std::chrono::milliseconds load_timeout{std::chrono::minutes(30)};
};

// Where a servable is in its life: find() returns only kServing ones.
enum class ServableState { kLoading, kServing, kClosed, kUnloaded };

// What the engine measured of one batch (rank 0).
struct BatchReport {
  uint64_t batch_id = 0;
  // From start() to the result on rank 0.
  double engine_seconds = 0;
  // The stages' own work: each stage's forward passes (its first rank's clock,
  // every micro-batch), summed over the stages. engine - forward is what the
  // engine itself cost: commands, moving the input and activations, the result.
  double forward_seconds = 0;
};

// One event of the engine's trace: a batch's time in one stage on one rank
// (name "stage"), or on rank 0 its whole time in the engine (name "batch").
struct TraceEvent {
  std::string name;
  std::string model;
  uint64_t batch_id = 0;
  int stage = 0, rank = 0, micro_batches = 0;
  int64_t rows = 0;
  int64_t start_us = 0, end_us = 0;  // microseconds of the system clock (comparable across hosts)
};

// Rank 0: the outcome of a started batch. result is defined when error is null.
using BatchDone = std::function<void(HostTensor result, std::exception_ptr error, const BatchReport& report)>;

class Engine {
 public:
  // Collective: every rank passes the same servables in the same order; each
  // rank of a servable's placement builds its stage of it (loading its shards
  // of the weights). Throws Error(kInvalidArgument) when a servable's
  // rank_size exceeds the number of ranks, naming both, or (share_ranks off)
  // when one does not find free ranks.
  Engine(std::vector<ServableDefinition> servables, const Device& device, EngineOptions options = {});
  ~Engine();

  // Servables ever added (unloaded ones included: indices stay).
  int servable_count() const;
  const Device& device() const { return device_; }
  // The definition of servable `index` (a reference that stays valid while the engine lives).
  const ServableDefinition& servable(int index) const;
  ServableState state(int index) const;
  // The world ranks servable `index` is placed on, in its mesh's order.
  std::vector<int> ranks(int index) const;
  // The same in words: "rank 3", "ranks 0-2".
  std::string placement(int index) const;
  // Index of the serving servable with this name and version, or -1. No
  // version: the latest of that name (the highest number, as Triton serves
  // when a request names none; versions that are not numbers: the greatest
  // name). Of two with the same name and version (a reload), the newer.
  int find(const std::string& name, const std::string& version = "") const;

  // Rank 0: adds the servables options.loader
  // returns for request on every rank (placed after those there now) and
  // returns their indices, in state kLoading (publish() makes find() return
  // them). Throws, with nothing added: the loader's error on rank 0 (nothing
  // was sent), Error(kInvalidArgument) for a servable that does not fit, and
  // Error(kUnavailable) with each rank's reason when a rank could not load
  // or build its part (what the others built is dropped again). Batches of
  // other models start while the stages are built (the ranks of this
  // placement run them after it).

  std::vector<int> load(const std::string& request);
  // Rank 0: whether some rank of servable index's placement is building a
  // servable being loaded (its batches would wait behind it there: the
  // scheduler holds them back, and start() waits until it is done).
  bool busy(int index) const;
  // Rank 0: find() returns these servables from now on.
  void publish(const std::vector<int>& indices);
  // Rank 0: find() no longer returns servable index; batches already started
  // (and start() calls) go on, for the caller to finish before unload().
  void close(int index);
  // Rank 0: drops servable index on every rank (its stages, weights and
  // communicators; its ranks are free again). Throws Error(kInvalidArgument)
  // while a batch of it is in flight.
  void unload(int index);

  // Rank 0 only, one call at a time: runs batch ([rows, ...] host, fitting the
  // servable's input spec) of servable `index` on every rank in `micro_batches`
  // micro-batches and returns [rows, ...] (its output). Throws Error(kShape) for a batch of the wrong shape
  // (nothing was sent). Any failure once the batch started (on any rank, or the
  // result not coming within result_timeout) marks the servable failed: its
  // communicators are aborted, so no rank can pair a later batch with this one's
  // leftovers, and this and every later run() throws Error(kUnavailable).
  HostTensor run(int index, const HostTensor& batch, int micro_batches, BatchReport* report = nullptr,
                 const BatchParams& params = {});
  // Rank 0, from one thread at a time (with run() and try_recover()): starts a
  // batch and returns once rank 0 has done its part of the first stage; the
  // later stages go on while the caller starts the next batch. done is called
  // exactly once: on this thread when the batch fails here or the result is
  // here already (one stage), otherwise on the engine's result thread. Before
  // anything was sent it throws instead, without calling done: Error(kShape)
  // for a batch of the wrong shape, Error(kUnavailable) for a failed model or a
  // stopped engine. A failure once the batch started fails the model (as run()
  // says) and every batch of it still in flight, each with Error(kUnavailable).
  // params go with the batch to every rank's stage (StageModule::forward_tensors).
  // Several threads may start batches: the starts are serialized.
  void start(int index, const HostTensor& batch, int micro_batches, BatchDone done, const BatchParams& params = {});
  // Rank 0: batches of servable `index` started and not yet done.
  int in_flight(int index) const;
  // Rank 0: waits until no batch is in flight.
  void wait_idle() const;
  // This rank's trace so far (empty unless options.trace_file was given).
  std::vector<TraceEvent> trace() const;
  // Why servable `index` failed, or "" while it works.
  std::string failure(int index) const;
  // Rank 0: tries to bring failed servable `index` back without restarting any
  // process. Asks every rank to answer (each within `within`); when all do, the
  // ranks drop the servable's old communicators and build new ones (a new
  // generation: commands of older generations still in flight are dropped),
  // and the servable works again. Returns "" on success, else why not (the
  // ranks that did not answer). A rank that answers and then stops before the
  // rebuild holds the others inside the rebuild (MPI_Comm_dup) until it resumes.
  std::string try_recover(int index, std::chrono::milliseconds within);
  // The generation of servable `index`: 1, then one more per recovery.
  uint64_t generation(int index) const;
  // The other ranks: run what rank 0 sends until stop(). Errors of a batch are
  // reported to rank 0 and serving goes on.
  void serve();
  // Rank 0: tells the other ranks to return from serve() once they have run
  // what was started before.
  void stop();

 private:
  struct Placed;
  struct Pending;
  struct Slot;
  // A stable reference to servable index's slot (Error(kInvalidArgument) for no such index).
  Slot& slot(int index) const;
  // The first rank of a placement for each of defs, after the servables there
  // now (every rank computes the same); throws when one does not fit.
  std::vector<int> plan(const std::vector<ServableDefinition>& defs) const;
  // Collective over all ranks: the servable's communicators over its
  // placement, and (on its ranks) its stage. Null off the placement.
  std::unique_ptr<Placed> place(const ServableDefinition& s, int first_rank);
  // place() in two: the communicators (collective over all ranks; null off
  // the placement), then this rank's stage (local).
  std::unique_ptr<Placed> place_communicators(const ServableDefinition& s, int first_rank);
  void build(const ServableDefinition& s, Placed* placed);
  // A load's slots, on every rank in the same order: every placement's
  // communicators (collective), then this rank's stages (kept in the slots);
  // failed(why) for each one that could not be made.
  std::vector<std::unique_ptr<Placed>> place_slots(const std::vector<int>& indices,
                                                   const std::function<void(const std::string&)>& failed);
  void build_slots(const std::vector<int>& indices, std::vector<std::unique_ptr<Placed>>& placed,
                   const std::function<void(const std::string&)>& failed);
  // Adds a slot (every rank, in the same order).
  int add_slot(ServableDefinition def, int first_rank, ServableState state);
  // Every rank: drops servable index's stage and communicators.
  void drop(int index);
  // The other ranks: a load command ("load <n> (<rank_size> <stage_size> <first rank>)*n <request>").
  void handle_load(std::istringstream& in);
  void rebuild(int index, uint64_t generation);
  // This rank's part of a batch: its stage's forward passes on every
  // micro-batch. Returns the result on the last stage's first rank (which, when
  // it is not rank 0, sends it there); forward_seconds gets this stage's time.
  HostTensor run_local(int index, uint64_t batch_id, const std::vector<int64_t>& micro_rows,
                       const std::vector<int64_t>& input_dims, const BatchParams& params, const HostTensor& input,
                       double* forward_seconds);
  void mark_failed(int index, const std::string& reason);
  // Rank 0: gives the model of a failed batch up, tells the other ranks, and
  // fails every batch of it in flight (done called without the lock).
  void fail_model(int index, const std::string& reason, uint64_t batch_id);
  // Rank 0: adds a stage's forward time to batch id while it is in flight; the
  // second form parses "<batch id> <seconds>" (a stage's message) and returns the id.
  void add_forward_time(uint64_t id, double seconds);
  uint64_t add_forward_time(const std::string& message);
  // Rank 0's result thread: receives results, stage times and error reports.
  void collect();
  // Completes batch id (removing it from pending_) with a result or an error.
  void finish(uint64_t id, HostTensor result, std::exception_ptr error);
  // Rank 0: a command to rank (one sender at a time: a message is two MPI messages).
  void send_command(const std::string& command, int rank);
  // Rank 0: each other rank's answer on tag that begins with "<key> " (the
  // rest of it), or why none came before deadline (or the engine stopping);
  // answered(rank), if given, once each rank's is in (or given up on).
  std::vector<std::string> collect_answers(int tag, const std::string& key,
                                           std::chrono::steady_clock::time_point deadline,
                                           const std::function<void(int rank)>& answered);
  // The placement's first rank (rank 0 not in it): batch id's input from rank 0.
  HostTensor take_input(uint64_t id);
  // The other ranks: one command from rank 0 (any stale input is consumed).
  void handle_command(const std::string& command);
  void record(TraceEvent event);
  void write_trace() const;

  // Every servable ever added, by index (a deque: references stay valid as
  // loads add to it). slots_mutex_ guards its structure (indexing against a
  // load's push_back), mutex_ what a slot says of its failure, generation and
  // placed stage.
  std::deque<Slot> slots_;
  mutable std::shared_mutex slots_mutex_;
  std::mutex start_mutex_;                // one start(), unload(), try_recover() or a load's commands at a time
  std::mutex load_mutex_;                 // one load() at a time (its answers come on one tag); before start_mutex_
  uint64_t next_load_ = 1;                // loads are numbered: an answer names its load
  std::vector<int> building_;             // rank 0, per rank: loads building there (mutex_)
  std::atomic<int> loads_building_{0};    // loads with ranks in building_ (busy() needs no lock at 0)
  // Under mutex_: whether a load builds on one of sl's ranks.
  bool building_on(const Slot& sl) const;
  std::mutex send_mutex_;                 // rank 0: one command being sent at a time
  std::atomic<bool> stopping_{false};     // stop() was called: a load stops waiting for answers
  mutable std::condition_variable building_cv_;  // building_ went down
  // The other ranks: batches rank 0 sent ahead of their run command's turn, by batch id.
  std::map<uint64_t, HostTensor> early_inputs_;
  mutable std::mutex mutex_;              // the slots' failure, generation, placed; pending_, trace_
  mutable std::condition_variable idle_cv_;  // pending_ shrank or grew
  std::map<uint64_t, std::unique_ptr<Pending>> pending_;  // rank 0: batches in flight by id
  int completing_ = 0;  // batches out of pending_ whose done callback has not returned yet
  std::vector<TraceEvent> trace_;
  uint64_t next_ping_ = 1;
  Device device_;
  EngineOptions options_;
  Channel channel_;
  uint64_t next_batch_ = 1;
  bool stopped_ = false;
  bool collector_stop_ = false;
  std::thread collector_;  // rank 0
};

// Rows of each of `parts` micro-batches of `rows` rows (the first ones larger).
std::vector<int64_t> split_rows(int64_t rows, int parts);

}  // namespace meshrt::serving

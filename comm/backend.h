// Internal to comm/: the two communicator backends (MPI for the cpu device, NCCL
// for CUDA devices) behind one small interface, and the shared state of a Work.
// Communicator (communicator.cc) validates every call before it reaches here.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "device/stream.h"
#include "device/tensor.h"

namespace meshrt::detail {

enum class Collective { kAllReduce, kAllGather, kReduceScatter, kBroadcast, kSend, kRecv, kAllToAll, kBarrier };
const char* to_string(Collective kind);

// The pieces of a collective that carries unequal pieces per rank (the
// counts overloads of Communicator), in elements, in rank order, each piece at
// the running sum of those before it. Made once per operation by Communicator
// (validated there) and shared, read-only, by the CommOp and its description.
//   all_gather:     recv: the pieces of the output (counts; send empty)
//   reduce_scatter: send: the pieces of the input (counts; recv empty)
//   all_to_all:     send: this rank's send_counts, recv: its recv_counts
struct Pieces {
  std::vector<int64_t> send, send_offsets, recv, recv_offsets;
  int64_t send_total = 0, recv_total = 0;  // sum(send), sum(recv)
};

// Whether the byte ranges [a, a + a_bytes) and [b, b + b_bytes) overlap (an
// empty range overlaps nothing).
inline bool overlaps(const void* a, size_t a_bytes, const void* b, size_t b_bytes) {
  auto x = reinterpret_cast<uintptr_t>(a), y = reinterpret_cast<uintptr_t>(b);
  return a_bytes > 0 && b_bytes > 0 && x < y + b_bytes && y < x + a_bytes;
}

// One operation with raw device pointers. count is in elements:
//   all_reduce, broadcast, send, recv: the whole buffer
//   all_gather: one rank's part (send size); reduce_scatter: one rank's part (recv size)
//   all_to_all: the chunk exchanged with one peer (0 with pieces)
// pieces is null for the equal-chunk collectives (the fast path: nothing
// allocated, nothing copied but a null pointer), set for the counts overloads.
struct CommOp {
  // Member by member (not an aggregate): a braced aggregate is cleared as a
  // whole first (a rep stos over its 120 bytes on every operation).
  CommOp() {}
  CommOp(Collective kind, const void* send, void* recv, size_t count, DType dtype, ReduceOp op, int peer,
         std::shared_ptr<const Pieces> pieces = nullptr)
      : kind(kind), send(send), recv(recv), count(count), dtype(dtype), op(op), peer(peer), pieces(std::move(pieces)) {}

  Collective kind = Collective::kBarrier;
  const void* send = nullptr;
  void* recv = nullptr;
  size_t count = 0;
  DType dtype = DType::kF32;
  ReduceOp op = ReduceOp::kSum;
  int peer = 0;  // peer of send/recv, root of broadcast
  // The memory of the tensors involved (unused entries empty): a backend that
  // runs the operation later, or on a stream of its own, keeps them until it is
  // done and records that stream on them (Storage::record_stream), so the
  // allocator does not hand the blocks out again while the operation runs.
  // Filled by keep_memory() from tensors, only on the paths that need it: a
  // small operation that completes on the calling thread pays no reference
  // counting for them.
  mutable std::array<std::shared_ptr<Storage>, 2> storages;
  std::shared_ptr<const Pieces> pieces;
  // Whether later work on the device's default stream waits for the operation
  // (the default), or not (Communicator::deferred(): whoever reads the result
  // orders that with Work::block).
  bool order_default_stream = true;
  // The operation's tensors, valid only while CommBackend::start runs.
  mutable std::array<const DeviceTensor*, 2> tensors{};
  // Copies the tensors' storages into storages (once) and forgets the tensors:
  // call it, inside start(), before the operation outlives start().
  void keep_memory() const {
    for (size_t i = 0; i < tensors.size(); ++i) {
      if (!tensors[i]) continue;
      if (i == 0 || !tensors[0] || tensors[i]->storage() != tensors[0]->storage()) storages[i] = tensors[i]->storage();
      tensors[i] = nullptr;
    }
  }
};

// What an operation is, in plain fields: issuing one formats nothing, and its
// description ("all_reduce(f32[1024] on cpu, sum) on mpi communicator 'world'
// (rank 1 of 4)") is made only when asked for (an error, a deadline,
// Work::description()).
struct OpDescription {
  static constexpr int kMaxDims = 8;
  Collective kind = Collective::kBarrier;
  bool has_tensor = false;  // the tensor named in the description (the input)
  DType dtype = DType::kF32;
  Device device;
  int ndim = 0;
  int64_t dims[kMaxDims] = {};
  std::string shape_text;  // only when ndim > kMaxDims (rare): "[2, 2, ...]"
  bool has_op = false;
  ReduceOp op = ReduceOp::kSum;
  int peer = -1;  // root of broadcast, peer of send and recv; -1: none
  // The counts of an unequal-piece collective, named as "counts [2, 2, 1, 0]"
  // (all_to_all: "send [..], recv [..]"); null otherwise.
  std::shared_ptr<const Pieces> pieces;
};

class CommBackend;

class WorkState {
 public:
  // A fixed description (split, tests).
  WorkState(std::string description, std::weak_ptr<CommBackend> backend);
  // An operation of backend, described on demand.
  WorkState(const OpDescription& op, const std::shared_ptr<CommBackend>& backend);

  // Completion pushed by a backend thread (MPI) ... The first outcome stays:
  // once failed (past its deadline, say), a later complete() changes nothing.
  void complete();
  void fail(std::exception_ptr error);
  // complete() while no other thread can see this state yet (its operation ran
  // to the end inside CommBackend::start): nobody to wake, nothing to lock.
  void complete_unshared() { done_.store(true, std::memory_order_release); }
  // ... or pulled by polling (NCCL): poller returns true when done, throws on error.
  void set_poller(std::function<bool()> poller);

  // Keeps a tensor's memory alive until the work is done.
  void stash(std::shared_ptr<Storage> storage);
  // The point of the communicator's stream where the operation is done (set
  // before start returns when the operation did not complete inside it).
  void set_done_event(const Event& done) {
    done_event_.emplace(done);
    holds_.store(true, std::memory_order_relaxed);
  }
  // Makes stream wait for the operation (nothing when it completed in start).
  void block(const Stream& stream) const {
    if (done_event_) done_event_->block(stream);
  }
  bool is_completed();
  void wait(std::chrono::milliseconds timeout);
  // The operation's number on its communicator (1, 2, ...; 0: not numbered)
  // and kind ("all_reduce"), for the deadline message.
  void set_sequence(uint64_t sequence, const char* op) {
    sequence_ = sequence;
    op_ = op;
  }
  std::chrono::milliseconds default_timeout() const;
  // Formatted on each call (see OpDescription).
  std::string description() const;

  // A state for op on backend: this thread's spare one (a state that nothing
  // holds any more: a Work dropped after its wait, as a loop of small
  // collectives does) when it belongs to the same backend, else a new one.
  // Saves an allocation and a free per operation, and the reference counting:
  // the shared_ptr's control block is reused too, and its last owner frees
  // nothing (work.cc). The reused state is reset as a new one would be.
  // Its description is the caller's to write (op_description()): a reused
  // state holds its last operation's.
  static std::shared_ptr<WorkState> make(const std::shared_ptr<CommBackend>& backend);
  // The operation's description (see make; its pieces go through set_pieces);
  // read by description().
  OpDescription& op_description() { return op_description_; }
  void set_pieces(std::shared_ptr<const Pieces> pieces) {
    op_description_.pieces = std::move(pieces);
    holds_.store(true, std::memory_order_relaxed);
  }

 private:
  void release_locked();
  // Wakes the waiters of done_ (shared condition variables: none per state).
  void notify_done();
  // First what every operation touches (a loop of small collectives reuses
  // one state: make), then the rest.
  // Set after error_, never cleared (but by make() on reuse): read without the mutex.
  std::atomic<bool> done_{false};
  // Whether error_, poller_, stash_, done_event_ or the description's pieces
  // may be set: make()'s recycling empties them only then. (Atomic: start()'s
  // caller and the backend's thread may both set it.)
  std::atomic<bool> holds_{false};
  std::atomic<int> waiters_{0};  // threads asleep (or about to be) in wait()
  uint64_t sequence_ = 0;
  const char* op_ = "";
  const CommBackend* backend_identity_ = nullptr;  // backend_'s, for make()'s reuse
  std::weak_ptr<CommBackend> backend_;
  OpDescription op_description_;
  std::shared_ptr<const std::string> backend_description_;  // CommBackend::description()
  std::string text_;  // a fixed description, or empty
  std::mutex mutex_;  // poller_, stash_, error_ until done_
  std::exception_ptr error_;
  std::function<bool()> poller_;
  std::vector<std::shared_ptr<Storage>> stash_;
  std::optional<Event> done_event_;  // set once by start(), read only by the Work's holder
};

class CommBackend {
 public:
  CommBackend(std::string name, int rank, int size);
  virtual ~CommBackend() = default;
  virtual const char* kind() const = 0;  // "mpi", "nccl"
  // Starts op; completion is reported through state, which is op's own: no
  // other thread sees it before start returns.
  virtual void start(const CommOp& op, const std::shared_ptr<WorkState>& state) = 0;
  virtual std::shared_ptr<CommBackend> split(int color, int key, const std::string& name) = 0;
  // Marks the backend aborted and releases what waits on it. Idempotent.
  virtual void abort(const std::string& reason) = 0;
  // An operation ran past its deadline (or failed): aborts this backend, and
  // whatever else the stuck operation holds up (NCCL: every communicator of the
  // device, since a stuck collective stalls the device's compute stream and
  // with it their work).
  virtual void abort_after_failure(const std::string& reason) { abort(reason); }
  // Why operation #sequence (op) has not completed, naming the late ranks in
  // world numbering, or "" when the backend cannot tell. May ask the peers
  // (a short sub-deadline).
  virtual std::string explain_deadline(const char* /*op*/, uint64_t /*sequence*/) { return ""; }

  const std::string& name() const { return name_; }
  int rank() const { return rank_; }
  int size() const { return size_; }
  bool aborted() const { return aborted_.load(); }
  std::string abort_reason() const;
  std::chrono::milliseconds timeout() const { return std::chrono::milliseconds(timeout_ms_.load()); }
  void set_timeout(std::chrono::milliseconds t) { timeout_ms_.store(t.count()); }
  // See Communicator::set_abortable_collectives.
  bool abortable_collectives() const { return abortable_.load(); }
  void set_abortable_collectives(bool on) { abortable_.store(on); }
  // "mpi communicator 'world' (rank 1 of 4)"
  std::string describe() const;
  // The same text, made once and shared by the WorkStates that name it.
  const std::shared_ptr<const std::string>& description() const;

 protected:
  // Sets the aborted flag and reason; false if it was already set.
  bool mark_aborted(const std::string& reason);
  // Throws Error(kUnavailable) if aborted.
  void check_not_aborted(const char* op) const;

 private:
  std::string name_;
  int rank_, size_;
  std::atomic<bool> aborted_{false};
  mutable std::mutex reason_mutex_;
  std::string abort_reason_;
  std::atomic<long long> timeout_ms_;
  std::atomic<bool> abortable_{false};
  mutable std::atomic<bool> described_{false};  // description_ is set (with reason_mutex_)
  mutable std::shared_ptr<const std::string> description_;
};

// A duplicate of MPI_COMM_WORLD on the cpu device.
std::shared_ptr<CommBackend> make_mpi_world(const std::string& name);
#if MESHRT_WITH_CUDA
// An NCCL communicator over all ranks of the World on device (CUDA builds only).
std::shared_ptr<CommBackend> make_nccl_world(const Device& device, const std::string& name);
#endif

}  // namespace meshrt::detail

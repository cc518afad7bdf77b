// Internal to comm/: the two communicator backends (MPI for the cpu device, NCCL
// for CUDA devices) behind one small interface, and the shared state of a Work.
// Communicator (communicator.cc) validates every call before it reaches here.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "device/tensor.h"

namespace meshrt::detail {

enum class Collective { kAllReduce, kAllGather, kReduceScatter, kBroadcast, kSend, kRecv, kAllToAll, kBarrier };
const char* to_string(Collective kind);

// One operation with raw device pointers. count is in elements:
//   all_reduce, broadcast, send, recv: the whole buffer
//   all_gather: one rank's part (send size); reduce_scatter: one rank's part (recv size)
//   all_to_all: the chunk exchanged with one peer
struct CommOp {
  Collective kind = Collective::kBarrier;
  const void* send = nullptr;
  void* recv = nullptr;
  size_t count = 0;
  DType dtype = DType::kF32;
  ReduceOp op = ReduceOp::kSum;
  int peer = 0;  // peer of send/recv, root of broadcast
  // The memory of the tensors involved: a backend that runs the operation on a
  // stream of its own records that stream on it (Storage::record_stream), so the
  // allocator does not hand the blocks out again while the operation runs.
  std::vector<std::shared_ptr<Storage>> storages;
};

class CommBackend;

class WorkState {
 public:
  WorkState(std::string description, std::weak_ptr<CommBackend> backend);

  // Completion pushed by a backend thread (MPI) ... The first outcome stays:
  // once failed (past its deadline, say), a later complete() changes nothing.
  void complete();
  void fail(std::exception_ptr error);
  // ... or pulled by polling (NCCL): poller returns true when done, throws on error.
  void set_poller(std::function<bool()> poller);

  // Keeps a tensor's memory alive until the work is done.
  void stash(std::shared_ptr<Storage> storage);
  bool is_completed();
  void wait(std::chrono::milliseconds timeout);
  // The operation's number on its communicator (1, 2, ...; 0: not numbered)
  // and kind ("all_reduce"), for the deadline message.
  void set_sequence(uint64_t sequence, const char* op) {
    sequence_ = sequence;
    op_ = op;
  }
  std::chrono::milliseconds default_timeout() const;
  const std::string& description() const { return description_; }

 private:
  void release_locked();
  std::string description_;
  std::weak_ptr<CommBackend> backend_;
  std::mutex mutex_;
  std::condition_variable done_cv_;
  bool done_ = false;
  std::exception_ptr error_;
  std::function<bool()> poller_;
  std::vector<std::shared_ptr<Storage>> stash_;
  uint64_t sequence_ = 0;
  const char* op_ = "";
};

class CommBackend {
 public:
  CommBackend(std::string name, int rank, int size);
  virtual ~CommBackend() = default;
  virtual const char* kind() const = 0;  // "mpi", "nccl"
  // Starts op; completion is reported through state.
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
};

// A duplicate of MPI_COMM_WORLD on the cpu device.
std::shared_ptr<CommBackend> make_mpi_world(const std::string& name);
#if MESHRT_WITH_CUDA
// An NCCL communicator over all ranks of the World on device (CUDA builds only).
std::shared_ptr<CommBackend> make_nccl_world(const Device& device, const std::string& name);
#endif

}  // namespace meshrt::detail

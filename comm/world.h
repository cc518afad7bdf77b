// The MPI world: one per process. World::init() starts MPI with thread support
// (MPI_THREAD_MULTIPLE, so communicator threads and the caller may all call MPI)
// and sets MPI_ERRORS_RETURN, so a failed MPI call becomes a meshrt::Error
// instead of aborting the job. A program started without mpirun/srun runs as a
// world of one (MPI singleton start-up).
#pragma once

#include <chrono>
#include <string>
#include <string_view>
#include <vector>

#include "device/device.h"

namespace meshrt {

class World {
 public:
  // Starts MPI once and returns the world; later calls return the same world.
  // argc/argv may be null. MPI is finalised at process exit (see finalize()).
  static World& init(int* argc = nullptr, char*** argv = nullptr);
  // The world; starts it without arguments if init() was not called.
  static World& get() { return init(); }

  int rank() const { return rank_; }
  int size() const { return size_; }
  // Rank and number of ranks on this node (MPI_COMM_TYPE_SHARED).
  int local_rank() const { return local_rank_; }
  int local_size() const { return local_size_; }
  // Index of this node among the nodes of the job (0 .. node_count-1, ordered by
  // their lowest rank), and the number of nodes.
  int node_index() const { return node_index_; }
  int node_count() const { return node_count_; }
  const std::string& host_name() const { return host_name_; }
  // The host of a world rank (gathered at start-up), "?" for a rank out of range.
  const std::string& host_of(int world_rank) const;
  // "world rank 2 (host h1)"
  std::string describe_rank(int world_rank) const;
  // The ranks among `ranks` (other than this one) whose meshrt service thread does
  // not answer within `within`: stopped (SIGSTOP), lost, or hung in MPI itself.
  // A rank busy in its own work still answers.
  std::vector<int> unanswering(const std::vector<int>& ranks, std::chrono::milliseconds within) const;
  // The MPI thread level granted ("MPI_THREAD_MULTIPLE", ...).
  const char* thread_level() const;

  // The device this rank uses when nothing is asked: MESHRT_DEVICE if set, else
  // one GPU per local rank when the node has GPUs, else the cpu (choose_device).
  Device default_device() const;
  // The device for requested ("cpu", "cuda", "cuda:N", as from --device; empty:
  // default_device()). Throws Error(kInvalidArgument) when the node cannot give
  // it (see choose_device).
  Device device(std::string_view requested) const;

  // Finalises MPI. Runs by itself at exit; call it earlier to finalise at a known
  // point. Bounded: the ranks first check in with rank 0 (host messages, polled);
  // if a rank has not checked in within finalize_timeout() (stopped, stuck in
  // its work, lost), the job is aborted (MPI_Abort) with a message naming the
  // ranks that did not answer, instead of every other rank waiting in
  // MPI_Finalize forever. If this rank still has an operation stuck inside a
  // blocking MPI call (a collective abandoned after its deadline), finalising
  // would hang too: the job is aborted, saying so.
  static void finalize();
  // How long finalize() waits for every rank to check in: MESHRT_FINALIZE_TIMEOUT_MS
  // if set, else 10 s.
  static std::chrono::milliseconds finalize_timeout();
  static void set_finalize_timeout(std::chrono::milliseconds timeout);
  // Ends the whole job at once with the message printed on this rank.
  [[noreturn]] static void abort(int exit_code, const std::string& reason);

  // Bracket a blocking MPI call that a deadline cannot cancel (a collective):
  // finalize() aborts instead of finalising while one is inside.
  static void enter_blocking_call();
  static void leave_blocking_call();
  static int blocking_calls();
  // Kept for compatibility: the same as entering a blocking call that never leaves.
  static void mark_stuck_operation();

 private:
  World() = default;
  int rank_ = 0, size_ = 1, local_rank_ = 0, local_size_ = 1, node_index_ = 0, node_count_ = 1;
  int thread_level_ = 0;
  std::string host_name_;
  std::vector<std::string> hosts_;  // per world rank
};

// How a rank picks its device, given what is requested ("" for nothing, "cpu",
// "cuda", "cuda:N"), its local rank among local_size ranks on the node, and the
// GPUs the node has (gpus; unavailable: why there are none):
//   "cpu"               the cpu device
//   "cuda:N"            that GPU; an error if the node has no GPU N
//   "cuda", or nothing  cuda:<local rank>, one GPU per local rank (NCCL refuses two
//   with GPUs present   ranks on one GPU): more local ranks than GPUs is an error
//                       naming both counts and how to choose the cpu instead
//   nothing, no GPUs    the cpu device
// Errors are Error(kInvalidArgument).
Device choose_device(std::string_view requested, int local_rank, int local_size, int gpus,
                     std::string_view unavailable);

}  // namespace meshrt

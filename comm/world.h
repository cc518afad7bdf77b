// The MPI world: one per process. World::init() starts MPI with thread support
// (MPI_THREAD_MULTIPLE, so communicator threads and the caller may all call MPI)
// and sets MPI_ERRORS_RETURN, so a failed MPI call becomes a meshrt::Error
// instead of aborting the job. A program started without mpirun/srun runs as a
// world of one (MPI singleton start-up).
#pragma once

#include <string>
#include <string_view>

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
  // point. If a communicator was aborted with an operation still stuck inside MPI,
  // finalising could hang, so the job is aborted (MPI_Abort) instead.
  static void finalize();
  // Ends the whole job at once with the message printed on this rank.
  [[noreturn]] static void abort(int exit_code, const std::string& reason);

  // Set by a communicator whose operation could not be cancelled after a deadline.
  static void mark_stuck_operation();

 private:
  World() = default;
  int rank_ = 0, size_ = 1, local_rank_ = 0, local_size_ = 1, node_index_ = 0, node_count_ = 1;
  int thread_level_ = 0;
  std::string host_name_;
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

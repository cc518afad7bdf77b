// Communicators carry collectives over DeviceTensors: NCCL for CUDA devices
// (non-blocking communicators, so they can be aborted), MPI for the cpu device.
// Every operation returns a Work. It runs on the communicator's own stream (a
// CUDA stream for NCCL, a cpu stream for MPI; on the cpu a small operation with
// nothing ahead of it runs at once on the calling thread) after the work queued before it
// on the device's default stream, and later work on that stream waits for it
// (except after a send, below). Operations on one communicator run in the order
// they were issued, one after another, as on an NCCL stream: a send finishes only once the peer's matching recv runs, so order
// point-to-point calls so they match (for an exchange between two ranks, one
// sends first and the other receives first; for a ring, even ranks send first).
//
// Tensor rules (as in NCCL): all ranks pass the same dtype and element counts
// (but for the pieces of the counts overloads, below); tensors are contiguous
// on the communicator's device. Chunked operations split
// tensors into size() equal chunks in rank order:
//   all_gather:     out.numel() == size() * in.numel()
//   reduce_scatter: in.numel() == size() * out.numel()
//   all_to_all:     in.numel() == out.numel(), divisible by size(); chunk i goes to rank i
// Unequal pieces (torch.chunk shard sizes: 5 elements over 4 ranks are 2, 2,
// 1, 0): the overloads with counts (in elements, one per rank, zeros allowed)
// place piece r at the sum of the counts before it, in rank order:
//   all_gather:     in.numel() == counts[rank()], out.numel() == sum(counts)
//   reduce_scatter: in.numel() == sum(counts), out.numel() == counts[rank()]
//   all_to_all:     in.numel() == sum(send_counts), out.numel() == sum(recv_counts)
// Every rank passes the same counts to all_gather and reduce_scatter (equal
// ones take the equal-chunk call's path); all_to_all's counts differ per rank,
// rank r's send_counts[q] being rank q's recv_counts[r]. A rank cannot see its
// peers' counts: a mismatch is the caller's error, as mismatched sizes are
// (MPI may report a truncation; NCCL may wait until the deadline aborts it).
// In place: all_reduce(t); all_gather with in = out's chunk (piece) at rank();
// reduce_scatter with out = in's chunk (piece) at rank(); all_to_all with
// in = out (the input is staged in a copy); broadcast is always in place.
//
// A tensor being sent must not be written before the send's Work is done (on
// GPUs the send runs on the communicator's stream while later kernels go on,
// so that a pipeline send overlaps the next micro-batch); results of the other
// operations are ordered before later work on the device's default stream.
//
// Supported dtypes: all of them. Reductions over bool use logical or for sum and
// max, logical and for prod and min. f16/bf16 reduce in f32 on MPI.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "comm/work.h"
#include "device/tensor.h"

namespace meshrt {

// kAvg is the mean over the ranks: a pending reduction of a sharded value
// (sharding/layout.h) that communicators do not run themselves (they refuse it:
// the sharding layer sums and divides).
enum class ReduceOp { kSum, kMax, kMin, kProd, kAvg };
const char* to_string(ReduceOp op);
// "sum", "max", "min", "prod", "avg"; throws Error(kInvalidArgument) otherwise.
ReduceOp parse_reduce_op(const std::string& name);

namespace detail {
class CommBackend;
}

class Communicator {
 public:
  // An invalid communicator (valid() is false), e.g. the result of split() with kNoColor.
  Communicator() = default;

  // A communicator over all ranks of the World for device (collective: every rank
  // calls it). name appears in error messages.
  static Communicator world(const Device& device, const std::string& name = "world");

  // Collective over this communicator: ranks with the same color form a new
  // communicator, ordered by key (then old rank). kNoColor: this rank joins none
  // and gets an invalid communicator.
  static constexpr int kNoColor = -1;
  Communicator split(int color, int key, const std::string& name = "") const;

  bool valid() const { return backend_ != nullptr; }
  int rank() const;
  int size() const;
  const Device& device() const { return device_; }
  const std::string& name() const;
  // "mpi" or "nccl".
  const char* backend_name() const;
  // The deadline of wait() without arguments and of barrier().
  std::chrono::milliseconds timeout() const;
  void set_timeout(std::chrono::milliseconds timeout);
  // MPI backend: run collectives as non-blocking MPI calls (MPI_Iallreduce, ...)
  // polled until done, so an abort or a deadline ends their wait and no thread is
  // left inside MPI (a blocking collective whose peer never comes cannot be taken
  // back: its thread stays, and the process must abort at exit). An abandoned
  // operation keeps its buffers for the life of the process. Off by default:
  // OpenMPI runs other (libnbc) algorithms for non-blocking collectives, slower
  // for large messages. A server turns it on. Communicators split from this one
  // inherit it. NCCL communicators are always abortable (ncclCommAbort).
  // Without it, a small collective (up to 64 KiB) with nothing ahead of it
  // runs on the calling thread, which then waits inside MPI for its peers,
  // with no deadline; with it, the calling thread polls such an operation for
  // a moment and leaves the rest to the communicator's stream.
  void set_abortable_collectives(bool on);

  // The same communicator, but later work on the device's default stream does
  // not wait for its operations: whoever reads a result makes its stream wait
  // with Work::block(stream) first (the sharding layer does it per tensor:
  // DTensor::local()), so that work that does not read it, an independent
  // GEMM say, overlaps the collective. Operations still wait for the work
  // queued before them on the default stream (their inputs). Work that
  // WRITES an operation's input or output must be ordered the same way
  // (Work::block): nothing else orders it (the sharding layer never writes a
  // value in place).
  Communicator deferred() const;

  Work all_reduce(const DeviceTensor& tensor, ReduceOp op = ReduceOp::kSum) const;
  Work all_reduce(const DeviceTensor& in, const DeviceTensor& out,
                  ReduceOp op = ReduceOp::kSum) const;
  Work all_gather(const DeviceTensor& in, const DeviceTensor& out) const;
  Work reduce_scatter(const DeviceTensor& in, const DeviceTensor& out,
                      ReduceOp op = ReduceOp::kSum) const;
  Work broadcast(const DeviceTensor& tensor, int root) const;
  Work send(const DeviceTensor& tensor, int peer) const;
  Work recv(const DeviceTensor& tensor, int peer) const;
  Work all_to_all(const DeviceTensor& in, const DeviceTensor& out) const;
  // Unequal pieces (counts has size() entries, in elements, zeros allowed; every rank passes the same counts):
  //   all_gather:     in holds counts[rank()] elements; out holds sum(counts), rank r's piece at offset sum(counts[0..r)).
  //   reduce_scatter: in holds sum(counts) elements, piece r at offset sum(counts[0..r)); out (counts[rank()] elements) gets piece rank() reduced over all ranks.
  //   all_to_all:     in holds sum(send_counts): send_counts[r] elements for rank r, consecutive in rank order;
  //                   out holds sum(recv_counts): recv_counts[r] elements from rank r, consecutive in rank order.
  //                   (send_counts differ per rank; rank r's send_counts[q] must equal rank q's recv_counts[r].)
  // MPI: MPI_Allgatherv, MPI_Reduce_scatter, MPI_Alltoallv (their I-forms
  // with abortable collectives); counts and offsets beyond 2^31 - 1 elements
  // fail the Work. NCCL: one ncclBroadcast / ncclReduce per root, or
  // ncclSend/ncclRecv pairs, in one group.
  Work all_gather(const DeviceTensor& in, const DeviceTensor& out, const std::vector<int64_t>& counts) const;
  Work reduce_scatter(const DeviceTensor& in, const DeviceTensor& out, const std::vector<int64_t>& counts,
                      ReduceOp op = ReduceOp::kSum) const;
  Work all_to_all(const DeviceTensor& in, const DeviceTensor& out, const std::vector<int64_t>& send_counts,
                  const std::vector<int64_t>& recv_counts) const;
  // Waits (up to timeout()) until every rank has reached the barrier.
  void barrier() const;

  // Aborts the communicator: pending and later operations fail at once with
  // reason. NCCL: ncclCommAbort. Safe to call from any thread.
  void abort(const std::string& reason) const;
  // True after abort() or after a failed or timed-out operation.
  bool aborted() const;
  // Why it was aborted ("" if it was not).
  std::string abort_reason() const;

 private:
  Communicator(std::shared_ptr<detail::CommBackend> backend, Device device)
      : backend_(std::move(backend)), device_(device) {}
  void check_valid(const char* op) const;
  void check_reduce_op(const char* op, ReduceOp reduce) const;
  void check_tensor(const char* op, const DeviceTensor& t, const char* what) const;

  std::shared_ptr<detail::CommBackend> backend_;
  Device device_;
  bool deferred_ = false;  // deferred(): operations do not order the default stream
};

// The default communication deadline: MESHRT_COMM_TIMEOUT seconds, 300 if unset.
std::chrono::milliseconds default_comm_timeout();

}  // namespace meshrt

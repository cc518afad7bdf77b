// Handles for asynchronous communication (after c10d's Work): is_completed()
// polls, wait() blocks until done or until a deadline, and rethrows what failed.
// A Work keeps the tensors of its operation alive until it is done.
#pragma once

#include <chrono>
#include <memory>
#include <string>

namespace meshrt {

class Stream;
namespace detail {
class WorkState;
}

class Work {
 public:
  // An already-completed work.
  Work() = default;
  explicit Work(std::shared_ptr<detail::WorkState> state) : state_(std::move(state)) {}

  // True when the operation finished; throws its error if it failed.
  bool is_completed() const;
  // Waits up to the communicator's timeout (MESHRT_COMM_TIMEOUT, 300 s by default).
  void wait() const;
  // Waits up to timeout. On success returns; on failure rethrows the operation's
  // Error; past the deadline aborts the communicator (so no later operation can
  // hang on it) and throws Error(kDeadlineExceeded) naming the operation.
  void wait(std::chrono::milliseconds timeout) const;
  // Makes stream (a stream of the operation's device) wait, on the device, for
  // the operation to finish; the host does not wait. What a deferred
  // communicator's caller does before work on stream reads the result
  // (Communicator::deferred). Nothing when the operation is already done.
  void block(const Stream& stream) const;
  // "all_reduce(f32[1024] on cpu, sum) on mpi communicator 'world' (rank 1 of 4)"
  std::string description() const;

 private:
  std::shared_ptr<detail::WorkState> state_;
};

}  // namespace meshrt

// Internal to comm/: how far each rank got on each communicator, and the
// service that tells the other ranks.
//
// Every MPI communicator publishes how many operations it issued, started (the
// MPI call entered) and completed. Each rank runs a small service thread that
// answers queries from the other ranks over a control communicator (a duplicate
// of MPI_COMM_WORLD). When an operation passes its deadline, the waiting rank
// asks the communicator's other members, each within a short sub-deadline, and
// names in world numbering (with host names) the ranks that are behind or did
// not answer, instead of only saying that it, the reporting rank, timed out.
#pragma once

#include <mpi.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace meshrt::detail {

// meshrt's own duplicate of MPI_COMM_WORLD (world.cc): the exit check-in and
// the progress queries.
MPI_Comm control_comm();

// A communicator's "inside a blocking MPI call" flag (world.cc): while set, it
// counts in World::blocking_calls() as a call entered with
// World::enter_blocking_call, without an atomic increment and decrement on
// every call (only one call at a time per communicator: whoever holds its
// stream makes it). World shares the flag: a communicator destroyed with a
// call inside leaves it watched, counted until the call returns (if ever).
void watch_blocking_flag(std::shared_ptr<const std::atomic<bool>> flag);
void unwatch_blocking_flag(const std::atomic<bool>* flag);

// Polls requests (MPI_Test, short sleeps) until all are done or the deadline
// passes. Per request: whether it completed (a request whose test failed, a
// lost peer, counts as done and gets an empty status: MPI_ERROR set); statuses,
// when given, receives their statuses.
std::vector<bool> test_until(std::vector<MPI_Request>& requests, std::chrono::steady_clock::time_point deadline,
                             std::vector<MPI_Status>* statuses = nullptr);

struct Progress {
  std::string key;               // the same on every member (see MpiBackend)
  std::string name;              // the communicator's name
  std::vector<int> world_ranks;  // world rank of each member, by communicator rank
  std::atomic<uint64_t> issued{0}, started{0}, completed{0};
  std::atomic<bool> aborted{false};
};

// A progress record the service answers for while it lives.
std::shared_ptr<Progress> publish_progress(std::string key, std::string name, std::vector<int> world_ranks);

// What a peer said about a communicator.
struct PeerProgress {
  int world_rank = -1;
  bool answered = false;  // within the sub-deadline
  bool known = false;     // the peer has this communicator
  uint64_t started = 0, completed = 0;
  bool aborted = false;
};
// Asks every other member of p, all within `within`.
std::vector<PeerProgress> query_peers(const Progress& p, std::chrono::milliseconds within);

// The reason operation #sequence (op, e.g. "all_reduce") of p did not complete:
// the late members, or that this rank fell behind. Asks the peers (above).
std::string explain_deadline(const Progress& p, const char* op, uint64_t sequence);

// The service thread: started by World::init, stopped before MPI_Finalize.
void start_progress_service();
void stop_progress_service();

}  // namespace meshrt::detail

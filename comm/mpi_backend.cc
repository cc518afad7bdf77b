// The MPI backend: collectives for the cpu device.
//
// Each communicator owns a duplicate MPI communicator and a cpu stream of its
// own (device/stream.h) that runs its operations in issue order, as NCCL runs
// them on a communicator's stream: an operation first waits for the work queued
// on the cpu default stream before it (that produced its inputs), and work
// queued on the default stream after it waits for the operation (except after
// a send: communicator.h). Queued collectives call the blocking MPI functions
// (MPI_Allreduce, ...), so meshrt gets the same algorithms, and the same speed,
// as a program calling MPI directly (OpenMPI's non-blocking collectives use
// different algorithms, slower for large messages). Sends and receives are
// posted non-blocking and polled, so a receive that never matches can be
// cancelled when the communicator is aborted. A blocking collective cannot be
// cancelled: if one is stuck past its deadline the World aborts the job at exit
// instead of hanging in MPI_Finalize.
//
// Small operations (up to 64 KiB) pay no thread hop: when nothing is ahead of
// one (the compute stream idle, the communicator's stream idle), the calling
// thread runs it. A non-blocking one (abortable collectives, sends, receives)
// is polled there for a moment, and one a peer holds up is left to the stream,
// which polls it to the end with the same deadline and abort handling as a
// queued one (start_inline).
//
// Every communicator numbers its operations and publishes how many it issued,
// started and completed (comm/progress.h), under a key that is the same on
// every member: "w<n>" for the n-th duplicate of the world, "<parent>/<k>c<color>"
// for the k-th split of a parent. A deadline error names the late ranks.
#include <mpi.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>

#include "comm/backend.h"
#include "comm/mpi_check.h"
#include "device/poll.h"
#include "comm/mpi_types.h"
#include "comm/progress.h"
#include "comm/world.h"

namespace meshrt::detail {

namespace {

constexpr int kTag = 7;
// How long an aborted communicator's queued operations get to end.
constexpr std::chrono::milliseconds kAbortGrace{2000};
// Operations whose largest buffer is at most this run at once on the calling
// thread when nothing is ahead of them (MpiBackend::start_inline).
constexpr size_t kInlineBytes = size_t{64} << 10;
// How long the calling thread polls such an operation before it leaves it to
// the communicator's stream: peers that are there complete a small collective
// within microseconds; a send (done only once the peer receives it, past the
// eager limit) must not hold up the sender's next micro-batch.
constexpr std::chrono::microseconds kInlinePoll{100};
constexpr std::chrono::microseconds kInlineSendPoll{10};
constexpr unsigned kTestsPerClock = 16;

// Element-wise reductions for f16 and bf16, computed in float.
template <class T, class Op>
void reduce_16bit(void* in, void* inout, int* length, MPI_Datatype*) {
  const T* a = static_cast<const T*>(in);
  T* b = static_cast<T*>(inout);
  Op op;
  for (int i = 0; i < *length; ++i) b[i] = T(op(static_cast<float>(a[i]), static_cast<float>(b[i])));
}
struct Sum { float operator()(float a, float b) const { return a + b; } };
struct Prod { float operator()(float a, float b) const { return a * b; } };
struct Max { float operator()(float a, float b) const { return a > b ? a : b; } };
struct Min { float operator()(float a, float b) const { return a < b ? a : b; } };

struct UserOps {
  MPI_Op half[4];
  MPI_Op bfloat[4];
};

const UserOps& user_ops() {
  static const UserOps ops = [] {
    UserOps o{};
    MESHRT_MPI_CHECK(MPI_Op_create(&reduce_16bit<Half, Sum>, 1, &o.half[0]));
    MESHRT_MPI_CHECK(MPI_Op_create(&reduce_16bit<Half, Max>, 1, &o.half[1]));
    MESHRT_MPI_CHECK(MPI_Op_create(&reduce_16bit<Half, Min>, 1, &o.half[2]));
    MESHRT_MPI_CHECK(MPI_Op_create(&reduce_16bit<Half, Prod>, 1, &o.half[3]));
    MESHRT_MPI_CHECK(MPI_Op_create(&reduce_16bit<BFloat16, Sum>, 1, &o.bfloat[0]));
    MESHRT_MPI_CHECK(MPI_Op_create(&reduce_16bit<BFloat16, Max>, 1, &o.bfloat[1]));
    MESHRT_MPI_CHECK(MPI_Op_create(&reduce_16bit<BFloat16, Min>, 1, &o.bfloat[2]));
    MESHRT_MPI_CHECK(MPI_Op_create(&reduce_16bit<BFloat16, Prod>, 1, &o.bfloat[3]));
    return o;
  }();
  return ops;
}

int as_count(size_t count, const char* op) {
  MESHRT_CHECK_ARG(count <= static_cast<size_t>(std::numeric_limits<int>::max()), op, ": ", count,
                   " elements exceed the MPI count limit (2^31 - 1); split the tensor");
  return static_cast<int>(count);
}

// MPI's int counts, then (unless counts_only: MPI_Reduce_scatter takes none)
// displacements, of one side of an unequal-piece collective, appended to out;
// a piece or an offset beyond MPI's int is refused as as_count refuses a
// count. An empty piece's displacement is 0 (MPI reads nothing there), so a
// trailing empty piece past 2^31 - 1 passes.
void append_mpi_counts(const std::vector<int64_t>& counts, const std::vector<int64_t>& offsets, const char* op,
                       std::vector<int>& out, bool counts_only = false) {
  constexpr int64_t kMax = std::numeric_limits<int>::max();
  for (size_t r = 0; r < counts.size(); ++r) {
    MESHRT_CHECK_ARG(counts[r] <= kMax, op, ": the piece of rank ", r, " (", counts[r],
                     " elements) exceeds the MPI count limit (2^31 - 1); split the tensor");
    out.push_back(static_cast<int>(counts[r]));
  }
  if (counts_only) return;
  for (size_t r = 0; r < counts.size(); ++r) {
    int64_t offset = counts[r] == 0 ? 0 : offsets[r];
    MESHRT_CHECK_ARG(offset <= kMax, op, ": the piece of rank ", r, " starts at element ", offset,
                     ", beyond MPI's int displacements (2^31 - 1); split the tensor");
    out.push_back(static_cast<int>(offset));
  }
}

// Marks a blocking MPI call for as long as it runs: the communicator's flag,
// which World::blocking_calls() counts (World::finalize refuses to finalise
// while one is inside: watch_blocking_flag); a call that never returns stays
// counted.
class BlockingCall {
 public:
  explicit BlockingCall(std::atomic<bool>& flag) : flag_(flag) { flag_.store(true, std::memory_order_release); }
  ~BlockingCall() { flag_.store(false, std::memory_order_release); }
  BlockingCall(const BlockingCall&) = delete;
  BlockingCall& operator=(const BlockingCall&) = delete;

 private:
  std::atomic<bool>& flag_;
};

std::atomic<int> g_world_duplicates{0};

std::vector<int> world_ranks_of(MPI_Comm comm) {
  int size = 0;
  MPI_Comm_size(comm, &size);
  MPI_Group group = MPI_GROUP_NULL, world = MPI_GROUP_NULL;
  MPI_Comm_group(comm, &group);
  MPI_Comm_group(MPI_COMM_WORLD, &world);
  std::vector<int> ranks(static_cast<size_t>(size)), out(static_cast<size_t>(size));
  for (int i = 0; i < size; ++i) ranks[static_cast<size_t>(i)] = i;
  MPI_Group_translate_ranks(group, size, ranks.data(), world, out.data());
  MPI_Group_free(&group);
  MPI_Group_free(&world);
  return out;
}

bool mpi_finalized() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  return finalized != 0;
}

// An operation issued as an MPI call: its request (MPI_REQUEST_NULL once done,
// or after a blocking call), and what finish() needs.
struct InFlight {
  MPI_Request request = MPI_REQUEST_NULL;
  MPI_Status status{};
  std::shared_ptr<std::vector<char>> temp;  // reduce_scatter in place: the result, copied out at the end
  // Unequal pieces: MPI's counts and displacements, and all_to_all's input
  // copied aside when it overlaps the output. MPI reads both until the
  // request is done (kept with the buffers when a collective is abandoned).
  std::shared_ptr<std::vector<int>> counts;
  std::shared_ptr<std::vector<char>> staged;
};

class MpiBackend final : public CommBackend {
 public:
  MpiBackend(MPI_Comm comm, std::string name, int rank, int size, std::string key)
      : CommBackend(std::move(name), rank, size),
        comm_(comm),
        stream_(Stream::create_cpu({cat("communicator '", this->name(), "'"), false,
                                    std::chrono::microseconds(200)})),
        compute_(Stream::default_for(Device::cpu())),
        progress_(publish_progress(std::move(key), this->name(), world_ranks_of(comm))) {
    watch_blocking_flag(in_blocking_call_);
  }

  ~MpiBackend() override {
    // What is queued runs first: it refers to this. Past the deadline, the
    // communicator is aborted, which ends every wait of its tasks except a
    // blocking MPI call (tasks never fail the stream itself: run_task).
    bool stuck = in_blocking_call_->load();
    if (!stuck) {
      try {
        stream_.synchronize(timeout());
      } catch (...) {
        abort(cat(describe(), " destroyed with an operation still pending past its deadline"));
        try {
          stream_.synchronize(kAbortGrace);
        } catch (...) {
          stuck = true;
        }
      }
    }
    if (stuck) {
      // Stuck in a collective that will never finish: leave the stream's worker
      // (and the MPI communicator) to the process exit (the call stays counted:
      // World::finalize aborts instead of hanging).
      // The flag stays watched (World keeps it): counted while the call is inside.
      new Stream(stream_);  // never destroyed: its destructor would join the stuck worker
      return;
    }
    unwatch_blocking_flag(in_blocking_call_.get());
    if (!mpi_finalized()) MPI_Comm_free(&comm_);
  }

  const char* kind() const override { return "mpi"; }

  // A small operation with nothing ahead of it runs at once on the calling
  // thread (start_inline); any other is queued on the communicator's stream
  // behind the work on the compute stream that produces its inputs.
  void start(const CommOp& op, const std::shared_ptr<WorkState>& state) override {
    const char* name = to_string(op.kind);
    check_not_aborted(name);
    uint64_t sequence = progress_->issued.fetch_add(1) + 1;
    state->set_sequence(sequence, name);
    if (largest_buffer(op) <= kInlineBytes && start_inline(op, state, sequence)) return;
    op.keep_memory();
    Event inputs(Device::cpu());  // the operation reads what the compute stream queued before it
    inputs.record(compute_);
    for (const auto& storage : op.storages) {
      if (storage) storage->record_stream(stream_);
    }
    // The task holds op, and with it the tensors' memory, until it is done.
    stream_.enqueue([this, op, state, inputs, sequence] { run_task(op, state, &inputs, nullptr, sequence); });
    // Later work on the compute stream may read the result. Not after a send,
    // so that a pipeline send overlaps the next micro-batch (communicator.h),
    // nor for a deferred communicator (its caller orders the readers).
    Event done(Device::cpu());
    done.record(stream_);
    state->set_done_event(done);
    if (op.kind != Collective::kSend && op.order_default_stream) done.block(compute_);
  }

  std::shared_ptr<CommBackend> split(int color, int key, const std::string& name) override {
    check_not_aborted("split");
    // MPI_Comm_split is a collective on comm_: run it on the stream, in order.
    auto sub = std::make_shared<MPI_Comm>(MPI_COMM_NULL);
    auto state = std::make_shared<WorkState>(cat("split(color ", color, ", key ", key, ") on ", describe()),
                                             std::weak_ptr<CommBackend>());
    stream_.enqueue([this, state, color, key, sub] {
      run_task(CommOp{}, state, nullptr, [this, color, key, sub] {
        MESHRT_MPI_CHECK(MPI_Comm_split(comm_, color < 0 ? MPI_UNDEFINED : color, key, sub.get()));
      }, 0);
    });
    int split_index = splits_++;  // every member splits in the same order
    state->wait(timeout());
    if (*sub == MPI_COMM_NULL) return nullptr;
    int rank = 0, size = 0;
    MESHRT_MPI_CHECK(MPI_Comm_rank(*sub, &rank));
    MESHRT_MPI_CHECK(MPI_Comm_size(*sub, &size));
    auto backend = std::make_shared<MpiBackend>(*sub, name, rank, size,
                                                cat(progress_->key, "/", split_index, "c", color));
    backend->set_timeout(timeout());
    backend->set_abortable_collectives(abortable_collectives());
    return backend;
  }

  void abort(const std::string& reason) override {
    if (!mark_aborted(reason)) return;
    progress_->aborted.store(true);
  }

  std::string explain_deadline(const char* op, uint64_t sequence) override {
    return detail::explain_deadline(*progress_, op, sequence);
  }

 private:
  using Clock = std::chrono::steady_clock;

  // An operation the calling thread started (start_inline) and left to the
  // stream unfinished.
  struct Pending {
    CommOp op;  // holds the tensors' memory until it is done
    InFlight flight;
    std::shared_ptr<WorkState> state;
    uint64_t sequence;
    Clock::time_point deadline;
  };

  // The bytes of an operation's largest buffer.
  size_t largest_buffer(const CommOp& c) const {
    if (c.pieces) {  // unequal pieces: the totals (the whole input or output)
      auto total = static_cast<size_t>(std::max(c.pieces->send_total, c.pieces->recv_total));
      return std::max(total, c.count) * size_of(c.dtype);
    }
    size_t bytes = c.count * size_of(c.dtype);
    bool chunked = c.kind == Collective::kAllGather || c.kind == Collective::kReduceScatter ||
                   c.kind == Collective::kAllToAll;
    return chunked ? bytes * static_cast<size_t>(size()) : bytes;
  }

  // Runs op at once on the calling thread, without a thread hop, when nothing
  // is ahead of it: the compute stream that produces its inputs is idle, and so
  // is the communicator's stream (nothing queued or running there; work queued
  // meanwhile by other threads runs after it). It is issued as on the stream
  // (issue): with abortable collectives, and for sends and receives, as a
  // non-blocking MPI call polled here for a moment; one not done by then (a
  // late peer, a send waiting for its receive) is left to the stream, which
  // polls it to the end with the communicator's deadline and abort handling
  // (finish_pending), so the caller's Work::wait keeps its deadline. Without
  // abortable collectives a collective is the blocking call, as on the stream,
  // but on the calling thread: a peer that never comes holds it inside MPI.
  // False when the operation could not run at once.
  bool start_inline(const CommOp& op, const std::shared_ptr<WorkState>& state, uint64_t sequence) {
    bool idle = false;
    try {
      idle = compute_.query();
    } catch (...) {
      // The compute stream failed: the queued path reports it (run_task).
    }
    if (!idle) return false;
    bool handed_over = false;
    if (!stream_.run_if_idle([&] { handed_over = run_inline(op, state, sequence); })) return false;
    if (handed_over) {
      Event done(Device::cpu());  // later work on the compute stream may read the result
      done.record(stream_);
      state->set_done_event(done);
      if (op.kind != Collective::kSend && op.order_default_stream) done.block(compute_);
    }
    return true;
  }

  // start_inline's operation, on the calling thread while it holds the stream.
  // True when the operation was left to the stream unfinished.
  bool run_inline(const CommOp& op, const std::shared_ptr<WorkState>& state, uint64_t sequence) {
    try {
      check_not_aborted(to_string(op.kind));
      progress_->started.store(sequence, std::memory_order_release);
      InFlight flight;
      issue(op, flight, abortable_collectives());  // a blocking collective ends here
      if (flight.request != MPI_REQUEST_NULL) {
        auto now = Clock::now();
        auto deadline = now + timeout();
        if (!poll(op, flight, sequence, deadline,
                  now + (op.kind == Collective::kSend ? kInlineSendPoll : kInlinePoll))) {
          op.keep_memory();
          for (const auto& storage : op.storages) {
            if (storage) storage->record_stream(stream_);
          }
          pending_ = std::make_unique<Pending>(Pending{op, std::move(flight), state, sequence, deadline});
          stream_.enqueue([this] { finish_pending(); });  // runs after this
          return true;
        }
      }
      finish(op, flight);
      progress_->completed.store(sequence, std::memory_order_release);
      state->complete_unshared();  // start()'s caller has not handed it out yet
    } catch (...) {
      state->fail(std::current_exception());
    }
    return false;
  }

  // Polls the operation left by run_inline to the end. Every task of the stream
  // calls it first: a task another thread queued while the operation was
  // starting may run before the task that finishes it.
  void finish_pending() {
    if (!pending_) return;
    std::unique_ptr<Pending> p = std::move(pending_);
    try {
      poll(p->op, p->flight, p->sequence, p->deadline, Clock::time_point::max());
      finish(p->op, p->flight);
      progress_->completed.store(p->sequence, std::memory_order_release);
      p->state->complete();
    } catch (...) {
      p->state->fail(std::current_exception());
    }
  }

  // Waits for the work producing an operation's inputs, in slices so that an
  // abort ends the wait too.
  void wait_for_inputs(const Event& inputs, const char* what) const {
    auto deadline = Clock::now() + timeout();
    for (;;) {
      check_not_aborted(what);
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      auto slice = std::min(left, kAbortGrace / 4);
      try {
        inputs.synchronize(std::max(slice, std::chrono::milliseconds(1)));
        return;
      } catch (const Error& e) {
        if (e.kind() != ErrorKind::kDeadlineExceeded || left <= slice) throw;
      }
    }
  }

  // One operation on the stream, once inputs (the compute stream's work before
  // it) is done. The outcome goes to state, never to the stream: a failed
  // operation must not fail the unrelated work queued after it.
  void run_task(const CommOp& op, const std::shared_ptr<WorkState>& state, const Event* inputs,
                const std::function<void()>& custom, uint64_t sequence) {
    finish_pending();
    try {
      const char* what = custom ? "split" : to_string(op.kind);
      check_not_aborted(what);
      if (inputs) {
        try {
          wait_for_inputs(*inputs, what);
        } catch (const std::exception& e) {
          // The peers run their side: no later operation of this rank may pair with it.
          abort(cat(what, " on ", describe(), " did not run: the work producing its inputs failed: ", e.what()));
          throw;
        }
      }
      if (custom) {
        BlockingCall call(*in_blocking_call_);
        custom();
      } else {
        if (sequence > 0) progress_->started.store(sequence, std::memory_order_release);
        InFlight flight;
        issue(op, flight, abortable_collectives());
        poll(op, flight, sequence, Clock::now() + timeout(), Clock::time_point::max());
        finish(op, flight);
        if (sequence > 0) progress_->completed.store(sequence, std::memory_order_release);
      }
      state->complete();
    } catch (...) {
      state->fail(std::current_exception());
    }
  }

  // Issues c. Sends and receives are always non-blocking (so that a receive
  // that never matches can be cancelled); collectives are the non-blocking
  // I-variant when nonblocking (polled and abandonable: poll), else the
  // blocking call, run to the end here (flight.request stays null).
  // A collective missing here is an error, never an operation that "completes"
  // having done nothing (as c10d's Backend: "does not support").
  void issue(const CommOp& c, InFlight& flight, bool nonblocking) {
    const char* name = to_string(c.kind);
    int count = as_count(c.count, name);
    MPI_Datatype type = mpi_datatype(c.dtype);
    size_t bytes = c.count * size_of(c.dtype);
    MPI_Request* request = &flight.request;
    switch (c.kind) {
      case Collective::kSend:
        MESHRT_MPI_CHECK(MPI_Isend(c.send, count, type, c.peer, kTag, comm_, request));
        return;
      case Collective::kRecv:
        MESHRT_MPI_CHECK(MPI_Irecv(c.recv, count, type, c.peer, kTag, comm_, request));
        return;
      default:
        break;
    }
    std::optional<BlockingCall> call;
    if (!nonblocking) call.emplace(*in_blocking_call_);
    switch (c.kind) {
      case Collective::kAllReduce: {
        const void* in = c.send == c.recv ? MPI_IN_PLACE : c.send;
        MPI_Op op = mpi_reduce_op(c.dtype, c.op);
        MESHRT_MPI_CHECK(nonblocking ? MPI_Iallreduce(in, c.recv, count, type, op, comm_, request)
                                     : MPI_Allreduce(in, c.recv, count, type, op, comm_));
        break;
      }
      case Collective::kAllGather: {
        if (c.pieces) {  // unequal pieces: out's, every rank's counts
          const Pieces& p = *c.pieces;
          flight.counts = std::make_shared<std::vector<int>>();
          append_mpi_counts(p.recv, p.recv_offsets, name, *flight.counts);
          const int* counts = flight.counts->data();
          const int* displs = counts + p.recv.size();
          size_t offset = static_cast<size_t>(p.recv_offsets[static_cast<size_t>(rank())]) * size_of(c.dtype);
          bool in_place = c.send == static_cast<char*>(c.recv) + offset;  // as below, at this rank's piece
          const void* in = in_place ? MPI_IN_PLACE : c.send;
          MESHRT_MPI_CHECK(nonblocking
                               ? MPI_Iallgatherv(in, count, type, c.recv, counts, displs, type, comm_, request)
                               : MPI_Allgatherv(in, count, type, c.recv, counts, displs, type, comm_));
          break;
        }
        // In place (NCCL's convention): the input already sits at this rank's chunk.
        bool in_place = c.send == static_cast<char*>(c.recv) + static_cast<size_t>(rank()) * bytes;
        const void* in = in_place ? MPI_IN_PLACE : c.send;
        MESHRT_MPI_CHECK(nonblocking ? MPI_Iallgather(in, count, type, c.recv, count, type, comm_, request)
                                     : MPI_Allgather(in, count, type, c.recv, count, type, comm_));
        break;
      }
      case Collective::kReduceScatter: {
        // MPI's in-place form differs from NCCL's (out = in's chunk at rank):
        // reduce into a temporary when the output overlaps the input.
        // Unequal pieces: in's, every rank's counts (MPI_Reduce_scatter takes
        // them; the pieces lie in rank order without gaps, as it expects).
        const char* in = static_cast<const char*>(c.send);
        char* out = static_cast<char*>(c.recv);
        size_t in_bytes = c.pieces ? static_cast<size_t>(c.pieces->send_total) * size_of(c.dtype)
                                   : static_cast<size_t>(size()) * bytes;
        bool overlap = overlaps(in, in_bytes, out, bytes);
        if (overlap) flight.temp = std::make_shared<std::vector<char>>(bytes);
        void* target = overlap ? static_cast<void*>(flight.temp->data()) : out;
        MPI_Op op = mpi_reduce_op(c.dtype, c.op);
        const int* counts = nullptr;
        if (c.pieces) {
          flight.counts = std::make_shared<std::vector<int>>();
          append_mpi_counts(c.pieces->send, c.pieces->send_offsets, name, *flight.counts, true);
          counts = flight.counts->data();
        } else {
          // MPI_Reduce_scatter with equal counts, not MPI_Reduce_scatter_block:
          // OpenMPI's algorithms for it are up to 2x faster from 256 KiB up.
          // (Whoever holds the stream runs this: its task, or start_inline.)
          counts_.assign(static_cast<size_t>(size()), count);
          counts = counts_.data();
        }
        MESHRT_MPI_CHECK(nonblocking ? MPI_Ireduce_scatter(in, target, counts, type, op, comm_, request)
                                     : MPI_Reduce_scatter(in, target, counts, type, op, comm_));
        break;
      }
      case Collective::kBroadcast:
        MESHRT_MPI_CHECK(nonblocking ? MPI_Ibcast(c.recv, count, type, c.peer, comm_, request)
                                     : MPI_Bcast(c.recv, count, type, c.peer, comm_));
        break;
      case Collective::kAllToAll: {
        if (c.pieces) {  // unequal pieces: this rank's send and receive counts
          const Pieces& p = *c.pieces;
          size_t n = p.send.size();
          flight.counts = std::make_shared<std::vector<int>>();
          append_mpi_counts(p.send, p.send_offsets, name, *flight.counts);
          append_mpi_counts(p.recv, p.recv_offsets, name, *flight.counts);
          const int* v = flight.counts->data();  // send counts, displacements, recv counts, displacements
          // MPI_IN_PLACE would send from the receive layout: stage an
          // overlapping input instead (the output's layout may differ).
          size_t es = size_of(c.dtype);
          size_t in_bytes = static_cast<size_t>(p.send_total) * es;
          const void* in = c.send;
          if (overlaps(c.send, in_bytes, c.recv, static_cast<size_t>(p.recv_total) * es)) {
            flight.staged = std::make_shared<std::vector<char>>(in_bytes);
            std::memcpy(flight.staged->data(), c.send, in_bytes);
            in = flight.staged->data();
          }
          MESHRT_MPI_CHECK(nonblocking ? MPI_Ialltoallv(in, v, v + n, type, c.recv, v + 2 * n, v + 3 * n, type,
                                                        comm_, request)
                                       : MPI_Alltoallv(in, v, v + n, type, c.recv, v + 2 * n, v + 3 * n, type, comm_));
          break;
        }
        const void* in = c.send == c.recv ? MPI_IN_PLACE : c.send;
        MESHRT_MPI_CHECK(nonblocking ? MPI_Ialltoall(in, count, type, c.recv, count, type, comm_, request)
                                     : MPI_Alltoall(in, count, type, c.recv, count, type, comm_));
        break;
      }
      case Collective::kBarrier:
        MESHRT_MPI_CHECK(nonblocking ? MPI_Ibarrier(comm_, request) : MPI_Barrier(comm_));
        break;
      default:
        throw Error(ErrorKind::kInternal, detail::cat(describe(), " does not support ", name,
                                                      " (operation ", static_cast<int>(c.kind), ")"));
    }
  }

  // Polls flight's request until it is done (true) or until `until` (false:
  // not yet; start_inline leaves it to the stream). A collective past
  // `deadline` (a watchdog, as for NCCL: nobody may be waiting on this
  // operation's Work, only on its stream) aborts the communicator, naming the
  // late ranks. Once the communicator is aborted (the deadline, a failed peer,
  // abort()), a send or receive is cancelled and a collective abandoned: MPI may
  // still write its buffers if the peers come later, so they are kept for the
  // life of the process; either throws Error(kUnavailable).
  bool poll(const CommOp& c, InFlight& flight, uint64_t sequence, Clock::time_point deadline,
            Clock::time_point until) {
    bool point_to_point = c.kind == Collective::kSend || c.kind == Collective::kRecv;
    bool tight = until != Clock::time_point::max();  // the caller's moment: poll as the blocking calls do
    std::optional<PollPause> pause;
    for (unsigned tests = 1;; ++tests) {
      int done = 0;
      MESHRT_MPI_CHECK(MPI_Test(&flight.request, &done, &flight.status));
      if (done) return true;
      // The clock only every kTestsPerClock tests when tight: a non-blocking
      // collective takes several tests to move through its rounds.
      if (tight && tests % kTestsPerClock != 0) continue;
      auto now = Clock::now();
      if (!point_to_point && !aborted() && now > deadline) {
        std::string why = sequence > 0 ? explain_deadline(to_string(c.kind), sequence) : "";
        MPI_Test(&flight.request, &done, &flight.status);
        if (done) return true;  // it finished while the peers were asked
        abort_after_failure(cat(to_string(c.kind), " #", sequence, " on '", name(), "' did not complete within ",
                                timeout().count(), " ms: ", why.empty() ? "a peer did not take part" : why,
                                " [", describe(), "]; the communicator is now aborted"));
      }
      if (aborted()) {
        if (point_to_point) {
          MPI_Cancel(&flight.request);
          if (c.kind == Collective::kSend) {
            MPI_Request_free(&flight.request);  // a matched send may not be cancellable
          } else {
            MPI_Wait(&flight.request, MPI_STATUS_IGNORE);
          }
        } else {
          struct Abandoned {
            std::array<std::shared_ptr<Storage>, 2> storages;
            std::shared_ptr<std::vector<char>> temp, staged;
            std::shared_ptr<std::vector<int>> counts;
          };
          static std::mutex mutex;
          static auto* abandoned = new std::vector<Abandoned>();
          std::lock_guard<std::mutex> lock(mutex);
          c.keep_memory();  // abandoned while still inside start() (the inline path): keep its tensors now
          abandoned->push_back({c.storages, flight.temp, flight.staged, flight.counts});
        }
        check_not_aborted(to_string(c.kind));
      }
      if (tight) {
        if (now >= until) return false;
      } else {
        // Yield for the first millisecond: a large message moves in many
        // fragments, each waiting for this side to poll, and a sleeping poller
        // made a 384 KiB broadcast take ~1 ms instead of ~0.1 ms.
        if (!pause) pause.emplace(std::chrono::microseconds(200), PollPause::kLongestSpin);
        (*pause)();
      }
    }
  }

  // After the request is done: the in-place reduce_scatter's result into place,
  // a receive's size checked.
  void finish(const CommOp& c, const InFlight& flight) {
    if (flight.temp && !flight.temp->empty()) std::memcpy(c.recv, flight.temp->data(), flight.temp->size());
    if (c.kind == Collective::kRecv) {
      MPI_Datatype type = mpi_datatype(c.dtype);
      int received = 0;
      MESHRT_MPI_CHECK(MPI_Get_count(&flight.status, type, &received));
      MESHRT_CHECK_SHAPE(static_cast<size_t>(received) == c.count, "recv on ", describe(), ": expected ", c.count,
                         " elements of ", to_string(c.dtype), " from rank ", c.peer, ", got ", received);
    }
  }

  MPI_Comm comm_;
  Stream stream_;   // the communicator's operations, in issue order
  Stream compute_;  // the cpu default stream: operations read what it queued before them
  // Set while a blocking MPI call of this communicator is inside MPI (one at a
  // time: whoever holds stream_ makes it). Shared with World, which counts it
  // (watch_blocking_flag) and keeps it past this object when one is stuck.
  std::shared_ptr<std::atomic<bool>> in_blocking_call_ = std::make_shared<std::atomic<bool>>(false);
  std::shared_ptr<Progress> progress_;  // published to the other ranks
  int splits_ = 0;                      // split() calls so far (the key of the next)
  // Whoever holds the stream (its running task, or start_inline) uses these:
  std::vector<int> counts_;            // reduce_scatter's receive counts
  std::unique_ptr<Pending> pending_;   // run_inline's operation, left unfinished
};

}  // namespace

MPI_Datatype mpi_datatype(DType dtype) {
  switch (dtype) {
    case DType::kF32: return MPI_FLOAT;
    case DType::kF64: return MPI_DOUBLE;
    case DType::kF16:
    case DType::kBF16: return MPI_UINT16_T;
    case DType::kI32: return MPI_INT32_T;
    case DType::kI64: return MPI_INT64_T;
    case DType::kU8:
    case DType::kBool: return MPI_UINT8_T;
  }
  return MPI_BYTE;
}

MPI_Op mpi_reduce_op(DType dtype, ReduceOp op) {
  // kAvg never gets here: Communicator refuses it (the sharding layer sums and divides).
  MESHRT_CHECK(op != ReduceOp::kAvg, ErrorKind::kInternal, "mpi_reduce_op: avg reached a communicator");
  int index = static_cast<int>(op);  // kSum, kMax, kMin, kProd
  if (dtype == DType::kF16) return user_ops().half[index];
  if (dtype == DType::kBF16) return user_ops().bfloat[index];
  if (dtype == DType::kBool) {  // 0/1 bytes: or = max, and = min
    return op == ReduceOp::kSum || op == ReduceOp::kMax ? MPI_MAX : MPI_MIN;
  }
  switch (op) {
    case ReduceOp::kSum: return MPI_SUM;
    case ReduceOp::kMax: return MPI_MAX;
    case ReduceOp::kMin: return MPI_MIN;
    case ReduceOp::kProd: return MPI_PROD;
    case ReduceOp::kAvg: break;
  }
  return MPI_SUM;
}

std::shared_ptr<CommBackend> make_mpi_world(const std::string& name) {
  World& world = World::get();
  MPI_Comm comm = MPI_COMM_NULL;
  MESHRT_MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &comm));
  return std::make_shared<MpiBackend>(comm, name, world.rank(), world.size(),
                                      cat("w", g_world_duplicates.fetch_add(1)));
}

}  // namespace meshrt::detail

// The NCCL backend: collectives for CUDA devices (CUDA builds only).
//
// Communicators are created non-blocking (config.blocking = 0) so they can be
// aborted safely: every NCCL call may return ncclInProgress, and we poll
// ncclCommGetAsyncError until the communicator is ready again, up to the
// communicator's deadline.
//
// Streams: each communicator queues its operations on a communication stream of
// its own, ordered after the work already queued on the device's default
// (compute) stream, which in turn waits for the operation's completion event
// before later kernels (except after a send, which writes nothing the compute
// needs: the next micro-batch overlaps it). So a stuck collective holds up only
// what needs its result, and every host wait on it (Work::wait, to_host) has a
// deadline. The tensors' memory is recorded on the communication stream, so the
// caching allocator keeps it until the operation is done.
//
// Locks, per device:
// - the call lock, held around each NCCL call only (a poll waiting for
//   readiness releases it between tries), so pollers never wait behind a slow
//   communicator;
// - the issue lock, held by start() and split() from the first NCCL call of an
//   operation until the communicator is ready again. With non-blocking
//   communicators NCCL launches the kernels on a thread of its own after the
//   call returns, so only this keeps the launches of communicators of one device
//   in the order they were issued (NCCL: "it is not safe to issue NCCL
//   operations in parallel to independent communicators located on the same
//   device with multiple threads"). Ranks must issue in the same order.
// abort() marks the communicator aborted and takes it out of use under the call
// lock, then calls ncclCommAbort outside any lock: ncclCommAbort waits for the
// communicator's queued kernel, which may wait for other work of the device.
// A deadline or an error aborts every communicator of the device at once
// (abort_after_failure): a stuck collective stalls the compute stream, which
// the other communicators' operations wait for, and ncclCommAbort of one of
// them would wait for ever unless the stuck one is aborted too.
#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>

#include <cstring>
#include <map>
#include <mutex>
#include <thread>
#include <utility>

#include "comm/backend.h"
#include "comm/mpi_check.h"
#include "comm/nccl_check.h"
#include "comm/nccl_types.h"
#include "comm/world.h"
#include "device/cuda_check.h"
#include "device/poll.h"

namespace meshrt::detail {

namespace {

ncclConfig_t nonblocking_config() {
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  return config;
}

class NcclBackend;

// What the communicators of one CUDA device share.
struct DeviceState {
  std::recursive_mutex call;  // around each NCCL call; never held while ncclCommAbort waits
  std::mutex issue;           // from an operation's first call until its communicator is ready
  std::mutex members_mutex;
  std::vector<std::weak_ptr<NcclBackend>> members;  // its live communicators
};

DeviceState& device_state(int device) {
  static std::mutex guard;
  static auto* states = new std::map<int, DeviceState>();  // lives to exit
  std::lock_guard<std::mutex> lock(guard);
  return (*states)[device];
}

std::recursive_mutex& device_lock(int device) { return device_state(device).call; }

// Polls comm (under the device lock, released between tries) until it leaves
// ncclInProgress. Returns false past the deadline; throws Error(kNccl) when the
// communicator reports an error, and Error(kUnavailable) when still_usable()
// turns false (the communicator was aborted meanwhile).
template <class Usable>
bool wait_ready(ncclComm_t comm, std::recursive_mutex& lock, std::chrono::milliseconds timeout, const std::string& what,
                Usable still_usable) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  PollPause pause(std::chrono::microseconds(20), std::chrono::microseconds(500));
  for (;;) {
    ncclResult_t state = ncclInProgress;
    {
      std::lock_guard<std::recursive_mutex> held(lock);
      still_usable();
      MESHRT_NCCL_CHECK(ncclCommGetAsyncError(comm, &state));
    }
    if (state == ncclSuccess) return true;
    if (state != ncclInProgress) {
      throw_library_error(ErrorKind::kNccl, what.c_str(), __FILE__, __LINE__, nccl_message(state));
    }
    if (std::chrono::steady_clock::now() > deadline) return false;
    pause();
  }
}

// A communicator not yet owned by a backend: aborted (which frees it and its
// threads) unless released, so an error while setting it up leaks nothing.
class PendingComm {
 public:
  ncclComm_t comm = nullptr;
  ~PendingComm() {
    if (comm) ncclCommAbort(comm);
  }
  ncclComm_t release() { return std::exchange(comm, nullptr); }
};

std::string not_ready_message(const std::string& what, std::chrono::milliseconds timeout) {
  return cat(what, " was not ready within ", timeout.count(), " ms on rank ", error_rank(),
             "; the communicator was aborted");
}

class NcclBackend final : public CommBackend, public std::enable_shared_from_this<NcclBackend> {
 public:
  NcclBackend(ncclComm_t comm, Device device, std::string name, int rank, int size)
      : CommBackend(std::move(name), rank, size),
        comm_(comm),
        device_(device),
        state_(device_state(device.index())),
        device_lock_(state_.call),
        stream_(Stream::create(device)) {}

  // Made by make(): registered with its device, for abort_after_failure.
  static std::shared_ptr<NcclBackend> make(ncclComm_t comm, Device device, std::string name, int rank, int size) {
    auto backend = std::make_shared<NcclBackend>(comm, device, std::move(name), rank, size);
    DeviceState& state = backend->state_;
    std::lock_guard<std::mutex> lock(state.members_mutex);
    std::erase_if(state.members, [](const std::weak_ptr<NcclBackend>& w) { return w.expired(); });
    state.members.push_back(backend);
    return backend;
  }

  ~NcclBackend() override {
    // Best effort, never throws: flush, wait up to the deadline, then destroy (or
    // abort if the communicator does not settle).
    std::lock_guard<std::mutex> op(op_mutex_);
    ncclComm_t comm = nullptr;
    int previous = -1;
    cudaGetDevice(&previous);
    {
      std::lock_guard<std::recursive_mutex> lock(device_lock_);
      if (!comm_) return;  // aborted: ncclCommAbort already released it
      comm = comm_;
      cudaSetDevice(device_.index());
      ncclCommFinalize(comm);
    }
    bool settled = false;
    try {
      settled = wait_ready(comm, device_lock_, timeout(), "finalize", [] {});
    } catch (...) {
    }
    {
      std::lock_guard<std::recursive_mutex> lock(device_lock_);
      comm_ = nullptr;
    }
    if (settled) {
      ncclCommDestroy(comm);
    } else {
      ncclCommAbort(comm);
    }
    if (previous >= 0) cudaSetDevice(previous);
  }

  const char* kind() const override { return "nccl"; }

  void start(const CommOp& c, const std::shared_ptr<WorkState>& state) override {
    const char* name = to_string(c.kind);
    std::string what = cat(name, " on ", describe());
    std::lock_guard<std::mutex> op(op_mutex_);
    Stream compute = Stream::default_for(device_);
    check_not_aborted(name);
    c.keep_memory();  // the operation runs on the communicator's stream, after start returns
    // Memory and events before any lock: an allocation may cudaFree the cache,
    // which waits for the whole device.
    Scratch scratch = scratch_for(c, state);
    MESHRT_CUDA_CHECK(cudaSetDevice(device_.index()));
    Event inputs(device_);  // the operation reads what the compute stream queued before it
    inputs.record(compute);
    inputs.block(stream_);
    for (const auto& storage : c.storages) {
      if (!storage) continue;
      storage->record_stream(stream_);
      state->stash(storage);  // the Work keeps the tensors until the operation is done
    }
    std::lock_guard<std::mutex> issue(state_.issue);  // launches in issue order (see the top)
    bool queued = false;
    std::exception_ptr failed;
    std::string reason;
    {
      std::lock_guard<std::recursive_mutex> lock(device_lock_);
      check_not_aborted(name);
      try {
        queued = enqueue(c, scratch);
      } catch (const std::exception& e) {
        failed = std::current_exception();
        reason = e.what();
      }
    }
    if (failed) {
      // The peers may have queued their side: no later operation may pair with
      // it (aborted outside the call lock: ncclCommAbort waits for kernels).
      abort_after_failure(cat(what, " could not be queued: ", reason));
      std::rethrow_exception(failed);
    }
    if (!queued) {
      throw Error(ErrorKind::kInternal,
                  cat(describe(), " does not support ", name, " (operation ", static_cast<int>(c.kind), ")"));
    }
    ensure_ready(what);
    Event done(device_);
    done.record(stream_);
    // Later kernels may read the result. Not after a send, so that a pipeline
    // send overlaps the next micro-batch: a sent tensor must not be written
    // before its Work is done (communicator.h).
    state->set_done_event(done);
    if (c.kind != Collective::kSend && c.order_default_stream) done.block(compute);
    std::weak_ptr<NcclBackend> self = shared_from_this();
    state->set_poller([self, done, what]() -> bool {
      // The aborted flag before the event: after ncclCommAbort the kernels exit
      // early and the event completes over garbage.
      auto backend = self.lock();
      if (backend) backend->check_not_aborted(what.c_str());
      if (done.query()) return true;  // (a destroyed communicator finished its work first)
      MESHRT_CHECK(backend != nullptr, ErrorKind::kUnavailable, what,
                   ": the communicator was destroyed before the operation finished");
      ncclResult_t async = ncclSuccess;
      {
        std::lock_guard<std::recursive_mutex> lock(backend->device_lock_);
        backend->check_not_aborted(what.c_str());
        MESHRT_NCCL_CHECK(ncclCommGetAsyncError(backend->comm_, &async));
      }
      if (async != ncclSuccess && async != ncclInProgress) {
        std::string message = nccl_message(async);
        backend->abort_after_failure(cat(what, " failed: ", message));  // outside the call lock
        throw_library_error(ErrorKind::kNccl, what.c_str(), __FILE__, __LINE__, message);
      }
      return false;
    });
  }

  std::shared_ptr<CommBackend> split(int color, int key, const std::string& name) override {
    std::string what = cat("split on ", describe());
    std::lock_guard<std::mutex> op(op_mutex_);
    PendingComm sub;
    {
      std::lock_guard<std::recursive_mutex> lock(device_lock_);
      check_not_aborted("split");
      MESHRT_CUDA_CHECK(cudaSetDevice(device_.index()));
      ncclConfig_t config = nonblocking_config();
      MESHRT_NCCL_CHECK(ncclCommSplit(comm_, color < 0 ? NCCL_SPLIT_NOCOLOR : color, key, &sub.comm, &config));
    }
    // On a timeout the parent is aborted, which also ends its asynchronous split
    // job, so nothing writes to sub.comm after we return.
    ensure_ready(what);
    if (!sub.comm) return nullptr;
    if (!wait_ready(sub.comm, device_lock_, timeout(), what, [] {})) {
      throw Error(ErrorKind::kDeadlineExceeded, not_ready_message(what, timeout()));  // sub is aborted on the way out
    }
    int rank = 0, size = 0;
    {
      std::lock_guard<std::recursive_mutex> lock(device_lock_);
      MESHRT_NCCL_CHECK(ncclCommUserRank(sub.comm, &rank));
      MESHRT_NCCL_CHECK(ncclCommCount(sub.comm, &size));
    }
    auto backend = NcclBackend::make(sub.comm, device_, name, rank, size);
    sub.release();
    backend->set_timeout(timeout());
    return backend;
  }

  void abort(const std::string& reason) override {
    ncclComm_t comm = take_out_of_use(reason);
    if (comm) ncclCommAbort(comm);  // outside the locks: it waits for the queued kernel
  }

  void abort_after_failure(const std::string& reason) override {
    // Every communicator of the device, each ncclCommAbort on a thread of its
    // own: each waits for its queued kernel, which may wait (through the compute
    // stream) for another's; set together, their abort flags end them all.
    std::vector<std::shared_ptr<NcclBackend>> members;
    {
      std::lock_guard<std::mutex> lock(state_.members_mutex);
      for (const auto& w : state_.members) {
        if (auto b = w.lock()) members.push_back(std::move(b));
      }
    }
    std::vector<std::pair<NcclBackend*, ncclComm_t>> comms;
    for (const auto& b : members) {
      std::string why = b.get() == this ? reason
                                        : cat("another communicator of ", device_, " failed: ", reason);
      if (ncclComm_t comm = b->take_out_of_use(why)) comms.emplace_back(b.get(), comm);
    }
    std::vector<std::thread> aborts;
    for (auto& [backend, comm] : comms) aborts.emplace_back([comm = comm] { ncclCommAbort(comm); });
    for (std::thread& t : aborts) t.join();
  }

 private:
  // Marks the communicator aborted and takes its handle out of use (every other
  // path checks the mark under the call lock first); returns the handle to
  // abort, or null when it was aborted already.
  ncclComm_t take_out_of_use(const std::string& reason) {
    if (!mark_aborted(reason)) return nullptr;
    std::lock_guard<std::recursive_mutex> lock(device_lock_);
    return std::exchange(comm_, nullptr);
  }

  // Device memory an operation needs besides its tensors, made before the locks.
  struct Scratch {
    void* staged = nullptr;  // all_to_all in place: a copy of the input
    void* token = nullptr;   // barrier: one int32
  };
  Scratch scratch_for(const CommOp& c, const std::shared_ptr<WorkState>& state) {
    Scratch scratch;
    auto make = [&](int64_t bytes) {
      DeviceTensor t = DeviceTensor::empty(Shape{bytes}, DType::kU8, device_);
      t.storage()->record_stream(stream_);
      state->stash(t.storage());  // kept until the operation is done
      return t.raw_data();
    };
    if (c.kind == Collective::kAllToAll && c.pieces) {
      // Unequal pieces: any overlap of input and output (their layouts differ).
      size_t in_bytes = static_cast<size_t>(c.pieces->send_total) * size_of(c.dtype);
      if (overlaps(c.send, in_bytes, c.recv, static_cast<size_t>(c.pieces->recv_total) * size_of(c.dtype))) {
        scratch.staged = make(static_cast<int64_t>(in_bytes));
      }
    } else if (c.kind == Collective::kAllToAll && c.send == c.recv) {
      scratch.staged = make(static_cast<int64_t>(c.count * size_of(c.dtype)) * size());
    }
    if (c.kind == Collective::kBarrier) scratch.token = make(sizeof(int32_t));
    return scratch;
  }

  static bool ok(ncclResult_t r) { return r == ncclSuccess || r == ncclInProgress; }

  // Queues add(r) for every rank r in one NCCL group (device lock held); add
  // makes rank r's calls and returns the first result that is not ok. Only
  // NCCL calls inside the group: when one fails, NCCL records the error in the
  // thread's group and ncclGroupEnd launches none of it; the communicators are
  // then aborted (start(): the peers' halves may be running).
  template <class Add>
  void grouped(const char* calls, Add add) {
    MESHRT_NCCL_CHECK(ncclGroupStart());
    ncclResult_t failed = ncclSuccess;
    for (int r = 0; r < size() && failed == ncclSuccess; ++r) {
      ncclResult_t result = add(r);
      if (!ok(result)) failed = result;
    }
    ncclResult_t ended = ncclGroupEnd();
    if (failed == ncclSuccess && !ok(ended)) failed = ended;
    if (failed != ncclSuccess) throw_library_error(ErrorKind::kNccl, calls, __FILE__, __LINE__, nccl_message(failed));
  }

  // Queues c on the communication stream (device lock held); false when this
  // backend lacks the operation (an error, never a Work that "completes" having
  // done nothing).
  bool enqueue(const CommOp& c, const Scratch& scratch) {
    auto s = static_cast<cudaStream_t>(stream_.native_handle());
    ncclDataType_t type = nccl_datatype(c.dtype);
    size_t element = size_of(c.dtype);
    size_t bytes = c.count * element;
    switch (c.kind) {
      case Collective::kAllReduce:
        MESHRT_NCCL_CHECK(ncclAllReduce(c.send, c.recv, c.count, type, nccl_reduce_op(c.dtype, c.op), comm_, s));
        return true;
      case Collective::kAllGather:
        if (c.pieces) {
          // Unequal pieces (NCCL has no all_gather-v): rank r broadcasts its
          // piece into everyone's out. The counts are the same on every rank,
          // so every rank skips the same empty pieces.
          const Pieces& p = *c.pieces;
          grouped("ncclBroadcast group of all_gather", [&](int r) -> ncclResult_t {
            auto i = static_cast<size_t>(r);
            auto count = static_cast<size_t>(p.recv[i]);
            if (count == 0) return ncclSuccess;
            char* piece = static_cast<char*>(c.recv) + static_cast<size_t>(p.recv_offsets[i]) * element;
            // sendbuff is read on the root only; in place when it is the piece.
            const void* from = r == rank() ? c.send : piece;
            return ncclBroadcast(from, piece, count, type, r, comm_, s);
          });
          return true;
        }
        MESHRT_NCCL_CHECK(ncclAllGather(c.send, c.recv, c.count, type, comm_, s));
        return true;
      case Collective::kReduceScatter:
        if (c.pieces) {
          // Unequal pieces (no reduce_scatter-v): piece r of every rank's input
          // reduced into rank r's out (in place when out is that piece).
          const Pieces& p = *c.pieces;
          ncclRedOp_t op = nccl_reduce_op(c.dtype, c.op);
          grouped("ncclReduce group of reduce_scatter", [&](int r) -> ncclResult_t {
            auto i = static_cast<size_t>(r);
            auto count = static_cast<size_t>(p.send[i]);
            if (count == 0) return ncclSuccess;
            const char* piece = static_cast<const char*>(c.send) + static_cast<size_t>(p.send_offsets[i]) * element;
            return ncclReduce(piece, c.recv, count, type, op, r, comm_, s);  // recvbuff: written on the root only
          });
          return true;
        }
        MESHRT_NCCL_CHECK(ncclReduceScatter(c.send, c.recv, c.count, type, nccl_reduce_op(c.dtype, c.op), comm_, s));
        return true;
      case Collective::kBroadcast:
        MESHRT_NCCL_CHECK(ncclBroadcast(c.send, c.recv, c.count, type, c.peer, comm_, s));
        return true;
      case Collective::kSend:
        MESHRT_NCCL_CHECK(ncclSend(c.send, c.count, type, c.peer, comm_, s));
        return true;
      case Collective::kRecv:
        MESHRT_NCCL_CHECK(ncclRecv(c.recv, c.count, type, c.peer, comm_, s));
        return true;
      case Collective::kAllToAll: {
        const void* send = c.send;
        if (scratch.staged) {  // grouped send/recv cannot run in place: stage the input
          size_t in_bytes = c.pieces ? static_cast<size_t>(c.pieces->send_total) * element : bytes * size();
          MESHRT_CUDA_CHECK(cudaMemcpyAsync(scratch.staged, c.send, in_bytes, cudaMemcpyDeviceToDevice, s));
          send = scratch.staged;
        }
        const char* from = static_cast<const char*>(send);
        char* to = static_cast<char*>(c.recv);
        if (c.pieces) {
          // Unequal pieces: rank r's send_counts[q] is rank q's recv_counts[r],
          // so both sides skip the same empty pairs.
          const Pieces& p = *c.pieces;
          grouped("ncclSend/ncclRecv group of all_to_all", [&](int r) -> ncclResult_t {
            auto i = static_cast<size_t>(r);
            ncclResult_t result = ncclSuccess;
            if (p.send[i] > 0) {
              result = ncclSend(from + static_cast<size_t>(p.send_offsets[i]) * element,
                                static_cast<size_t>(p.send[i]), type, r, comm_, s);
            }
            if (ok(result) && p.recv[i] > 0) {
              result = ncclRecv(to + static_cast<size_t>(p.recv_offsets[i]) * element,
                                static_cast<size_t>(p.recv[i]), type, r, comm_, s);
            }
            return result;
          });
          return true;
        }
        grouped("ncclSend/ncclRecv group of all_to_all", [&](int r) -> ncclResult_t {
          ncclResult_t result = ncclSend(from + r * bytes, c.count, type, r, comm_, s);
          if (ok(result)) result = ncclRecv(to + r * bytes, c.count, type, r, comm_, s);
          return result;
        });
        return true;
      }
      case Collective::kBarrier: {
        // Queued, not synchronised: a stuck earlier operation must reach the
        // deadline in wait(), not hang here.
        MESHRT_CUDA_CHECK(cudaMemsetAsync(scratch.token, 0, sizeof(int32_t), s));
        MESHRT_NCCL_CHECK(ncclAllReduce(scratch.token, scratch.token, 1, ncclInt32, ncclSum, comm_, s));
        return true;
      }
    }
    return false;
  }

  // Waits (device lock released between polls) until this communicator is ready;
  // past the deadline aborts it and throws Error(kDeadlineExceeded).
  void ensure_ready(const std::string& what) {
    ncclComm_t comm = nullptr;
    {
      std::lock_guard<std::recursive_mutex> lock(device_lock_);
      check_not_aborted(what.c_str());
      comm = comm_;
    }
    bool ready = false;
    try {
      ready = wait_ready(comm, device_lock_, timeout(), what, [&] { check_not_aborted(what.c_str()); });
    } catch (const Error& e) {
      // An asynchronous NCCL error: the peers may be waiting in this operation.
      if (e.kind() == ErrorKind::kNccl) abort_after_failure(cat(what, " failed: ", e.message()));
      throw;
    }
    if (ready) return;
    std::string message = not_ready_message(what, timeout());
    abort_after_failure(message);
    throw Error(ErrorKind::kDeadlineExceeded, message);
  }

  ncclComm_t comm_;  // null once aborted; read and written under device_lock_
  Device device_;
  DeviceState& state_;
  std::recursive_mutex& device_lock_;  // state_.call
  std::mutex op_mutex_;  // one operation of this communicator at a time, enqueue to ready
  Stream stream_;        // the communication stream
};

}  // namespace

ncclDataType_t nccl_datatype(DType dtype) {
  switch (dtype) {
    case DType::kF32: return ncclFloat32;
    case DType::kF64: return ncclFloat64;
    case DType::kF16: return ncclFloat16;
    case DType::kBF16: return ncclBfloat16;
    case DType::kI32: return ncclInt32;
    case DType::kI64: return ncclInt64;
    case DType::kU8:
    case DType::kBool: return ncclUint8;
  }
  return ncclUint8;
}

ncclRedOp_t nccl_reduce_op(DType dtype, ReduceOp op) {
  if (dtype == DType::kBool) {  // 0/1 bytes: or = max, and = min
    return op == ReduceOp::kSum || op == ReduceOp::kMax ? ncclMax : ncclMin;
  }
  switch (op) {
    case ReduceOp::kSum: return ncclSum;
    case ReduceOp::kMax: return ncclMax;
    case ReduceOp::kMin: return ncclMin;
    case ReduceOp::kProd: return ncclProd;
    case ReduceOp::kAvg: return ncclAvg;  // Communicator refuses it before here
  }
  return ncclSum;
}

std::shared_ptr<CommBackend> make_nccl_world(const Device& device, const std::string& name) {
  World& world = World::get();
  // Rank 0 broadcasts the unique id with whether it could make one: a failed
  // ncclGetUniqueId must not leave the other ranks in MPI_Bcast for ever.
  struct {
    int status = ncclSuccess;
    ncclUniqueId id{};
  } root;
  if (world.rank() == 0) root.status = ncclGetUniqueId(&root.id);
  MESHRT_MPI_CHECK(MPI_Bcast(&root, sizeof root, MPI_BYTE, 0, MPI_COMM_WORLD));
  if (root.status != ncclSuccess) {
    auto status = static_cast<ncclResult_t>(root.status);
    throw_library_error(ErrorKind::kNccl, "ncclGetUniqueId (on rank 0)", __FILE__, __LINE__,
                        world.rank() == 0 ? nccl_message(status) : ncclGetErrorString(status));
  }
  MESHRT_CUDA_CHECK(cudaSetDevice(device.index()));
  ncclConfig_t config = nonblocking_config();
  PendingComm comm;  // aborted on any error below
  std::string what = cat("ncclCommInitRankConfig for '", name, "' on ", device);
  {
    std::lock_guard<std::recursive_mutex> lock(device_lock(device.index()));
    MESHRT_NCCL_CHECK(ncclCommInitRankConfig(&comm.comm, world.size(), root.id, world.rank(), &config));
  }
  if (!wait_ready(comm.comm, device_lock(device.index()), default_comm_timeout(), what, [] {})) {
    throw Error(ErrorKind::kDeadlineExceeded, not_ready_message(what, default_comm_timeout()));
  }
  auto backend = NcclBackend::make(comm.comm, device, name, world.rank(), world.size());
  comm.release();
  return backend;
}

}  // namespace meshrt::detail

// The NCCL backend: collectives for CUDA devices (CUDA builds only).
//
// Communicators are created non-blocking (config.blocking = 0) so they can be
// aborted safely: every NCCL call may return ncclInProgress, and we poll
// ncclCommGetAsyncError until the communicator is ready again, up to the
// communicator's deadline. Operations are queued on the device's default stream;
// a Work polls an event recorded after the operation and the communicator's
// asynchronous error, and aborts the communicator on error or deadline
// (as nccl-tests' testStreamSynchronize does).
//
// NCCL lets one thread at a time operate the communicators of a device (even
// ncclCommGetAsyncError may complete pending group work), so every NCCL call
// here holds that device's lock; abort() takes it too and then forgets the
// freed communicator.
#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>

#include <map>
#include <mutex>
#include <thread>

#include "comm/backend.h"
#include "comm/mpi_check.h"
#include "comm/nccl_check.h"
#include "comm/nccl_types.h"
#include "comm/world.h"
#include "device/cuda_check.h"

namespace meshrt::detail {

namespace {

ncclConfig_t nonblocking_config() {
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  return config;
}

// Polls comm until it leaves ncclInProgress. Returns false past the deadline;
// throws Error(kNccl) when the communicator reports an error.
bool wait_ready(ncclComm_t comm, std::chrono::milliseconds timeout, const std::string& what) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    ncclResult_t state = ncclInProgress;
    MESHRT_NCCL_CHECK(ncclCommGetAsyncError(comm, &state));
    if (state == ncclSuccess) return true;
    if (state != ncclInProgress) {
      throw_library_error(ErrorKind::kNccl, what.c_str(), __FILE__, __LINE__, nccl_message(state));
    }
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::yield();
  }
}

// One lock per CUDA device for all of its communicators. Recursive: an
// operation that times out aborts its communicator while holding the lock.
std::recursive_mutex& device_lock(int device) {
  static std::mutex guard;
  static std::map<int, std::recursive_mutex>* locks = new std::map<int, std::recursive_mutex>();
  std::lock_guard<std::mutex> lock(guard);
  return (*locks)[device];
}

// Closes an NCCL group on every path out of a scope, so an error thrown between
// ncclGroupStart and ncclGroupEnd cannot leave this thread's group open.
class GroupGuard {
 public:
  GroupGuard() { MESHRT_NCCL_CHECK(ncclGroupStart()); }
  ~GroupGuard() {
    if (open_) ncclGroupEnd();
  }
  void end() {
    open_ = false;
    MESHRT_NCCL_CHECK(ncclGroupEnd());
  }

 private:
  bool open_ = true;
};

std::string not_ready_message(const std::string& what, std::chrono::milliseconds timeout) {
  return cat(what, " was not ready within ", timeout.count(), " ms on rank ", error_rank(),
             "; the communicator was aborted");
}

class NcclBackend final : public CommBackend, public std::enable_shared_from_this<NcclBackend> {
 public:
  NcclBackend(ncclComm_t comm, Device device, std::string name, int rank, int size)
      : CommBackend(std::move(name), rank, size), comm_(comm), device_(device), lock_(device_lock(device.index())) {}

  ~NcclBackend() override {
    std::lock_guard<std::recursive_mutex> lock(lock_);
    if (!comm_) return;  // aborted: ncclCommAbort already released it
    // Best effort, never throws: flush, wait up to the deadline, then destroy
    // (or abort if the communicator does not settle).
    cudaSetDevice(device_.index());
    ncclCommFinalize(comm_);
    auto deadline = std::chrono::steady_clock::now() + timeout();
    ncclResult_t state = ncclInProgress;
    while (ncclCommGetAsyncError(comm_, &state) == ncclSuccess && state == ncclInProgress &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::yield();
    }
    if (state == ncclSuccess) {
      ncclCommDestroy(comm_);
    } else {
      ncclCommAbort(comm_);
    }
  }

  const char* kind() const override { return "nccl"; }

  void start(const CommOp& c, const std::shared_ptr<WorkState>& state) override {
    const char* name = to_string(c.kind);
    std::lock_guard<std::recursive_mutex> lock(lock_);
    check_not_aborted(name);
    MESHRT_CUDA_CHECK(cudaSetDevice(device_.index()));
    Stream stream = Stream::default_for(device_);
    auto s = static_cast<cudaStream_t>(stream.native_handle());
    ncclDataType_t type = nccl_datatype(c.dtype);
    size_t bytes = c.count * size_of(c.dtype);
    std::string what = cat(name, " on ", describe());
    // Queues the operation; false when this backend lacks it (an error, never a
    // Work that "completes" having done nothing).
    auto enqueue = [&]() -> bool {
      switch (c.kind) {
        case Collective::kAllReduce:
          MESHRT_NCCL_CHECK(ncclAllReduce(c.send, c.recv, c.count, type, nccl_reduce_op(c.dtype, c.op), comm_, s));
          return true;
        case Collective::kAllGather:
          MESHRT_NCCL_CHECK(ncclAllGather(c.send, c.recv, c.count, type, comm_, s));
          return true;
        case Collective::kReduceScatter:
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
          if (c.send == c.recv) {  // grouped send/recv cannot run in place: stage the input
            DeviceTensor staged = DeviceTensor::empty(Shape{static_cast<int64_t>(bytes) * size()}, DType::kU8, device_);
            MESHRT_CUDA_CHECK(cudaMemcpyAsync(staged.raw_data(), c.send, bytes * size(), cudaMemcpyDeviceToDevice, s));
            state->stash(staged.storage());
            send = staged.raw_data();
          }
          GroupGuard group;
          for (int peer = 0; peer < size(); ++peer) {
            MESHRT_NCCL_CHECK(ncclSend(static_cast<const char*>(send) + peer * bytes, c.count, type, peer, comm_, s));
            MESHRT_NCCL_CHECK(ncclRecv(static_cast<char*>(c.recv) + peer * bytes, c.count, type, peer, comm_, s));
          }
          group.end();
          return true;
        }
        case Collective::kBarrier: {
          // Queued, not synchronised: a stuck earlier operation must reach the
          // deadline in wait(), not hang here.
          DeviceTensor token = DeviceTensor::empty(Shape{1}, DType::kI32, device_);
          MESHRT_CUDA_CHECK(cudaMemsetAsync(token.raw_data(), 0, sizeof(int32_t), s));
          state->stash(token.storage());
          MESHRT_NCCL_CHECK(ncclAllReduce(token.raw_data(), token.raw_data(), 1, ncclInt32, ncclSum, comm_, s));
          return true;
        }
      }
      return false;
    };
    if (!enqueue()) {
      throw Error(ErrorKind::kInternal, cat(describe(), " does not support ", name, " (operation ",
                                            static_cast<int>(c.kind), ")"));
    }
    ensure_ready(comm_, what);
    Event done(device_);
    done.record(stream);
    std::weak_ptr<NcclBackend> self = shared_from_this();
    state->set_poller([self, done, what]() -> bool {
      // The aborted flag before the event: after ncclCommAbort the kernels exit
      // early and the event completes over garbage.
      auto backend = self.lock();
      if (backend) backend->check_not_aborted(what.c_str());
      if (done.query()) return true;  // (a destroyed communicator finished its work first)
      MESHRT_CHECK(backend != nullptr, ErrorKind::kUnavailable, what,
                   ": the communicator was destroyed before the operation finished");
      std::lock_guard<std::recursive_mutex> lock(backend->lock_);
      backend->check_not_aborted(what.c_str());
      ncclResult_t async = ncclSuccess;
      MESHRT_NCCL_CHECK(ncclCommGetAsyncError(backend->comm_, &async));
      if (async != ncclSuccess && async != ncclInProgress) {
        std::string message = nccl_message(async);
        backend->abort(cat(what, " failed: ", message));
        throw_library_error(ErrorKind::kNccl, what.c_str(), __FILE__, __LINE__, message);
      }
      return false;
    });
  }

  std::shared_ptr<CommBackend> split(int color, int key, const std::string& name) override {
    std::lock_guard<std::recursive_mutex> lock(lock_);
    check_not_aborted("split");
    MESHRT_CUDA_CHECK(cudaSetDevice(device_.index()));
    ncclConfig_t config = nonblocking_config();
    ncclComm_t sub = nullptr;
    MESHRT_NCCL_CHECK(ncclCommSplit(comm_, color < 0 ? NCCL_SPLIT_NOCOLOR : color, key, &sub, &config));
    // On a timeout the parent is aborted, which also ends its asynchronous split
    // job, so nothing writes to `sub` after we return.
    ensure_ready(comm_, cat("split on ", describe()));
    if (!sub) return nullptr;
    ensure_ready(sub, cat("split on ", describe()));
    int rank = 0, size = 0;
    MESHRT_NCCL_CHECK(ncclCommUserRank(sub, &rank));
    MESHRT_NCCL_CHECK(ncclCommCount(sub, &size));
    auto backend = std::make_shared<NcclBackend>(sub, device_, name, rank, size);
    backend->set_timeout(timeout());
    return backend;
  }

  void abort(const std::string& reason) override {
    if (!mark_aborted(reason)) return;
    // Safe on a non-blocking communicator with work in flight; the lock keeps
    // every other NCCL call on this device out while the communicator is freed.
    std::lock_guard<std::recursive_mutex> lock(lock_);
    if (comm_) ncclCommAbort(comm_);
    comm_ = nullptr;
  }

 private:
  // wait_ready on comm; past the deadline aborts it and throws Error(kDeadlineExceeded).
  void ensure_ready(ncclComm_t comm, const std::string& what) {
    if (wait_ready(comm, timeout(), what)) return;
    std::string message = not_ready_message(what, timeout());
    if (comm == comm_) {
      abort(message);
    } else {
      ncclCommAbort(comm);
    }
    throw Error(ErrorKind::kDeadlineExceeded, message);
  }

  ncclComm_t comm_;
  Device device_;
  std::recursive_mutex& lock_;
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
  }
  return ncclSum;
}

std::shared_ptr<CommBackend> make_nccl_world(const Device& device, const std::string& name) {
  World& world = World::get();
  ncclUniqueId id{};
  if (world.rank() == 0) MESHRT_NCCL_CHECK(ncclGetUniqueId(&id));
  MESHRT_MPI_CHECK(MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD));
  MESHRT_CUDA_CHECK(cudaSetDevice(device.index()));
  ncclConfig_t config = nonblocking_config();
  ncclComm_t comm = nullptr;
  MESHRT_NCCL_CHECK(ncclCommInitRankConfig(&comm, world.size(), id, world.rank(), &config));
  std::string what = cat("ncclCommInitRankConfig for '", name, "' on ", device);
  if (!wait_ready(comm, default_comm_timeout(), what)) {
    ncclCommAbort(comm);
    throw Error(ErrorKind::kDeadlineExceeded, not_ready_message(what, default_comm_timeout()));
  }
  return std::make_shared<NcclBackend>(comm, device, name, world.rank(), world.size());
}

}  // namespace meshrt::detail

#include "comm/communicator.h"

#include "device/poll.h"

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <limits>

#include "comm/backend.h"
#include "comm/world.h"

namespace meshrt {

const char* to_string(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return "sum";
    case ReduceOp::kMax: return "max";
    case ReduceOp::kMin: return "min";
    case ReduceOp::kProd: return "prod";
    case ReduceOp::kAvg: return "avg";
  }
  return "?";
}

ReduceOp parse_reduce_op(const std::string& name) {
  if (name == "sum") return ReduceOp::kSum;
  if (name == "max") return ReduceOp::kMax;
  if (name == "min") return ReduceOp::kMin;
  if (name == "prod") return ReduceOp::kProd;
  if (name == "avg") return ReduceOp::kAvg;
  throw Error(ErrorKind::kInvalidArgument,
              detail::cat("unknown reduction '", name, "': expected sum, max, min, prod or avg"));
}

std::chrono::milliseconds default_comm_timeout() { return default_wait_timeout(); }

namespace detail {

const char* to_string(Collective kind) {
  switch (kind) {
    case Collective::kAllReduce: return "all_reduce";
    case Collective::kAllGather: return "all_gather";
    case Collective::kReduceScatter: return "reduce_scatter";
    case Collective::kBroadcast: return "broadcast";
    case Collective::kSend: return "send";
    case Collective::kRecv: return "recv";
    case Collective::kAllToAll: return "all_to_all";
    case Collective::kBarrier: return "barrier";
  }
  return "?";
}

CommBackend::CommBackend(std::string name, int rank, int size)
    : name_(std::move(name)), rank_(rank), size_(size), timeout_ms_(default_comm_timeout().count()) {}

std::string CommBackend::abort_reason() const {
  std::lock_guard<std::mutex> lock(reason_mutex_);
  return abort_reason_;
}

bool CommBackend::mark_aborted(const std::string& reason) {
  std::lock_guard<std::mutex> lock(reason_mutex_);
  if (aborted_.load()) return false;
  abort_reason_ = reason;
  aborted_.store(true);
  return true;
}

void CommBackend::check_not_aborted(const char* op) const {
  MESHRT_CHECK(!aborted(), ErrorKind::kUnavailable, op, " on ", describe(),
               ": the communicator was aborted: ", abort_reason());
}

std::string CommBackend::describe() const {
  return cat(kind(), " communicator '", name_, "' (rank ", rank_, " of ", size_, ")");
}

const std::shared_ptr<const std::string>& CommBackend::description() const {
  // Not std::call_once: it costs more than the rest of a small operation's start.
  if (!described_.load(std::memory_order_acquire)) {
    std::lock_guard<std::mutex> lock(reason_mutex_);
    if (!described_.load(std::memory_order_relaxed)) {
      description_ = std::make_shared<const std::string>(describe());
      described_.store(true, std::memory_order_release);
    }
  }
  return description_;
}

}  // namespace detail

Communicator Communicator::world(const Device& device, const std::string& name) {
  World::get();
  if (device.is_cpu()) return Communicator(detail::make_mpi_world(name), device);
  check_device_usable(device);
#if MESHRT_WITH_CUDA
  return Communicator(detail::make_nccl_world(device, name), device);
#else
  throw Error(ErrorKind::kUnavailable, "unreachable: CUDA device usable without CUDA");
#endif
}

Communicator Communicator::split(int color, int key, const std::string& name) const {
  check_valid("split");
  MESHRT_CHECK_ARG(color >= 0 || color == kNoColor, "split: color must be >= 0 or kNoColor, got ",
                   color);
  std::string sub_name = name.empty() ? detail::cat(backend_->name(), "/", color) : name;
  auto backend = backend_->split(color, key, sub_name);
  if (!backend) return Communicator();
  return Communicator(std::move(backend), device_);
}

Communicator Communicator::deferred() const {
  check_valid("deferred");
  Communicator c = *this;
  c.deferred_ = true;
  return c;
}

int Communicator::rank() const {
  check_valid("rank");
  return backend_->rank();
}

int Communicator::size() const {
  check_valid("size");
  return backend_->size();
}

const std::string& Communicator::name() const {
  check_valid("name");
  return backend_->name();
}

const char* Communicator::backend_name() const {
  check_valid("backend_name");
  return backend_->kind();
}

std::chrono::milliseconds Communicator::timeout() const {
  check_valid("timeout");
  return backend_->timeout();
}

void Communicator::set_timeout(std::chrono::milliseconds timeout) {
  check_valid("set_timeout");
  MESHRT_CHECK_ARG(timeout.count() > 0, "set_timeout: the timeout must be positive");
  backend_->set_timeout(timeout);
}

void Communicator::set_abortable_collectives(bool on) {
  check_valid("set_abortable_collectives");
  backend_->set_abortable_collectives(on);
}

void Communicator::check_valid(const char* op) const {
  MESHRT_CHECK_ARG(valid(), op, " on an invalid communicator (this rank is not a member)");
}

void Communicator::check_reduce_op(const char* op, ReduceOp reduce) const {
  MESHRT_CHECK_ARG(reduce != ReduceOp::kAvg, op, " on ", backend_->describe(),
                   ": avg is a pending reduction of the sharding layer, which sums and divides; "
                   "communicators run sum, max, min and prod");
}

void Communicator::check_tensor(const char* op, const DeviceTensor& t, const char* what) const {
  MESHRT_CHECK_ARG(t.defined(), op, ": ", what, " is an undefined tensor");
  MESHRT_CHECK_ARG(t.device() == device_, op, ": ", what, " is ", t.description(), " but ",
                   backend_->describe(), " runs on ", device_);
}

namespace {
using detail::Collective;
using detail::CommOp;
using detail::OpDescription;

// What describes an operation: its kind, the tensor it names, its reduction,
// root or peer (-1: none) and unequal pieces (null: none). Written as plain
// fields into its state (formatted only when asked for: WorkState::description).
struct What {
  Collective kind;
  // On the communicator's device (every caller checked it: check_tensor).
  const DeviceTensor* tensor = nullptr;
  const ReduceOp* op = nullptr;
  int peer = -1;
  const std::shared_ptr<detail::Pieces>* pieces = nullptr;
};

What describe_op(Collective kind, const DeviceTensor* tensor, const ReduceOp* op, int peer = -1) {
  return What{kind, tensor, op, peer, nullptr};
}

// Writes every field of d (a reused state's old description included).
void describe_into(OpDescription& d, const What& w, const Device& device) {
  d.kind = w.kind;
  d.has_tensor = w.tensor != nullptr;
  d.dtype = DType::kF32;
  d.device = Device::cpu();
  d.ndim = 0;
  if (w.tensor) {
    d.dtype = w.tensor->dtype();
    d.device = device;
    const std::vector<int64_t>& dims = w.tensor->shape().dims();
    d.ndim = static_cast<int>(dims.size());
    if (d.ndim <= OpDescription::kMaxDims) {
      std::copy(dims.begin(), dims.end(), d.dims);
    } else {
      d.shape_text = w.tensor->shape().to_string();
    }
  }
  if (d.ndim <= OpDescription::kMaxDims && !d.shape_text.empty()) d.shape_text.clear();
  d.has_op = w.op != nullptr;
  d.op = w.op ? *w.op : ReduceOp::kSum;
  d.peer = w.peer;  // (the pieces: WorkState::set_pieces)
}

// Starts c on backend. The backend keeps the tensors' memory (c.keep_memory())
// until the operation is done when it does not complete inside start.
Work start(const std::shared_ptr<detail::CommBackend>& backend, const Device& device, CommOp& c,
           bool order_default_stream, const What& what, const DeviceTensor* a, const DeviceTensor* b = nullptr) {
  c.order_default_stream = order_default_stream;
  auto state = detail::WorkState::make(backend);
  describe_into(state->op_description(), what, device);
  if (what.pieces) state->set_pieces(*what.pieces);
  c.tensors = {a, b};  // their memory is kept only if the operation outlives start (CommOp::keep_memory)
  backend->start(c, state);
  return Work(std::move(state));
}
}  // namespace

Work Communicator::all_reduce(const DeviceTensor& tensor, ReduceOp op) const {
  return all_reduce(tensor, tensor, op);
}

Work Communicator::all_reduce(const DeviceTensor& in, const DeviceTensor& out, ReduceOp op) const {
  check_valid("all_reduce");
  check_reduce_op("all_reduce", op);
  check_tensor("all_reduce", in, "the input");
  check_tensor("all_reduce", out, "the output");
  int64_t count = in.numel();
  MESHRT_CHECK_SHAPE(in.dtype() == out.dtype() && count == out.numel(),
                     "all_reduce: input ", in.description(), " and output ", out.description(),
                     " must have the same dtype and element count");
  CommOp c{Collective::kAllReduce, in.raw_data(), out.raw_data(), static_cast<size_t>(count),
           in.dtype(), op, 0};
  return start(backend_, device_, c, !deferred_, describe_op(Collective::kAllReduce, &in, &op), &in, &out);
}

Work Communicator::all_gather(const DeviceTensor& in, const DeviceTensor& out) const {
  check_valid("all_gather");
  check_tensor("all_gather", in, "the input");
  check_tensor("all_gather", out, "the output");
  MESHRT_CHECK_SHAPE(in.dtype() == out.dtype() && out.numel() == in.numel() * size(),
                     "all_gather over ", size(), " ranks: output ", out.description(),
                     " must hold ", size(), " x ", in.numel(), " elements of ",
                     to_string(in.dtype()), " (input ", in.description(), ")");
  CommOp c{Collective::kAllGather, in.raw_data(), out.raw_data(), static_cast<size_t>(in.numel()),
           in.dtype(), ReduceOp::kSum, 0};
  return start(backend_, device_, c, !deferred_, describe_op(Collective::kAllGather, &in, nullptr), &in, &out);
}

Work Communicator::reduce_scatter(const DeviceTensor& in, const DeviceTensor& out,
                                  ReduceOp op) const {
  check_valid("reduce_scatter");
  check_reduce_op("reduce_scatter", op);
  check_tensor("reduce_scatter", in, "the input");
  check_tensor("reduce_scatter", out, "the output");
  MESHRT_CHECK_SHAPE(in.dtype() == out.dtype() && in.numel() == out.numel() * size(),
                     "reduce_scatter over ", size(), " ranks: input ", in.description(),
                     " must hold ", size(), " x ", out.numel(), " elements of ",
                     to_string(out.dtype()), " (output ", out.description(), ")");
  CommOp c{Collective::kReduceScatter, in.raw_data(), out.raw_data(),
           static_cast<size_t>(out.numel()), in.dtype(), op, 0};
  return start(backend_, device_, c, !deferred_, describe_op(Collective::kReduceScatter, &in, &op), &in, &out);
}

Work Communicator::broadcast(const DeviceTensor& tensor, int root) const {
  check_valid("broadcast");
  check_tensor("broadcast", tensor, "the tensor");
  MESHRT_CHECK_ARG(root >= 0 && root < size(), "broadcast: root ", root, " is not a rank of ",
                   backend_->describe());
  CommOp c{Collective::kBroadcast, tensor.raw_data(), tensor.raw_data(),
           static_cast<size_t>(tensor.numel()), tensor.dtype(), ReduceOp::kSum, root};
  return start(backend_, device_, c, !deferred_, describe_op(Collective::kBroadcast, &tensor, nullptr, root), &tensor);
}

Work Communicator::send(const DeviceTensor& tensor, int peer) const {
  check_valid("send");
  check_tensor("send", tensor, "the tensor");
  MESHRT_CHECK_ARG(peer >= 0 && peer < size() && peer != rank(), "send: peer ", peer,
                   " must be another rank of ", backend_->describe());
  CommOp c{Collective::kSend, tensor.raw_data(), nullptr, static_cast<size_t>(tensor.numel()),
           tensor.dtype(), ReduceOp::kSum, peer};
  return start(backend_, device_, c, !deferred_, describe_op(Collective::kSend, &tensor, nullptr, peer), &tensor);
}

Work Communicator::recv(const DeviceTensor& tensor, int peer) const {
  check_valid("recv");
  check_tensor("recv", tensor, "the tensor");
  MESHRT_CHECK_ARG(peer >= 0 && peer < size() && peer != rank(), "recv: peer ", peer,
                   " must be another rank of ", backend_->describe());
  CommOp c{Collective::kRecv, nullptr, tensor.raw_data(), static_cast<size_t>(tensor.numel()),
           tensor.dtype(), ReduceOp::kSum, peer};
  return start(backend_, device_, c, !deferred_, describe_op(Collective::kRecv, &tensor, nullptr, peer), &tensor);
}

Work Communicator::all_to_all(const DeviceTensor& in, const DeviceTensor& out) const {
  check_valid("all_to_all");
  check_tensor("all_to_all", in, "the input");
  check_tensor("all_to_all", out, "the output");
  MESHRT_CHECK_SHAPE(in.dtype() == out.dtype() && in.numel() == out.numel() &&
                         in.numel() % size() == 0,
                     "all_to_all over ", size(), " ranks: input ", in.description(),
                     " and output ", out.description(),
                     " must match in dtype and element count, divisible by ", size());
  CommOp c{Collective::kAllToAll, in.raw_data(), out.raw_data(),
           static_cast<size_t>(in.numel() / size()), in.dtype(), ReduceOp::kSum, 0};
  return start(backend_, device_, c, !deferred_, describe_op(Collective::kAllToAll, &in, nullptr), &in, &out);
}

namespace {
// "[2, 2, 1, 0]"
std::string counts_text(const std::vector<int64_t>& counts) {
  std::string text = "[";
  for (size_t i = 0; i < counts.size(); ++i) text += detail::cat(i ? ", " : "", counts[i]);
  return text + "]";
}

// Checks counts (one per rank, each >= 0, a total that fits in int64) and
// fills pieces' counts, offsets (running sums) and total with them.
void take_counts(const char* op, const char* name, const std::vector<int64_t>& counts, int size,
                 const std::string& comm, std::vector<int64_t>& out, std::vector<int64_t>& offsets,
                 int64_t& total) {
  MESHRT_CHECK_ARG(counts.size() == static_cast<size_t>(size), op, ": ", name, " ", counts_text(counts), " has ",
                   counts.size(), " entries, but ", comm, " has ", size, " ranks (one count per rank)");
  offsets.resize(counts.size());
  total = 0;
  for (size_t r = 0; r < counts.size(); ++r) {
    MESHRT_CHECK_ARG(counts[r] >= 0, op, ": ", name, " ", counts_text(counts), ": the count of rank ", r,
                     " is negative");
    MESHRT_CHECK_ARG(counts[r] <= std::numeric_limits<int64_t>::max() - total, op, ": ", name, " ",
                     counts_text(counts), " add up to more than 2^63 - 1 elements");
    offsets[r] = total;
    total += counts[r];
  }
  out = counts;
}

bool all_equal(const std::vector<int64_t>& counts) {
  return std::adjacent_find(counts.begin(), counts.end(), std::not_equal_to<>()) == counts.end();
}
}  // namespace

Work Communicator::all_gather(const DeviceTensor& in, const DeviceTensor& out,
                              const std::vector<int64_t>& counts) const {
  check_valid("all_gather");
  check_tensor("all_gather", in, "the input");
  check_tensor("all_gather", out, "the output");
  auto pieces = std::make_shared<detail::Pieces>();
  take_counts("all_gather", "counts", counts, size(), backend_->describe(), pieces->recv, pieces->recv_offsets,
              pieces->recv_total);
  int64_t mine = counts[static_cast<size_t>(rank())];
  MESHRT_CHECK_SHAPE(in.dtype() == out.dtype() && in.numel() == mine && out.numel() == pieces->recv_total,
                     "all_gather with counts ", counts_text(counts), ": input ", in.description(),
                     " must hold counts[", rank(), "] = ", mine, " elements and output ", out.description(),
                     " sum(counts) = ", pieces->recv_total, " elements of ", to_string(in.dtype()));
  // Equal pieces: the equal-chunk call (MPI_Allgather, ncclAllGather). Every
  // rank passes the same counts, so every rank takes the same path.
  if (all_equal(counts)) return all_gather(in, out);
  CommOp c{Collective::kAllGather, in.raw_data(), out.raw_data(), static_cast<size_t>(mine),
           in.dtype(), ReduceOp::kSum, 0, pieces};
  What what = describe_op(Collective::kAllGather, &in, nullptr);
  what.pieces = &pieces;
  return start(backend_, device_, c, !deferred_, what, &in, &out);
}

Work Communicator::reduce_scatter(const DeviceTensor& in, const DeviceTensor& out,
                                  const std::vector<int64_t>& counts, ReduceOp op) const {
  check_valid("reduce_scatter");
  check_reduce_op("reduce_scatter", op);
  check_tensor("reduce_scatter", in, "the input");
  check_tensor("reduce_scatter", out, "the output");
  auto pieces = std::make_shared<detail::Pieces>();
  take_counts("reduce_scatter", "counts", counts, size(), backend_->describe(), pieces->send,
              pieces->send_offsets, pieces->send_total);
  int64_t mine = counts[static_cast<size_t>(rank())];
  MESHRT_CHECK_SHAPE(in.dtype() == out.dtype() && in.numel() == pieces->send_total && out.numel() == mine,
                     "reduce_scatter with counts ", counts_text(counts), ": input ", in.description(),
                     " must hold sum(counts) = ", pieces->send_total, " elements and output ", out.description(),
                     " counts[", rank(), "] = ", mine, " elements of ", to_string(in.dtype()));
  if (all_equal(counts)) return reduce_scatter(in, out, op);  // as all_gather
  CommOp c{Collective::kReduceScatter, in.raw_data(), out.raw_data(), static_cast<size_t>(mine),
           in.dtype(), op, 0, pieces};
  What what = describe_op(Collective::kReduceScatter, &in, &op);
  what.pieces = &pieces;
  return start(backend_, device_, c, !deferred_, what, &in, &out);
}

Work Communicator::all_to_all(const DeviceTensor& in, const DeviceTensor& out,
                              const std::vector<int64_t>& send_counts,
                              const std::vector<int64_t>& recv_counts) const {
  check_valid("all_to_all");
  check_tensor("all_to_all", in, "the input");
  check_tensor("all_to_all", out, "the output");
  auto pieces = std::make_shared<detail::Pieces>();
  take_counts("all_to_all", "send_counts", send_counts, size(), backend_->describe(), pieces->send,
              pieces->send_offsets, pieces->send_total);
  take_counts("all_to_all", "recv_counts", recv_counts, size(), backend_->describe(), pieces->recv,
              pieces->recv_offsets, pieces->recv_total);
  MESHRT_CHECK_SHAPE(in.dtype() == out.dtype() && in.numel() == pieces->send_total &&
                         out.numel() == pieces->recv_total,
                     "all_to_all with send_counts ", counts_text(send_counts), " and recv_counts ",
                     counts_text(recv_counts), ": input ", in.description(), " must hold sum(send_counts) = ",
                     pieces->send_total, " elements and output ", out.description(), " sum(recv_counts) = ",
                     pieces->recv_total, " elements of ", to_string(in.dtype()));
  // Never the equal-chunk call, even for equal counts: a rank cannot tell
  // whether its peers' counts are equal too, and MPI needs every rank in the
  // same collective (MPI_Alltoallv, not MPI_Alltoall on some of them).
  CommOp c{Collective::kAllToAll, in.raw_data(), out.raw_data(), 0, in.dtype(), ReduceOp::kSum, 0, pieces};
  What what = describe_op(Collective::kAllToAll, &in, nullptr);
  what.pieces = &pieces;
  return start(backend_, device_, c, !deferred_, what, &in, &out);
}

void Communicator::barrier() const {
  check_valid("barrier");
  CommOp c{Collective::kBarrier, nullptr, nullptr, 0, DType::kF32, ReduceOp::kSum, 0};
  start(backend_, device_, c, !deferred_, describe_op(Collective::kBarrier, nullptr, nullptr), nullptr).wait(backend_->timeout());
}

void Communicator::abort(const std::string& reason) const {
  check_valid("abort");
  backend_->abort(reason);
}

bool Communicator::aborted() const { return valid() && backend_->aborted(); }

std::string Communicator::abort_reason() const { return valid() ? backend_->abort_reason() : ""; }

}  // namespace meshrt

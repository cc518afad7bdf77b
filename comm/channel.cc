#include "comm/channel.h"

#include <mpi.h>

#include <array>
#include <memory>
#include <mutex>
#include <cstring>
#include <limits>

#include "comm/communicator.h"
#include "comm/mpi_check.h"
#include "device/poll.h"
#include "comm/world.h"

namespace meshrt {

namespace {
constexpr uint32_t kMagic = 0x4d455348;  // "MESH"
constexpr int kMaxDims = 16;

// Every message is a fixed header followed by the payload, as two MPI messages
// on the same (source, tag): MPI keeps them in order.
struct Header {
  uint32_t magic;
  uint8_t kind;
  uint8_t dtype;
  uint8_t ndim;
  uint8_t reserved;
  uint64_t bytes;
  int64_t dims[kMaxDims];
};

const char* kind_name(int kind) {
  switch (kind) {
    case 1: return "bytes";
    case 2: return "a string";
    case 3: return "a tensor";
  }
  return "an unknown message";
}

// The pause between polls of a message: yield for the first millisecond (a
// message of a running exchange comes within microseconds), then sleep at most
// 50 us between polls while the wait is young (a rank between two batches of a
// busy server: its next command comes within milliseconds), and at most 1 ms
// once it has lasted 10 ms (PollPause::kPatience: an idle rank waiting for its
// next command wakes about a thousand times a second, and a command that finds
// it asleep waits at most 1 ms).
PollPause message_pause() { return PollPause(std::chrono::microseconds(50), PollPause::kLongestSpin); }

// Polls requests until all are done; false past the deadline (they stay active).
bool wait_requests(MPI_Request* requests, int count, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  PollPause pause = message_pause();
  for (;;) {
    int done = 0;
    MESHRT_MPI_CHECK(MPI_Testall(count, requests, &done, MPI_STATUSES_IGNORE));
    if (done) return true;
    if (std::chrono::steady_clock::now() > deadline) return false;
    pause();
  }
}

[[noreturn]] void timed_out(const std::string& what, std::chrono::milliseconds timeout) {
  throw Error(ErrorKind::kDeadlineExceeded,
              detail::cat(what, " did not complete within ", timeout.count(), " ms on rank ", error_rank()));
}

// A receive past its deadline: cancel it and wait until MPI lets go of the
// buffer (an unmatched receive is cancelled at once; a matched one completes).
[[noreturn]] void abandon_receive(MPI_Request* request, const std::string& what, std::chrono::milliseconds timeout) {
  MPI_Cancel(request);
  MPI_Wait(request, MPI_STATUS_IGNORE);
  timed_out(what, timeout);
}

// Sends past their deadline may still be read by MPI later (a matched send
// cannot be cancelled): their buffers are kept here until the process ends.
struct AbandonedSend {
  std::unique_ptr<std::vector<char>> header, bytes;
  std::shared_ptr<Storage> tensor;
};
void abandon(AbandonedSend buffers) {
  static std::mutex mutex;
  static auto* kept = new std::vector<AbandonedSend>();
  std::lock_guard<std::mutex> lock(mutex);
  kept->push_back(std::move(buffers));
}

int as_int(size_t bytes) {
  MESHRT_CHECK_ARG(bytes <= static_cast<size_t>(std::numeric_limits<int>::max()),
                   "Channel: a message of ", bytes, " bytes exceeds the 2 GiB limit of one message");
  return static_cast<int>(bytes);
}
}  // namespace

struct Channel::Impl {
  MPI_Comm comm = MPI_COMM_NULL;
  int rank = 0, size = 1;
};

Channel Channel::world() {
  World::get();
  auto* impl = new Impl();
  MESHRT_MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &impl->comm));
  MPI_Comm_rank(impl->comm, &impl->rank);
  MPI_Comm_size(impl->comm, &impl->size);
  return Channel(impl);
}

Channel::Channel(Impl* impl) : impl_(impl), timeout_(default_comm_timeout()) {}

Channel::~Channel() {
  if (!impl_) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Comm_free(&impl_->comm);
  delete impl_;
}

Channel::Channel(Channel&& other) noexcept : impl_(other.impl_), timeout_(other.timeout_) {
  other.impl_ = nullptr;
}

Channel& Channel::operator=(Channel&& other) noexcept {
  std::swap(impl_, other.impl_);
  std::swap(timeout_, other.timeout_);
  return *this;
}

int Channel::rank() const { return impl_->rank; }
int Channel::size() const { return impl_->size; }

void Channel::send_tensor(const HostTensor& tensor, int dest, int tag) const {
  MESHRT_CHECK_ARG(tensor.defined(), "Channel::send of an undefined tensor");
  MESHRT_CHECK_ARG(tensor.ndim() <= kMaxDims, "Channel::send: ", tensor.description(), " has more than ",
                   kMaxDims, " dimensions");
  send_message(kTensor, tensor.raw_data(), tensor.nbytes(), dest, tag, &tensor);
}

void Channel::send_bytes(const void* data, size_t size, int dest, int tag) const {
  MESHRT_CHECK_ARG(data != nullptr || size == 0, "Channel::send_bytes: null pointer with ", size, " bytes");
  if (size > 0) {
    MESHRT_CHECK_ARG(pointer_space(data) == MemorySpace::kHost, "Channel::send_bytes: ", data,
                     " points to device memory; a Channel carries host memory only: copy it with "
                     "to_host() first");
  }
  send_message(kBytes, data, size, dest, tag);
}

void Channel::send_message(Kind kind, const void* data, size_t size, int dest, int tag,
                           const HostTensor* tensor) const {
  MESHRT_CHECK_ARG(dest >= 0 && dest < impl_->size, "Channel::send: destination ", dest,
                   " is not a rank (size ", impl_->size, ")");
  MESHRT_CHECK_ARG(tag >= 0 && tag <= kMaxTag, "Channel::send: tag ", tag, " is outside 0..", kMaxTag);
  Header header{};
  header.magic = kMagic;
  header.kind = kind;
  header.bytes = size;
  if (tensor) {
    header.dtype = static_cast<uint8_t>(tensor->dtype());
    header.ndim = static_cast<uint8_t>(tensor->ndim());
    for (int i = 0; i < tensor->ndim(); ++i) header.dims[i] = tensor->dim(i);
  }
  // The buffers MPI reads live on the heap (or in the tensor's storage), so that
  // a send given up at its deadline cannot leave MPI reading freed memory.
  AbandonedSend buffers;
  buffers.header = std::make_unique<std::vector<char>>(sizeof header);
  std::memcpy(buffers.header->data(), &header, sizeof header);
  const void* payload = data;
  if (tensor) {
    buffers.tensor = tensor->storage();
  } else {
    buffers.bytes = std::make_unique<std::vector<char>>(static_cast<const char*>(data),
                                                        static_cast<const char*>(data) + size);
    payload = buffers.bytes->data();
  }
  std::array<MPI_Request, 2> requests{MPI_REQUEST_NULL, MPI_REQUEST_NULL};
  MESHRT_MPI_CHECK(MPI_Isend(buffers.header->data(), sizeof header, MPI_BYTE, dest, tag, impl_->comm, &requests[0]));
  MESHRT_MPI_CHECK(MPI_Isend(payload, as_int(size), MPI_BYTE, dest, tag, impl_->comm, &requests[1]));
  if (wait_requests(requests.data(), 2, timeout_)) return;
  for (MPI_Request& r : requests) {
    if (r == MPI_REQUEST_NULL) continue;
    MPI_Cancel(&r);
    MPI_Request_free(&r);
  }
  abandon(std::move(buffers));
  timed_out(detail::cat("Channel::send of ", kind_name(kind), " (", size, " bytes) to rank ", dest, " tag ", tag),
            timeout_);
}

namespace {
struct Incoming {
  Header header;
  int source;
  int asked_source, tag, expected_kind;
  // "Channel::recv of a tensor from rank 1 tag 7", for errors (made only then).
  std::string what() const {
    return detail::cat("Channel::recv of ", kind_name(expected_kind), " from ",
                       asked_source == Channel::kAnySource ? std::string("any rank") : detail::cat("rank ", asked_source),
                       " tag ", tag);
  }
};

// Receives the header of the next message on (source, tag). The matched probe
// (MPI_Improbe + MPI_Mrecv) keeps concurrent receivers on other threads apart.
Incoming receive_header(MPI_Comm comm, int source, int tag, std::chrono::milliseconds timeout,
                        int expected_kind) {
  Incoming in{};
  in.asked_source = source;
  in.tag = tag;
  in.expected_kind = expected_kind;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  MPI_Message message = MPI_MESSAGE_NULL;
  MPI_Status status{};
  PollPause pause = message_pause();
  for (;;) {
    int found = 0;
    MESHRT_MPI_CHECK(MPI_Improbe(source == Channel::kAnySource ? MPI_ANY_SOURCE : source, tag, comm,
                                 &found, &message, &status));
    if (found) break;
    MESHRT_CHECK(std::chrono::steady_clock::now() <= deadline, ErrorKind::kDeadlineExceeded,
                 in.what(), " did not complete within ", timeout.count(), " ms on rank ",
                 error_rank());
    pause();
  }
  in.source = status.MPI_SOURCE;
  int count = 0;
  MESHRT_MPI_CHECK(MPI_Get_count(&status, MPI_BYTE, &count));
  MESHRT_CHECK(count == static_cast<int>(sizeof(Header)), ErrorKind::kInternal, in.what(),
               ": expected a message header of ", sizeof(Header), " bytes, got ", count,
               " bytes (is another program using this communicator?)");
  MESHRT_MPI_CHECK(MPI_Mrecv(&in.header, sizeof in.header, MPI_BYTE, &message, MPI_STATUS_IGNORE));
  MESHRT_CHECK(in.header.magic == kMagic, ErrorKind::kInternal, in.what(), ": bad message header");
  return in;
}

// Receives the payload that follows a header (same source, same tag: MPI keeps
// them in order) into into, which holds in.header.bytes.
void receive_payload(MPI_Comm comm, const Incoming& in, int tag, void* into,
                     std::chrono::milliseconds timeout) {
  MPI_Request request = MPI_REQUEST_NULL;
  MESHRT_MPI_CHECK(MPI_Irecv(into, as_int(in.header.bytes), MPI_BYTE, in.source, tag, comm, &request));
  if (!wait_requests(&request, 1, timeout)) abandon_receive(&request, in.what(), timeout);
}

// A message of another kind than expected: drain its payload, then say what came.
[[noreturn]] void wrong_kind(MPI_Comm comm, const Incoming& in, int tag,
                             std::chrono::milliseconds timeout) {
  std::vector<uint8_t> drain(in.header.bytes);
  receive_payload(comm, in, tag, drain.data(), timeout);
  throw Error(ErrorKind::kShape,
              detail::cat(in.what(), ": rank ", in.source, " sent ", kind_name(in.header.kind)));
}

template <class Buffer>
Buffer receive_buffer(MPI_Comm comm, int source, int tag, std::chrono::milliseconds timeout,
                      int kind, int* from) {
  Incoming in = receive_header(comm, source, tag, timeout, kind);
  if (from) *from = in.source;
  if (in.header.kind != kind) wrong_kind(comm, in, tag, timeout);
  Buffer buffer(in.header.bytes, '\0');
  receive_payload(comm, in, tag, buffer.data(), timeout);
  return buffer;
}
}  // namespace

HostTensor Channel::recv_tensor(int source, int tag, int* from) const {
  Incoming in = receive_header(impl_->comm, source, tag, timeout_, kTensor);
  if (from) *from = in.source;
  if (in.header.kind != kTensor) wrong_kind(impl_->comm, in, tag, timeout_);
  MESHRT_CHECK(in.header.ndim <= kMaxDims && in.header.dtype <= static_cast<uint8_t>(DType::kBool),
               ErrorKind::kInternal, in.what(), ": malformed tensor header");
  std::vector<int64_t> dims(in.header.dims, in.header.dims + in.header.ndim);
  HostTensor t = HostTensor::empty(Shape(dims), static_cast<DType>(in.header.dtype));
  MESHRT_CHECK(t.nbytes() == in.header.bytes, ErrorKind::kInternal, in.what(),
               ": the tensor header and the payload size differ");
  receive_payload(impl_->comm, in, tag, t.raw_data(), timeout_);
  return t;
}

std::vector<uint8_t> Channel::recv_bytes(int source, int tag, int* from) const {
  return receive_buffer<std::vector<uint8_t>>(impl_->comm, source, tag, timeout_, kBytes, from);
}

std::string Channel::recv_string(int source, int tag, int* from) const {
  return receive_buffer<std::string>(impl_->comm, source, tag, timeout_, kString, from);
}

std::optional<int> Channel::probe(int source, int tag) const {
  int found = 0;
  MPI_Status status{};
  MESHRT_MPI_CHECK(MPI_Iprobe(source == kAnySource ? MPI_ANY_SOURCE : source, tag, impl_->comm,
                              &found, &status));
  if (!found) return std::nullopt;
  return status.MPI_SOURCE;
}

}  // namespace meshrt

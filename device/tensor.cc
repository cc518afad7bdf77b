#include "device/tensor.h"

#include "device/convert.h"
#include "device/copy_plan.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <optional>
#include <sstream>

#if MESHRT_WITH_CUDA
#include "device/cuda_check.h"
#endif

namespace meshrt {

Storage::Storage(CachingAllocator& allocator, size_t bytes, void* stream)
    : allocator_(allocator), data_(allocator.allocate(bytes, stream)), bytes_(bytes), stream_(stream) {}

Storage::~Storage() {
  try {
    std::vector<Event> pending;
    for (const Stream& s : used_on_) {
      Event done(s.device());
      done.record(s);
      pending.push_back(done);
    }
    if (stream_ && device().is_cpu() && cpu_streams_delayed()) {
      // The delayed test mode reuses a block only once its own stream has passed
      // the free too, so the next owner can fill it with 0xff at once (Tensor::empty).
      Event done(device());
      done.record(Stream::default_for(device()));
      pending.push_back(done);
    }
    allocator_.deallocate(data_, std::move(pending));
  } catch (...) {
    // No event could be made (a sticky CUDA error, or the runtime torn down at
    // exit): the block cannot be reused safely, and a destructor must not throw.
    allocator_.abandon(data_);
  }
}

void Storage::record_stream(const Stream& stream) {
  if (stream.native_handle() == stream_) return;
  std::lock_guard<std::mutex> lock(mutex_);
  for (const Stream& s : used_on_) {
    if (s.native_handle() == stream.native_handle()) return;
  }
  used_on_.push_back(stream);
}

void prepare_stream_use(const Stream* stream, std::initializer_list<const DeviceTensor*> tensors) {
  if (!stream) return;
  Stream home = Stream::default_for(stream->device());
  if (stream->native_handle() == home.native_handle()) return;
  Event ready(stream->device());
  ready.record(home);
  ready.block(*stream);
  for (const DeviceTensor* t : tensors) {
    if (t->defined()) t->storage()->record_stream(*stream);
  }
}

namespace {
template <class Space>
CachingAllocator& allocator_for(const Device& device) {
  if constexpr (std::is_same_v<Space, HostSpace>) {
    return host_allocator();
  } else {
    return device_allocator(device);
  }
}

void* stream_key(const Device& device) { return Stream::default_for(device).native_handle(); }
}  // namespace

template <class Space>
Tensor<Space> Tensor<Space>::empty(const Shape& shape, DType dtype, const Device& device) {
  Device where = kIsHost ? Device::cpu() : device;
  Tensor t;
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.storage_ = std::make_shared<Storage>(allocator_for<Space>(where),
                                         static_cast<size_t>(shape.numel()) * size_of(dtype),
                                         kIsHost ? nullptr : stream_key(where));
  if constexpr (!kIsHost) {
    if (where.is_cpu() && cpu_streams_delayed() && t.nbytes() > 0) {
      // The delayed test mode: new memory reads as 0xff bytes (NaN) until written,
      // so that a read missing its synchronize sees that. Written at once: in
      // this mode a block comes back only after all work on it is done (~Storage).
      std::memset(t.raw_data(), 0xff, t.nbytes());
    }
  }
  return t;
}

template <class Space>
Tensor<Space> Tensor<Space>::zeros(const Shape& shape, DType dtype, const Device& device) {
  Tensor t = empty(shape, dtype, device);
  if constexpr (kIsHost) {
    if (t.nbytes() > 0) std::memset(t.raw_data(), 0, t.nbytes());
  } else {
    // Queued, not waited for: work on the default stream runs after it, and
    // other streams are ordered after the default stream (prepare_stream_use).
    fill_zero(t);
  }
  return t;
}

template <class Space>
void Tensor<Space>::undefined() {
  throw Error(ErrorKind::kInvalidArgument, "use of an undefined tensor");
}

template <class Space>
Tensor<Space> Tensor<Space>::narrow(int64_t start, int64_t length) const {
  MESHRT_CHECK_SHAPE(ndim() >= 1, "narrow on a tensor with no axes: ", description());
  MESHRT_CHECK_SHAPE(start >= 0 && length >= 0 && start + length <= shape_[0], "narrow(", start,
                     ", ", length, ") is outside axis 0 of ", description());
  Tensor t = *this;
  t.shape_ = shape_.with(0, length);
  t.offset_ = offset_ + static_cast<size_t>(start * shape_.inner(0)) * element_size();
  return t;
}

template <class Space>
Tensor<Space> Tensor<Space>::reshape(const Shape& shape) const {
  MESHRT_CHECK_SHAPE(shape.numel() == numel(), "reshape of ", description(), " to ", shape,
                     ": ", numel(), " elements cannot become ", shape.numel());
  Tensor t = *this;
  t.shape_ = shape;
  return t;
}

template <class Space>
Tensor<Space> Tensor<Space>::clone() const {
  Tensor t = empty(shape_, dtype_, device());
  copy(*this, t);
  return t;
}

template <class Space>
std::string Tensor<Space>::description() const {
  std::ostringstream out;
  out << to_string(dtype_) << shape_.to_string();
  if constexpr (kIsHost) {
    out << " on host";
  } else {
    out << " on " << device();
  }
  return out.str();
}

template class Tensor<HostSpace>;
template class Tensor<DeviceSpace>;

namespace {
#if MESHRT_WITH_CUDA
cudaStream_t native(const Device& device, const Stream* stream) {
  return static_cast<cudaStream_t>(
      (stream ? *stream : Stream::default_for(device)).native_handle());
}
#endif
}  // namespace

namespace {
void check_stream(const char* op, const Device& device, const Stream* stream) {
  MESHRT_CHECK_ARG(!stream || stream->device() == device, op, ": the tensor is on ", device,
                   " but the stream is on ", stream ? stream->device() : device);
}
}  // namespace

#if MESHRT_WITH_CUDA
namespace {
// Copies between a GPU and pageable host memory through two pinned staging
// buffers taken in turn: while one chunk crosses the bus, the previous one is
// copied on the host. Every wait is bounded (Event::synchronize).
constexpr size_t kStagingChunk = size_t{8} << 20;

void staged_copy(void* dst, const void* src, size_t bytes, bool to_host, const Device& device, const Stream& stream) {
  CachingAllocator& pinned = pinned_staging_allocator();
  size_t chunk = std::min(bytes, kStagingChunk);
  struct Slot {
    void* buffer = nullptr;
    std::optional<Event> copied;
    size_t offset = 0, length = 0;
  };
  Slot slots[2];
  auto cleanup = [&] {
    for (Slot& slot : slots) {
      if (!slot.buffer) continue;
      std::vector<Event> pending;
      if (slot.copied) pending.push_back(*slot.copied);
      pinned.deallocate(slot.buffer, std::move(pending));  // reused once its copy is done
    }
  };
  try {
    for (Slot& slot : slots) slot.buffer = pinned.allocate(chunk);
    auto cuda_stream = static_cast<cudaStream_t>(stream.native_handle());
    // Device to host: the staged chunk reaches dst once its copy is done.
    auto drain = [&](Slot& slot) {
      if (!slot.copied) return;
      slot.copied->synchronize();
      if (to_host) std::memcpy(static_cast<char*>(dst) + slot.offset, slot.buffer, slot.length);
      slot.copied.reset();
    };
    size_t index = 0;
    for (size_t offset = 0; offset < bytes; offset += chunk, ++index) {
      Slot& slot = slots[index % 2];
      drain(slot);  // its previous chunk
      slot.offset = offset;
      slot.length = std::min(chunk, bytes - offset);
      if (to_host) {
        MESHRT_CUDA_CHECK(cudaMemcpyAsync(slot.buffer, static_cast<const char*>(src) + offset, slot.length,
                                          cudaMemcpyDeviceToHost, cuda_stream));
      } else {
        std::memcpy(slot.buffer, static_cast<const char*>(src) + offset, slot.length);
        MESHRT_CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(dst) + offset, slot.buffer, slot.length,
                                          cudaMemcpyHostToDevice, cuda_stream));
      }
      slot.copied.emplace(device);
      slot.copied->record(stream);
    }
    for (size_t k = 0; k < 2; ++k) drain(slots[(index + k) % 2]);  // in order
  } catch (...) {
    cleanup();
    throw;
  }
  cleanup();
}
}  // namespace
#endif

HostTensor to_host(const DeviceTensor& tensor, const Stream* stream) {
  check_stream("to_host", tensor.device(), stream);
  prepare_stream_use(stream, {&tensor});
  HostTensor out = HostTensor::empty(tensor.shape(), tensor.dtype());
  if (tensor.nbytes() == 0) return out;
#if MESHRT_WITH_CUDA
  if (tensor.device().is_cuda()) {
    set_current_device(tensor.device());
    staged_copy(out.raw_data(), tensor.raw_data(), tensor.nbytes(), true, tensor.device(),
                stream ? *stream : Stream::default_for(tensor.device()));
    return out;
  }
#endif
  // In stream order after the work that produced tensor, then waited for.
  Stream s = stream ? *stream : Stream::default_for(tensor.device());
  void* dst = out.raw_data();
  const void* src = tensor.raw_data();
  size_t bytes = tensor.nbytes();
  // The task holds the host memory: it must outlive a wait that gives up.
  s.enqueue([dst, src, bytes, keep = out.storage()] { std::memcpy(dst, src, bytes); }, bytes <= kSmallCpuWork);
  s.synchronize();
  return out;
}

DeviceTensor to_device(const HostTensor& tensor, const Device& device, const Stream* stream) {
  check_stream("to_device", device, stream);
  DeviceTensor out = DeviceTensor::empty(tensor.shape(), tensor.dtype(), device);
  prepare_stream_use(stream, {&out});
  if (tensor.nbytes() == 0) return out;
#if MESHRT_WITH_CUDA
  if (device.is_cuda()) {
    set_current_device(device);
    staged_copy(out.raw_data(), tensor.raw_data(), tensor.nbytes(), false, device,
                stream ? *stream : Stream::default_for(device));
    return out;
  }
#endif
  Stream s = stream ? *stream : Stream::default_for(device);
  void* dst = out.raw_data();
  const void* src = tensor.raw_data();
  size_t bytes = tensor.nbytes();
  s.enqueue([dst, src, bytes, keep = tensor.storage()] { std::memcpy(dst, src, bytes); }, bytes <= kSmallCpuWork);
  s.synchronize();  // the host tensor may go once this returns (the task holds it if this gives up)
  return out;
}

namespace {
template <class A, class B>
void check_copy(const A& src, const B& dst) {
  MESHRT_CHECK_SHAPE(src.dtype() == dst.dtype() && src.numel() == dst.numel(), "copy from ",
                     src.description(), " to ", dst.description(),
                     ": dtype and element count must match");
}
}  // namespace

void copy(const DeviceTensor& src, const DeviceTensor& dst, const Stream* stream) {
  check_copy(src, dst);
  MESHRT_CHECK_ARG(src.device() == dst.device(), "copy from ", src.description(), " to ",
                   dst.description(), ": devices differ (use a Communicator between devices)");
  check_stream("copy", src.device(), stream);
  if (src.nbytes() == 0 || src.raw_data() == dst.raw_data()) return;
  prepare_stream_use(stream, {&src, &dst});
#if MESHRT_WITH_CUDA
  if (src.device().is_cuda()) {
    set_current_device(src.device());
    MESHRT_CUDA_CHECK(cudaMemcpyAsync(dst.raw_data(), src.raw_data(), src.nbytes(),
                                      cudaMemcpyDeviceToDevice, native(src.device(), stream)));
    return;
  }
#endif
  void* d = dst.raw_data();
  const void* from = src.raw_data();
  size_t bytes = src.nbytes();
  (stream ? *stream : Stream::default_for(src.device()))
      .enqueue([d, from, bytes] { std::memmove(d, from, bytes); }, bytes <= kSmallCpuWork);
}

void copy(const HostTensor& src, const HostTensor& dst) {
  check_copy(src, dst);
  if (src.nbytes() == 0 || src.raw_data() == dst.raw_data()) return;
  std::memmove(dst.raw_data(), src.raw_data(), src.nbytes());
}

#if MESHRT_WITH_CUDA
namespace {
size_t max_pitch(const Device& device) {
  static std::mutex mutex;
  static std::map<int, size_t> pitches;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = pitches.find(device.index());
  if (it != pitches.end()) return it->second;
  int value = 0;
  MESHRT_CUDA_CHECK(cudaDeviceGetAttribute(&value, cudaDevAttrMaxPitch, device.index()));
  return pitches[device.index()] = static_cast<size_t>(value);
}
}  // namespace
#endif

void fill_zero(const DeviceTensor& t, const Stream* stream) {
  MESHRT_CHECK_ARG(t.defined(), "fill_zero of an undefined tensor");
  check_stream("fill_zero", t.device(), stream);
  if (t.nbytes() == 0) return;
  prepare_stream_use(stream, {&t});
#if MESHRT_WITH_CUDA
  if (t.device().is_cuda()) {
    set_current_device(t.device());
    MESHRT_CUDA_CHECK(cudaMemsetAsync(t.raw_data(), 0, t.nbytes(), native(t.device(), stream)));
    return;
  }
#endif
  void* data = t.raw_data();
  size_t bytes = t.nbytes();
  (stream ? *stream : Stream::default_for(t.device()))
      .enqueue([data, bytes] { std::memset(data, 0, bytes); }, bytes <= kSmallCpuWork);
}

void copy_rows(const Device& device, void* dst, size_t dst_pitch, const void* src, size_t src_pitch,
               size_t row_bytes, size_t rows, const Stream* stream) {
  if (rows == 0 || row_bytes == 0) return;
#if MESHRT_WITH_CUDA
  if (device.is_cuda()) {
    set_current_device(device);
    cudaStream_t s = native(device, stream);
    switch (detail::plan_row_copy(row_bytes, rows, src_pitch, dst_pitch, max_pitch(device))) {
      case detail::RowCopy::kContiguous:
        MESHRT_CUDA_CHECK(cudaMemcpyAsync(dst, src, row_bytes * rows, cudaMemcpyDeviceToDevice, s));
        return;
      case detail::RowCopy::kPitched:
        MESHRT_CUDA_CHECK(cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, row_bytes, rows,
                                            cudaMemcpyDeviceToDevice, s));
        return;
      case detail::RowCopy::kPerRow:
        for (size_t r = 0; r < rows; ++r) {
          MESHRT_CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(dst) + r * dst_pitch,
                                            static_cast<const char*>(src) + r * src_pitch, row_bytes,
                                            cudaMemcpyDeviceToDevice, s));
        }
        return;
    }
  }
#endif
  MESHRT_CHECK_ARG(device.is_cpu(), "copy_rows on ", device, ": meshrt was built without CUDA");
  (stream ? *stream : Stream::default_for(device))
      .enqueue([=] { copy_host_rows(dst, dst_pitch, src, src_pitch, row_bytes, rows); },
               row_bytes * rows <= kSmallCpuWork);
}

void copy_host_rows(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t row_bytes, size_t rows) {
  if (rows == 0 || row_bytes == 0) return;
  if (dst_pitch == row_bytes && src_pitch == row_bytes) {
    std::memmove(dst, src, row_bytes * rows);
    return;
  }
  for (size_t r = 0; r < rows; ++r) {
    std::memmove(static_cast<char*>(dst) + r * dst_pitch, static_cast<const char*>(src) + r * src_pitch, row_bytes);
  }
}

HostTensor concat_rows(const std::vector<HostTensor>& parts) {
  MESHRT_CHECK_ARG(!parts.empty(), "concat_rows of no tensors");
  const HostTensor& first = parts.front();
  MESHRT_CHECK_SHAPE(first.ndim() >= 1, "concat_rows of a tensor without axes: ", first.description());
  int64_t rows = 0;
  for (const HostTensor& p : parts) {
    MESHRT_CHECK_SHAPE(p.dtype() == first.dtype() && p.ndim() == first.ndim() &&
                           p.shape().with(0, 0) == first.shape().with(0, 0),
                       "concat_rows: ", p.description(), " does not stack onto ", first.description());
    rows += p.dim(0);
  }
  HostTensor out = HostTensor::empty(first.shape().with(0, rows), first.dtype());
  size_t at = 0;
  for (const HostTensor& p : parts) {
    if (p.nbytes() > 0) std::memcpy(static_cast<char*>(out.raw_data()) + at, p.raw_data(), p.nbytes());
    at += p.nbytes();
  }
  return out;
}

HostTensor cast_host(const HostTensor& tensor, DType dtype) {
  if (tensor.dtype() == dtype) return tensor.clone();
  HostTensor out = HostTensor::empty(tensor.shape(), dtype);
  visit_dtype(tensor.dtype(), [&](auto in_tag) {
    using In = decltype(in_tag);
    visit_dtype(dtype, [&](auto out_tag) {
      using Out = decltype(out_tag);
      const In* in = static_cast<const In*>(tensor.raw_data());
      Out* o = static_cast<Out*>(out.raw_data());
      for (int64_t i = 0; i < tensor.numel(); ++i) o[i] = convert<Out>(in[i]);
    });
  });
  return out;
}

}  // namespace meshrt

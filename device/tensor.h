// Tensors typed by memory space.
//
//   HostTensor   = Tensor<HostSpace>:   host memory; elements readable with data<T>().
//   DeviceTensor = Tensor<DeviceSpace>: memory of a Device (a GPU, or the cpu
//                                       backend's RAM, which is still Device-typed).
//
// to_host() and to_device() are the only ways between the two spaces. Code that
// needs host memory (the message Channel, file writers) takes HostTensor, so a
// DeviceTensor cannot reach it without an explicit to_host().
//
// Tensors are contiguous and row-major. Copies of a Tensor share storage (like a
// shared_ptr); clone() copies the elements.
#pragma once

#include <concepts>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <span>
#include <type_traits>
#include <vector>

#include "device/allocator.h"
#include "device/device.h"
#include "device/dtype.h"
#include "device/error.h"
#include "device/shape.h"
#include "device/stream.h"

namespace meshrt {

struct HostSpace {
  static constexpr const char* kName = "host";
};
struct DeviceSpace {
  static constexpr const char* kName = "device";
};

// A block of memory from a CachingAllocator, returned to it on destruction.
class Storage {
 public:
  Storage(CachingAllocator& allocator, size_t bytes, void* stream);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  const Device& device() const { return allocator_.device(); }
  // Notes that work queued on stream (not the stream the memory was allocated
  // for) uses this memory: when the Storage dies, the block is reused only after
  // that work is done (PyTorch's record_stream contract).
  void record_stream(const Stream& stream);

 private:
  CachingAllocator& allocator_;
  void* data_;
  size_t bytes_;
  void* stream_;  // the stream the block was allocated for
  std::mutex mutex_;
  std::vector<Stream> used_on_;
};

template <class Space>
class Tensor {
 public:
  static constexpr bool kIsHost = std::is_same_v<Space, HostSpace>;

  // An undefined tensor (defined() is false).
  Tensor() = default;

  // Uninitialised memory. Host tensors ignore device (always cpu).
  static Tensor empty(const Shape& shape, DType dtype, const Device& device = Device::cpu());
  // Zero-filled (device tensors: queued on the device's default stream).
  static Tensor zeros(const Shape& shape, DType dtype, const Device& device = Device::cpu());

  // Host only: a tensor holding a copy of values.
  template <class T>
  static Tensor from_vector(const std::vector<T>& values, const Shape& shape)
    requires kIsHost;
  // Host only: a tensor of shape with every element value.
  template <class T>
  static Tensor full(const Shape& shape, T value)
    requires kIsHost;

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return shape_.ndim(); }
  int64_t dim(int axis) const { return shape_[axis]; }
  int64_t numel() const { return shape_.numel(); }
  DType dtype() const { return dtype_; }
  size_t element_size() const { return size_of(dtype_); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * element_size(); }
  // The storage's device; an undefined tensor's is the cpu.
  const Device& device() const { return storage_ ? storage_->device() : kUndefinedDevice; }
  const std::shared_ptr<Storage>& storage() const { return storage_; }

  // The raw address of the first element. For a DeviceTensor this is device
  // memory: pass it to kernels and communicators, never dereference it on the host.
  void* raw_data() const {
    if (!storage_) undefined();
    return static_cast<char*>(storage_->data()) + offset_;
  }

  // Host only: typed element access. Throws Error(kShape) when T is not the dtype.
  template <class T>
  T* data() const
    requires kIsHost;
  template <class T>
  std::span<T> span() const
    requires kIsHost
  {
    return {data<T>(), static_cast<size_t>(numel())};
  }
  template <class T>
  std::vector<T> to_vector() const
    requires kIsHost
  {
    auto s = span<T>();
    return {s.begin(), s.end()};
  }

  // Views sharing storage.
  // Rows [start, start + length) of axis 0.
  Tensor narrow(int64_t start, int64_t length) const;
  // Same elements, new shape with the same numel.
  Tensor reshape(const Shape& shape) const;

  // A new tensor with a copy of the elements, in the same space and device.
  Tensor clone() const;

  // "f32[128, 96] on cuda:0"
  std::string description() const;

 private:
  static constexpr Device kUndefinedDevice = Device::cpu();
  // Throws Error(kInvalidArgument): raw_data() of an undefined tensor.
  [[noreturn]] static void undefined();
  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;  // bytes from storage_->data()
  Shape shape_;
  DType dtype_ = DType::kF32;
};

using HostTensor = Tensor<HostSpace>;
using DeviceTensor = Tensor<DeviceSpace>;

// Copies a device tensor to host memory; waits for the copy (and so for the work
// queued before it on stream, the device's default stream when null: what
// produced the tensor there). A device tensor's raw_data() is device memory and
// waits for nothing: reading it on the host without a synchronize is a bug,
// which the cpu streams' delayed mode makes fail (stream.h).
HostTensor to_host(const DeviceTensor& tensor, const Stream* stream = nullptr);
// Copies a host tensor to device; waits for the copy.
DeviceTensor to_device(const HostTensor& tensor, const Device& device,
                       const Stream* stream = nullptr);

// dst <- src, both on the same device and of the same dtype and numel. Queued on
// stream (default stream when null), on the cpu device too.
void copy(const DeviceTensor& src, const DeviceTensor& dst, const Stream* stream = nullptr);
// Host to host copy of the same dtype and numel.
void copy(const HostTensor& src, const HostTensor& dst);

// Sets every byte of t to zero, queued on stream (the default stream when null).
void fill_zero(const DeviceTensor& t, const Stream* stream = nullptr);

// A strided block copy within one device's memory: rows rows of row_bytes
// bytes, row r from src + r * src_pitch to dst + r * dst_pitch, queued on
// stream (the default stream when null) on every device (cudaMemcpy2DAsync or
// 1-D copies on CUDA). Cutting a tensor along an axis and putting blocks
// together are such copies.
void copy_rows(const Device& device, void* dst, size_t dst_pitch, const void* src, size_t src_pitch,
               size_t row_bytes, size_t rows, const Stream* stream = nullptr);
// The same in host memory, done on return.
void copy_host_rows(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t row_bytes, size_t rows);

// Before queuing work on a stream other than the device's default stream:
// orders that stream after the default stream (where tensors' memory was
// allocated and last written) and records the stream on their storage, so the
// blocks are not reused while the work runs. No-op for null or default streams
// and on the cpu. Kernels and copies call it for the streams they are given.
void prepare_stream_use(const Stream* stream, std::initializer_list<const DeviceTensor*> tensors);

// Host tensors of one dtype and the same extents after axis 0, one after another
// along axis 0 (stacking requests into a batch, joining micro-batches' results).
HostTensor concat_rows(const std::vector<HostTensor>& parts);

// Converts between element types on the host (any dtype to any dtype), by the
// cast rule of every backend (device/convert.h).
HostTensor cast_host(const HostTensor& tensor, DType dtype);

// ---------------------------------------------------------------------------
// Template definitions
// ---------------------------------------------------------------------------

template <class Space>
template <class T>
Tensor<Space> Tensor<Space>::from_vector(const std::vector<T>& values, const Shape& shape)
  requires kIsHost
{
  MESHRT_CHECK_SHAPE(static_cast<int64_t>(values.size()) == shape.numel(), "from_vector: ",
                     values.size(), " values do not fill shape ", shape, " (", shape.numel(),
                     " elements)");
  Tensor t = empty(shape, dtype_of<T>);
  if constexpr (std::is_same_v<T, bool>) {
    bool* out = t.template data<bool>();
    for (size_t i = 0; i < values.size(); ++i) out[i] = values[i];
  } else {
    if (!values.empty()) std::memcpy(t.raw_data(), values.data(), values.size() * sizeof(T));
  }
  return t;
}

template <class Space>
template <class T>
Tensor<Space> Tensor<Space>::full(const Shape& shape, T value)
  requires kIsHost
{
  Tensor t = empty(shape, dtype_of<T>);
  T* out = t.template data<T>();
  for (int64_t i = 0; i < t.numel(); ++i) out[i] = value;
  return t;
}

template <class Space>
template <class T>
T* Tensor<Space>::data() const
  requires kIsHost
{
  MESHRT_CHECK_SHAPE(dtype_of<T> == dtype_, "data<", to_string(dtype_of<T>),
                     ">() on a tensor of dtype ", to_string(dtype_));
  return static_cast<T*>(raw_data());
}

}  // namespace meshrt

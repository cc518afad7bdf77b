#include "kernels/dispatch.h"

#include <string>

namespace meshrt::kernels::detail {

Launch launch_for(const char* op, const Device& device, const Stream* stream,
                  std::initializer_list<const DeviceTensor*> tensors) {
  Launch launch;
  if (stream) {
    MESHRT_CHECK_ARG(stream->device() == device, op, ": tensors are on ", device,
                     " but the stream is on ", stream->device());
  }
  if (device.is_cpu()) {
    prepare_stream_use(stream, tensors);
    launch.cpu_stream = stream ? *stream : Stream::default_for(device);
    for (const DeviceTensor* t : tensors) launch.bytes += t->nbytes();
    return launch;
  }
  MESHRT_CHECK(cuda_built(), ErrorKind::kUnavailable, op, " on ", device, ": ",
               cuda_unavailable_reason());
  set_current_device(device);
  prepare_stream_use(stream, tensors);
  launch.cuda = true;
  launch.device = device.index();
  launch.stream = (stream ? *stream : Stream::default_for(device)).native_handle();
  return launch;
}

void check_same_device(const char* op, std::initializer_list<const DeviceTensor*> tensors) {
  const DeviceTensor* first = nullptr;
  for (const DeviceTensor* t : tensors) {
    MESHRT_CHECK_ARG(t->defined(), op, ": an argument is an undefined tensor");
    if (!first) {
      first = t;
      continue;
    }
    MESHRT_CHECK_ARG(t->device() == first->device(), op, ": tensors on different devices (",
                     first->description(), " and ", t->description(), ")");
  }
}

void check_dtype(const char* op, const DeviceTensor& t, std::span<const DType> allowed) {
  std::string names;
  for (DType d : allowed) {
    if (d == t.dtype()) return;
    names += names.empty() ? "" : ", ";
    names += to_string(d);
  }
  throw Error(ErrorKind::kShape, meshrt::detail::cat(op, " does not support ", t.description(),
                                                     ": dtype must be one of ", names));
}

}  // namespace meshrt::kernels::detail

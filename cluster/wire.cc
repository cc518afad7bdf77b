#include "cluster/wire.h"

#include <cstring>

#include "device/error.h"

namespace meshrt::cluster {

void detail::put_host_tensor(TensorProto* out, const HostTensor& tensor) {
  MESHRT_CHECK_ARG(tensor.defined(), "cluster::put_tensor: an undefined tensor");
  out->set_dtype(to_string(tensor.dtype()));
  out->clear_shape();
  for (int i = 0; i < tensor.ndim(); ++i) out->add_shape(tensor.dim(i));
  out->set_data(static_cast<const char*>(tensor.raw_data()), tensor.nbytes());
}

HostTensor get_tensor(const TensorProto& proto, const std::string& what) {
  DType dtype;
  try {
    dtype = parse_dtype(proto.dtype());
  } catch (const Error&) {
    throw Error(ErrorKind::kInvalidArgument, what + ": unknown dtype \"" + proto.dtype() + "\"");
  }
  std::vector<int64_t> extents;
  int64_t numel = 1;
  for (int64_t e : proto.shape()) {
    MESHRT_CHECK_ARG(e >= 0 && e <= (int64_t{1} << 40), what, ": extent ", e, " out of range");
    extents.push_back(e);
    numel *= e;
    MESHRT_CHECK_ARG(numel <= (int64_t{1} << 40), what, ": too many elements");
  }
  Shape shape(extents);
  auto bytes = static_cast<size_t>(numel) * size_of(dtype);
  MESHRT_CHECK_ARG(proto.data().size() == bytes, what, ": ", proto.data().size(), " bytes do not fill ",
                   to_string(dtype), " ", shape, " (", bytes, " bytes)");
  HostTensor t = HostTensor::empty(shape, dtype);
  if (bytes > 0) std::memcpy(t.raw_data(), proto.data().data(), bytes);
  return t;
}

}  // namespace meshrt::cluster

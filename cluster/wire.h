// Host tensors on cluster messages (rpc/proto/cluster.proto's TensorProto).
// A cluster message may cross a node, so it takes host memory only, as
// comm/channel.h's Channel does: put_tensor refuses a DeviceTensor at compile
// time (tests/compile_fail/cluster_device_tensor.cc), and a worker's
// gradients leave its device through to_host first.
#pragma once

#include <string>
#include <type_traits>

#include "device/tensor.h"
#include "rpc/proto/cluster.pb.h"

namespace meshrt::cluster {

namespace detail {
void put_host_tensor(TensorProto* out, const HostTensor& tensor);
}

template <class T>
void put_tensor(TensorProto* out, const T& tensor) {
  static_assert(!std::is_same_v<std::remove_cvref_t<T>, DeviceTensor>,
                "cluster messages carry host memory only: call to_host() on the DeviceTensor first "
                "(device memory must not go onto a message that may cross a node)");
  static_assert(std::is_same_v<std::remove_cvref_t<T>, HostTensor>, "cluster::put_tensor takes a HostTensor");
  detail::put_host_tensor(out, tensor);
}

// The tensor a message holds; throws Error(kInvalidArgument) naming `what`
// when its dtype is unknown, an extent negative, or its bytes do not fill
// its shape.
HostTensor get_tensor(const TensorProto& proto, const std::string& what);

}  // namespace meshrt::cluster

// Must NOT compile: a DeviceTensor put on a cluster message. The test
// cluster_rejects_device_tensor passes only if the compiler's error tells the
// user to call to_host() first.
#include "cluster/wire.h"

void put_device_tensor(meshrt::cluster::TensorProto* proto, const meshrt::DeviceTensor& tensor) {
  meshrt::cluster::put_tensor(proto, tensor);
}

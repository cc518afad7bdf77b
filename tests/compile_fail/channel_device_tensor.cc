// Must NOT compile: a DeviceTensor handed to Channel::send. The test
// channel_rejects_device_tensor passes only if the compiler's error tells the
// user to call to_host() first.
#include "comm/channel.h"

void send_device_tensor(const meshrt::Channel& channel, const meshrt::DeviceTensor& tensor) {
  channel.send(tensor, 0);
}

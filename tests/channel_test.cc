// comm/channel.h: host-only messages. The compile-time half of the memory-space
// rule is checked here with static_assert on the Sendable concept, and by the
// compile-fail test channel_rejects_device_tensor (tests/CMakeLists.txt), which
// checks the compiler's message tells the user to call to_host().
#include <gtest/gtest.h>

#include "comm/channel.h"
#include "comm/world.h"
#include "test_util.h"

namespace meshrt {
namespace {

using testing::random_tensor;
using testing::throws_error;

static_assert(Sendable<HostTensor>);
static_assert(Sendable<const HostTensor&>);
static_assert(Sendable<std::string>);
static_assert(Sendable<std::vector<uint8_t>>);
static_assert(!Sendable<DeviceTensor>, "a DeviceTensor must not be sendable on a Channel");
static_assert(!Sendable<const DeviceTensor&>);
static_assert(!Sendable<void*>, "raw pointers go through send_bytes, which checks them");

TEST(Channel, RingOfHostTensorsOfEveryDtype) {
  Channel channel = Channel::world();
  int n = channel.size(), me = channel.rank();
  if (n < 2) GTEST_SKIP() << "needs at least 2 ranks";
  int next = (me + 1) % n, prev = (me + n - 1) % n;
  for (DType dtype : kAllDTypes) {
    HostTensor mine = random_tensor({3, 5, 2}, dtype, 40 + static_cast<uint64_t>(me), -9, 9);
    channel.send(mine, next, 1);  // small messages: buffered, so the ring cannot block
    HostTensor got = channel.recv_tensor(prev, 1);
    HostTensor expected = random_tensor({3, 5, 2}, dtype, 40 + static_cast<uint64_t>(prev), -9, 9);
    EXPECT_EQ(got.shape(), expected.shape());
    EXPECT_EQ(got.dtype(), dtype);
    EXPECT_EQ(std::memcmp(got.raw_data(), expected.raw_data(), got.nbytes()), 0) << to_string(dtype);
  }
}

TEST(Channel, StringsBytesAnySourceAndProbe) {
  Channel channel = Channel::world();
  int n = channel.size(), me = channel.rank();
  if (n < 2) GTEST_SKIP() << "needs at least 2 ranks";
  if (me != 0) {
    channel.send(std::string("hello from ") + std::to_string(me), 0, 2);
    channel.send(std::vector<uint8_t>{1, 2, static_cast<uint8_t>(me)}, 0, 3);
  } else {
    std::vector<bool> seen(static_cast<size_t>(n), false);
    for (int i = 1; i < n; ++i) {
      int from = -1;
      std::string s = channel.recv_string(Channel::kAnySource, 2, &from);
      EXPECT_EQ(s, "hello from " + std::to_string(from));
      seen[static_cast<size_t>(from)] = true;
    }
    for (int r = 1; r < n; ++r) {
      EXPECT_TRUE(seen[static_cast<size_t>(r)]);
      while (!channel.probe(r, 3)) std::this_thread::yield();
      EXPECT_EQ(channel.recv_bytes(r, 3), (std::vector<uint8_t>{1, 2, static_cast<uint8_t>(r)}));
    }
    EXPECT_FALSE(channel.probe(Channel::kAnySource, 3).has_value());
  }
}

TEST(Channel, WrongKindOfMessageIsAnErrorNotACorruption) {
  Channel channel = Channel::world();
  if (channel.size() < 2) GTEST_SKIP() << "needs at least 2 ranks";
  if (channel.rank() == 1) {
    channel.send(std::string("not a tensor"), 0, 4);
    channel.send(std::string("next"), 0, 4);
  }
  if (channel.rank() == 0) {
    EXPECT_TRUE(throws_error(ErrorKind::kShape, [&] { channel.recv_tensor(1, 4); },
                             {"recv of a tensor from rank 1 tag 4", "sent a string"}));
    EXPECT_EQ(channel.recv_string(1, 4), "next");  // the stream stays in step
  }
}

TEST(Channel, RefusesDevicePointersAtRunTime) {
  Channel channel = Channel::world();
  DeviceTensor on_device = DeviceTensor::zeros({16}, DType::kF32, Device::cpu());
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument,
                           [&] { channel.send_bytes(on_device.raw_data(), on_device.nbytes(), 0); },
                           {"device memory", "to_host()"}));
  if (cuda_device_count() > 0) {
    DeviceTensor gpu = DeviceTensor::zeros({16}, DType::kF32, Device::cuda(0));
    EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument,
                             [&] { channel.send_bytes(gpu.raw_data(), gpu.nbytes(), 0); }, {"to_host()"}));
  }
  // The explicit route works: to_host() first.
  HostTensor host = to_host(on_device);
  channel.send_bytes(host.raw_data(), host.nbytes(), channel.rank(), 5);
  EXPECT_EQ(channel.recv_bytes(channel.rank(), 5).size(), host.nbytes());
}

TEST(Channel, DeadlineAndBadArguments) {
  Channel channel = Channel::world();
  channel.set_timeout(std::chrono::milliseconds(200));
  EXPECT_TRUE(throws_error(ErrorKind::kDeadlineExceeded, [&] { channel.recv_string(channel.rank(), 9); },
                           {"did not complete within 200 ms"}));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument,
                           [&] { channel.send(std::string("x"), channel.size(), 0); }, {"destination"}));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument,
                           [&] { channel.send(std::string("x"), 0, Channel::kMaxTag + 1); }, {"tag"}));
}

}  // namespace
}  // namespace meshrt

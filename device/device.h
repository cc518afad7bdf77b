// Devices: where a DeviceTensor's memory lives and where kernels run.
// "cpu" is the CPU backend (ordinary RAM, still Device-typed); "cuda:N" a GPU.
#pragma once

#include <ostream>
#include <string>
#include <string_view>

namespace meshrt {

enum class DeviceKind { kCpu, kCuda };

class Device {
 public:
  constexpr Device() = default;
  static constexpr Device cpu() { return Device(DeviceKind::kCpu, 0); }
  static constexpr Device cuda(int index = 0) { return Device(DeviceKind::kCuda, index); }
  // "cpu", "cuda", "cuda:1". Throws Error(kInvalidArgument) on anything else.
  static Device parse(std::string_view text);

  DeviceKind kind() const { return kind_; }
  int index() const { return index_; }
  bool is_cpu() const { return kind_ == DeviceKind::kCpu; }
  bool is_cuda() const { return kind_ == DeviceKind::kCuda; }
  std::string to_string() const;
  bool operator==(const Device&) const = default;

 private:
  constexpr Device(DeviceKind kind, int index) : kind_(kind), index_(index) {}
  DeviceKind kind_ = DeviceKind::kCpu;
  int index_ = 0;
};

std::ostream& operator<<(std::ostream& out, const Device& device);

// True when this build of meshrt contains the CUDA backend.
bool cuda_built();
// Number of usable CUDA devices: 0 when not built with CUDA, or without a driver or GPU.
int cuda_device_count();
// Why CUDA cannot be used here ("" when a device is available): for test skips and errors.
std::string cuda_unavailable_reason();
// Throws Error(kUnavailable) unless device can be used by this process.
void check_device_usable(const Device& device);
// Makes device current for the calling thread (cudaSetDevice); no-op on cpu.
void set_current_device(const Device& device);

}  // namespace meshrt

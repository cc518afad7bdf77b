#include "device/device.h"

#include <charconv>
#include <mutex>

#include "device/error.h"

#if MESHRT_WITH_CUDA
#include "device/cuda_check.h"
#endif

namespace meshrt {

Device Device::parse(std::string_view text) {
  if (text == "cpu") return cpu();
  if (text == "cuda" || text == "gpu") return cuda(0);
  for (std::string_view prefix : {std::string_view("cuda:"), std::string_view("gpu:")}) {
    if (text.substr(0, prefix.size()) == prefix) {
      std::string_view number = text.substr(prefix.size());
      int index = -1;
      auto [end, ec] = std::from_chars(number.data(), number.data() + number.size(), index);
      if (ec == std::errc() && end == number.data() + number.size() && index >= 0) {
        return cuda(index);
      }
    }
  }
  throw Error(ErrorKind::kInvalidArgument,
              detail::cat("unknown device '", text, "': expected cpu, cuda or cuda:N"));
}

std::string Device::to_string() const {
  return is_cpu() ? "cpu" : "cuda:" + std::to_string(index_);
}

std::ostream& operator<<(std::ostream& out, const Device& device) {
  return out << device.to_string();
}

bool cuda_built() {
#if MESHRT_WITH_CUDA
  return true;
#else
  return false;
#endif
}

namespace {
struct CudaProbe {
  int count = 0;
  std::string reason;
};

const CudaProbe& cuda_probe() {
  static const CudaProbe probe = [] {
    CudaProbe p;
#if MESHRT_WITH_CUDA
    cudaError_t status = cudaGetDeviceCount(&p.count);
    if (status != cudaSuccess) {
      p.count = 0;
      p.reason = "no usable CUDA device: cudaGetDeviceCount returned " +
                 detail::cuda_message(status);
      cudaGetLastError();  // clear the sticky error state of the probe
    } else if (p.count == 0) {
      p.reason = "no CUDA device: cudaGetDeviceCount found 0 devices";
    }
#else
    p.reason = "meshrt was built without CUDA (no nvcc was found at configure time)";
#endif
    return p;
  }();
  return probe;
}
}  // namespace

int cuda_device_count() { return cuda_probe().count; }
std::string cuda_unavailable_reason() { return cuda_probe().reason; }

void check_device_usable(const Device& device) {
  if (device.is_cpu()) return;
  int count = cuda_device_count();
  MESHRT_CHECK(count > 0, ErrorKind::kUnavailable, "device ", device.to_string(),
               " is not available: ", cuda_unavailable_reason());
  MESHRT_CHECK(device.index() < count, ErrorKind::kUnavailable, "device ", device.to_string(),
               " is not available: this process sees ", count, " CUDA device(s)");
}

void set_current_device(const Device& device) {
  if (device.is_cpu()) return;
  check_device_usable(device);
#if MESHRT_WITH_CUDA
  MESHRT_CUDA_CHECK(cudaSetDevice(device.index()));
#endif
}

}  // namespace meshrt

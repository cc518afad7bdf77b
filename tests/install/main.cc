// Uses the installed headers and libraries: -(ones(128x96) @ full(96x16, 0.5)) = -48.
#include <cstdio>

#include "comm/world.h"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"

int main(int argc, char** argv) {
  meshrt::World::init(&argc, &argv);
  using meshrt::HostTensor;
  auto x = meshrt::to_device(HostTensor::full<float>({128, 96}, 1.0f), meshrt::Device::cpu());
  auto w = meshrt::to_device(HostTensor::full<float>({96, 16}, 0.5f), meshrt::Device::cpu());
  HostTensor y = meshrt::to_host(meshrt::kernels::neg(meshrt::kernels::matmul(x, w)));
  for (float v : y.span<float>()) {
    if (v != -48.0f) {
      std::printf("wrong value %g\n", v);
      return 1;
    }
  }
  std::printf("installed meshrt works: y = -48 everywhere\n");
  return 0;
}

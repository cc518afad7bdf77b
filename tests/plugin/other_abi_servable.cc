// A servable library that states another build ABI than the server's
// (servable_plugin_test: it must be refused, naming both). Its define is never
// called.
#include "serving/servable_plugin.h"

extern "C" __attribute__((visibility("default"))) const char* meshrt_servable_abi() {
  return "meshrt 0.0.1 (C++ ABI 1002, libstdc++ old strings, cpu only)";
}

extern "C" __attribute__((visibility("default"))) void meshrt_define_servable(
    const meshrt::serving::ModelConfig& config, const meshrt::Device&, meshrt::serving::ServableDefinition* out) {
  *out = meshrt::serving::servable_shell(config);
}

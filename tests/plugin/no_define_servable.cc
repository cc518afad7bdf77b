// A servable library that states the right ABI but defines no servable (no
// meshrt_define_servable): servable_plugin_test checks it is refused by name.
#include "serving/servable_plugin.h"

extern "C" __attribute__((visibility("default"))) const char* meshrt_servable_abi() {
  return ::meshrt::serving::plugin_detail::servable_abi_with_layout();
}

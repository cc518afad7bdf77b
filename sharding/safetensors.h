// Moved: the safetensors reader and writer are io/safetensors.h (namespace
// meshrt::io). This forwarding header keeps the old path and names working for
// one release.
#pragma once

#include "io/safetensors.h"

namespace meshrt::sharding {
using io::kMaxSafetensorsHeaderBytes;
using io::make_safetensors_header;
using io::parse_safetensors_dtype;
using io::parse_safetensors_header;
using io::read_safetensors_header;
using io::safetensors_dtype_name;
using io::SafetensorsEntry;
using io::SafetensorsHeader;
using io::write_safetensors_file;
}  // namespace meshrt::sharding

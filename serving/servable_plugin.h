// Servables from shared libraries: a stage written in C++ is served by an
// unchanged meshrt-serve, which loads the library named by the model's
// config.json ("servable_library") or by --servable-library <model>=<path>.
//
// A library defines one servable kind with one line:
//
//   #include "serving/servable_plugin.h"
//
//   meshrt::serving::ServableDefinition define(const meshrt::serving::ModelConfig& config,
//                                              const meshrt::Device& device) {
//     meshrt::serving::ServableDefinition s = meshrt::serving::servable_shell(config);
//     s.input = ...; s.output = ...; s.stages = ...;   // stage_size of them
//     return s;
//   }
//   MESHRT_SERVABLE_PLUGIN(define)
//
// and is built as a MODULE library linking meshrt::serving (find_package(meshrt)).
// The macro exports two C symbols:
//
//   const char* meshrt_servable_abi()   the build ABI the library was compiled
//                                       against (MESHRT_SERVABLE_ABI, below)
//   void meshrt_define_servable(const ModelConfig&, const Device&, ServableDefinition*)
//                                       calls define() and stores its result
//
// Loading (load_servable_library) opens the library with RTLD_NOW | RTLD_LOCAL,
// refuses it unless its ABI string equals the server's exactly (meshrt's
// version, the compiler's C++ ABI, libstdc++'s string ABI and whether meshrt
// was built with CUDA: a library of another build would pass these types with
// another layout, or call functions that are not there), then calls
// meshrt_define_servable on every rank (collective work belongs in the stages'
// build(), as for any servable). define() reads what it needs from the config:
// name, version, rank_size, stage_size, batching (servable_shell copies them),
// the optional inputs, outputs and weights, and "parameters" (strings). It may
// throw Error(kInvalidArgument) for a config it cannot serve; the server
// reports the message with the library's path. The definition it returns must
// keep the config's name, version, rank_size and stage_size (the server places
// models by their config).
//
// The library stays loaded while anything it made lives: every function of the
// definition, every stage module built and the generation spec hold a
// reference to it (ServableDefinition::library), so it is closed after the last
// of them is gone.
#pragma once

#include <memory>
#include <string>

#include "device/device.h"
#include "serving/model_config.h"
#include "serving/servable.h"

// meshrt's version comes from the build (CMake's project version) as a usage
// requirement of meshrt::serving: compile against meshrt::serving.
#ifndef MESHRT_VERSION_STRING
#error "MESHRT_VERSION_STRING is not defined: link the target to meshrt::serving (find_package(meshrt)), which defines it"
#endif

#define MESHRT_PLUGIN_STR2(x) #x
#define MESHRT_PLUGIN_STR(x) MESHRT_PLUGIN_STR2(x)
#ifdef __GXX_ABI_VERSION
#define MESHRT_PLUGIN_CXX_ABI "C++ ABI " MESHRT_PLUGIN_STR(__GXX_ABI_VERSION)
#else
#define MESHRT_PLUGIN_CXX_ABI "C++ ABI unknown"
#endif
#if defined(_GLIBCXX_USE_CXX11_ABI) && _GLIBCXX_USE_CXX11_ABI
#define MESHRT_PLUGIN_STRING_ABI ", libstdc++ cxx11 strings"
#elif defined(_GLIBCXX_USE_CXX11_ABI)
#define MESHRT_PLUGIN_STRING_ABI ", libstdc++ old strings"
#else
#define MESHRT_PLUGIN_STRING_ABI ""
#endif
#if MESHRT_WITH_CUDA
#define MESHRT_PLUGIN_FLAVOUR ", cuda"
#else
#define MESHRT_PLUGIN_FLAVOUR ", cpu only"
#endif

#if MESHRT_SHARED_LIBS
#define MESHRT_PLUGIN_LINKAGE ", shared"
#else
#define MESHRT_PLUGIN_LINKAGE ", static"
#endif

// The build ABI of the code that includes this header, e.g.
// "meshrt 0.1.0 (C++ ABI 1017, libstdc++ cxx11 strings, cuda, shared)".
#define MESHRT_SERVABLE_ABI                                                                              \
  "meshrt " MESHRT_VERSION_STRING " (" MESHRT_PLUGIN_CXX_ABI MESHRT_PLUGIN_STRING_ABI MESHRT_PLUGIN_FLAVOUR \
      MESHRT_PLUGIN_LINKAGE ")"

namespace meshrt::serving::plugin_detail {
// MESHRT_SERVABLE_ABI and the sizes of the types that cross the library's
// boundary, as the including code sees them ("..., layout 1234/567/89/64"):
// one version of meshrt whose ServableDefinition or ModelConfig changed
// between builds is refused too.
inline const char* servable_abi_with_layout() {
  static const std::string abi = std::string(MESHRT_SERVABLE_ABI) + ", layout " +
                                 std::to_string(sizeof(ServableDefinition)) + "/" + std::to_string(sizeof(ModelConfig)) +
                                 "/" + std::to_string(sizeof(StageDefinition)) + "/" + std::to_string(sizeof(TensorSpec)) +
                                 "/" + std::to_string(sizeof(Hooks));
  return abi.c_str();
}
}  // namespace meshrt::serving::plugin_detail

// The two symbols a servable library exports (see above); define_function:
// ServableDefinition(const ModelConfig&, const Device&).
#define MESHRT_SERVABLE_PLUGIN(define_function)                                                             \
  extern "C" __attribute__((visibility("default"))) const char* meshrt_servable_abi() {                    \
    return ::meshrt::serving::plugin_detail::servable_abi_with_layout();                                        \
  }                                                                                                       \
  extern "C" __attribute__((visibility("default"))) void meshrt_define_servable(                           \
      const ::meshrt::serving::ModelConfig& config, const ::meshrt::Device& device,                        \
      ::meshrt::serving::ServableDefinition* out) {                                                        \
    *out = define_function(config, device);                                                               \
  }

namespace meshrt::serving {

// The names of the two symbols.
inline constexpr const char* kServableAbiSymbol = "meshrt_servable_abi";
inline constexpr const char* kDefineServableSymbol = "meshrt_define_servable";

// The server's own build ABI (as libmeshrt_serving was compiled: MESHRT_SERVABLE_ABI
// and the layout of the types a library hands over).
const char* servable_abi();

// The servable that the library at `path` defines for `config` (what
// servable_from_config does for a config with servable_library), completed
// (complete_servable) and holding the library open. Throws
// Error(kInvalidArgument) naming the file when it cannot be opened, lacks a
// symbol, was built against another ABI (naming both), when define() throws
// (its message), or when the definition does not match the config.
ServableDefinition load_servable_library(const std::string& path, const ModelConfig& config,
                                         const Device& device = Device::cpu());

}  // namespace meshrt::serving

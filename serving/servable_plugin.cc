#include "serving/servable_plugin.h"

#include <dlfcn.h>

#include <utility>

#include "device/error.h"

namespace meshrt::serving {

const char* servable_abi() { return plugin_detail::servable_abi_with_layout(); }

namespace {

// A callable of the library's that keeps it open: the library is declared
// first, so it is released after the callable (whose code may be the library's).
template <class F>
struct Pinned {
  std::shared_ptr<void> library;
  F f;
  template <class... A>
  auto operator()(A&&... a) const {
    return f(std::forward<A>(a)...);
  }
};

template <class F>
void pin(const std::shared_ptr<void>& library, std::function<F>& f) {
  if (f) f = Pinned<std::function<F>>{library, std::move(f)};
}

// A stage module of the library's (its code, vtable and destructor are there).
class PinnedStage : public StageModule {
 public:
  PinnedStage(std::shared_ptr<void> library, std::unique_ptr<StageModule> stage)
      : library_(std::move(library)), stage_(std::move(stage)) {}
  DTensor forward(const DTensor& x) override { return stage_->forward(x); }
  std::vector<DTensor> forward_tensors(const std::vector<DTensor>& inputs, const BatchParams& params) override {
    return stage_->forward_tensors(inputs, params);
  }

 private:
  std::shared_ptr<void> library_;
  std::unique_ptr<StageModule> stage_;
};

using AbiFunction = const char* (*)();
using DefineFunction = void (*)(const ModelConfig&, const Device&, ServableDefinition*);

}  // namespace

ServableDefinition load_servable_library(const std::string& path, const ModelConfig& config, const Device& device) {
  std::string where = "model '" + config.name + "' (" + config.config_path + "): servable library " + path;
  auto fail = [&](const std::string& what) { throw Error(ErrorKind::kInvalidArgument, where + ": " + what); };
#if !MESHRT_SHARED_LIBS
  // A library linked against a static meshrt would carry a second copy of
  // every singleton (the MPI world, allocators, the log).
  fail("servable libraries need meshrt built as shared libraries (BUILD_SHARED_LIBS=ON); this server is static");
#endif
  ::dlerror();
  // RTLD_NODELETE: never unmapped, even once nothing it made is left (memory
  // it allocated, a vtable or a string of it, may outlive its last object).
  // The same path then gives the same code until the server restarts: a
  // rebuilt library is reloaded under a new path.
  void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
  if (!handle) {
    const char* why = ::dlerror();
    fail(std::string("cannot be loaded: ") + (why ? why : "dlopen failed"));
  }
  std::shared_ptr<void> library(handle, [](void* h) { ::dlclose(h); });
  auto symbol = [&](const char* name) {
    ::dlerror();
    void* s = ::dlsym(handle, name);
    if (!s) {
      fail(std::string("has no symbol ") + name +
           " (a servable library defines its servable with MESHRT_SERVABLE_PLUGIN(function) from "
           "serving/servable_plugin.h)");
    }
    return s;
  };
  auto abi = reinterpret_cast<AbiFunction>(symbol(kServableAbiSymbol));
  auto define = reinterpret_cast<DefineFunction>(symbol(kDefineServableSymbol));
  const char* its = abi();
  std::string library_abi = its ? its : "(null)";
  if (library_abi != servable_abi()) {
    fail("was built against " + library_abi + " but this server is " + servable_abi() +
         ": rebuild the library against this meshrt");
  }

  ServableDefinition s;
  try {
    define(config, device, &s);
  } catch (const Error& e) {
    throw Error(e.kind(), where + ": " + e.message());
  } catch (const std::exception& e) {
    fail(std::string("defining the servable failed: ") + e.what());
  }
  // The functions the library made keep it open, and so do the stages they build.
  for (StageDefinition& stage : s.stages) {
    if (stage.build) {
      stage.build = [library, build = Pinned<decltype(stage.build)>{library, std::move(stage.build)}](
                        const Mesh& mesh) -> std::unique_ptr<StageModule> {
        std::unique_ptr<StageModule> module = build(mesh);
        if (!module) return module;
        return std::make_unique<PinnedStage>(library, std::move(module));
      };
    }
    pin(library, stage.outputs);
  }
  pin(library, s.pack_inputs);
  pin(library, s.hooks.distributed_preprocessing);
  pin(library, s.hooks.client_preprocessing);
  pin(library, s.hooks.client_postprocessing);
  pin(library, s.hooks.distributed_postprocessing);
  if (s.generation) {
    // Held by a pair whose second member (the library's pointer, maybe its
    // deleter) goes before the first (the library).
    auto holder = std::make_shared<std::pair<std::shared_ptr<void>, std::shared_ptr<const GenerationSpec>>>(
        library, std::move(s.generation));
    s.generation = std::shared_ptr<const GenerationSpec>(holder, holder->second.get());
  }
  s.library = library;

  if (s.name != config.name || s.version != config.version || s.rank_size != config.rank_size ||
      s.stage_size != config.stage_size) {
    fail(detail::cat("defined servable '", s.name, "' version ", s.version, " of rank_size ", s.rank_size,
                     " and stage_size ", s.stage_size, ", but the config says '", config.name, "' version ",
                     config.version, ", rank_size ", config.rank_size, ", stage_size ", config.stage_size,
                     " (start from servable_shell(config))"));
  }
  try {
    complete_servable(s);
  } catch (const Error& e) {
    throw Error(e.kind(), where + ": " + e.message());
  }
  return s;
}

}  // namespace meshrt::serving

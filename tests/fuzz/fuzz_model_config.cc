// Fuzz target for the model config reader (serving/model_config.h,
// parse_model_config: what load_model_config and load_repository do with the
// text of a model's config.json). The input is the text of config.json of a
// model in a scratch repository made once per process, whose folders are
// matmul_neg, mlp and m (the folder is the first of matmul_neg and mlp whose
// quoted name the input holds, else m), each with a weights.safetensors file and
// a checkpoint folder ckpt/ (model.safetensors.index.json): the checks that look
// at the folder pass or fail as they would for a real repository.
//
// Any text must give a config or throw meshrt::Error(kInvalidArgument) whose
// message starts with the config's path (model_config.h: every error names the
// file and the field); a config that is read must hold what the reader
// promises (stages, shapes, batching). Built as a libFuzzer target
// (MESHRT_FUZZ=ON, clang) or with the driver fuzz_main.cc; seeds in
// corpus/model_config (the examples' configs among them).
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <string_view>

#include "device/error.h"
#include "serving/model_config.h"

namespace {

struct Repository {
  std::string root;
  Repository() {
    char pattern[] = "/tmp/meshrt-fuzz-config-XXXXXX";
    if (!::mkdtemp(pattern)) {
      std::perror("mkdtemp");
      std::abort();
    }
    root = pattern;
    for (const char* model : {"matmul_neg", "mlp", "m"}) {
      std::string dir = root + "/" + model;
      ::mkdir(dir.c_str(), 0755);
      ::mkdir((dir + "/ckpt").c_str(), 0755);
      std::ofstream(dir + "/weights.safetensors") << "";
      std::ofstream(dir + "/ckpt/model.safetensors.index.json") << "{}";
    }
  }
  ~Repository() {
    for (const char* model : {"matmul_neg", "mlp", "m"}) {
      std::string dir = root + "/" + model;
      ::unlink((dir + "/weights.safetensors").c_str());
      ::unlink((dir + "/ckpt/model.safetensors.index.json").c_str());
      ::rmdir((dir + "/ckpt").c_str());
      ::rmdir(dir.c_str());
    }
    ::rmdir(root.c_str());
  }
};

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "fuzz_model_config: %s\n", what);
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const Repository repository;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  std::string folder = "m";
  for (const char* model : {"matmul_neg", "mlp"}) {
    std::string quoted = "\"";
    quoted += model;
    quoted += '"';
    if (text.find(quoted) != std::string_view::npos) {
      folder = model;
      break;
    }
  }
  std::string dir = repository.root + "/" + folder;
  meshrt::serving::ModelConfig c;
  try {
    c = meshrt::serving::parse_model_config(text, dir);
  } catch (const meshrt::Error& e) {
    if (e.kind() != meshrt::ErrorKind::kInvalidArgument) fail("an error of another kind than invalid argument");
    if (e.message().rfind(dir + "/config.json: ", 0) != 0) {
      std::fprintf(stderr, "the error does not name the config: %s\n", e.message().c_str());
      std::abort();
    }
    return 0;
  }
  if (c.name != folder || c.directory != dir || c.config_path != dir + "/config.json") fail("name or paths");
  if (c.weights_path.rfind(dir + "/", 0) != 0 || c.weights_path.find("..") != std::string::npos) fail("weights path");
  if (c.version.empty() || c.version.find('/') != std::string::npos) fail("version");
  if (c.rank_size < 1 || c.stage_size < 1 || c.rank_size % c.stage_size != 0) fail("rank_size and stage_size");
  if (static_cast<int>(c.stages.size()) != c.stage_size) fail("stages");
  for (const meshrt::serving::TensorSpec* t : {&c.input, &c.output}) {
    if (t->name.empty() || t->shape.size() != 2 || t->shape[0] != -1 || t->shape[1] < 1) fail("input or output spec");
  }
  if (c.input.dtype != c.output.dtype) fail("input and output dtypes");
  for (const auto& stage : c.stages) {
    for (const auto& layer : stage.layers) {
      if (!meshrt::models::find_layer_type(layer.type)) fail("a layer of an unknown type");
    }
  }
  const auto& b = c.batching;
  if (b.max_batch_size < 1 || b.max_queue_delay_us < 0 || b.micro_batches < 1 || b.max_queue_size < 1) fail("batching");
  if (!std::is_sorted(b.preferred_batch_sizes.begin(), b.preferred_batch_sizes.end())) fail("preferred sizes order");
  for (int64_t p : b.preferred_batch_sizes) {
    if (p < 1 || p > b.max_batch_size) fail("a preferred batch size");
  }
  return 0;
}

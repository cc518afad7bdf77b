// Servables from shared libraries (serving/servable_plugin.h): the example
// library (examples/plugin/scale_servable.cc) loaded from a model folder and
// run through the engine on every rank of the job; libraries of another ABI,
// without the symbols, or missing, refused by name; the library kept loaded
// while anything it made lives.
#include <dlfcn.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include "comm/world.h"
#include "serving/engine.h"
#include "serving/servable_plugin.h"
#include "engine_test_util.h"
#include "test_util.h"

namespace meshrt::serving {
namespace {

namespace fs = std::filesystem;
using meshrt::testing::random_tensor;
using meshrt::testing::throws_error;
using meshrt::testing::with_engine;

// A fresh folder of this rank's.
std::string temp_root(const std::string& what) {
  fs::path root = fs::temp_directory_path() /
                  ("meshrt-plugin-" + what + "-" + std::to_string(::getpid()) + "-" + std::to_string(World::get().rank()));
  fs::remove_all(root);
  fs::create_directories(root);
  return root.string();
}

// A model folder root/name with config.json; the scale library copied in as
// libscale_servable.so when copy_library.
std::string write_model(const std::string& root, const std::string& name, const std::string& config,
                        bool copy_library = true) {
  std::string dir = root + "/" + name;
  fs::create_directories(dir);
  std::ofstream(dir + "/config.json") << config;
  if (copy_library) fs::copy_file(SCALE_SERVABLE, dir + "/libscale_servable.so", fs::copy_options::overwrite_existing);
  return dir;
}

std::string scaled_config(const std::string& name, int rank_size, int stage_size, const std::string& factor,
                          const std::string& library = "libscale_servable.so") {
  return R"({"name": ")" + name + R"(", "rank_size": )" + std::to_string(rank_size) + R"(, "stage_size": )" +
         std::to_string(stage_size) + R"(, "servable_library": ")" + library + R"(",
      "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
      "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
      "parameters": {"factor": )" + factor + "}}";
}

// Whether the library at path is loaded in this process.
bool loaded(const std::string& path) {
  void* h = ::dlopen(path.c_str(), RTLD_NOW | RTLD_NOLOAD);
  if (h) ::dlclose(h);
  return h != nullptr;
}

TEST(ServablePlugin, TheExampleScalesThroughTheEngineOnEveryRank) {
  int n = World::get().size();
  std::string root = temp_root("engine");
  std::string dir = write_model(root, "scaled", scaled_config("scaled", n, n, "2.5"));
  ModelConfig config = load_model_config(dir);
  EXPECT_EQ(config.servable_library, dir + "/libscale_servable.so") << "relative to the model's folder";
  EXPECT_EQ(config.parameters.at("factor"), "2.5");
  ServableDefinition s = servable_from_config(config);
  EXPECT_TRUE(s.library) << "the definition holds the library";
  ASSERT_EQ(s.stages.size(), static_cast<size_t>(n));
  EXPECT_EQ(signature_of(s).inputs[0].shape, (std::vector<int64_t>{-1, 3}));

  Engine engine({s}, Device::cpu());
  with_engine(engine, [&] {
    HostTensor x = random_tensor({5, 3}, DType::kF32, 7);
    HostTensor y = engine.run(0, x, 2);
    ASSERT_EQ(y.shape(), (Shape{5, 3}));
    double factor = std::pow(2.5, n);  // every stage scales
    for (int64_t i = 0; i < 15; ++i) {
      EXPECT_NEAR(y.data<float>()[i], x.data<float>()[i] * factor, 1e-4 * std::abs(x.data<float>()[i] * factor) + 1e-6);
    }
  });
  fs::remove_all(root);
}

TEST(ServablePlugin, TheLibraryStaysLoaded) {
  std::string root = temp_root("lifetime");
  std::string dir = write_model(root, "scaled", scaled_config("scaled", 1, 1, "3"));
  std::string path = dir + "/libscale_servable.so";
  EXPECT_FALSE(loaded(path));
  std::function<std::vector<ActivationSpec>(const std::vector<int64_t>&, const BatchParams&)> outputs;
  {
    ServableDefinition s = servable_from_config(load_model_config(dir));
    EXPECT_TRUE(loaded(path));
    outputs = s.stages[0].outputs;  // the library's lambda
  }
  EXPECT_TRUE(loaded(path)) << "a function of the library's still lives";
  EXPECT_EQ(outputs({4}, {})[0].dims, (std::vector<int64_t>{4}));
  outputs = nullptr;
  // Nothing of the library's is left, and it stays mapped (RTLD_NODELETE):
  // memory it allocated may outlive its last object.
  EXPECT_TRUE(loaded(path)) << "a servable library is never unmapped";
  fs::remove_all(root);
}

TEST(ServablePlugin, AnotherAbiIsRefusedNamingBothAndTheFile) {
  std::string root = temp_root("abi");
  std::string dir = write_model(root, "other", scaled_config("other", 1, 1, "2", OTHER_ABI_SERVABLE), false);
  ModelConfig config = load_model_config(dir);
  EXPECT_EQ(config.servable_library, OTHER_ABI_SERVABLE) << "an absolute path is kept";
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { servable_from_config(config); },
                           {"model 'other'", OTHER_ABI_SERVABLE,
                            "was built against meshrt 0.0.1 (C++ ABI 1002, libstdc++ old strings, cpu only)",
                            std::string("but this server is ") + servable_abi(), "rebuild the library"}));
  EXPECT_NE(std::string(servable_abi()).find("meshrt " MESHRT_VERSION_STRING " (C++ ABI "), std::string::npos)
      << servable_abi();
  fs::remove_all(root);
}

TEST(ServablePlugin, MissingFilesAndSymbolsAreRefusedByName) {
  std::string root = temp_root("missing");
  ModelConfig none = load_model_config(write_model(root, "none", scaled_config("none", 1, 1, "2", "libnothing.so"), false));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { servable_from_config(none); },
                           {"servable library " + root + "/none/libnothing.so: cannot be loaded"}));
  ModelConfig no_define = load_model_config(write_model(root, "nodef", scaled_config("nodef", 1, 1, "2", NO_DEFINE_SERVABLE), false));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { servable_from_config(no_define); },
                           {NO_DEFINE_SERVABLE, "has no symbol meshrt_define_servable", "MESHRT_SERVABLE_PLUGIN"}));
  // A shared library that is no servable library at all.
  ModelConfig no_abi = load_model_config(write_model(root, "noabi", scaled_config("noabi", 1, 1, "2", NOT_A_SERVABLE), false));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { servable_from_config(no_abi); },
                           {NOT_A_SERVABLE, "has no symbol meshrt_servable_abi"}));
  fs::remove_all(root);
}

TEST(ServablePlugin, TheLibrarysOwnConfigErrorsNameTheLibrary) {
  std::string root = temp_root("errors");
  ModelConfig bad = load_model_config(write_model(root, "bad", scaled_config("bad", 1, 1, R"("lots")")));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { servable_from_config(bad); },
                           {"servable library " + root + "/bad/libscale_servable.so",
                            "parameters.factor: expected a number, got \"lots\""}));
  // Without inputs, outputs, weights or stages the config reads (the library defines the rest) ...
  std::string bare = write_model(root, "bare",
                                 R"({"name": "bare", "rank_size": 1, "stage_size": 1, "servable_library": "libscale_servable.so",
                                     "parameters": {"factor": 2, "verbose": true, "label": "b"}})");
  ModelConfig config = load_model_config(bare);
  EXPECT_EQ(config.parameters.at("verbose"), "true");
  EXPECT_EQ(config.parameters.at("label"), "b");
  // ... and this library wants an input.
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { servable_from_config(config); },
                           {"inputs: missing (this servable scales the input the config declares)"}));
  // The reader's own checks.
  std::string nested = write_model(root, "nested",
                                   R"({"name": "nested", "rank_size": 1, "stage_size": 1, "servable_library": "x.so",
                                       "parameters": {"factor": [2]}})", false);
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { load_model_config(nested); },
                           {nested + "/config.json: parameters.factor: expected a string, a number or a boolean"}));
  std::string half = write_model(root, "half",
                                 R"({"name": "half", "rank_size": 1, "stage_size": 1, "servable_library": "x.so",
                                     "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}]})", false);
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { load_model_config(half); }, {"outputs: missing"}));
  std::string no_stages = write_model(root, "nostages",
                                      R"({"name": "nostages", "rank_size": 1, "stage_size": 1,
                                          "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
                                          "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}]})", false);
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { load_model_config(no_stages); }, {"weights: missing"}))
      << "a layer config still needs its weights and stages";
  fs::remove_all(root);
}

TEST(ServablePlugin, TheRepositoryTakesLibrariesOverTheConfigs) {
  std::string root = temp_root("repository");
  // A config without a library, and one whose library is replaced.
  write_model(root, "plain", R"({"name": "plain", "rank_size": 1, "stage_size": 1,
      "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
      "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
      "parameters": {"factor": 4}})", false);
  write_model(root, "scaled", scaled_config("scaled", 1, 1, "2", OTHER_ABI_SERVABLE), false);
  std::vector<ModelConfig> configs = load_repository(root, {{"plain", SCALE_SERVABLE}, {"scaled", SCALE_SERVABLE}});
  ASSERT_EQ(configs.size(), 2u);
  for (const ModelConfig& c : configs) {
    EXPECT_EQ(c.servable_library, SCALE_SERVABLE) << c.name;
    ServableDefinition s = servable_from_config(c);
    EXPECT_EQ(s.name, c.name);
  }
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { load_repository(root, {{"absent", SCALE_SERVABLE}}); },
                           {"servable library " SCALE_SERVABLE " is given for model 'absent', which is not in the repository"}));
  // Without the override, "plain" has no stages to serve.
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { load_repository(root); }, {"plain/config.json: weights: missing"}));
  fs::remove_all(root);
}

}  // namespace
}  // namespace meshrt::serving

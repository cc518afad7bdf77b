// serving/: model configs, servables and the pipeline engine, without HTTP.
// At 4 ranks it runs the example repository (2 stages x 2-way tensor parallel);
// at every size it runs servables written for that size, checking results against
// the same layers computed on one rank, and the order and place of the hooks.
#include <gtest/gtest.h>
#include <mpi.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include "comm/world.h"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"
#include "kernels/reduction.h"
#include "serving/engine.h"
#include "sharding/ops.h"
#include "io/safetensors.h"
#include "engine_test_util.h"
#include "test_util.h"

namespace meshrt::serving {
namespace {

using meshrt::testing::all_close;
using meshrt::testing::random_tensor;
using meshrt::testing::throws_error;

const std::string kExamples = MESHRT_SOURCE_DIR "/examples/models";

// A tensor of a safetensors file, read whole on this rank (the one-rank reference).
HostTensor read_whole(const std::string& path, const std::string& name) {
  io::SafetensorsHeader h = io::read_safetensors_header(path);
  const io::SafetensorsEntry& e = h.find(name);
  HostTensor t = HostTensor::empty(e.shape, e.dtype);
  std::ifstream in(path, std::ios::binary);
  in.seekg(static_cast<std::streamoff>(h.data_start + e.begin));
  in.read(static_cast<char*>(t.raw_data()), static_cast<std::streamsize>(t.nbytes()));
  return t;
}

DeviceTensor dev(const HostTensor& h) { return to_device(h, Device::cpu()); }

using meshrt::testing::with_engine;

TEST(ModelConfig, ExampleRepositoryLoads) {
  std::vector<ModelConfig> models = load_repository(kExamples);
  ASSERT_EQ(models.size(), 2u);
  EXPECT_EQ(models[0].name, "matmul_neg");
  EXPECT_EQ(models[0].rank_size, 4);
  EXPECT_EQ(models[0].stage_size, 2);
  EXPECT_EQ(models[0].stages[0].layers[0].value("parallel"), "row");
  EXPECT_EQ(models[1].name, "mlp");
  EXPECT_EQ(models[1].batching.preferred_batch_sizes, (std::vector<int64_t>{32, 64}));
  EXPECT_TRUE(models[1].batching.start_when_idle) << "the default";
  ServableDefinition s = servable_from_config(models[1]);
  EXPECT_EQ(s.stages[0].output_width, 32);
  EXPECT_EQ(s.stages[1].output_width, 8);
}

// Writes a model folder with the given config text and weights.
std::string write_model(const std::string& root, const std::string& name, const std::string& config,
                        const std::vector<std::pair<std::string, HostTensor>>& weights) {
  std::string dir = root + "/" + name;
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/config.json") << config;
  io::write_safetensors_file(dir + "/weights.safetensors", weights);
  return dir;
}

TEST(ModelConfig, BadConfigsNameFileFieldAndExpectation) {
  std::string root = (std::filesystem::temp_directory_path() / ("meshrt-config-" + std::to_string(::getpid()))).string();
  std::filesystem::remove_all(root);
  auto w = HostTensor::full<float>({8, 4}, 1.0f);
  auto config = [](const std::string& name, const std::string& stages, const std::string& extra = "") {
    return R"({"name": ")" + name + R"(", "rank_size": 1, "stage_size": 1,
      "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}],
      "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
      "weights": "weights.safetensors", "stages": )" + stages + extra + "}";
  };
  struct Case {
    std::string name, stages, extra, fragment;
  };
  std::vector<Case> cases = {
      {"bad_type", R"([{"layers": [{"type": "conv"}]}])", "", "stages[0].layers[0].type: expected one of linear"},
      {"no_weight", R"([{"layers": [{"type": "linear", "weight": "v"}]}])", "", "stages[0].layers[0].weight: no tensor 'v' in"},
      {"bad_parallel", R"([{"layers": [{"type": "linear", "weight": "w", "parallel": "diagonal"}]}])", "",
       "stages[0].layers[0].parallel: expected column, row or none"},
      {"bad_width", R"([{"layers": [{"type": "linear", "weight": "w"}, {"type": "linear", "weight": "w"}]}])", "",
       "stages[0].layers[1].weight: tensor 'w'"},
      {"bad_stages", R"([])", "", "stages: expected a list of stage_size (1) stages"},
      {"bad_batching", R"([{"layers": [{"type": "linear", "weight": "w"}]}])", R"(, "batching": {"max_batch_size": 0})",
       "batching.max_batch_size: expected an integer from 1 to 1048576, got 0"},
      {"bad_idle_start", R"([{"layers": [{"type": "linear", "weight": "w"}]}])", R"(, "batching": {"start_when_idle": 1})",
       "batching.start_when_idle: expected true or false"},
      {"bad_residual", R"([{"layers": [{"type": "residual_add", "from": "nothing"}]}])", "",
       "stages[0].layers[0].from: expected the \"save\" name"},
      {"empty_save", R"([{"layers": [{"type": "neg", "save": ""}]}])", "", "stages[0].layers[0].save: expected a non-empty name"},
      {"field_on_wrong_layer", R"([{"layers": [{"type": "neg", "weight": "w"}]}])", "", "stages[0].layers[0].weight: unknown field"},
      {"unknown_top_field", R"([])", R"(, "micro": 1)", "micro: unknown field"},
      {"negative_sleep", R"([{"layers": [{"type": "sleep", "us": -1}]}])", "",
       "stages[0].layers[0].us: expected a number >= 0"},
      {"text_sleep", R"([{"layers": [{"type": "sleep", "us_per_row": "long"}]}])", "",
       "stages[0].layers[0].us_per_row: expected a number >= 0"},
  };
  for (const Case& c : cases) {
    std::string dir = write_model(root, c.name, config(c.name, c.stages, c.extra), {{"w", w}});
    EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { servable_from_config(load_model_config(dir)); },
                             {dir + "/config.json: ", c.fragment}))
        << c.name;
  }
  std::string dir = write_model(root, "bad_json", "{\"name\": ", {{"w", w}});
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { load_model_config(dir); }, {"config.json: not valid JSON"}));
  std::string huge = config("huge_stage_size", "[]");
  huge.replace(huge.find("\"stage_size\": 1"), 15, "\"stage_size\": 4294967296");
  dir = write_model(root, "huge_stage_size", huge, {{"w", w}});
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { load_model_config(dir); },
                           {"stage_size: expected an integer from 1 to 1, got 4294967296"}));
  dir = write_model(root, "other_name", config("elsewhere", "[]"), {{"w", w}});
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { load_model_config(dir); },
                           {"name: expected \"other_name\" (the model's folder name)"}));
  std::filesystem::remove_all(root);
}

// Versions as Triton lays them out: the config beside numeric version folders,
// each with its weights; the policy picks the served ones; a folder without
// version folders is one version, as before; the latest answers when a
// request names no version.
TEST(ModelConfig, VersionFoldersAndPolicies) {
  std::string root = (std::filesystem::temp_directory_path() / ("meshrt-versions-" + std::to_string(::getpid()))).string();
  std::filesystem::remove_all(root);
  auto model = [&](const std::string& name, const std::string& extra, const std::vector<int>& versions) {
    std::string dir = root + "/" + name;
    std::filesystem::create_directories(dir);
    std::ofstream(dir + "/config.json") << R"({"name": ")" + name + R"(", "rank_size": 1, "stage_size": 1,
      "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
      "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
      "weights": "weights.safetensors", "stages": [{"layers": [{"type": "linear", "weight": "w"}]}])" + extra + "}";
    for (int v : versions) {
      // Version v multiplies by v: y = x @ (v I).
      std::filesystem::create_directories(dir + "/" + std::to_string(v));
      io::write_safetensors_file(dir + "/" + std::to_string(v) + "/weights.safetensors",
                                 {{"w", HostTensor::from_vector<float>({float(v), 0, 0, float(v)}, Shape{2, 2})}});
    }
    return dir;
  };
  auto versions_of = [](const std::vector<ModelConfig>& configs) {
    std::vector<std::string> out;
    for (const ModelConfig& c : configs) out.push_back(c.version);
    return out;
  };
  // Default policy: the latest one (10 is later than 9).
  EXPECT_EQ(versions_of(load_model_versions(model("latest", "", {1, 9, 10}))), (std::vector<std::string>{"10"}));
  EXPECT_EQ(versions_of(load_model_versions(model("two", R"(, "version_policy": {"latest": {"num_versions": 2}})", {1, 2, 3}))),
            (std::vector<std::string>{"2", "3"}));
  EXPECT_EQ(versions_of(load_model_versions(model("all", R"(, "version_policy": {"all": {}})", {3, 1, 2}))),
            (std::vector<std::string>{"1", "2", "3"}));
  std::vector<ModelConfig> specific =
      load_model_versions(model("specific", R"(, "version_policy": {"specific": {"versions": [3, 1]}})", {1, 2, 3}));
  EXPECT_EQ(versions_of(specific), (std::vector<std::string>{"1", "3"}));
  EXPECT_EQ(specific[1].name, "specific");
  EXPECT_EQ(specific[1].weights_path, root + "/specific/3/weights.safetensors");
  // "0" and "01" are not version folders (Triton's rule).
  std::string zeros = model("zeros", "", {1});
  std::filesystem::create_directories(zeros + "/0");
  std::filesystem::create_directories(zeros + "/01");
  EXPECT_EQ(versions_of(load_model_versions(zeros)), (std::vector<std::string>{"1"}));
  // Refusals name the folder and the field.
  std::string dir = model("missing", R"(, "version_policy": {"specific": {"versions": [4]}})", {1});
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { load_model_versions(dir); },
                           {"version_policy.specific.versions: version 4 has no folder"}));
  dir = model("both", R"(, "version": "7")", {1});
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { load_model_versions(dir); },
                           {"takes its versions from them: remove \"version\""}));
  dir = model("bad_policy", R"(, "version_policy": {"newest": {}})", {1});
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { load_model_versions(dir); },
                           {"version_policy: expected \"latest\", \"all\" or \"specific\""}));
  // No version folders: one version, the config's (today's layout).
  std::string flat = write_model(root, "flat", R"({"name": "flat", "version": "5", "rank_size": 1, "stage_size": 1,
      "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
      "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
      "weights": "weights.safetensors", "stages": [{"layers": [{"type": "neg"}]}]})", {});
  EXPECT_EQ(versions_of(load_model_versions(flat)), (std::vector<std::string>{"5"}));
  std::string policy_alone = write_model(root, "policy_alone", R"({"name": "policy_alone", "rank_size": 1, "stage_size": 1,
      "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
      "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}], "version_policy": {"all": {}},
      "weights": "weights.safetensors", "stages": [{"layers": [{"type": "neg"}]}]})", {});
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { load_model_versions(policy_alone); },
                           {"version_policy: the model has no version folders"}));

  // Each version its own weights, through the engine; no version: the latest.
  if (World::get().size() == 1) {
    std::vector<ServableDefinition> servables;
    for (const ModelConfig& c : load_model_versions(model("engine", R"(, "version_policy": {"all": {}})", {9, 10}))) {
      servables.push_back(servable_from_config(c));
    }
    Engine engine(servables, Device::cpu());
    int v9 = engine.find("engine", "9"), v10 = engine.find("engine", "10");
    ASSERT_GE(v9, 0);
    ASSERT_GE(v10, 0);
    EXPECT_EQ(engine.find("engine"), v10);  // 10 is later than 9, though "9" > "10" as text
    with_engine(engine, [&] {
      HostTensor x = HostTensor::from_vector<float>({1, 2}, Shape{1, 2});
      EXPECT_EQ(engine.run(v9, x, 1).to_vector<float>(), (std::vector<float>{9, 18}));
      EXPECT_EQ(engine.run(v10, x, 1).to_vector<float>(), (std::vector<float>{10, 20}));
    });
  }
  std::filesystem::remove_all(root);
}

// Layer configs with more axes than [rows, width] (the layers act on the last
// one) and integer tensors, through the engine at this job's size (2 pipeline
// stages from 2 ranks on).
TEST(Engine, ConfigModelsOfMoreAxesAndIntegers) {
  World& world = World::get();
  int n = world.size(), stages = n >= 2 ? 2 : 1;
  std::string root = (std::filesystem::temp_directory_path() / ("meshrt-nd-" + std::to_string(::getpid()))).string();
  std::filesystem::remove_all(root);
  HostTensor w = random_tensor({8, 4}, DType::kF32, 3);
  auto header = [&](const std::string& name, const std::string& dtype, const std::string& in, const std::string& out) {
    return R"({"name": ")" + name + R"(", "rank_size": )" + std::to_string(n) + R"(, "stage_size": )" +
           std::to_string(stages) + R"(, "inputs": [{"name": "x", "datatype": ")" + dtype + R"(", "shape": )" + in +
           R"(}], "outputs": [{"name": "y", "datatype": ")" + dtype + R"(", "shape": )" + out +
           R"(}], "weights": "weights.safetensors", "stages": )";
  };
  std::string second = stages == 2 ? R"(, {"layers": [{"type": "relu"}]})" : "";
  std::string first_float = stages == 2 ? R"({"layers": [{"type": "linear", "weight": "w", "parallel": "column"}]})"
                                        : R"({"layers": [{"type": "linear", "weight": "w"}, {"type": "relu"}]})";
  std::string floats = write_model(root, "seq", header("seq", "FP32", "[-1, -1, 8]", "[-1, -1, 4]") + "[" + first_float + second + "]}",
                                   {{"w", w}});
  std::string first_int = stages == 2 ? R"({"layers": [{"type": "neg"}]})" : R"({"layers": [{"type": "neg"}, {"type": "relu"}]})";
  std::string ints = write_model(root, "ints", header("ints", "INT32", "[-1, 2, 3]", "[-1, 2, 3]") + "[" + first_int + second + "]}",
                                 {{"w", w}});
  ServableDefinition seq = servable_from_config(load_model_config(floats));
  ServableDefinition integer = servable_from_config(load_model_config(ints));
  EXPECT_EQ(signature_of(seq).inputs[0].shape, (std::vector<int64_t>{-1, -1, 8}));

  // Refused: an output that does not keep the other axes, a linear layer on integers.
  std::string bad = write_model(root, "bad", header("bad", "FP32", "[-1, 5, 8]", "[-1, 4]") + "[" + first_float + second + "]}",
                                {{"w", w}});
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { load_model_config(bad); },
                           {"outputs[0].shape: expected [-1, 5, width]: the layers act on the last axis"}));
  std::string int_linear = write_model(root, "int_linear",
                                       header("int_linear", "INT32", "[-1, 8]", "[-1, 4]") +
                                           R"([{"layers": [{"type": "linear", "weight": "w"}]})" + second + "]}",
                                       {{"w", w}});
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { servable_from_config(load_model_config(int_linear)); },
                           {"tensor 'w'", "is f32 but the model runs in i32"}));

  Engine engine({seq, integer}, Device::cpu());
  with_engine(engine, [&] {
    // Two requests' worth of sequences of 5 vectors, in two micro-batches.
    HostTensor x = random_tensor({3, 5, 8}, DType::kF32, 4);
    HostTensor y = engine.run(0, x, 2);
    ASSERT_EQ(y.shape(), (Shape{3, 5, 4}));
    HostTensor expected = HostTensor::empty({3, 5, 4}, DType::kF32);
    for (int64_t r = 0; r < 15; ++r) {
      for (int64_t c = 0; c < 4; ++c) {
        double sum = 0;
        for (int64_t k = 0; k < 8; ++k) sum += double(x.data<float>()[r * 8 + k]) * w.data<float>()[k * 4 + c];
        expected.data<float>()[r * 4 + c] = static_cast<float>(std::max(sum, 0.0));
      }
    }
    EXPECT_TRUE(all_close(y, expected, 1e-5, 1e-5));
    // Another extent of the free axis runs too.
    EXPECT_EQ(engine.run(0, random_tensor({1, 2, 8}, DType::kF32, 5), 1).shape(), (Shape{1, 2, 4}));
    // An extent the spec fixes is checked.
    EXPECT_TRUE(throws_error(ErrorKind::kShape, [&] { engine.run(1, HostTensor::full<int32_t>({1, 3, 3}, 1), 1); },
                             {"takes INT32[-1, 2, 3]"}));
    HostTensor ix = HostTensor::from_vector(std::vector<int32_t>{1, -2, 3, -4, 5, -6, 0, 7, -8, 9, -10, 11}, {2, 2, 3});
    HostTensor iy = engine.run(1, ix, 2);
    ASSERT_EQ(iy.dtype(), DType::kI32);
    EXPECT_EQ(iy.to_vector<int32_t>(), (std::vector<int32_t>{0, 2, 0, 4, 0, 6, 0, 0, 8, 0, 10, 0}));
  });
  std::filesystem::remove_all(root);
}

TEST(Engine, ExampleModelsOnFourRanks) {
  if (World::get().size() != 4) GTEST_SKIP() << "the example models need rank_size 4 (this job has " << World::get().size() << ")";
  std::vector<ServableDefinition> servables;
  for (const ModelConfig& c : load_repository(kExamples)) servables.push_back(servable_from_config(c));
  Engine engine(servables, Device::cpu());
  with_engine(engine, [&] {
    // MatMul+Neg: ones -> -48, in 1 and 2 micro-batches, odd batch sizes too.
    int mm = engine.find("matmul_neg");
    for (int64_t rows : {int64_t{128}, int64_t{7}, int64_t{1}}) {
      for (int micro : {1, 2, 3}) {
        HostTensor y = engine.run(mm, HostTensor::full<float>({rows, 96}, 1.0f), micro);
        ASSERT_EQ(y.shape(), (Shape{rows, 16}));
        for (float v : y.span<float>()) ASSERT_EQ(v, -48.0f) << rows << " rows, " << micro << " micro-batches";
      }
    }
    // The MLP against the same layers on one rank.
    std::string weights = kExamples + "/mlp/weights.safetensors";
    auto wt = [&](const char* n) { return dev(read_whole(weights, n)); };
    HostTensor x = random_tensor({19, 32}, DType::kF32, 5);
    DeviceTensor h = kernels::bias_add(kernels::matmul(dev(x), wt("proj.weight")), wt("proj.bias"));
    DeviceTensor f = kernels::layernorm(h, wt("ln.gamma"), wt("ln.beta"), 1e-5);
    f = kernels::gelu(kernels::bias_add(kernels::matmul(f, wt("up.weight")), wt("up.bias")));
    f = kernels::bias_add(kernels::matmul(f, wt("down.weight")), wt("down.bias"));
    DeviceTensor o = kernels::add(f, h);
    o = kernels::rmsnorm(o, wt("norm.gamma"), 1e-6);
    o = kernels::softmax(kernels::bias_add(kernels::matmul(o, wt("head.weight")), wt("head.bias")));
    HostTensor got = engine.run(engine.find("mlp"), x, 2);
    EXPECT_TRUE(all_close(got, to_host(o), 1e-5, 1e-6));
    // A batch of the wrong width is refused before anything is sent.
    EXPECT_TRUE(throws_error(ErrorKind::kShape, [&] { engine.run(mm, HostTensor::full<float>({2, 95}, 1.0f), 1); },
                             {"model 'matmul_neg' takes FP32[-1, 96]", "f32[2, 95]"}));
  });
}

TEST(Engine, RankSizeMustMatchTheJob) {
  if (World::get().size() == 4) GTEST_SKIP() << "the example models fit 4 ranks";
  ServableDefinition s = servable_from_config(load_repository(kExamples)[0]);
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { Engine engine({s}, Device::cpu()); },
                           {"model 'matmul_neg' needs rank_size = 4 ranks but this job has " +
                            std::to_string(World::get().size()) + ": start it with mpirun -np 4"}));
}

// A C++-defined servable on every rank of the job as pure pipeline stages: each
// stage adds its index + 1; hooks log where and in which order they ran.
struct HookLog {
  std::vector<std::string> entries;
};

class AddStage : public StageModule {
 public:
  explicit AddStage(float amount) : amount_(amount) {}
  DTensor forward(const DTensor& x) override {
    DTensor one = DTensor::from_global(HostTensor::full<float>(x.global_shape(), amount_), x.mesh(),
                                       sharding::Layout::replicated(2), "amount");
    return sharding::add(x, one);
  }

 private:
  float amount_;
};

TEST(Engine, PipelineOfEveryRankWithHooksInOrder) {
  int n = World::get().size(), me = World::get().rank();
  static HookLog log;
  log.entries.clear();
  ServableDefinition s;
  s.name = "adder";
  s.rank_size = n;
  s.stage_size = n;
  s.input = {"x", DType::kF32, {-1, 3}};
  s.output = {"y", DType::kF32, {-1, 3}};
  for (int i = 0; i < n; ++i) {
    s.stages.push_back({3, [i](const Mesh&) { return std::make_unique<AddStage>(static_cast<float>(i + 1)); }, {}});
  }
  s.hooks.distributed_preprocessing = [me](const HostTensor& x) {
    log.entries.push_back("distributed_preprocessing@" + std::to_string(me));
    return x;
  };
  s.hooks.client_preprocessing = [me](const DTensor& x) {
    log.entries.push_back("client_preprocessing@" + std::to_string(me));
    return x;
  };
  s.hooks.client_postprocessing = [me](const DTensor& x) {
    log.entries.push_back("client_postprocessing@" + std::to_string(me));
    return x;
  };
  s.hooks.distributed_postprocessing = [me](const DTensor& x) {
    log.entries.push_back("distributed_postprocessing@" + std::to_string(me));
    return x.gather();
  };
  Engine engine({s}, Device::cpu());
  with_engine(engine, [&] {
    HostTensor y = engine.run(0, HostTensor::full<float>({5, 3}, 10.0f), 2);
    float expected = 10.0f + static_cast<float>(n * (n + 1) / 2);
    for (float v : y.span<float>()) ASSERT_EQ(v, expected);
  });
  // Gather every rank's log on rank 0.
  std::string mine;
  for (const auto& e : log.entries) mine += e + ";";
  mine.resize(256, ' ');
  std::vector<char> all(static_cast<size_t>(n) * 256);
  MPI_Gather(mine.data(), 256, MPI_CHAR, all.data(), 256, MPI_CHAR, 0, MPI_COMM_WORLD);
  if (me == 0 && n == 1) {
    // One rank does everything, micro-batch after micro-batch, hooks in order.
    EXPECT_EQ(std::string(all.data(), 256).find("distributed_preprocessing@0;client_preprocessing@0;client_postprocessing@0;"
                                                "distributed_postprocessing@0;client_preprocessing@0;client_postprocessing@0;"
                                                "distributed_postprocessing@0;"),
              0u)
        << std::string(all.data(), 256);
  } else if (me == 0) {
    std::string last = std::to_string(n - 1);
    std::string first_rank(all.data(), 256), last_rank(all.data() + (n - 1) * 256, 256);
    // Rank 0: the sending side and the first stage (two micro-batches), nothing else.
    EXPECT_EQ(first_rank.find("distributed_preprocessing@0;client_preprocessing@0;client_preprocessing@0; "), 0u) << first_rank;
    // The last stage: post-processing once per micro-batch, client before distributed, nothing else.
    EXPECT_EQ(last_rank.find("client_postprocessing@" + last + ";distributed_postprocessing@" + last + ";client_postprocessing@" +
                             last + ";distributed_postprocessing@" + last + "; "),
              0u)
        << last_rank;
  }
}

// A stage that fails on one value: the model is given up on every rank, with
// the failing rank's message, and other models go on working.
class FailingStage : public StageModule {
 public:
  DTensor forward(const DTensor& x) override {
    if (x.gather().data<float>()[0] == 13.0f) throw Error(ErrorKind::kInternal, "boom on 13");
    return x;
  }
};

TEST(Engine, AFailureGivesTheModelUpEverywhereAndSparesTheOthers) {
  int n = World::get().size();
  ServableDefinition fragile;
  fragile.name = "fragile";
  fragile.rank_size = n;
  fragile.stage_size = n;
  fragile.input = {"x", DType::kF32, {-1, 2}};
  fragile.output = {"y", DType::kF32, {-1, 2}};
  for (int i = 0; i < n; ++i) {
    fragile.stages.push_back({2, [i, n](const Mesh&) -> std::unique_ptr<StageModule> {
                                if (i == n - 1) return std::make_unique<FailingStage>();
                                return std::make_unique<AddStage>(0.0f);
                              }, {}});
  }
  ServableDefinition sturdy = fragile;
  sturdy.name = "sturdy";
  for (auto& stage : sturdy.stages) stage.build = [](const Mesh&) { return std::make_unique<AddStage>(1.0f); };
  Engine engine({fragile, sturdy}, Device::cpu());
  with_engine(engine, [&] {
    EXPECT_EQ(engine.run(0, HostTensor::full<float>({3, 2}, 1.0f), 1).data<float>()[0], 1.0f);
    std::string where = n == 1 ? "boom on 13" : World::get().describe_rank(n - 1) + " failed: boom on 13";
    EXPECT_TRUE(throws_error(ErrorKind::kUnavailable, [&] { engine.run(0, HostTensor::full<float>({3, 2}, 13.0f), 2); },
                             {"model 'fragile' failed", where}));
    EXPECT_TRUE(throws_error(ErrorKind::kUnavailable, [&] { engine.run(0, HostTensor::full<float>({3, 2}, 1.0f), 1); },
                             {"failed earlier", "boom on 13"}));
    EXPECT_FALSE(engine.failure(0).empty());
    HostTensor y = engine.run(1, HostTensor::full<float>({4, 2}, 1.0f), 2);
    for (float v : y.span<float>()) EXPECT_EQ(v, 1.0f + n);
    // Recovery in place: every rank answers, the model gets new communicators
    // (generation 2) and works again; the other model is untouched.
    EXPECT_EQ(engine.generation(0), 1u);
    EXPECT_EQ(engine.try_recover(0, std::chrono::seconds(30)), "");
    EXPECT_EQ(engine.generation(0), 2u);
    EXPECT_TRUE(engine.failure(0).empty());
    for (int i = 0; i < 3; ++i) {
      HostTensor z = engine.run(0, HostTensor::full<float>({3, 2}, 2.0f), 1 + i);
      for (float v : z.span<float>()) EXPECT_EQ(v, 2.0f);
    }
    EXPECT_EQ(engine.run(1, HostTensor::full<float>({1, 2}, 0.0f), 1).data<float>()[0], static_cast<float>(n));
  });
}

// A stage that takes a known time (a sleep stands in for a device kernel, so the
// overlap shows on machines with fewer cores than ranks), then adds amount.
class SlowStage : public StageModule {
 public:
  SlowStage(std::chrono::milliseconds takes, float amount) : takes_(takes), amount_(amount) {}
  DTensor forward(const DTensor& x) override {
    std::this_thread::sleep_for(takes_);
    return AddStage(amount_).forward(x);
  }

 private:
  std::chrono::milliseconds takes_;
  float amount_;
};

ServableDefinition slow_pipeline(const std::string& name, int n, std::chrono::milliseconds per_stage) {
  ServableDefinition s;
  s.name = name;
  s.rank_size = n;
  s.stage_size = n;
  s.input = {"x", DType::kF32, {-1, 2}};
  s.output = {"y", DType::kF32, {-1, 2}};
  for (int i = 0; i < n; ++i) {
    s.stages.push_back({2, [i, per_stage](const Mesh&) { return std::make_unique<SlowStage>(per_stage, float(i + 1)); }, {}});
  }
  return s;
}

// Several batches in flight: stage 0 takes batch b+1 while the last stage still
// works on batch b, as the ranks' trace timestamps show; results and the
// forward time of every stage come back to rank 0.
TEST(Engine, BatchesOverlapAcrossStages) {
  int n = World::get().size(), me = World::get().rank();
  if (n < 2) GTEST_SKIP() << "one rank is one stage: nothing to overlap";
  constexpr auto kStage = std::chrono::milliseconds(40);
  // A trace path of this job, the same on every rank.
  char path[256] = {};
  if (me == 0) {
    std::string p = (std::filesystem::temp_directory_path() / ("meshrt-trace-" + std::to_string(::getpid()))).string();
    std::snprintf(path, sizeof path, "%s", p.c_str());
  }
  MPI_Bcast(path, sizeof path, MPI_CHAR, 0, MPI_COMM_WORLD);
  std::vector<TraceEvent> mine;
  {
    EngineOptions options;
    options.trace_file = path;
    Engine engine({slow_pipeline("slow", n, kStage)}, Device::cpu(), options);
    with_engine(engine, [&] {
      std::mutex mutex;
      std::vector<std::pair<HostTensor, BatchReport>> done(3);
      int answered = 0, most_in_flight = 0;
      for (int b = 0; b < 3; ++b) {
        engine.start(0, HostTensor::full<float>({2, 2}, 10.0f * float(b + 1)), 1,
                     [&, b](HostTensor result, std::exception_ptr error, const BatchReport& report) {
                       std::lock_guard<std::mutex> lock(mutex);
                       if (!error) done[static_cast<size_t>(b)] = {result, report};
                       ++answered;
                     });
        most_in_flight = std::max(most_in_flight, engine.in_flight(0));
      }
      engine.wait_idle();
      EXPECT_EQ(answered, 3);
      EXPECT_GE(most_in_flight, 2);  // start() returned before the last stage was done
      for (int b = 0; b < 3; ++b) {
        const auto& [result, report] = done[static_cast<size_t>(b)];
        ASSERT_TRUE(result.defined()) << "batch " << b;
        for (float v : result.span<float>()) EXPECT_EQ(v, 10.0f * float(b + 1) + float(n * (n + 1) / 2));
        // Every stage's time reached rank 0 (each stage sleeps kStage), and the
        // engine's time covers them.
        EXPECT_GE(report.forward_seconds, n * 0.9 * std::chrono::duration<double>(kStage).count()) << "batch " << b;
        EXPECT_GE(report.engine_seconds, report.forward_seconds) << "batch " << b;
      }
    });
    mine = engine.trace();
  }
  // Every rank's stage events on rank 0: {batch, stage, start, end}.
  std::vector<int64_t> flat(4 * 8, -1);
  size_t k = 0;
  for (const TraceEvent& e : mine) {
    if (e.name != "stage" || k >= 8) continue;
    int64_t values[4] = {static_cast<int64_t>(e.batch_id), e.stage, e.start_us, e.end_us};
    std::copy(values, values + 4, flat.begin() + static_cast<std::ptrdiff_t>(4 * k++));
  }
  std::vector<int64_t> all(flat.size() * static_cast<size_t>(n));
  MPI_Gather(flat.data(), static_cast<int>(flat.size()), MPI_INT64_T, all.data(), static_cast<int>(flat.size()),
             MPI_INT64_T, 0, MPI_COMM_WORLD);
  if (me != 0) return;
  auto find = [&](int64_t batch, int64_t stage) -> const int64_t* {
    for (size_t i = 0; i + 4 <= all.size(); i += 4) {
      if (all[i] == batch && all[i + 1] == stage) return &all[i];
    }
    return nullptr;
  };
  for (int64_t b = 1; b <= 2; ++b) {
    const int64_t* next_enters = find(b + 1, 0);
    const int64_t* leaves = find(b, n - 1);
    ASSERT_TRUE(next_enters && leaves) << "no trace of batch " << b << " or " << b + 1;
    EXPECT_LT(next_enters[2], leaves[3]) << "batch " << b + 1 << " entered stage 0 at " << next_enters[2]
                                         << " us, after batch " << b << " left the last stage at " << leaves[3] << " us";
  }
  // The trace files (Chrome's format), one per rank, written when the engine ended.
  for (int r = 0; r < n; ++r) {
    std::string file = std::string(path) + "." + std::to_string(r) + ".json";
    std::ifstream in(file);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_NE(text.find("\"traceEvents\""), std::string::npos) << file;
    EXPECT_NE(text.find("\"cat\":\"stage\""), std::string::npos) << file;
    if (r == 0) {
      EXPECT_NE(text.find("\"cat\":\"batch\""), std::string::npos) << file;
    }
    std::filesystem::remove(file);
  }
}

// A batch that fails while the next one is in flight: both are answered with
// the failure, the model is given up, and it recovers.
TEST(Engine, AFailureFailsEveryBatchInFlight) {
  int n = World::get().size();
  if (n < 2) GTEST_SKIP() << "with one stage nothing else is in flight";
  ServableDefinition s = slow_pipeline("fragile", n, std::chrono::milliseconds(20));
  s.stages.back().build = [](const Mesh&) { return std::make_unique<FailingStage>(); };
  Engine engine({s}, Device::cpu());
  with_engine(engine, [&] {
    std::mutex mutex;
    std::vector<std::string> errors;
    auto record = [&](HostTensor, std::exception_ptr error, const BatchReport&) {
      std::lock_guard<std::mutex> lock(mutex);
      try {
        if (error) std::rethrow_exception(error);
        errors.push_back("no error");
      } catch (const Error& e) {
        errors.push_back(e.kind() == ErrorKind::kUnavailable ? e.message() : "wrong kind: " + e.message());
      }
    };
    // 13 - (1 + ... + n-1) reaches the last stage as 13.
    float poison = 13.0f - float((n - 1) * n / 2);
    engine.start(0, HostTensor::full<float>({1, 2}, poison), 1, record);
    try {
      engine.start(0, HostTensor::full<float>({1, 2}, 1.0f), 1, record);
    } catch (const Error& e) {
      // the failure came back before the second batch started
      std::lock_guard<std::mutex> lock(mutex);
      errors.push_back(e.message());
    }
    engine.wait_idle();
    ASSERT_EQ(errors.size(), 2u);
    EXPECT_NE(errors[0].find("boom on 13"), std::string::npos) << errors[0];
    EXPECT_NE(errors[1].find("boom on 13"), std::string::npos) << errors[1];
    EXPECT_FALSE(engine.failure(0).empty());
    EXPECT_EQ(engine.try_recover(0, std::chrono::seconds(30)), "");
    HostTensor y = engine.run(0, HostTensor::full<float>({1, 2}, 1.0f), 1);
    EXPECT_EQ(y.data<float>()[0], 1.0f + float((n - 1) * n / 2));
  });
}

// Placements on part of the job and models loaded while serving: "one"
// (rank_size 1) takes rank 0; "rest" (n - 1 stages, each adding its index + 1)
// is loaded later onto ranks 1 .. n-1, which rank 0 is not part of (its
// batches travel there); a load that fails on the last rank only is refused
// everywhere, naming that rank, and leaves every rank's indices in step (the
// loads after it work); an unloaded model frees its ranks for the next load,
// and a failed model placed on a subset recovers in place.
TEST(Engine, LoadsAndUnloadsModelsOnPartOfTheJob) {
  int n = World::get().size(), me = World::get().rank();
  if (n < 2) GTEST_SKIP() << "a placement beside rank 0 needs 2 ranks";
  auto adder = [](const std::string& name, int ranks, float first) {
    ServableDefinition s;
    s.name = name;
    s.rank_size = ranks;
    s.stage_size = ranks;
    s.input = {"x", DType::kF32, {-1, 3}};
    s.output = {"y", DType::kF32, {-1, 3}};
    for (int i = 0; i < ranks; ++i) {
      s.stages.push_back({3, [first, i](const Mesh&) { return std::make_unique<AddStage>(first + float(i)); }, {}});
    }
    return s;
  };
  EngineOptions options;
  options.share_ranks = false;
  options.loader = [&](const std::string& request) -> std::vector<ServableDefinition> {
    if (request == "rest") return {adder("rest", n - 1, 1.0f)};
    if (request == "bad") {
      if (me == n - 1) throw Error(ErrorKind::kInvalidArgument, "no such file here");
      return {adder("bad", n - 1, 1.0f)};
    }
    if (request == "wide") return {adder("wide", n, 1.0f)};
    throw Error(ErrorKind::kInvalidArgument, "unknown model '" + request + "'");
  };
  Engine engine({adder("one", 1, 100.0f)}, Device::cpu(), options);
  with_engine(engine, [&] {
    EXPECT_EQ(engine.placement(0), "rank 0");
    EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { engine.load("nothing"); }, {"unknown model 'nothing'"}));
    EXPECT_TRUE(throws_error(ErrorKind::kUnavailable, [&] { engine.load("bad"); },
                             {"loading 'bad' failed", "rank " + std::to_string(n - 1), "no such file here"}));
    EXPECT_EQ(engine.find("bad"), -1);
    int bad = engine.servable_count() - 1;  // its slot stays, unloaded, on every rank
    EXPECT_EQ(engine.state(bad), ServableState::kUnloaded);
    EXPECT_NE(engine.try_recover(bad, std::chrono::seconds(5)).find("is not loaded"), std::string::npos);
    // No free window of n ranks beside "one": refused, saying who holds rank 0.
    EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { engine.load("wide"); },
                             {"needs " + std::to_string(n) + " consecutive free ranks", "rank 0: 'one' version 1"}));
    for (int round = 0; round < 2; ++round) {
      std::vector<int> rest = engine.load("rest");
      ASSERT_EQ(rest.size(), 1u);
      EXPECT_EQ(engine.state(rest[0]), ServableState::kLoading);
      EXPECT_EQ(engine.find("rest"), -1);  // not until published
      engine.publish(rest);
      ASSERT_EQ(engine.find("rest"), rest[0]);
      EXPECT_EQ(engine.ranks(rest[0]).front(), 1);
      EXPECT_EQ(engine.ranks(rest[0]).back(), n - 1);
      HostTensor y = engine.run(rest[0], HostTensor::full<float>({5, 3}, 10.0f), 2);
      ASSERT_EQ(y.dim(0), 5);
      for (float v : y.span<float>()) ASSERT_EQ(v, 10.0f + float((n - 1) * n / 2));
      EXPECT_EQ(engine.run(0, HostTensor::full<float>({1, 3}, 1.0f), 1).data<float>()[0], 101.0f);
      if (round == 0) {
        // Recovery of a model on a subset: communicators rebuilt, same ranks.
        EXPECT_EQ(engine.try_recover(rest[0], std::chrono::seconds(30)), "");
        EXPECT_EQ(engine.run(rest[0], HostTensor::full<float>({1, 3}, 0.0f), 1).data<float>()[0], float((n - 1) * n / 2));
      }
      engine.close(rest[0]);
      EXPECT_EQ(engine.find("rest"), -1);
      engine.unload(rest[0]);
      EXPECT_EQ(engine.state(rest[0]), ServableState::kUnloaded);
      EXPECT_TRUE(throws_error(ErrorKind::kUnavailable, [&] { engine.run(rest[0], HostTensor::full<float>({1, 3}, 1.0f), 1); },
                               {"is not loaded"}));
    }
  });
}

// A model beside rank 0 fails a batch while later ones wait on its first
// rank: those are dropped there, and their batches (sent by rank 0) with them,
// so that after recovery each batch computes on its own input, not on a
// dropped one's.
class SlowFailingStage : public StageModule {
 public:
  DTensor forward(const DTensor& x) override {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (x.gather().data<float>()[0] == 13.0f) throw Error(ErrorKind::kInternal, "boom on 13");
    return x;
  }
};

TEST(Engine, ABatchDroppedBesideRankZeroTakesItsInputAlong) {
  int n = World::get().size();
  if (n < 2) GTEST_SKIP() << "a placement beside rank 0 needs 2 ranks";
  ServableDefinition one;
  one.name = "one";
  one.rank_size = 1;
  one.stage_size = 1;
  one.input = one.output = {"x", DType::kF32, {-1, 2}};
  one.stages.push_back({2, [](const Mesh&) { return std::make_unique<AddStage>(1.0f); }, {}});
  ServableDefinition beside = one;
  beside.name = "beside";
  beside.stages[0].build = [](const Mesh&) { return std::make_unique<SlowFailingStage>(); };
  EngineOptions options;
  options.share_ranks = false;
  Engine engine({one, beside}, Device::cpu(), options);
  with_engine(engine, [&] {
    ASSERT_EQ(engine.placement(1), "rank 1");
    std::atomic<int> answered{0};
    auto count = [&](HostTensor, std::exception_ptr, const BatchReport&) { ++answered; };
    int started = 0;
    engine.start(1, HostTensor::full<float>({1, 2}, 13.0f), 1, count);
    ++started;
    for (float v : {5.0f, 6.0f}) {
      try {
        engine.start(1, HostTensor::full<float>({1, 2}, v), 1, count);
        ++started;
      } catch (const Error&) {
        // the failure came back first
      }
    }
    engine.wait_idle();
    EXPECT_EQ(answered.load(), started);
    EXPECT_FALSE(engine.failure(1).empty());
    ASSERT_EQ(engine.try_recover(1, std::chrono::seconds(30)), "");
    for (float v : {7.0f, 8.0f}) {
      HostTensor y = engine.run(1, HostTensor::full<float>({1, 2}, v), 1);
      EXPECT_EQ(y.data<float>()[0], v) << "a batch computed on another batch's input";
    }
  });
}

// A load whose stages take long to build, on ranks another model uses:
// that model's batches wait for the build instead of being sent into it and
// failing at the result deadline (1 s here, the build 1.5 s).
TEST(Engine, BatchesWaitForALoadBuildingOnTheirRanks) {
  int n = World::get().size();
  if (n < 2) GTEST_SKIP() << "a placement beside rank 0 needs 2 ranks";
  ServableDefinition beside;
  beside.name = "beside";
  beside.rank_size = 1;
  beside.stage_size = 1;
  beside.input = beside.output = {"x", DType::kF32, {-1, 2}};
  beside.stages.push_back({2, [](const Mesh&) { return std::make_unique<AddStage>(1.0f); }, {}});
  ServableDefinition first = beside;
  first.name = "first";
  EngineOptions options;
  options.result_timeout = std::chrono::milliseconds(1000);
  options.loader = [n](const std::string&) {
    ServableDefinition slow;
    slow.name = "slow";
    slow.rank_size = n;
    slow.stage_size = 1;
    slow.input = slow.output = {"x", DType::kF32, {-1, 2}};
    slow.stages.push_back({2, [](const Mesh&) {
                             std::this_thread::sleep_for(std::chrono::milliseconds(1500));
                             return std::make_unique<AddStage>(0.0f);
                           }, {}});
    return std::vector<ServableDefinition>{slow};
  };
  Engine engine({first, beside}, Device::cpu(), options);  // "beside" on rank 1; "slow" will share every rank
  with_engine(engine, [&] {
    ASSERT_EQ(engine.placement(1), "rank 1");
    std::vector<int> loaded;
    std::thread loading([&] { loaded = engine.load("slow"); });
    while (!engine.busy(1)) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    HostTensor y = engine.run(1, HostTensor::full<float>({1, 2}, 4.0f), 1);
    EXPECT_EQ(y.data<float>()[0], 5.0f);
    loading.join();
    ASSERT_EQ(loaded.size(), 1u);
    EXPECT_EQ(engine.failure(1), "");
    engine.publish(loaded);
    EXPECT_EQ(engine.run(loaded[0], HostTensor::full<float>({1, 2}, 4.0f), 1).data<float>()[0], 4.0f);
  });
}

// A rank whose part cannot be rebuilt: the recovery says so, naming the rank,
// and the model stays failed (no batch is sent into it); the next recovery,
// which builds, brings it back.
TEST(Engine, ARankThatCannotRebuildKeepsTheModelFailed) {
  int n = World::get().size(), me = World::get().rank();
  if (n < 2) GTEST_SKIP() << "needs another rank to fail";
  static std::atomic<int> builds{0};
  builds = 0;
  ServableDefinition s = slow_pipeline("fragile", n, std::chrono::milliseconds(0));
  s.stages.back().build = [me, n](const Mesh&) -> std::unique_ptr<StageModule> {
    // The last rank's second build (the first rebuild) fails.
    if (me == n - 1 && ++builds == 2) throw Error(ErrorKind::kUnavailable, "out of memory here");
    return std::make_unique<FailingStage>();
  };
  Engine engine({s}, Device::cpu());
  with_engine(engine, [&] {
    float poison = 13.0f - float((n - 1) * n / 2);
    EXPECT_TRUE(throws_error(ErrorKind::kUnavailable, [&] { engine.run(0, HostTensor::full<float>({1, 2}, poison), 1); },
                             {"boom on 13"}));
    std::string why = engine.try_recover(0, std::chrono::seconds(30));
    EXPECT_NE(why.find("could not rebuild model 'fragile'"), std::string::npos) << why;
    EXPECT_NE(why.find("out of memory here"), std::string::npos) << why;
    EXPECT_FALSE(engine.failure(0).empty());
    EXPECT_TRUE(throws_error(ErrorKind::kUnavailable, [&] { engine.run(0, HostTensor::full<float>({1, 2}, 1.0f), 1); },
                             {"failed earlier"}));
    EXPECT_EQ(engine.try_recover(0, std::chrono::seconds(30)), "");
    EXPECT_EQ(engine.run(0, HostTensor::full<float>({1, 2}, 1.0f), 1).data<float>()[0], 1.0f + float((n - 1) * n / 2));
  });
}

}  // namespace
}  // namespace meshrt::serving

// Hugging Face folders served by the pipeline engine (serving/hf_servable.h):
// the example checkpoints (examples/hf: GPT-2 and Llama, random weights) read
// from their meshrt.json, run at every (rank_size, stage_size) this job's size
// allows ((1,1); (2,1), (2,2); (4,1), (4,2)) through Engine::start as the
// server runs them (requests packed by the servable, micro-batches, activations
// and the attention mask sent between stages), and their logits compared with
// the independent float64 reference tests/hf_reference.py. Tolerance: a
// token's largest logit error within 1e-4 of its largest logit in f32, 5e-2
// with bf16 compute (the transformer test measures ~1e-6 and ~1.3e-2).
#include <gtest/gtest.h>
#include <mpi.h>

#include "comm/world.h"
#include "engine_test_util.h"
#include "hf_test_util.h"
#include "models/hf_config.h"
#include "serving/engine.h"
#include "serving/hf_servable.h"
#include "test_util.h"

namespace meshrt::serving {
namespace {

using meshrt::testing::throws_error;
using meshrt::testing::TokenInput;

const std::string kSource = MESHRT_SOURCE_DIR;
const std::string kHf = MESHRT_SOURCE_DIR "/examples/hf";

// The reference's logits, computed by rank 0 and sent to every rank.
std::vector<double> reference_logits(const std::string& folder, const TokenInput& in) {
  std::vector<double> logits;
  uint64_t size = 0;
  if (World::get().rank() == 0) {
    logits = meshrt::testing::run_reference(kSource, folder, in);
    size = logits.size();
  }
  MPI_Bcast(&size, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
  logits.resize(size);
  MPI_Bcast(logits.data(), static_cast<int>(size), MPI_DOUBLE, 0, MPI_COMM_WORLD);
  return logits;
}

// The example's meshrt.json, with this job's size and the stage count given.
ModelConfig config_for(const std::string& model, int stage_size, const std::string& compute = "") {
  ModelConfig c = load_model_config(kHf + "/" + model);
  c.rank_size = World::get().size();
  c.stage_size = stage_size;
  c.compute_dtype = compute;
  return c;
}

// Runs the packed request on rank 0 while the other ranks serve; the logits on rank 0.
HostTensor run_on_engine(const ServableDefinition& s, const HostTensor& packed, int micro_batches) {
  Engine engine({s}, Device::cpu());
  HostTensor out;
  meshrt::testing::with_engine(engine, [&] { out = engine.run(0, packed, micro_batches); });
  return out;
}

struct Case {
  std::string model;
  std::string compute;  // "" (f32 on the cpu) or a torch_dtype name
  double tolerance;
};

class HfServing : public ::testing::TestWithParam<Case> {};

TEST_P(HfServing, LogitsThroughTheEngineMatchTheReferenceAtEveryStageSize) {
  if (!meshrt::testing::reference_can_run()) GTEST_SKIP() << "python3-numpy is not installed: the reference cannot run";
  const Case& p = GetParam();
  std::string folder = kHf + "/" + p.model;
  models::hf::HfConfig config = models::hf::read_config(folder);
  int n = World::get().size();
  TokenInput in = meshrt::testing::make_token_input(config.vocab_size, 3, 6);
  std::vector<double> expected = reference_logits(folder, in);
  ASSERT_EQ(expected.size(), static_cast<size_t>(in.batch * in.seq * config.vocab_size)) << "the reference did not run";
  for (int stages : {1, 2}) {
    if (n % stages != 0 || (n == 1 && stages > 1)) continue;
    ServableDefinition s = servable_from_config(config_for(p.model, stages, p.compute), Device::cpu());
    ASSERT_EQ(s.wire_inputs.size(), 2u);
    HostTensor packed = s.pack_inputs({HostTensor::from_vector(in.ids, {in.batch, in.seq}),
                                       HostTensor::from_vector(in.mask, {in.batch, in.seq})});
    // Two micro-batches of 2 and 1 sequences: both cross the stages with their masks.
    HostTensor logits = run_on_engine(s, packed, 2);
    if (World::get().rank() != 0) continue;
    ASSERT_EQ(logits.shape(), (Shape{in.batch, in.seq, config.vocab_size}));
    ASSERT_EQ(logits.dtype(), DType::kF32);
    double worst = meshrt::testing::worst_relative_error(expected, logits.data<float>(), in, config.vocab_size);
    EXPECT_LT(worst, p.tolerance) << p.model << " at rank_size " << n << ", stage_size " << stages;
    if (getenv("MESHRT_TEST_VERBOSE")) {
      std::printf("%s (%d, %d)%s: worst relative error %.2e\n", p.model.c_str(), n, stages,
                  p.compute.empty() ? "" : (" " + p.compute).c_str(), worst);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Examples, HfServing,
                         ::testing::Values(Case{"gpt2-tiny", "", 1e-4}, Case{"llama-tiny", "", 1e-4},
                                           Case{"llama-tiny-llama3", "bfloat16", 5e-2}),
                         [](const auto& info) {
                           std::string s = info.param.model + (info.param.compute.empty() ? "" : "_" + info.param.compute);
                           for (char& c : s) c = c == '-' ? '_' : c;
                           return s;
                         });

// Without an attention mask every key is attended; a request of one token works.
TEST(HfServingPacking, InputsArePackedAndCheckedPerRequest) {
  ServableDefinition s = servable_from_config(config_for("gpt2-tiny", 1), Device::cpu());
  models::hf::HfConfig config = models::hf::read_config(kHf + "/gpt2-tiny");
  HostTensor ids = HostTensor::from_vector(std::vector<int64_t>{5, 6, 7}, {1, 3});
  HostTensor packed = s.pack_inputs({ids, HostTensor()});
  ASSERT_EQ(packed.shape(), (Shape{1, 2, 3}));
  EXPECT_EQ(packed.to_vector<int64_t>(), (std::vector<int64_t>{5, 6, 7, 1, 1, 1}));
  // A mask's nonzero values attend.
  packed = s.pack_inputs({ids, HostTensor::from_vector(std::vector<int64_t>{0, 3, 1}, {1, 3})});
  EXPECT_EQ(packed.to_vector<int64_t>(), (std::vector<int64_t>{5, 6, 7, 0, 1, 1}));
  // Ids outside the vocabulary, a mask of another shape, a sequence longer than the positions.
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument,
                           [&] { s.pack_inputs({HostTensor::from_vector(std::vector<int64_t>{config.vocab_size}, {1, 1}), HostTensor()}); },
                           {"token ids are 0 to"}));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument,
                           [&] { s.pack_inputs({HostTensor::from_vector(std::vector<int64_t>{-1}, {1, 1}), HostTensor()}); },
                           {"is -1"}));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument,
                           [&] { s.pack_inputs({ids, HostTensor::from_vector(std::vector<int64_t>{1, 1}, {1, 2})}); },
                           {"must have the shape of 'input_ids'"}));
  std::vector<int64_t> longer(static_cast<size_t>(config.max_positions + 1), 1);
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument,
                           [&] { s.pack_inputs({HostTensor::from_vector(longer, {1, config.max_positions + 1}), HostTensor()}); },
                           {"n_positions"}));
  // What the wire sees.
  ModelSignature sig = signature_of(s);
  ASSERT_EQ(sig.inputs.size(), 2u);
  EXPECT_EQ(sig.inputs[0].name, "input_ids");
  EXPECT_EQ(sig.inputs[0].dtype, DType::kI64);
  EXPECT_EQ(sig.inputs[0].shape, (std::vector<int64_t>{-1, -1}));
  EXPECT_FALSE(sig.inputs[0].optional);
  EXPECT_EQ(sig.inputs[1].name, "attention_mask");
  EXPECT_TRUE(sig.inputs[1].optional);
  EXPECT_EQ(sig.outputs[0].name, "logits");
  EXPECT_EQ(sig.outputs[0].shape, (std::vector<int64_t>{-1, -1, config.vocab_size}));
}

TEST(HfServingConfig, MeshrtJsonIsCheckedNamingTheFileAndField) {
  std::string dir = kHf + "/llama-tiny";
  ModelConfig c = parse_hf_serving_config(R"({"rank_size": 4, "stage_size": 2})", dir);
  EXPECT_EQ(c.format, ModelFormat::kHuggingFace);
  EXPECT_EQ(c.name, "llama-tiny");
  EXPECT_EQ(c.batching.max_batch_size, kHfDefaultMaxBatchSize);
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { parse_hf_serving_config(R"({"rank_size": 4})", dir); },
                           {"meshrt.json: stage_size: missing"}));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument,
                           [&] { parse_hf_serving_config(R"({"rank_size": 4, "stage_size": 3})", dir); },
                           {"stage_size: expected a divisor of rank_size (4), got 3"}));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument,
                           [&] { parse_hf_serving_config(R"({"rank_size": 1, "stage_size": 1, "compute_dtype": "int8"})", dir); },
                           {"compute_dtype: expected"}));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument,
                           [&] { parse_hf_serving_config(R"({"rank_size": 1, "stage_size": 1, "layers": 3})", dir); },
                           {"layers: unknown field"}));
  // Tensor parallelism that does not fit the heads: 3 ranks for GPT-2's 4 heads.
  ModelConfig three = parse_hf_serving_config(R"({"rank_size": 3, "stage_size": 1})", kHf + "/gpt2-tiny");
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { servable_from_config(three, Device::cpu()); },
                           {"must divide num_attention_heads (4)"}));
  // More stages than layers.
  ModelConfig deep = parse_hf_serving_config(R"({"rank_size": 4, "stage_size": 4})", kHf + "/gpt2-tiny");
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { servable_from_config(deep, Device::cpu()); },
                           {"too few for 4 pipeline stages"}));
}

}  // namespace
}  // namespace meshrt::serving

// The transformer models (models/transformer.h) on the example Hugging Face
// checkpoints (examples/hf, random weights): logits against the independent
// float64 reference tests/hf_reference.py (Hugging Face's semantics, numpy),
// with tensor parallelism over every rank of the job (1, 2 and 4: at 4 ranks
// Llama's 2 kv heads are replicated), a vocabulary (1001) and an MLP width that
// divide by nothing, bf16 checkpoints, the hub's GPT-2 layout, a sharded
// Llama checkpoint, llama3 RoPE scaling, a left-padded attention mask, and a
// model split into two pipeline parts. Tolerance: the largest error of a
// row's logits within 1e-4 of its largest logit in f32 (measured ~1e-6), 5e-2
// with bf16 compute (measured ~1.3e-2).
#include <gtest/gtest.h>

#include <mpi.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "comm/world.h"
#include "io/safetensors.h"
#include "models/transformer.h"
#include "sharding/mesh.h"
#include "hf_test_util.h"
#include "test_util.h"

namespace meshrt::models {
namespace {

using sharding::Layout;

// The source tree (examples/hf, tests/hf_reference.py); MESHRT_SOURCE_DIR in
// the environment overrides it (the GPU bundle, tools/gpu-check.sh).
std::string source_dir() {
  const char* dir = std::getenv("MESHRT_SOURCE_DIR");
  return dir && *dir ? dir : MESHRT_SOURCE_DIR;
}

using testing::TokenInput;

// The reference's logits, computed by rank 0 and sent to every rank.
std::vector<double> reference_logits(const std::string& model, const TokenInput& in) {
  std::vector<double> logits;
  uint64_t size = 0;
  if (World::get().rank() == 0) {
    logits = testing::run_reference(source_dir(), model, in);
    size = logits.size();
  }
  MPI_Bcast(&size, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
  logits.resize(size);
  MPI_Bcast(logits.data(), static_cast<int>(size), MPI_DOUBLE, 0, MPI_COMM_WORLD);
  return logits;
}

// One input on a mesh as the model takes it: the token batch and the ids, replicated.
struct ModelInput {
  TokenBatch batch;
  DTensor ids;
};
ModelInput model_input(const TokenInput& in, const sharding::Mesh& mesh) {
  return {TokenBatch::make(in.batch, in.seq, HostTensor::from_vector(in.mask, {in.batch, in.seq}), mesh.device()),
          DTensor::from_global(HostTensor::from_vector(in.ids, {in.batch, in.seq}), mesh, Layout::replicated(2), "input_ids")};
}

class HfModels : public ::testing::TestWithParam<std::string> {};

TEST_P(HfModels, LogitsMatchTheReferenceWithTensorParallelism) {
  if (!testing::reference_can_run()) GTEST_SKIP() << "python3-numpy is not installed: the reference cannot run";
  std::string folder = source_dir() + "/examples/hf/" + GetParam();
  hf::HfConfig config = hf::read_config(folder);
  int n = World::get().size();
  if (config.num_heads % n != 0) GTEST_SKIP() << n << " ranks do not divide the " << config.num_heads << " heads";
  sharding::Mesh mesh({{"model", n}}, Device::cpu());
  TokenInput in = testing::make_token_input(config.vocab_size);
  std::vector<double> expected = reference_logits(folder, in);
  ASSERT_EQ(expected.size(), static_cast<size_t>(in.batch * in.seq * config.vocab_size)) << "the reference did not run";

  auto [batch, ids] = model_input(in, mesh);
  auto compare = [&](const HostTensor& got, const std::string& what, double tolerance = 1e-4) {
    ASSERT_EQ(got.shape(), (Shape{in.batch * in.seq, config.vocab_size})) << what;
    double worst = testing::worst_relative_error(expected, got.data<float>(), in, config.vocab_size);
    EXPECT_LT(worst, tolerance) << GetParam() << " " << what << " at TP " << n;
    if (getenv("MESHRT_TEST_VERBOSE")) std::printf("%s %s: worst relative error %.2e\n", GetParam().c_str(), what.c_str(), worst);
  };

  Transformer whole(folder, config, mesh, TransformerPart{0, config.num_layers, true, true}, DType::kF32);
  compare(whole.forward(ids, batch).to_host(), "whole");
  // bf16 compute (weights and activations rounded to bf16, f32 accumulation).
  Transformer bf16(folder, config, mesh, TransformerPart{0, config.num_layers, true, true}, DType::kBF16);
  compare(bf16.forward(ids, batch).to_host(), "bf16 compute", 5e-2);

  // Two pipeline parts (uneven: 2 layers and 1), one after the other on these ranks.
  std::vector<TransformerPart> parts = split_layers(config.num_layers, 2);
  Transformer first(folder, config, mesh, parts[0], DType::kF32), second(folder, config, mesh, parts[1], DType::kF32);
  compare(second.forward(first.forward(ids, batch), batch).to_host(), "in two parts");
}

INSTANTIATE_TEST_SUITE_P(Examples, HfModels,
                         ::testing::Values("gpt2-tiny", "gpt2-tiny-bf16", "gpt2-tiny-hub", "llama-tiny", "llama-tiny-bf16",
                                           "llama-tiny-llama3"),
                         [](const auto& info) {
                           std::string s = info.param;
                           for (char& c : s) c = c == '-' ? '_' : c;
                           return s;
                         });

// f16 weights (gpt2-tiny's, rounded to f16 in a copy of the folder): converted
// to the compute dtype at load; the reference reads the same f16 values.
TEST(Transformer, Float16WeightsMatchTheReference) {
  if (!testing::reference_can_run()) GTEST_SKIP() << "python3-numpy is not installed: the reference cannot run";
  int n = World::get().size();
  std::string from = source_dir() + "/examples/hf/gpt2-tiny";
  hf::HfConfig config = hf::read_config(from);
  if (config.num_heads % n != 0) GTEST_SKIP() << n << " ranks do not divide the " << config.num_heads << " heads";
  std::string folder = (std::filesystem::temp_directory_path() /
                        ("meshrt-f16-" + std::to_string(::getppid()) + "-" + std::to_string(World::get().rank())))
                           .string();
  std::filesystem::create_directories(folder);
  std::filesystem::copy_file(from + "/config.json", folder + "/config.json",
                             std::filesystem::copy_options::overwrite_existing);
  io::SafetensorsHeader header = io::read_safetensors_header(from + "/model.safetensors");
  std::vector<std::pair<std::string, HostTensor>> halves;
  std::ifstream file(from + "/model.safetensors", std::ios::binary);
  for (const io::SafetensorsEntry& e : header.tensors) {
    HostTensor t = HostTensor::empty(e.shape, e.dtype);
    file.seekg(static_cast<std::streamoff>(header.data_start + e.begin));
    file.read(static_cast<char*>(t.raw_data()), static_cast<std::streamsize>(t.nbytes()));
    halves.emplace_back(e.name, cast_host(t, DType::kF16));
  }
  io::write_safetensors_file(folder + "/model.safetensors", halves);
  sharding::Mesh mesh({{"model", n}}, Device::cpu());
  TokenInput in = testing::make_token_input(config.vocab_size);
  std::vector<double> expected = reference_logits(folder, in);
  ASSERT_EQ(expected.size(), static_cast<size_t>(in.batch * in.seq * config.vocab_size)) << "the reference did not run";
  auto [batch, ids] = model_input(in, mesh);
  Transformer model(folder, config, mesh, TransformerPart{0, config.num_layers, true, true}, DType::kF32);
  HostTensor got = model.forward(ids, batch).to_host();
  EXPECT_LT(testing::worst_relative_error(expected, got.data<float>(), in, config.vocab_size), 1e-4);
  MPI_Barrier(MPI_COMM_WORLD);  // rank 0's reference read its folder
  std::filesystem::remove_all(folder);
}

// On a GPU: the whole model (f32 and bf16 compute, the default on GPUs) and in
// two pipeline parts, against the same reference, with the CUDA kernels
// (attention, RoPE, GELU-tanh, the masks) and cuBLAS.
TEST(CudaTransformer, LogitsMatchTheReferenceOnTheGpu) {
  MESHRT_REQUIRE_CUDA();
  if (!testing::reference_can_run()) GTEST_SKIP() << "python3-numpy is not installed: the reference cannot run";
  int n = World::get().size();
  for (const std::string name : {"gpt2-tiny", "llama-tiny"}) {
    std::string folder = source_dir() + "/examples/hf/" + name;
    hf::HfConfig config = hf::read_config(folder);
    if (config.num_heads % n != 0) continue;
    sharding::Mesh mesh({{"model", n}}, Device::cuda(0));
    TokenInput in = testing::make_token_input(config.vocab_size);
    std::vector<double> expected = reference_logits(folder, in);
    ASSERT_EQ(expected.size(), static_cast<size_t>(in.batch * in.seq * config.vocab_size)) << "the reference did not run";
    auto [batch, ids] = model_input(in, mesh);
    for (DType compute : {DType::kF32, DType::kBF16}) {
      double tolerance = compute == DType::kF32 ? 1e-4 : 5e-2;
      Transformer whole(folder, config, mesh, TransformerPart{0, config.num_layers, true, true}, compute);
      HostTensor got = whole.forward(ids, batch).to_host();
      EXPECT_LT(testing::worst_relative_error(expected, got.data<float>(), in, config.vocab_size), tolerance)
          << name << " " << to_string(compute);
      std::vector<TransformerPart> parts = split_layers(config.num_layers, 2);
      Transformer first(folder, config, mesh, parts[0], compute), second(folder, config, mesh, parts[1], compute);
      got = second.forward(first.forward(ids, batch), batch).to_host();
      EXPECT_LT(testing::worst_relative_error(expected, got.data<float>(), in, config.vocab_size), tolerance)
          << name << " in two parts, " << to_string(compute);
    }
  }
}

// At 3 ranks: 3 does not divide GPT-2's 4 heads, nor Llama's 2 kv heads.
TEST(Transformer, TensorParallelismThatDoesNotFitTheHeadsIsRefused) {
  int n = World::get().size();
  if (n != 3) GTEST_SKIP() << "runs at 3 ranks (the transformer_np3 entry)";
  sharding::Mesh mesh({{"model", n}}, Device::cpu());
  std::string gpt2 = source_dir() + "/examples/hf/gpt2-tiny", llama = source_dir() + "/examples/hf/llama-tiny";
  EXPECT_TRUE(meshrt::testing::throws_error(
      ErrorKind::kInvalidArgument,
      [&] { Transformer(gpt2, hf::read_config(gpt2), mesh, TransformerPart{0, 1, true, true}, DType::kF32); },
      {"tensor parallelism of 3 ranks must divide num_attention_heads (4)"}));
  hf::HfConfig c = hf::read_config(llama);
  c.num_heads = 6;  // 3 divides the heads, not the 2 kv heads
  EXPECT_TRUE(meshrt::testing::throws_error(
      ErrorKind::kInvalidArgument, [&] { Transformer(llama, c, mesh, TransformerPart{0, 1, true, true}, DType::kF32); },
      {"3 ranks exceeds num_key_value_heads (2) and is not a multiple of it"}));
}

// A checkpoint whose tensors do not have the config's shapes is refused,
// naming the tensor, both shapes and the file (here: the config claims 32
// positions, wpe holds 64).
TEST(Transformer, ATensorOfTheWrongShapeIsRefusedNamingIt) {
  std::string from = source_dir() + "/examples/hf/gpt2-tiny";
  hf::HfConfig config = hf::read_config(from);
  config.max_positions = 32;
  int n = World::get().size();
  if (config.num_heads % n != 0) GTEST_SKIP() << n << " ranks do not divide the " << config.num_heads << " heads";
  sharding::Mesh mesh({{"model", n}}, Device::cpu());
  EXPECT_TRUE(meshrt::testing::throws_error(
      ErrorKind::kShape, [&] { Transformer(from, config, mesh, TransformerPart{0, 1, true, false}, DType::kF32); },
      {"model.safetensors: 'transformer.wpe.weight' is [64, 64], the config says [32, 64]"}));
  hf::HfConfig narrow = hf::read_config(from);
  narrow.intermediate_size = 100;
  EXPECT_TRUE(meshrt::testing::throws_error(
      ErrorKind::kShape, [&] { Transformer(from, narrow, mesh, TransformerPart{0, 1, true, false}, DType::kF32); },
      {"'transformer.h.0.mlp.c_fc.weight' is [64, 256], the config says [64, 100]"}));
}

TEST(Transformer, LayersSplitOverStagesUnevenly) {
  std::vector<TransformerPart> p = split_layers(3, 2);
  ASSERT_EQ(p.size(), 2u);
  EXPECT_EQ(p[0].first_layer, 0);
  EXPECT_EQ(p[0].last_layer, 2);
  EXPECT_TRUE(p[0].embeds);
  EXPECT_FALSE(p[0].has_head);
  EXPECT_EQ(p[1].first_layer, 2);
  EXPECT_EQ(p[1].last_layer, 3);
  EXPECT_TRUE(p[1].has_head);
  EXPECT_TRUE(meshrt::testing::throws_error(ErrorKind::kInvalidArgument, [] { split_layers(2, 3); },
                                            {"cannot split 2 layers over 3 pipeline stages"}));
}

}  // namespace
}  // namespace meshrt::models

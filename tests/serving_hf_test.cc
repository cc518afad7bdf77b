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
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <mutex>

#include "serving/engine.h"
#include "serving/generator.h"
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
  // A SentencePiece (Metaspace) tokenizer is refused by name: the model serves ids, text is refused with why.
  std::string copy = (std::filesystem::temp_directory_path() /
                      ("meshrt-sp-" + std::to_string(::getpid()) + "-" + std::to_string(World::get().rank())) / "llama-sp")
                         .string();
  std::filesystem::create_directories(copy);
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    std::filesystem::copy(entry.path(), copy + "/" + entry.path().filename().string(),
                          std::filesystem::copy_options::overwrite_existing);
  }
  std::ofstream(copy + "/tokenizer.json")
      << R"({"version": "1.0", "added_tokens": [], "normalizer": null,
             "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": false},
             "post_processor": null, "decoder": {"type": "Metaspace", "replacement": "\u2581"},
             "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})";
  ServableDefinition sp = servable_from_config(parse_hf_serving_config(R"({"rank_size": 1, "stage_size": 1})", copy));
  EXPECT_EQ(sp.generation->tokenizer, nullptr);
  EXPECT_NE(sp.generation->no_tokenizer.find("Metaspace (SentencePiece)"), std::string::npos) << sp.generation->no_tokenizer;
  std::filesystem::remove_all(std::filesystem::path(copy).parent_path());
  ServableDefinition with = servable_from_config(parse_hf_serving_config(R"({"rank_size": 1, "stage_size": 1})", dir));
  ASSERT_NE(with.generation->tokenizer, nullptr) << with.generation->no_tokenizer;
  EXPECT_EQ(with.generation->tokenizer->vocab_size(), 503);
  // Tensor parallelism that does not fit the heads: 3 ranks for GPT-2's 4 heads.
  ModelConfig three = parse_hf_serving_config(R"({"rank_size": 3, "stage_size": 1})", kHf + "/gpt2-tiny");
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { servable_from_config(three, Device::cpu()); },
                           {"must divide num_attention_heads (4)"}));
  // More stages than layers.
  ModelConfig deep = parse_hf_serving_config(R"({"rank_size": 4, "stage_size": 4})", kHf + "/gpt2-tiny");
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { servable_from_config(deep, Device::cpu()); },
                           {"too few for 4 pipeline stages"}));
}


// ---------------------------------------------------------------- generation

namespace generation {

struct Collected {
  std::mutex mutex;
  std::condition_variable cv;
  std::vector<int64_t> tokens;
  std::string finish_reason;
  int status = 200;
  std::string error;
  bool done = false;
};

// A generate request (the fields not given keep their defaults).
GenerateRequest request(std::vector<int64_t> ids, int64_t max_tokens, double temperature = 0, int64_t top_k = 0,
                        double top_p = 1, std::optional<uint64_t> seed = std::nullopt) {
  GenerateRequest r;
  r.input_ids = std::move(ids);
  r.max_tokens = max_tokens;
  r.temperature = temperature;
  r.top_k = top_k;
  r.top_p = top_p;
  r.seed = seed;
  return r;
}

// Submits a request and returns what collects its updates (wait with finished()).
std::shared_ptr<Collected> submit(Generator& g, GenerateRequest r, GenerateAdmission* admission = nullptr) {
  auto c = std::make_shared<Collected>();
  g.check(r);
  GenerateAdmission a = g.submit(std::move(r), [c](const GenerateUpdate& u) {
    std::lock_guard<std::mutex> lock(c->mutex);
    c->tokens.insert(c->tokens.end(), u.tokens.begin(), u.tokens.end());
    if (u.done()) {
      c->finish_reason = u.finish_reason;
      c->status = u.status;
      c->error = u.error;
      c->done = true;
      c->cv.notify_all();
    }
    return true;
  });
  if (admission) *admission = a;
  return c;
}

bool finished(Collected& c) {
  std::unique_lock<std::mutex> lock(c.mutex);
  return c.cv.wait_for(lock, std::chrono::seconds(120), [&] { return c.done; });
}

// The reference's greedy tokens for each prompt (rank 0 only).
std::vector<std::vector<int64_t>> reference_greedy(const std::string& folder, const std::vector<std::vector<int64_t>>& prompts,
                                                   int tokens, double* min_gap) {
  std::vector<std::vector<int64_t>> out;
  *min_gap = INFINITY;
  for (const auto& p : prompts) {
    std::string file = std::filesystem::temp_directory_path() / ("meshrt-gen-" + std::to_string(::getpid()) + ".json");
    std::string command = "/usr/bin/python3 " + kSource + "/tests/hf_reference.py --model " + folder + " --input-ids '" +
                          meshrt::testing::nested_json(p, 1, static_cast<int64_t>(p.size())) + "' --generate " +
                          std::to_string(tokens) + " > " + file;
    if (std::system(command.c_str()) != 0) return {};
    std::ifstream f(file);
    nlohmann::json j = nlohmann::json::parse(f);
    std::remove(file.c_str());
    out.push_back(j.at("tokens").at(0).get<std::vector<int64_t>>());
    *min_gap = std::min(*min_gap, j.at("min_gap").get<double>());
  }
  return out;
}

ModelConfig generating(const std::string& model, int stage_size, int64_t blocks = 64) {
  ModelConfig c = config_for(model, stage_size);
  c.kv_cache.num_blocks = blocks;
  return c;
}

}  // namespace generation

class HfGeneration : public ::testing::TestWithParam<std::string> {};

// Greedy generation of 32 tokens from three prompts of different lengths at
// once (one prefill step padded to the longest, then decode steps of the
// three) equals the float64 reference's, token for token.
TEST_P(HfGeneration, GreedyTokensEqualTheReferenceAtEveryStageSize) {
  using namespace generation;
  if (!meshrt::testing::reference_can_run()) GTEST_SKIP() << "python3-numpy is not installed: the reference cannot run";
  std::string folder = kHf + "/" + GetParam();
  // Chosen (random, kept where every step's top-1/top-2 logit gap of the
  // reference exceeds 5e-3) so that no step is decided by rounding.
  std::vector<std::vector<int64_t>> prompts =
      GetParam() == "gpt2-tiny"
          ? std::vector<std::vector<int64_t>>{{133, 382, 186, 410, 356, 485}, {381, 336, 475, 274, 17, 433, 241, 400}, {335, 29, 464}}
          : std::vector<std::vector<int64_t>>{{60, 193, 243}, {129, 197, 281, 55, 296, 130, 9, 377}, {211, 146, 96}};
  std::vector<std::vector<int64_t>> expected;
  double gap = 0;
  if (World::get().rank() == 0) {
    expected = reference_greedy(folder, prompts, 32, &gap);
    ASSERT_EQ(expected.size(), prompts.size()) << "the reference did not run";
    ASSERT_GT(gap, 2e-3) << "a step's top-1 and top-2 logits are too close: choose other prompts";
  }
  int n = World::get().size();
  for (int stages : {1, 2}) {
    if (n % stages != 0 || (n == 1 && stages > 1)) continue;
    ServableDefinition s = servable_from_config(generation::generating(GetParam(), stages), Device::cpu());
    Engine engine({s}, Device::cpu());
    meshrt::testing::with_engine(engine, [&] {
      Metrics metrics;
      Generator g(engine, 0, metrics);
      std::vector<std::shared_ptr<Collected>> got;
      for (const auto& p : prompts) got.push_back(submit(g, request(p, 32)));
      for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_TRUE(finished(*got[i]));
        EXPECT_EQ(got[i]->status, 200) << got[i]->error;
        bool stopped = got[i]->finish_reason == "stop";
        std::vector<int64_t> want = expected[i];
        // An eos token ends generation early (the reference runs on).
        if (stopped) want.resize(got[i]->tokens.size());
        EXPECT_EQ(got[i]->tokens, want) << GetParam() << " prompt " << i << " at (" << n << ", " << stages << ")";
        EXPECT_EQ(got[i]->finish_reason, got[i]->tokens.size() == 32 && !stopped ? "length" : "stop");
      }
      EXPECT_EQ(g.blocks_in_use(), 0) << "finished requests give their blocks back";
      std::string text = metrics.render();
      EXPECT_NE(text.find("meshrt_generation_tokens_total{model=\"" + GetParam() + "\",version=\"1\"} 96"), std::string::npos)
          << text;
      g.drain();
    });
  }
}

// The incremental path (a prefill, then a decode step reading the cache)
// gives the logits of a full recompute of the same tokens.
TEST_P(HfGeneration, TheCachedPathEqualsAFullRecompute) {
  int n = World::get().size();
  ServableDefinition s = servable_from_config(generation::generating(GetParam(), n >= 2 ? 2 : 1), Device::cpu());
  Engine engine({s}, Device::cpu());
  meshrt::testing::with_engine(engine, [&] {
    std::vector<int64_t> tokens = {3, 141, 59, 26, 5};  // the last one is fed by the decode step
    int64_t prompt = 4, vocab = s.generation->vocab_size;
    // Prefill: one row, q = kv = 4, slots 0..3.
    HostTensor step = HostTensor::zeros({1, 3 * prompt + 2 * prompt + 1}, DType::kI64);
    int64_t* row = step.data<int64_t>();
    for (int64_t i = 0; i < prompt; ++i) {
      row[i] = tokens[static_cast<size_t>(i)];
      row[prompt + i] = i;
      row[2 * prompt + i] = row[3 * prompt + i] = i + 20;  // any slots of the pool
      row[4 * prompt + i] = 1;
    }
    row[5 * prompt] = prompt - 1;
    HostTensor first = engine.run(0, step, 1, nullptr, {kGenerationStep, prompt, prompt});
    // Decode: q = 1, kv = 5 (the four cached slots and the new one).
    HostTensor decode = HostTensor::zeros({1, 3 + 2 * 5 + 1}, DType::kI64);
    row = decode.data<int64_t>();
    row[0] = tokens[4];
    row[1] = 4;
    row[2] = 24;
    for (int64_t j = 0; j < 5; ++j) {
      row[3 + j] = 20 + j;
      row[3 + 5 + j] = 1;
    }
    HostTensor second = engine.run(0, decode, 1, nullptr, {kGenerationStep, 1, 5});
    // The full recompute: the plain forward over all five tokens.
    HostTensor full = engine.run(0, s.pack_inputs({HostTensor::from_vector(tokens, {1, 5}), HostTensor()}), 1);
    ASSERT_EQ(full.shape(), (Shape{1, 5, vocab}));
    for (int64_t v = 0; v < vocab; ++v) {
      ASSERT_NEAR(first.data<float>()[v], full.data<float>()[3 * vocab + v], 1e-5) << "position 3, token " << v;
      ASSERT_NEAR(second.data<float>()[v], full.data<float>()[4 * vocab + v], 1e-5) << "position 4, token " << v;
    }
  });
}

// A pool of 2 blocks of 16: a request needing 3 blocks is refused at once;
// two needing 2 each run one after the other (the second waits for blocks),
// both right; sampling with a seed gives the same tokens alone and in company.
TEST_P(HfGeneration, TheKvPoolIsSharedAndSamplingIsSeeded) {
  using namespace generation;
  int n = World::get().size();
  ServableDefinition s = servable_from_config(generation::generating(GetParam(), n >= 2 ? 2 : 1, 2), Device::cpu());
  Engine engine({s}, Device::cpu());
  meshrt::testing::with_engine(engine, [&] {
    Metrics metrics;
    Generator g(engine, 0, metrics);
    GenerateAdmission admission{};
    submit(g, request({1, 2, 3}, 40), &admission);  // 43 tokens: 3 blocks
    EXPECT_EQ(admission, GenerateAdmission::kNeverFits);
    auto a = submit(g, request({1, 2, 3}, 20), &admission);  // 23 tokens: 2 blocks
    EXPECT_EQ(admission, GenerateAdmission::kQueued);
    auto b = submit(g, request({9, 8, 7}, 20), &admission);
    EXPECT_EQ(admission, GenerateAdmission::kQueued);
    ASSERT_TRUE(finished(*a) && finished(*b));
    EXPECT_EQ(a->tokens.size() + b->tokens.size() > 2u, true);
    EXPECT_EQ(a->status, 200);
    EXPECT_EQ(b->status, 200);
    // b alone gives what it gave after waiting.
    auto b_alone = submit(g, request({9, 8, 7}, 20));
    ASSERT_TRUE(finished(*b_alone));
    EXPECT_EQ(b_alone->tokens, b->tokens);
    // Seeded sampling: alone, then beside another request.
    GenerateRequest sampled = request({4, 5, 6}, 12, 1.0, 50, 0.9, 1234);
    auto alone = submit(g, sampled);
    ASSERT_TRUE(finished(*alone));
    auto other = submit(g, request({7, 7}, 10, 0.7, 0, 1.0, 99));
    auto together = submit(g, sampled);
    ASSERT_TRUE(finished(*together) && finished(*other));
    EXPECT_EQ(together->tokens, alone->tokens);
    EXPECT_EQ(alone->tokens.size(), alone->finish_reason == "stop" ? alone->tokens.size() : 12u);
    EXPECT_EQ(g.blocks_in_use(), 0);
    g.drain();
  });
}

// Iteration-level batching: a request admitted while another is mid-decode
// gets its first token before the other has finished, and both go on.
TEST_P(HfGeneration, ARequestJoinsWhileAnotherDecodes) {
  int n = World::get().size();
  ServableDefinition s = servable_from_config(generation::generating(GetParam(), n >= 2 ? 2 : 1), Device::cpu());
  Engine engine({s}, Device::cpu());
  meshrt::testing::with_engine(engine, [&] {
    Metrics metrics;
    Generator g(engine, 0, metrics);
    std::mutex mutex;
    std::condition_variable cv;
    std::vector<char> order;  // 'a' or 'b' per token, in the order they came
    int done = 0;
    auto sink_b = [&](const GenerateUpdate& u) {
      std::lock_guard<std::mutex> lock(mutex);
      for (size_t i = 0; i < u.tokens.size(); ++i) order.push_back('b');
      if (u.done()) ++done, cv.notify_all();
      return true;
    };
    bool joined = false;
    auto sink_a = [&](const GenerateUpdate& u) {
      std::unique_lock<std::mutex> lock(mutex);
      for (size_t i = 0; i < u.tokens.size(); ++i) order.push_back('a');
      if (u.done()) ++done, cv.notify_all();
      if (!joined && order.size() == 5) {  // A is mid-decode: B arrives (from A's own update)
        joined = true;
        lock.unlock();
        EXPECT_EQ(g.submit(generation::request({7, 8, 9}, 10), sink_b), GenerateAdmission::kQueued);
      }
      return true;
    };
    ASSERT_EQ(g.submit(generation::request({1, 2, 3}, 40), sink_a), GenerateAdmission::kQueued);
    std::unique_lock<std::mutex> lock(mutex);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(120), [&] { return done == 2; }));
    std::string text(order.begin(), order.end());
    size_t first_b = text.find('b'), last_a = text.rfind('a');
    ASSERT_NE(first_b, std::string::npos);
    EXPECT_LT(first_b, last_a) << "B's first token came after A finished: " << text;
    EXPECT_LE(std::count(text.begin(), text.end(), 'a'), 40);  // fewer when an eos token came
    EXPECT_LE(std::count(text.begin(), text.end(), 'b'), 10);
    // Once B joined, the two alternate step by step (a decode step gives each a token).
    EXPECT_NE(text.find("abab"), std::string::npos) << text;
    lock.unlock();
    g.drain();
  });
}

// Triton's statistics of a generation model (Metrics::generation_step): each
// step is one execution of its sequences (batch_stats by that size), each
// request one inference counted at its prefill, with its queue wait and one
// compute_infer count charged every step it was in.
TEST_P(HfGeneration, StepsAndRequestsAreCountedAsTritonStatistics) {
  using namespace generation;
  int n = World::get().size();
  ServableDefinition s = servable_from_config(generation::generating(GetParam(), n >= 2 ? 2 : 1), Device::cpu());
  Engine engine({s}, Device::cpu());
  meshrt::testing::with_engine(engine, [&] {
    Metrics metrics;
    Generator g(engine, 0, metrics);
    const std::vector<std::vector<int64_t>> prompts = {{5, 6, 7}, {40, 41}, {100, 3, 9, 27, 8}, {11}, {250, 251, 252}};
    std::vector<std::shared_ptr<Collected>> got;
    for (size_t i = 0; i < prompts.size(); ++i) got.push_back(submit(g, request(prompts[i], 4 + static_cast<int64_t>(i))));
    uint64_t tokens = 0;
    for (const auto& c : got) {
      ASSERT_TRUE(finished(*c));
      ASSERT_EQ(c->status, 200) << c->error;
      tokens += c->tokens.size();
    }
    g.drain();
    std::vector<ModelStatistics> all = metrics.statistics();
    ASSERT_EQ(all.size(), 1u);
    const ModelStatistics& st = all[0];
    EXPECT_EQ(st.name, GetParam());
    const uint64_t k = prompts.size();
    EXPECT_EQ(st.inference_count, k) << "each request is one inference";
    EXPECT_GE(st.execution_count, 2u) << "at least a prefill and a decode step";
    EXPECT_EQ(st.queue.count, k);
    EXPECT_EQ(st.compute_infer.count, k);
    EXPECT_GT(st.compute_infer.ns, 0u);
    EXPECT_EQ(st.compute_input.count, k);
    EXPECT_EQ(st.compute_input.ns, 0u);
    EXPECT_EQ(st.compute_output.count, k);
    // One batch_stats count per step; every sequence of a step gets a token
    // from it, so sizes times counts add up to the tokens generated, and the
    // requests' compute_infer time is each step's time once per sequence.
    uint64_t steps = 0, sequences = 0, charged_ns = 0;
    for (const auto& [size, b] : st.batches) {
      EXPECT_GE(size, 1);
      EXPECT_LE(size, s.batching.max_batch_size);
      EXPECT_EQ(b.compute_input.count, b.compute_infer.count);
      steps += b.compute_infer.count;
      sequences += static_cast<uint64_t>(size) * b.compute_infer.count;
      charged_ns += static_cast<uint64_t>(size) * b.compute_infer.ns;
    }
    EXPECT_EQ(steps, st.execution_count);
    EXPECT_EQ(sequences, tokens);
    EXPECT_EQ(charged_ns, st.compute_infer.ns);
    EXPECT_EQ(st.success.count + st.fail.count, 0u) << "the front end counts answers, not the generator";
    // The Prometheus view counts the same steps.
    std::string text = metrics.render();
    std::string labels = "{model=\"" + GetParam() + "\",version=\"1\"}";
    EXPECT_NE(text.find("meshrt_batch_size_count" + labels + " " + std::to_string(st.execution_count) + "\n"),
              std::string::npos)
        << text;
    EXPECT_NE(text.find("meshrt_inference_queue_seconds_count" + labels + " " + std::to_string(k) + "\n"),
              std::string::npos)
        << text;
  });
}

INSTANTIATE_TEST_SUITE_P(Examples, HfGeneration, ::testing::Values("gpt2-tiny", "llama-tiny"), [](const auto& info) {
  std::string s = info.param;
  for (char& c : s) c = c == '-' ? '_' : c;
  return s;
});

}  // namespace
}  // namespace meshrt::serving

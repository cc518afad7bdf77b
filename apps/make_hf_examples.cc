// meshrt-make-hf-examples: writes small Hugging Face decoder-only checkpoints
// with random weights (examples/hf), laid out exactly as transformers'
// save_pretrained writes them, for the tests of meshrt's Hugging Face loader and
// its forward pass (tests/hf_reference.py computes their logits independently).
// Generated from fixed seeds, so the files are reproducible: a test checks the
// committed files are exactly this tool's output.
//
//   gpt2-tiny         GPT2LMHeadModel, f32, one model.safetensors, tied LM head
//   gpt2-tiny-bf16    the same weights rounded to bf16
//   gpt2-tiny-hub     the same f32 weights in the hub's original layout: no
//                     "transformer." prefix, the h.{i}.attn.bias causal-mask and
//                     h.{i}.attn.masked_bias buffers stored (a loader ignores
//                     them), a config as old as the hub's (n_ctx, no n_inner,
//                     no torch_dtype)
//   llama-tiny        LlamaForCausalLM, f32, grouped-query attention, sharded in
//                     two files with model.safetensors.index.json
//   llama-tiny-bf16   the same weights rounded to bf16, one file
//   llama-tiny-llama3 the same bf16 weights with Llama 3.1's rope_theta and
//                     "llama3" rope_scaling (so only positions after 0 differ)
//
// Sizes are chosen for the sharded runs at 1, 2 and 4 ranks: a prime
// vocabulary (503: no even split), 4 heads over 2 key/value heads, 3 layers
// over 2 pipeline stages. Each folder also holds meshrt.json, the one file that
// is meshrt's own (the serving layout: rank_size, stage_size), and a
// tokenizer.json of the byte-level BPE kind trained on a short text
// (models/tokenizer_writer.h: GPT-2's layout for the GPT-2 folders, Llama 3's
// for the Llama ones).
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "apps/cli.h"
#include "io/safetensors.h"
#include "models/tokenizer_writer.h"

namespace {

using meshrt::DType;
using meshrt::HostTensor;
using Json = nlohmann::json;
// Named tensors in the order of the model's state dict (which decides shards).
using Tensors = std::vector<std::pair<std::string, HostTensor>>;

// The version the files imitate (its save_pretrained layout, config fields and
// generation_config.json).
constexpr const char* kTransformersVersion = "4.46.3";

constexpr int64_t kVocab = 503;  // prime: divides over no rank count
constexpr int64_t kHidden = 64;
constexpr int64_t kLayers = 3;  // uneven over 2 pipeline stages
constexpr int64_t kHeads = 4;   // head_dim 16
constexpr int64_t kKvHeads = 2;
constexpr int64_t kGpt2Positions = 64;
constexpr int64_t kLlamaIntermediate = 128;
constexpr int64_t kLlamaPositions = 64;
constexpr int64_t kGpt2Token = kVocab - 1;  // bos = eos, like GPT-2's 50256

// Normal samples from a 64-bit Mersenne twister by the Irwin-Hall sum of 12
// uniforms (mean 6, variance 1): only exact integer and double arithmetic, so
// the bytes are the same with every standard library (std::normal_distribution's
// algorithm is the library's choice).
class Normal {
 public:
  explicit Normal(uint64_t seed) : rng_(seed) {}
  double operator()() {
    double sum = 0;
    for (int i = 0; i < 12; ++i) sum += static_cast<double>(rng_() >> 11) * 0x1p-53;
    return sum - 6;
  }

 private:
  std::mt19937_64 rng_;
};

// center + std * N(0, 1) in f32, from its own seed.
HostTensor random_tensor(const meshrt::Shape& shape, uint64_t seed, double center, double std) {
  Normal normal(seed);
  HostTensor t = HostTensor::empty(shape, DType::kF32);
  for (float& v : t.span<float>()) v = static_cast<float>(center + std * normal());
  return t;
}

// Weights whose outputs keep unit scale (1/sqrt(fan_in)): attention is then
// peaked and the logits spread, so a wrong head split, mask or rotation changes
// them clearly. HF's own init (std 0.02 everywhere) gives near-uniform
// attention at this width.
HostTensor projection(const meshrt::Shape& shape, int64_t fan_in, uint64_t seed) {
  return random_tensor(shape, seed, 0, 1 / std::sqrt(static_cast<double>(fan_in)));
}
HostTensor norm_weight(int64_t n, uint64_t seed) { return random_tensor({n}, seed, 1, 0.1); }
HostTensor small(const meshrt::Shape& shape, uint64_t seed) { return random_tensor(shape, seed, 0, 0.02); }

// GPT2LMHeadModel's state dict with save_pretrained's names (tied lm_head.weight not stored).
// Conv1D weights are [in, out].
Tensors gpt2_weights() {
  const int64_t d = kHidden, inner = 4 * kHidden;
  Tensors w;
  uint64_t seed = 1000;
  w.emplace_back("transformer.wte.weight", random_tensor({kVocab, d}, seed++, 0, 0.1));
  w.emplace_back("transformer.wpe.weight", random_tensor({kGpt2Positions, d}, seed++, 0, 0.1));
  for (int64_t i = 0; i < kLayers; ++i) {
    const std::string p = "transformer.h." + std::to_string(i) + ".";
    w.emplace_back(p + "ln_1.weight", norm_weight(d, seed++));
    w.emplace_back(p + "ln_1.bias", small({d}, seed++));
    w.emplace_back(p + "attn.c_attn.weight", projection({d, 3 * d}, d, seed++));
    w.emplace_back(p + "attn.c_attn.bias", small({3 * d}, seed++));
    w.emplace_back(p + "attn.c_proj.weight", projection({d, d}, d, seed++));
    w.emplace_back(p + "attn.c_proj.bias", small({d}, seed++));
    w.emplace_back(p + "ln_2.weight", norm_weight(d, seed++));
    w.emplace_back(p + "ln_2.bias", small({d}, seed++));
    w.emplace_back(p + "mlp.c_fc.weight", projection({d, inner}, d, seed++));
    w.emplace_back(p + "mlp.c_fc.bias", small({inner}, seed++));
    w.emplace_back(p + "mlp.c_proj.weight", projection({inner, d}, inner, seed++));
    w.emplace_back(p + "mlp.c_proj.bias", small({d}, seed++));
  }
  w.emplace_back("transformer.ln_f.weight", norm_weight(d, seed++));
  w.emplace_back("transformer.ln_f.bias", small({d}, seed++));
  return w;
}

// The hub's original GPT-2 layout: no "transformer." prefix, and each block's
// buffers: attn.bias, the causal mask [1, 1, n_positions, n_positions] (ones on
// and below the diagonal), and attn.masked_bias, the scalar -1e4.
Tensors gpt2_hub_weights(const Tensors& saved) {
  Tensors w;
  for (const auto& [name, t] : saved) w.emplace_back(name.substr(std::string("transformer.").size()), t);
  for (int64_t i = 0; i < kLayers; ++i) {
    const int64_t n = kGpt2Positions;
    HostTensor mask = HostTensor::empty({1, 1, n, n}, DType::kF32);
    float* m = mask.data<float>();
    for (int64_t r = 0; r < n; ++r)
      for (int64_t c = 0; c < n; ++c) m[r * n + c] = c <= r ? 1.0f : 0.0f;
    w.emplace_back("h." + std::to_string(i) + ".attn.bias", mask);
    w.emplace_back("h." + std::to_string(i) + ".attn.masked_bias",
                   HostTensor::full<float>(meshrt::Shape(std::vector<int64_t>{}), -1e4f));
  }
  return w;
}

// LlamaForCausalLM's state dict, in its order (decides the shards). Linear weights are [out, in].
Tensors llama_weights() {
  const int64_t d = kHidden, head_dim = kHidden / kHeads, kv = kKvHeads * head_dim, inner = kLlamaIntermediate;
  Tensors w;
  uint64_t seed = 2000;
  w.emplace_back("model.embed_tokens.weight", random_tensor({kVocab, d}, seed++, 0, 0.1));
  for (int64_t i = 0; i < kLayers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    w.emplace_back(p + "self_attn.q_proj.weight", projection({d, d}, d, seed++));
    w.emplace_back(p + "self_attn.k_proj.weight", projection({kv, d}, d, seed++));
    w.emplace_back(p + "self_attn.v_proj.weight", projection({kv, d}, d, seed++));
    w.emplace_back(p + "self_attn.o_proj.weight", projection({d, d}, d, seed++));
    w.emplace_back(p + "mlp.gate_proj.weight", projection({inner, d}, d, seed++));
    w.emplace_back(p + "mlp.up_proj.weight", projection({inner, d}, d, seed++));
    w.emplace_back(p + "mlp.down_proj.weight", projection({d, inner}, inner, seed++));
    w.emplace_back(p + "input_layernorm.weight", norm_weight(d, seed++));
    w.emplace_back(p + "post_attention_layernorm.weight", norm_weight(d, seed++));
  }
  w.emplace_back("model.norm.weight", norm_weight(d, seed++));
  w.emplace_back("lm_head.weight", projection({kVocab, d}, d, seed++));
  return w;
}

Tensors to_bf16(const Tensors& tensors) {
  Tensors out;
  for (const auto& [name, t] : tensors) out.emplace_back(name, meshrt::cast_host(t, DType::kBF16));
  return out;
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  if (!out) throw meshrt::Error(meshrt::ErrorKind::kUnavailable, "cannot write " + path);
}

// As transformers writes its JSON files: json.dumps(indent=2, sort_keys=True) + "\n"
// (nlohmann's objects are sorted by key, and it prints numbers as Python does here).
void write_json(const std::string& path, const Json& json) { write_text(path, json.dump(2) + "\n"); }

void make_dir(const std::string& path) {
  if (::mkdir(path.c_str(), 0755) != 0 && errno != EEXIST)
    throw meshrt::Error(meshrt::ErrorKind::kUnavailable, "cannot create the folder " + path);
}

// safetensors' save_file orders a file's tensors by dtype, then by name; every
// file here has one dtype.
void write_safetensors(const std::string& path, Tensors tensors) {
  std::sort(tensors.begin(), tensors.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  meshrt::io::write_safetensors_file(path, tensors, {{"format", "pt"}});
}

// save_pretrained(max_shard_size=...): tensors go into shards in state-dict
// order, a new shard starting when the next tensor would pass the limit
// (huggingface_hub's split_torch_state_dict_into_shards); the index maps every
// name to its file, total_size being the tensors' bytes.
void write_sharded(const std::string& dir, const Tensors& tensors, uint64_t max_shard_bytes) {
  std::vector<Tensors> shards(1);
  uint64_t shard_bytes = 0, total = 0;
  for (const auto& [name, t] : tensors) {
    const uint64_t bytes = t.nbytes();
    if (shard_bytes > 0 && shard_bytes + bytes > max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().emplace_back(name, t);
    shard_bytes += bytes;
    total += bytes;
  }
  Json weight_map = Json::object();
  for (size_t s = 0; s < shards.size(); ++s) {
    char file[64];
    std::snprintf(file, sizeof file, "model-%05zu-of-%05zu.safetensors", s + 1, shards.size());
    for (const auto& entry : shards[s]) weight_map[entry.first] = file;
    write_safetensors(dir + "/" + file, shards[s]);
  }
  write_json(dir + "/model.safetensors.index.json",
             {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}});
}

// The generation_config.json save_pretrained writes beside a generative model's config.
void write_generation_config(const std::string& dir, int64_t bos, int64_t eos, const char* version) {
  write_json(dir + "/generation_config.json",
             {{"_from_model_config", true}, {"bos_token_id", bos}, {"eos_token_id", eos},
              {"transformers_version", version}});
}

// meshrt's own serving layout for the folder: 4 ranks in 2 pipeline stages.
void write_meshrt_config(const std::string& dir) {
  write_json(dir + "/meshrt.json", {{"rank_size", 4}, {"stage_size", 2}});
}

// GPT2Config.save_pretrained's config.json (every GPT-2 field; tie_word_embeddings
// written out though it is PretrainedConfig's default).
Json gpt2_config(const char* torch_dtype) {
  return {{"activation_function", "gelu_new"},
          {"architectures", Json::array({"GPT2LMHeadModel"})},
          {"attn_pdrop", 0.1},
          {"bos_token_id", kGpt2Token},
          {"embd_pdrop", 0.1},
          {"eos_token_id", kGpt2Token},
          {"initializer_range", 0.02},
          {"layer_norm_epsilon", 1e-05},
          {"model_type", "gpt2"},
          {"n_embd", kHidden},
          {"n_head", kHeads},
          {"n_inner", nullptr},
          {"n_layer", kLayers},
          {"n_positions", kGpt2Positions},
          {"reorder_and_upcast_attn", false},
          {"resid_pdrop", 0.1},
          {"scale_attn_by_inverse_layer_idx", false},
          {"scale_attn_weights", true},
          {"summary_activation", nullptr},
          {"summary_first_dropout", 0.1},
          {"summary_proj_to_labels", true},
          {"summary_type", "cls_index"},
          {"summary_use_proj", true},
          {"tie_word_embeddings", true},
          {"torch_dtype", torch_dtype},
          {"transformers_version", kTransformersVersion},
          {"use_cache", true},
          {"vocab_size", kVocab}};
}

// The hub's original gpt2 config.json, shrunk: n_ctx, no n_inner, no torch_dtype
// or transformers_version (a loader takes transformers' defaults).
Json gpt2_hub_config() {
  return {{"activation_function", "gelu_new"},
          {"architectures", Json::array({"GPT2LMHeadModel"})},
          {"attn_pdrop", 0.1},
          {"bos_token_id", kGpt2Token},
          {"embd_pdrop", 0.1},
          {"eos_token_id", kGpt2Token},
          {"initializer_range", 0.02},
          {"layer_norm_epsilon", 1e-05},
          {"model_type", "gpt2"},
          {"n_ctx", kGpt2Positions},
          {"n_embd", kHidden},
          {"n_head", kHeads},
          {"n_layer", kLayers},
          {"n_positions", kGpt2Positions},
          {"resid_pdrop", 0.1},
          {"summary_activation", nullptr},
          {"summary_first_dropout", 0.1},
          {"summary_proj_to_labels", true},
          {"summary_type", "cls_index"},
          {"summary_use_proj", true},
          {"task_specific_params", {{"text-generation", {{"do_sample", true}, {"max_length", 50}}}}},
          {"vocab_size", kVocab}};
}

// LlamaConfig.save_pretrained's config.json.
Json llama_config(const char* torch_dtype, bool llama3) {
  Json rope_scaling = nullptr;
  if (llama3) {
    rope_scaling = {{"factor", 8.0},
                    {"high_freq_factor", 4.0},
                    {"low_freq_factor", 1.0},
                    {"original_max_position_embeddings", kLlamaPositions},
                    {"rope_type", "llama3"}};
  }
  return {{"architectures", Json::array({"LlamaForCausalLM"})},
          {"attention_bias", false},
          {"attention_dropout", 0.0},
          {"bos_token_id", 1},
          {"eos_token_id", 2},
          {"head_dim", kHidden / kHeads},
          {"hidden_act", "silu"},
          {"hidden_size", kHidden},
          {"initializer_range", 0.02},
          {"intermediate_size", kLlamaIntermediate},
          {"max_position_embeddings", llama3 ? 8 * kLlamaPositions : kLlamaPositions},
          {"mlp_bias", false},
          {"model_type", "llama"},
          {"num_attention_heads", kHeads},
          {"num_hidden_layers", kLayers},
          {"num_key_value_heads", kKvHeads},
          {"pretraining_tp", 1},
          {"rms_norm_eps", 1e-05},
          {"rope_scaling", rope_scaling},
          {"rope_theta", llama3 ? 500000.0 : 10000.0},
          {"tie_word_embeddings", false},
          {"torch_dtype", torch_dtype},
          {"transformers_version", kTransformersVersion},
          {"use_cache", true},
          {"vocab_size", kVocab}};
}

// One save_pretrained folder: config.json, generation_config.json, the weights, meshrt.json.
// The text the example tokenizers are trained on (their merges mean nothing to
// the random weights; they make text_input and text_output work end to end).
constexpr const char* kTokenizerText =
    "The quick brown fox jumps over the lazy dog. A model is served on four ranks: two pipeline stages, "
    "each two-way tensor parallel. Tokens come back one by one, as soon as each exists!\n"
    "Hello, world. Hello again, world: 12 apples, 345 pears and 6789 plums cost 10.50 each.\n"
    "It's what they're saying; we'll see what you've done, I'd think, and I'm sure.\n"
    "In the beginning was the word, and the word was a token, and the token was an id.\n"
    "Mesh, layout, shard, replicate, reduce, gather, scatter, send, receive, stream, event.\n"
    "The rain in Spain stays mainly in the plain; the cat sat on the mat; the end.\n"
    "Distributed inference splits a large model over many devices: tensor parallelism cuts every layer, "
    "pipeline parallelism gives each stage a few layers, and the batch flows between them.\n"
    "A coordinator schedules functions onto workers; parameter servers hold the variables; futures "
    "return values later; a lost worker is retried, and the checkpoint keeps the progress.\n"
    "Questions? Answers! Numbers like 2024, 1999, 3.14159 and 42 appear; so do words such as "
    "running, jumped, swimming, quickly, beautiful, extraordinary, understanding, communication.\n"
    "Keys and values are cached in blocks; a request joins the running batch between decode steps, "
    "and leaves it when it stops at the end of sequence or at its maximum number of new tokens.\n";

// tokenizer.json of the example: GPT-2's layout (<|endoftext|> last, the eos
// id) or Llama 3's (its pre-tokenizer; the special tokens first, so that bos 1
// and eos 2 name <|begin_of_text|> and <|end_of_text|>).
std::string example_tokenizer(meshrt::models::TokenizerStyle style) {
  meshrt::models::BpeTokenizerSpec spec;
  spec.vocab_size = kVocab;
  spec.style = style;
  if (style == meshrt::models::TokenizerStyle::kGpt2) {
    spec.special_tokens = {"<|endoftext|>"};
  } else {
    spec.special_tokens = {"<|reserved_special_token_0|>", "<|begin_of_text|>", "<|end_of_text|>"};
    spec.special_tokens_first = true;
    spec.bos_token = "<|begin_of_text|>";
  }
  return meshrt::models::bpe_tokenizer_json(kTokenizerText, spec);
}

void write_folder(const std::string& dir, const Json& config, const Tensors& weights, int64_t bos, int64_t eos,
                  const char* version, uint64_t max_shard_bytes = 0, const std::string& tokenizer = "") {
  make_dir(dir);
  if (!tokenizer.empty()) {
    std::ofstream out(dir + "/tokenizer.json", std::ios::binary);
    out << tokenizer;
    if (!out) throw std::runtime_error("cannot write " + dir + "/tokenizer.json");
  }
  write_json(dir + "/config.json", config);
  write_generation_config(dir, bos, eos, version);
  if (max_shard_bytes > 0) {
    write_sharded(dir, weights, max_shard_bytes);
  } else {
    write_safetensors(dir + "/model.safetensors", weights);
  }
  write_meshrt_config(dir);
}

}  // namespace

int main(int argc, char** argv) {
  std::string out = "examples/hf";
  meshrt::apps::CommandLine app{
      "meshrt-make-hf-examples: writes small Hugging Face checkpoints (GPT-2 and Llama, random weights from fixed "
      "seeds) in save_pretrained's layout, each with a meshrt.json"};
  app.add("-o,--out", out, "the folder to write the model folders into (created if missing)").show_default();
  if (auto exit_code = app.parse(argc, argv)) return *exit_code;
  try {
    make_dir(out);
    const Tensors gpt2 = gpt2_weights();
    const std::string gpt2_tokenizer = example_tokenizer(meshrt::models::TokenizerStyle::kGpt2);
    const std::string llama_tokenizer = example_tokenizer(meshrt::models::TokenizerStyle::kLlama3);
    write_folder(out + "/gpt2-tiny", gpt2_config("float32"), gpt2, kGpt2Token, kGpt2Token, kTransformersVersion, 0,
                 gpt2_tokenizer);
    write_folder(out + "/gpt2-tiny-bf16", gpt2_config("bfloat16"), to_bf16(gpt2), kGpt2Token, kGpt2Token,
                 kTransformersVersion, 0, gpt2_tokenizer);
    write_folder(out + "/gpt2-tiny-hub", gpt2_hub_config(), gpt2_hub_weights(gpt2), kGpt2Token, kGpt2Token,
                 "4.26.0.dev0", 0, gpt2_tokenizer);
    const Tensors llama = llama_weights();
    const Tensors llama_bf16 = to_bf16(llama);
    // 450 kB: the last layer's q_proj and k_proj still fit in the first file,
    // its other tensors go to the second, so one layer spans both files.
    write_folder(out + "/llama-tiny", llama_config("float32", false), llama, 1, 2, kTransformersVersion, 450000,
                 llama_tokenizer);
    write_folder(out + "/llama-tiny-bf16", llama_config("bfloat16", false), llama_bf16, 1, 2, kTransformersVersion, 0,
                 llama_tokenizer);
    write_folder(out + "/llama-tiny-llama3", llama_config("bfloat16", true), llama_bf16, 1, 2, kTransformersVersion, 0,
                 llama_tokenizer);
    std::printf("wrote gpt2-tiny, gpt2-tiny-bf16, gpt2-tiny-hub, llama-tiny, llama-tiny-bf16, llama-tiny-llama3 in %s\n",
                out.c_str());
  } catch (const meshrt::Error& e) {
    std::fprintf(stderr, "meshrt-make-hf-examples: %s\n", e.what());
    return 1;
  }
  return 0;
}

#include "models/hf_config.h"

#include <fstream>
#include <set>
#include <sstream>

#include "device/error.h"
#include "io/json_limits.h"

namespace meshrt::models::hf {

namespace {
using nlohmann::json;
using detail::cat;

// Fields every PretrainedConfig may carry that do not change a forward pass
// without labels: generation defaults, bookkeeping, token ids.
const std::vector<std::string> kGenericInert = {
    "_name_or_path", "_attn_implementation", "_attn_implementation_autoset", "architectures", "bad_words_ids",
    "begin_suppress_tokens", "bos_token_id", "chunk_size_feed_forward", "cross_attention_hidden_size",
    "decoder_start_token_id", "diversity_penalty", "do_sample", "early_stopping", "encoder_no_repeat_ngram_size",
    "eos_token_id", "exponential_decay_length_penalty", "finetuning_task", "forced_bos_token_id",
    "forced_eos_token_id", "id2label", "initializer_range", "is_decoder", "is_encoder_decoder", "label2id",
    "length_penalty", "max_length", "min_length", "model_type", "no_repeat_ngram_size", "num_beam_groups",
    "num_beams", "num_labels", "num_return_sequences", "output_attentions", "output_hidden_states",
    "output_scores", "pad_token_id", "prefix", "problem_type", "pruned_heads", "remove_invalid_values",
    "repetition_penalty", "return_dict", "return_dict_in_generate", "sep_token_id", "suppress_tokens",
    "task_specific_params", "temperature", "tf_legacy_loss", "tie_encoder_decoder", "tokenizer_class", "top_k",
    "top_p", "torch_dtype", "torchscript", "transformers_version", "typical_p", "use_bfloat16", "use_cache"};

FieldLists lists_for(Architecture a) {
  FieldLists l;
  if (a == Architecture::kGpt2) {
    l.used = {"vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "activation_function",
              "layer_norm_epsilon", "scale_attn_weights", "tie_word_embeddings"};
    l.refused = {"scale_attn_by_inverse_layer_idx (true)", "add_cross_attention (true)",
                 "activation_function (other than gelu_new, gelu_pytorch_tanh, gelu)", "quantization_config"};
    l.inert = {"resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_type", "summary_use_proj", "summary_activation",
               "summary_proj_to_labels", "summary_first_dropout", "n_ctx",
               "reorder_and_upcast_attn (meshrt accumulates attention in f32 anyway)"};
  } else {
    l.used = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_theta",
              "rope_scaling (none, linear, llama3)", "tie_word_embeddings"};
    l.refused = {"rope_scaling (types other than linear and llama3)", "attention_bias (true)", "mlp_bias (true)",
                 "sliding_window (set)", "hidden_act (other than silu)", "quantization_config"};
    l.inert = {"attention_dropout", "pretraining_tp (only the order of summation in transformers)"};
  }
  for (const auto& f : kGenericInert) l.inert.push_back(f);
  return l;
}

// A field's name as the lists write it ("n_inner" of "n_inner (...)").
std::string bare(const std::string& entry) { return entry.substr(0, entry.find(' ')); }

class Reader {
 public:
  Reader(const json& j, std::string path) : j_(j), path_(std::move(path)) {}

  [[noreturn]] void fail(const std::string& field, const std::string& why) const {
    throw Error(ErrorKind::kInvalidArgument, cat(path_, ": \"", field, "\" ", why));
  }
  bool has(const std::string& field) const { return j_.contains(field) && !j_[field].is_null(); }
  const json& at(const std::string& field) const { return j_[field]; }

  int64_t integer(const std::string& field, std::optional<int64_t> fallback, int64_t minimum = 1) const {
    if (!has(field)) {
      if (!fallback) fail(field, "is missing");
      return *fallback;
    }
    const json& v = j_[field];
    if (!v.is_number_integer()) fail(field, cat("must be an integer, got ", io::json_limits::brief(v)));
    int64_t x = v.get<int64_t>();
    if (x < minimum) fail(field, cat("must be at least ", minimum, ", got ", x));
    return x;
  }
  double number(const std::string& field, double fallback, bool positive = true) const {
    if (!has(field)) return fallback;
    const json& v = j_[field];
    if (!v.is_number()) fail(field, cat("must be a number, got ", io::json_limits::brief(v)));
    double x = v.get<double>();
    if (positive && !(x > 0)) fail(field, cat("must be positive, got ", io::json_limits::brief(v)));
    return x;
  }
  bool boolean(const std::string& field, bool fallback) const {
    if (!has(field)) return fallback;
    if (!j_[field].is_boolean()) fail(field, cat("must be true or false, got ", io::json_limits::brief(j_[field])));
    return j_[field].get<bool>();
  }
  std::string text(const std::string& field, const std::string& fallback) const {
    if (!has(field)) return fallback;
    if (!j_[field].is_string()) fail(field, cat("must be a string, got ", io::json_limits::brief(j_[field])));
    return j_[field].get<std::string>();
  }
  // Refuses a field set to anything but its neutral value.
  void refuse_unless(const std::string& field, const json& neutral, const std::string& why) const {
    if (!j_.contains(field) || j_[field] == neutral || (j_[field].is_null() && neutral.is_null())) return;
    fail(field, cat("is ", io::json_limits::brief(j_[field]), ": ", why, " (meshrt runs ", io::json_limits::brief(neutral),
                    "); the checkpoint cannot be served"));
  }

 private:
  const json& j_;
  std::string path_;
};

void read_token_ids(const Reader& r, HfConfig& c) {
  if (r.has("bos_token_id") && r.at("bos_token_id").is_number_integer()) c.bos_token_id = r.at("bos_token_id").get<int64_t>();
  if (r.has("eos_token_id")) {
    const json& e = r.at("eos_token_id");
    if (e.is_number_integer()) c.eos_token_ids.push_back(e.get<int64_t>());
    if (e.is_array()) {
      for (const json& v : e) {
        if (v.is_number_integer()) c.eos_token_ids.push_back(v.get<int64_t>());
      }
    }
  }
}

void read_torch_dtype(const Reader& r, HfConfig& c) {
  std::string t = r.text("torch_dtype", "");
  if (t == "float32") c.torch_dtype = DType::kF32;
  if (t == "float16") c.torch_dtype = DType::kF16;
  if (t == "bfloat16") c.torch_dtype = DType::kBF16;
}

void read_gpt2(const Reader& r, HfConfig& c) {
  c.vocab_size = r.integer("vocab_size", 50257);
  c.max_positions = r.integer("n_positions", 1024);
  c.hidden_size = r.integer("n_embd", 768);
  c.num_layers = r.integer("n_layer", 12);
  c.num_heads = r.integer("n_head", 12);
  c.num_kv_heads = c.num_heads;
  c.intermediate_size = r.integer("n_inner", 4 * c.hidden_size);
  c.norm_eps = r.number("layer_norm_epsilon", 1e-5);
  std::string act = r.text("activation_function", "gelu_new");
  if (act == "gelu_new" || act == "gelu_pytorch_tanh") {
    c.activation = "gelu_tanh";
  } else if (act == "gelu") {
    c.activation = "gelu";
  } else {
    r.fail("activation_function", cat("is \"", act, "\": meshrt runs gelu_new, gelu_pytorch_tanh and gelu"));
  }
  c.scale_attention = r.boolean("scale_attn_weights", true);
  c.tied_embeddings = r.boolean("tie_word_embeddings", true);
  r.refuse_unless("scale_attn_by_inverse_layer_idx", false, "scores scaled by 1 / (layer index + 1)");
  r.refuse_unless("add_cross_attention", false, "cross-attention layers (an encoder-decoder model)");
}

void read_llama(const Reader& r, HfConfig& c) {
  c.vocab_size = r.integer("vocab_size", 32000);
  c.hidden_size = r.integer("hidden_size", 4096);
  c.intermediate_size = r.integer("intermediate_size", 11008);
  c.num_layers = r.integer("num_hidden_layers", 32);
  c.num_heads = r.integer("num_attention_heads", 32);
  c.num_kv_heads = r.integer("num_key_value_heads", c.num_heads);
  if (r.has("head_dim")) c.head_dim = r.integer("head_dim", std::nullopt);
  c.max_positions = r.integer("max_position_embeddings", 2048);
  c.norm_eps = r.number("rms_norm_eps", 1e-6);
  c.rope_theta = r.number("rope_theta", 10000.0);
  c.tied_embeddings = r.boolean("tie_word_embeddings", false);
  std::string act = r.text("hidden_act", "silu");
  if (act != "silu" && act != "swish") r.fail("hidden_act", cat("is \"", act, "\": meshrt runs silu"));
  c.activation = "silu";
  if (c.num_heads % c.num_kv_heads != 0) {
    r.fail("num_key_value_heads", cat("is ", c.num_kv_heads, ", which does not divide num_attention_heads (", c.num_heads, ")"));
  }
  r.refuse_unless("attention_bias", false, "biases on the q, k, v and o projections");
  r.refuse_unless("mlp_bias", false, "biases on the gate, up and down projections");
  r.refuse_unless("sliding_window", nullptr, "sliding-window attention");
  if (r.has("rope_scaling")) {
    const json& s = r.at("rope_scaling");
    if (!s.is_object()) r.fail("rope_scaling", cat("must be an object or null, got ", io::json_limits::brief(s)));
    std::string type = s.contains("rope_type") && s["rope_type"].is_string() ? s["rope_type"].get<std::string>()
                       : s.contains("type") && s["type"].is_string()       ? s["type"].get<std::string>()
                                                                            : "";
    auto sub = [&](const std::string& field, double fallback) {
      if (!s.contains(field)) return fallback;
      if (!s[field].is_number() || !(s[field].get<double>() > 0)) {
        r.fail("rope_scaling", cat("has ", field, " = ", io::json_limits::brief(s[field]), ": it must be a positive number"));
      }
      return s[field].get<double>();
    };
    if (type == "default") {
      c.rope_scaling.kind = RopeScalingConfig::Kind::kNone;
    } else if (type == "linear") {
      c.rope_scaling.kind = RopeScalingConfig::Kind::kLinear;
      c.rope_scaling.factor = sub("factor", 1);
    } else if (type == "llama3") {
      c.rope_scaling.kind = RopeScalingConfig::Kind::kLlama3;
      c.rope_scaling.factor = sub("factor", 8);
      c.rope_scaling.low_freq_factor = sub("low_freq_factor", 1);
      c.rope_scaling.high_freq_factor = sub("high_freq_factor", 4);
      c.rope_scaling.original_max_position_embeddings =
          static_cast<int64_t>(sub("original_max_position_embeddings", 8192));
    } else {
      r.fail("rope_scaling", cat("has type \"", type, "\": meshrt runs none, linear and llama3 RoPE scaling"));
    }
  }
}
}  // namespace

const char* to_string(Architecture a) { return a == Architecture::kGpt2 ? "gpt2" : "llama"; }

FieldLists field_lists(Architecture a) { return lists_for(a); }

HfConfig parse_config(const std::string& text, const std::string& path) {
  json j;
  try {
    j = io::json_limits::parse(text);
  } catch (const std::exception& e) {
    throw Error(ErrorKind::kInvalidArgument, cat(path, " is not valid JSON: ", e.what()));
  }
  MESHRT_CHECK_ARG(j.is_object(), path, " must hold a JSON object");
  Reader r(j, path);
  std::string type = r.text("model_type", "");
  HfConfig c;
  if (type == "gpt2") {
    c.architecture = Architecture::kGpt2;
    read_gpt2(r, c);
  } else if (type == "llama") {
    c.architecture = Architecture::kLlama;
    read_llama(r, c);
  } else {
    r.fail("model_type", cat(type.empty() ? "is missing" : "is \"" + type + "\"",
                             ": meshrt serves the decoder-only architectures gpt2 and llama"));
  }
  if (j.contains("quantization_config") && !j["quantization_config"].is_null()) {
    r.fail("quantization_config", "is set: meshrt loads unquantized f32, f16 and bf16 weights");
  }
  if (c.head_dim == 0) {
    if (c.hidden_size % c.num_heads != 0) {
      r.fail(c.architecture == Architecture::kGpt2 ? "n_head" : "num_attention_heads",
             cat("(", c.num_heads, ") does not divide the hidden size (", c.hidden_size, ")"));
    }
    c.head_dim = c.hidden_size / c.num_heads;
  }
  if (c.architecture == Architecture::kLlama && c.head_dim % 2 != 0) {
    r.fail("head_dim", cat("is ", c.head_dim, ": RoPE needs an even head dimension"));
  }
  read_token_ids(r, c);
  read_torch_dtype(r, c);
  // Every other field: inert by the lists, or unknown (reported).
  FieldLists lists = lists_for(c.architecture);
  std::set<std::string> known;
  for (const auto* list : {&lists.used, &lists.refused, &lists.inert}) {
    for (const auto& f : *list) known.insert(bare(f));
  }
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (!known.count(it.key())) c.unknown_fields.push_back(it.key());
  }
  return c;
}

HfConfig read_config(const std::string& folder) {
  std::string path = folder + "/config.json";
  std::ifstream in(path, std::ios::binary);
  MESHRT_CHECK_ARG(in.good(), "cannot read ", path, ": a Hugging Face model folder holds config.json");
  std::stringstream text;
  text << in.rdbuf();
  return parse_config(text.str(), path);
}

}  // namespace meshrt::models::hf

// Hugging Face configs (models/hf_config.h): the hub's GPT-2 and a Llama 3
// config read with transformers' defaults; fields that would change the
// forward pass refused by name; inert fields accepted; unknown ones listed.
#include <gtest/gtest.h>

#include "models/hf_config.h"
#include "test_util.h"

namespace meshrt::models::hf {
namespace {


// The hub's gpt2/config.json (as published, abridged only of nothing).
const char* kGpt2Hub = R"({
  "activation_function": "gelu_new",
  "architectures": ["GPT2LMHeadModel"],
  "attn_pdrop": 0.1,
  "bos_token_id": 50256,
  "embd_pdrop": 0.1,
  "eos_token_id": 50256,
  "initializer_range": 0.02,
  "layer_norm_epsilon": 1e-05,
  "model_type": "gpt2",
  "n_ctx": 1024,
  "n_embd": 768,
  "n_head": 12,
  "n_layer": 12,
  "n_positions": 1024,
  "resid_pdrop": 0.1,
  "summary_activation": null,
  "summary_first_dropout": 0.1,
  "summary_proj_to_labels": true,
  "summary_type": "cls_index",
  "summary_use_proj": true,
  "task_specific_params": {"text-generation": {"do_sample": true, "max_length": 50}},
  "vocab_size": 50257
})";

// A Llama 3.1-style config (grouped-query attention, llama3 RoPE scaling).
const char* kLlama3 = R"({
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "eos_token_id": [128001, 128008, 128009],
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 131072,
  "mlp_bias": false,
  "model_type": "llama",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "rope_theta": 500000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.43.0.dev0",
  "use_cache": true,
  "vocab_size": 128256
})";

TEST(HfConfig, TheHubsGpt2) {
  HfConfig c = parse_config(kGpt2Hub, "gpt2/config.json");
  EXPECT_EQ(c.architecture, Architecture::kGpt2);
  EXPECT_EQ(c.vocab_size, 50257);
  EXPECT_EQ(c.hidden_size, 768);
  EXPECT_EQ(c.num_layers, 12);
  EXPECT_EQ(c.num_heads, 12);
  EXPECT_EQ(c.num_kv_heads, 12);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.intermediate_size, 4 * 768);  // n_inner absent: 4 x n_embd
  EXPECT_EQ(c.max_positions, 1024);
  EXPECT_DOUBLE_EQ(c.norm_eps, 1e-5);
  EXPECT_EQ(c.activation, "gelu_tanh");
  EXPECT_TRUE(c.tied_embeddings);  // PretrainedConfig's default
  EXPECT_TRUE(c.scale_attention);
  EXPECT_EQ(c.bos_token_id, 50256);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{50256}));
  EXPECT_TRUE(c.unknown_fields.empty()) << c.unknown_fields.front();
}

TEST(HfConfig, ALlama3WithGroupedQueryAttentionAndRopeScaling) {
  HfConfig c = parse_config(kLlama3, "llama/config.json");
  EXPECT_EQ(c.architecture, Architecture::kLlama);
  EXPECT_EQ(c.num_kv_heads, 8);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.intermediate_size, 14336);
  EXPECT_EQ(c.activation, "silu");
  EXPECT_FALSE(c.tied_embeddings);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.kind, RopeScalingConfig::Kind::kLlama3);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 8.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(c.torch_dtype, DType::kBF16);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{128001, 128008, 128009}));
  EXPECT_TRUE(c.unknown_fields.empty()) << c.unknown_fields.front();
}

TEST(HfConfig, LlamaDefaultsAreTransformers) {
  HfConfig c = parse_config(R"({"model_type": "llama"})", "c.json");
  EXPECT_EQ(c.vocab_size, 32000);
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.num_kv_heads, 32);  // none given: as many as the heads
  EXPECT_DOUBLE_EQ(c.norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.rope_scaling.kind, RopeScalingConfig::Kind::kNone);
  HfConfig linear = parse_config(R"({"model_type": "llama", "rope_scaling": {"type": "linear", "factor": 2.0}})", "c.json");
  EXPECT_EQ(linear.rope_scaling.kind, RopeScalingConfig::Kind::kLinear);
  EXPECT_DOUBLE_EQ(linear.rope_scaling.factor, 2.0);
}

TEST(HfConfig, FieldsThatWouldChangeTheForwardPassAreRefusedByName) {
  struct Case {
    std::string json;
    std::vector<std::string> says;
  };
  std::vector<Case> cases = {
      {R"({"model_type": "llama", "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})", {"\"rope_scaling\"", "yarn"}},
      {R"({"model_type": "llama", "attention_bias": true})", {"\"attention_bias\" is true"}},
      {R"({"model_type": "llama", "mlp_bias": true})", {"\"mlp_bias\" is true"}},
      {R"({"model_type": "llama", "sliding_window": 4096})", {"\"sliding_window\" is 4096"}},
      {R"({"model_type": "llama", "hidden_act": "gelu"})", {"\"hidden_act\"", "silu"}},
      {R"({"model_type": "llama", "num_attention_heads": 8, "num_key_value_heads": 3})", {"\"num_key_value_heads\" is 3"}},
      {R"({"model_type": "gpt2", "scale_attn_by_inverse_layer_idx": true})", {"\"scale_attn_by_inverse_layer_idx\" is true"}},
      {R"({"model_type": "gpt2", "add_cross_attention": true})", {"\"add_cross_attention\""}},
      {R"({"model_type": "gpt2", "activation_function": "relu"})", {"\"activation_function\" is \"relu\""}},
      {R"({"model_type": "gpt2", "n_embd": 100, "n_head": 3})", {"\"n_head\"", "(3) does not divide the hidden size (100)"}},
      {R"({"model_type": "gpt2", "quantization_config": {"quant_method": "gptq"}})", {"\"quantization_config\""}},
      {R"({"model_type": "bert"})", {"\"model_type\" is \"bert\"", "gpt2 and llama"}},
      {R"({"n_embd": 8})", {"\"model_type\" is missing"}},
      {R"({"model_type": "gpt2", "n_layer": "12"})", {"\"n_layer\" must be an integer"}},
      {R"({"model_type": "gpt2", "n_layer": 0})", {"\"n_layer\" must be at least 1"}},
      {R"({"model_type": "gpt2",)", {"not valid JSON"}},
  };
  for (const Case& c : cases) {
    try {
      parse_config(c.json, "m/config.json");
      ADD_FAILURE() << "accepted: " << c.json;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument) << e.what();
      std::string what = e.what();
      EXPECT_NE(what.find("m/config.json"), std::string::npos) << what;
      for (const std::string& part : c.says) EXPECT_NE(what.find(part), std::string::npos) << part << " not in: " << what;
    }
  }
}

TEST(HfConfig, NeutralValuesOfRefusedFieldsAndInertFieldsAreAccepted) {
  HfConfig c = parse_config(R"({"model_type": "llama", "attention_bias": false, "mlp_bias": false, "sliding_window": null,
                                "attention_dropout": 0.1, "pretraining_tp": 2, "use_cache": false, "pad_token_id": 0,
                                "rope_scaling": null, "transformers_version": "4.40.0", "_name_or_path": "x"})",
                            "c.json");
  EXPECT_TRUE(c.unknown_fields.empty()) << c.unknown_fields.front();
  HfConfig g = parse_config(R"({"model_type": "gpt2", "scale_attn_by_inverse_layer_idx": false,
                                "reorder_and_upcast_attn": true, "n_inner": null, "scale_attn_weights": false})",
                            "c.json");
  EXPECT_FALSE(g.scale_attention);
  EXPECT_EQ(g.intermediate_size, 4 * 768);
}

TEST(HfConfig, UnknownFieldsAreListed) {
  HfConfig c = parse_config(R"({"model_type": "gpt2", "some_new_field": 1, "another": "x"})", "c.json");
  EXPECT_EQ(c.unknown_fields, (std::vector<std::string>{"another", "some_new_field"}));
}

TEST(HfConfig, TheFieldListsCoverEveryFieldOfTheExamples) {
  for (Architecture a : {Architecture::kGpt2, Architecture::kLlama}) {
    FieldLists l = field_lists(a);
    EXPECT_FALSE(l.used.empty());
    EXPECT_FALSE(l.refused.empty());
    EXPECT_FALSE(l.inert.empty());
  }
}

}  // namespace
}  // namespace meshrt::models::hf

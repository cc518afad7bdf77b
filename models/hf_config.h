// Hugging Face model configs (config.json) of the decoder-only architectures
// meshrt runs: GPT-2 (model_type "gpt2") and Llama ("llama"), read as
// transformers reads them, with its defaults for fields a file leaves out.
//
// Every field of a config is one of:
//   - used: it shapes the forward pass and meshrt runs it (sizes, norms' eps,
//     the activation, RoPE's theta and scaling, tied embeddings, ...);
//   - refused: it would change the forward pass in a way meshrt does not run
//     (rope_scaling types other than linear and llama3, attention_bias or
//     mlp_bias true, sliding_window, scale_attn_by_inverse_layer_idx true,
//     add_cross_attention true, other activations): Error(kInvalidArgument)
//     naming the field, its value and the file;
//   - inert: it does not change the logits (dropouts, initializer_range,
//     use_cache, token ids, architectures, torch_dtype, transformers_version,
//     the generic PretrainedConfig fields, ...): accepted;
//   - unknown: accepted and listed in HfConfig::unknown_fields, which the
//     loader reports (a field transformers added after this list was written
//     may change the forward pass; the report says so).
// The lists are kFieldLists below (and docs/ARCHITECTURE.md).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "device/dtype.h"
#include "kernels/attention.h"

namespace meshrt::models::hf {

enum class Architecture { kGpt2, kLlama };
const char* to_string(Architecture a);

// transformers' rope_scaling: none, "linear" (positions / factor) or "llama3"
// (frequency-dependent, _compute_llama3_parameters): the RoPE kernel's own
// parameters.
using RopeScalingConfig = kernels::RopeScaling;

struct HfConfig {
  Architecture architecture = Architecture::kGpt2;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;        // = num_heads without grouped-query attention
  int64_t head_dim = 0;            // hidden_size / num_heads unless the config says
  int64_t intermediate_size = 0;   // the MLP's inner width
  int64_t max_positions = 0;       // GPT-2's n_positions, Llama's max_position_embeddings
  double norm_eps = 1e-5;          // layer_norm_epsilon / rms_norm_eps
  std::string activation;          // "gelu_tanh", "gelu" or "silu" (meshrt's op names)
  bool tied_embeddings = false;    // the LM head is the token embedding
  bool scale_attention = true;     // scores / sqrt(head_dim) (GPT-2's scale_attn_weights)
  double rope_theta = 10000;       // Llama
  RopeScalingConfig rope_scaling;  // Llama
  std::optional<DType> torch_dtype;       // the dtype the weights were saved in, when stated
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;     // eos_token_id: one id or a list
  std::vector<std::string> unknown_fields;  // accepted, not on either list (see the top)
};

// The field lists, by architecture: used, refused unless at their neutral
// value, inert. For the docs and the tests.
struct FieldLists {
  std::vector<std::string> used, refused, inert;
};
FieldLists field_lists(Architecture a);

// Parses config.json's text; path names the file in errors.
HfConfig parse_config(const std::string& text, const std::string& path);
// Reads folder/config.json.
HfConfig read_config(const std::string& folder);

}  // namespace meshrt::models::hf

#include "models/tokenizer_writer.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <unordered_map>

#include "device/error.h"
#include "models/byte_level.h"
#include "models/tokenizer.h"

namespace meshrt::models {

namespace {

using ojson = nlohmann::ordered_json;
using detail::cat;

ojson byte_level(bool add_prefix_space, bool trim_offsets, bool use_regex) {
  return {{"type", "ByteLevel"}, {"add_prefix_space", add_prefix_space}, {"trim_offsets", trim_offsets},
          {"use_regex", use_regex}};
}

ojson pre_tokenizer(TokenizerStyle style) {
  if (style == TokenizerStyle::kGpt2) return byte_level(false, true, true);
  ojson split = {{"type", "Split"}, {"pattern", {{"Regex", kLlama3Pattern}}}, {"behavior", "Isolated"}, {"invert", false}};
  return {{"type", "Sequence"}, {"pretokenizers", ojson::array({split, byte_level(false, true, false)})}};
}

ojson post_processor(TokenizerStyle style, const std::string& bos, int64_t bos_id) {
  if (style == TokenizerStyle::kGpt2 || bos.empty()) return byte_level(true, false, true);
  auto special = [&](int type_id) { return ojson{{"SpecialToken", {{"id", bos}, {"type_id", type_id}}}}; };
  auto sequence = [](const char* id, int type_id) { return ojson{{"Sequence", {{"id", id}, {"type_id", type_id}}}}; };
  ojson template_processing = {
      {"type", "TemplateProcessing"},
      {"single", ojson::array({special(0), sequence("A", 0)})},
      {"pair", ojson::array({special(0), sequence("A", 0), special(1), sequence("B", 1)})},
      {"special_tokens", {{bos, {{"id", bos}, {"ids", ojson::array({bos_id})}, {"tokens", ojson::array({bos})}}}}}};
  return {{"type", "Sequence"}, {"processors", ojson::array({byte_level(true, false, true), template_processing})}};
}

// The layout both the trainer's pre-tokenizer and the final file use.
ojson skeleton(TokenizerStyle style) {
  ojson j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  j["added_tokens"] = ojson::array();
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = pre_tokenizer(style);
  j["post_processor"] = nullptr;
  j["decoder"] = byte_level(true, true, true);
  bool gpt2 = style == TokenizerStyle::kGpt2;
  ojson model;
  model["type"] = "BPE";
  model["dropout"] = nullptr;
  model["unk_token"] = nullptr;
  model["continuing_subword_prefix"] = gpt2 ? ojson("") : ojson(nullptr);
  model["end_of_word_suffix"] = gpt2 ? ojson("") : ojson(nullptr);
  model["fuse_unk"] = false;
  model["byte_fallback"] = false;
  model["ignore_merges"] = !gpt2;
  ojson vocab = ojson::object();
  const auto& order = byte_level::vocab_order();
  for (size_t i = 0; i < order.size(); ++i) vocab[byte_level::utf8_of_byte(order[i])] = i;
  model["vocab"] = vocab;
  model["merges"] = ojson::array();
  j["model"] = model;
  return j;
}

// The training state: tokens by id (in the byte alphabet), the distinct
// pre-tokens as token ids with their counts, the merges so far.
struct Trainer {
  std::vector<std::string> tokens;
  std::unordered_map<std::string, int32_t> ids;
  std::vector<std::vector<int32_t>> words;
  std::vector<int64_t> counts;
  std::vector<std::pair<int32_t, int32_t>> merges;

  explicit Trainer(const std::vector<std::string>& pieces) {
    const auto& order = byte_level::vocab_order();
    std::array<int32_t, 256> byte_id{};
    for (size_t i = 0; i < order.size(); ++i) {
      byte_id[order[i]] = static_cast<int32_t>(i);
      tokens.push_back(byte_level::utf8_of_byte(order[i]));
      ids.emplace(tokens.back(), static_cast<int32_t>(i));
    }
    std::unordered_map<std::string, size_t> seen;
    for (const std::string& piece : pieces) {
      auto [it, fresh] = seen.emplace(piece, words.size());
      if (!fresh) {
        ++counts[it->second];
        continue;
      }
      std::vector<int32_t> word;
      for (size_t i = 0; i < piece.size();) word.push_back(byte_id[*byte_level::byte_of_char(utf8::next(piece, i))]);
      words.push_back(std::move(word));
      counts.push_back(1);
    }
  }

  // One merge: false when no pair is left.
  bool merge_once() {
    std::unordered_map<uint64_t, int64_t> pairs;
    for (size_t w = 0; w < words.size(); ++w) {
      const auto& word = words[w];
      for (size_t i = 0; i + 1 < word.size(); ++i) {
        pairs[(static_cast<uint64_t>(word[i]) << 32) | static_cast<uint32_t>(word[i + 1])] += counts[w];
      }
    }
    if (pairs.empty()) return false;
    uint64_t best = 0;
    int64_t best_count = -1;
    for (const auto& [key, count] : pairs) {
      if (count > best_count || (count == best_count && key < best)) {
        best = key;
        best_count = count;
      }
    }
    auto left = static_cast<int32_t>(best >> 32), right = static_cast<int32_t>(best & 0xFFFFFFFFu);
    std::string merged = tokens[static_cast<size_t>(left)] + tokens[static_cast<size_t>(right)];
    auto [it, fresh] = ids.emplace(merged, static_cast<int32_t>(tokens.size()));
    if (fresh) tokens.push_back(merged);
    merges.emplace_back(left, right);
    for (auto& word : words) {
      std::vector<int32_t> out;
      out.reserve(word.size());
      for (size_t i = 0; i < word.size(); ++i) {
        if (i + 1 < word.size() && word[i] == left && word[i + 1] == right) {
          out.push_back(it->second);
          ++i;
        } else {
          out.push_back(word[i]);
        }
      }
      word = std::move(out);
    }
    return true;
  }
};

}  // namespace

const char* to_string(TokenizerStyle style) { return style == TokenizerStyle::kGpt2 ? "gpt2" : "llama3"; }

std::string bpe_tokenizer_json(std::string_view text, const BpeTokenizerSpec& spec) {
  const auto& specials = spec.special_tokens;
  auto n_special = static_cast<int64_t>(specials.size());
  MESHRT_CHECK_ARG(spec.vocab_size >= 256 + n_special, "a byte-level BPE of ", n_special,
                   " special tokens needs a vocab_size of at least ", 256 + n_special, ", not ", spec.vocab_size);
  MESHRT_CHECK_ARG(utf8::valid_prefix(text) == text.size(), "the training text is not UTF-8 (byte ",
                   utf8::valid_prefix(text), ")");
  std::set<std::string> distinct;
  for (const std::string& s : specials) {
    MESHRT_CHECK_ARG(!s.empty() && utf8::valid_prefix(s) == s.size(), "special token \"", s, "\" must be non-empty UTF-8");
    MESHRT_CHECK_ARG(distinct.insert(s).second, "special token \"", s, "\" is given twice");
  }
  std::string bos = spec.bos_token.empty() && !specials.empty() ? specials[0] : spec.bos_token;
  auto bos_at = std::find(specials.begin(), specials.end(), bos);
  MESHRT_CHECK_ARG(bos.empty() || bos_at != specials.end(), "bos_token \"", bos, "\" is not one of the special tokens");

  // The text without its special tokens, in the pieces of the style's pre-tokenizer.
  ojson j = skeleton(spec.style);
  Tokenizer pre = Tokenizer::from_json_text(j.dump(), cat("the ", to_string(spec.style), " skeleton"));
  std::vector<std::string> pieces;
  size_t start = 0;
  while (start <= text.size()) {
    size_t cut = text.size(), length = 0;
    for (const std::string& s : specials) {
      size_t at = text.find(s, start);  // the leftmost special token, the longest there
      if (at != std::string_view::npos && (at < cut || (at == cut && s.size() > length))) {
        cut = at;
        length = s.size();
      }
    }
    for (std::string& p : pre.pre_tokenize(text.substr(start, cut - start))) pieces.push_back(std::move(p));
    if (cut == text.size()) break;
    start = cut + length;
  }

  Trainer trainer(pieces);
  auto target = static_cast<size_t>(spec.vocab_size - n_special);
  while (trainer.tokens.size() < target) {
    MESHRT_CHECK_ARG(trainer.merge_once(), "the training text gives only ", trainer.tokens.size(),
                     " tokens (no pair of tokens left to merge) before the ", target, " that vocab_size ",
                     spec.vocab_size, " needs besides the ", n_special, " special tokens: give a longer text");
  }

  bool gpt2 = spec.style == TokenizerStyle::kGpt2;
  bool first = spec.special_tokens_first;
  int64_t offset = first ? n_special : 0;  // of the learned vocabulary's ids
  int64_t first_special = first ? 0 : static_cast<int64_t>(target);
  ojson& model = j["model"];
  ojson vocab = ojson::object();  // in id order
  auto add_specials_to_vocab = [&] {
    if (gpt2) {
      for (size_t k = 0; k < specials.size(); ++k) vocab[specials[k]] = first_special + static_cast<int64_t>(k);
    }
  };
  if (first) add_specials_to_vocab();
  for (size_t i = 0; i < trainer.tokens.size(); ++i) vocab[trainer.tokens[i]] = static_cast<int64_t>(i) + offset;
  if (!first) add_specials_to_vocab();
  model["vocab"] = vocab;
  for (const auto& [left, right] : trainer.merges) {
    const std::string& l = trainer.tokens[static_cast<size_t>(left)];
    const std::string& r = trainer.tokens[static_cast<size_t>(right)];
    model["merges"].push_back(gpt2 ? ojson(l + " " + r) : ojson::array({l, r}));
  }
  for (size_t k = 0; k < specials.size(); ++k) {
    MESHRT_CHECK_ARG(!trainer.ids.contains(specials[k]), "special token \"", specials[k],
                     "\" is also a token of the vocabulary (a byte or a learned one): pick another");
    j["added_tokens"].push_back({{"id", first_special + static_cast<int64_t>(k)}, {"content", specials[k]},
                                 {"single_word", false}, {"lstrip", false}, {"rstrip", false}, {"normalized", gpt2},
                                 {"special", true}});
  }
  j["post_processor"] = post_processor(spec.style, bos, first_special + (bos_at - specials.begin()));
  return j.dump(2) + "\n";
}

void write_bpe_tokenizer(const std::string& path, std::string_view text, const BpeTokenizerSpec& spec) {
  std::string json = bpe_tokenizer_json(text, spec);
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  MESHRT_CHECK_ARG(f.good(), path, ": cannot open for writing");
  f << json;
  f.close();
  MESHRT_CHECK_ARG(!f.fail(), path, ": cannot write the tokenizer");
}

}  // namespace meshrt::models

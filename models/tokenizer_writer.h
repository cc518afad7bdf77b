// Small byte-level BPE tokenizers for examples and tests: trained on a given
// text, deterministically, and written as a Hugging Face tokenizer.json that
// tokenizer.h (and `tokenizers`) loads.
//
// The vocabulary, in id order:
//   - the 256 byte tokens in GPT-2's order (byte_level.h: the printable bytes
//     first), spelled in GPT-2's byte alphabet ("Ġ" for a space);
//   - one token per merge, in the order learned: each step merges the pair of
//     adjacent tokens that occurs most often in the text's pre-tokens (each
//     pre-token as often as it occurs), ties going to the pair with the
//     smaller (left id, right id); a merge whose result is already a token adds
//     no token (the merge is still listed);
//   - the special tokens, as added tokens (special, not split by BPE); or
//     these first, at ids 0.., and the rest after them (special_tokens_first,
//     e.g. {"<unk>", "<s>", "</s>"} at 0, 1, 2 as Llama 2 numbers them).
// vocab_size is exact: training stops when the tokens reach it, and fails
// (Error(kInvalidArgument)) when the text has no pair left to merge first.
//
// Styles (the pre-tokenizer and the file layout):
//   - kGpt2: pre_tokenizer ByteLevel (GPT-2's pattern, add_prefix_space
//     false), post_processor ByteLevel, merges as "a b" strings; the special
//     tokens are also in model.vocab, as GPT-2's <|endoftext|> is;
//   - kLlama3: pre_tokenizer Sequence [Split (Llama 3's pattern, Isolated),
//     ByteLevel (use_regex false)], ignore_merges true, merges as ["a", "b"]
//     pairs, post_processor Sequence [ByteLevel, TemplateProcessing (bos_token,
//     or the first special token, as BOS)]; the special tokens only in
//     added_tokens.
// Special tokens in the training text are cut out of it before training.
// Training recounts every pair per merge: meant for small texts and
// vocabularies (a few hundred merges over tens of kilobytes).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace meshrt::models {

enum class TokenizerStyle { kGpt2, kLlama3 };
const char* to_string(TokenizerStyle style);  // "gpt2", "llama3"

// Llama 3's pre-tokenizer pattern (its tokenizer.json's Split): contractions in
// any case, letters with one leading non-letter, digits in runs of 1-3,
// punctuation with its trailing newlines, newlines, other whitespace.
inline constexpr const char* kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

struct BpeTokenizerSpec {
  // The number of ids, exactly: 256 + learned tokens + special tokens.
  int64_t vocab_size = 0;
  TokenizerStyle style = TokenizerStyle::kGpt2;
  // Added as special tokens after the learned ones, in this order, e.g.
  // {"<|endoftext|>"} (GPT-2) or {"<|begin_of_text|>", "<|end_of_text|>"} (Llama 3).
  std::vector<std::string> special_tokens;
  // The special tokens at ids 0.. instead of at the end.
  bool special_tokens_first = false;
  // The BOS of the Llama 3 style TemplateProcessing (for `tokenizers` users who
  // add special tokens; meshrt's encode does not): one of special_tokens;
  // empty: the first of them.
  std::string bos_token;
};

// The tokenizer.json text (2-space indented, UTF-8) of a BPE trained on text.
std::string bpe_tokenizer_json(std::string_view text, const BpeTokenizerSpec& spec);

// Writes bpe_tokenizer_json(text, spec) to path.
void write_bpe_tokenizer(const std::string& path, std::string_view text, const BpeTokenizerSpec& spec);

}  // namespace meshrt::models

// Hugging Face tokenizers (tokenizer.json) of the byte-level BPE kind, the
// kind GPT-2 and Llama 3 have: text to token ids and back, as the `tokenizers`
// library's Tokenizer.encode(text, add_special_tokens=False) and
// Tokenizer.decode(ids, skip_special_tokens) do.
//
// Supported (anything else is refused, see below):
//   - model: "BPE" with vocab, merges ("a b" strings or ["a", "b"] pairs;
//     a merge listed twice takes its later rank, as in `tokenizers`),
//     ignore_merges (Llama 3: a pre-token that is itself in the vocabulary is
//     one token, its merges are not applied), byte_fallback false, dropout
//     null or 0, continuing_subword_prefix and end_of_word_suffix null or "",
//     unk_token null or a token of the vocabulary (fuse_unk too; with no
//     unk_token a byte whose token is missing from the vocabulary is dropped,
//     as `tokenizers` drops it);
//   - pre_tokenizer: ByteLevel (add_prefix_space, trim_offsets, use_regex:
//     GPT-2's pattern), or a Sequence of Split pre-tokenizers (a "Regex" or
//     "String" pattern, behavior "Isolated", invert false) ending in one
//     ByteLevel, as Llama 3 has (Split with its pattern, then ByteLevel with
//     use_regex false). add_prefix_space prepends a space to each piece that
//     does not start with one, as `tokenizers` does;
//   - added_tokens (special or not): matched in the text as their exact
//     content, leftmost-longest, before pre-tokenization: first those with
//     normalized false, then, in the text between them, those with normalized
//     true (`tokenizers`' two passes; without a normalizer they differ only in
//     that order). lstrip, rstrip and single_word must be false;
//   - decoder: ByteLevel (a token's characters back to its bytes; a token with
//     a character outside the byte alphabet, such as an added token with a
//     space, stands for its own UTF-8 bytes); the bytes of all ids are then
//     read as UTF-8 with each invalid sequence replaced by U+FFFD (Rust's
//     from_utf8_lossy, the Unicode "maximal subpart" practice);
//   - normalizer: null;
//   - post_processor: null, ByteLevel, TemplateProcessing or a Sequence of
//     them. It is ignored: encode() adds no special tokens (no BOS is
//     prepended), which is all a post-processor does apart from offsets;
//   - truncation and padding: ignored (encode() never truncates or pads).
//
// Refused, naming the file and the field: SentencePiece-style tokenizers
// (pre_tokenizer or decoder Metaspace, byte_fallback true), models other than
// BPE (Unigram, WordPiece, WordLevel), any normalizer, other pre-tokenizers,
// decoders and post-processors, Split behaviors other than Isolated or invert
// true, patterns that can match the empty string, added tokens with lstrip,
// rstrip or single_word, merges naming tokens outside the vocabulary, and ids
// that are negative, at least 2^24, or given to two different tokens.
// Every error is Error(ErrorKind::kInvalidArgument), e.g. "tokenizer.json:
// pre_tokenizer: Metaspace (SentencePiece) tokenizers are not supported;
// byte-level BPE (GPT-2, Llama 3) is".
//
// Regular expressions run on PCRE2 (UTF and Unicode properties) where
// `tokenizers` uses Oniguruma. Two differences are known and handled or
// bounded: \s is rewritten to Unicode's White_Space set (outside and inside
// character classes; \S outside them), which is what Oniguruma matches
// (PCRE2's own \s also takes U+180E); and \p{L}, \p{N} follow the Unicode
// version of the PCRE2 library (14.0 for Debian 12's 10.42), so characters
// assigned later are classified differently from a newer Oniguruma. ^ and $
// mean the ends of the piece here, while Oniguruma's Ruby syntax reads them as
// line anchors; GPT-2's and Llama 3's patterns use neither.
//
// Not done (by design): transformers' clean_up_tokenization_spaces (a
// transformers option, not part of tokenizer.json), offsets, pairs of
// sequences, and encode_special_tokens (added tokens are always matched).
//
// A Tokenizer is immutable after load and cheap to copy (the tables are
// shared); every method may be called from several threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace meshrt::models {

class Tokenizer {
 public:
  // Reads a tokenizer.json file. Error(kInvalidArgument) naming the path and
  // the field for anything the list above does not support.
  static Tokenizer load(const std::string& path);
  // The same from the file's text; path_for_errors starts every error message.
  static Tokenizer from_json_text(std::string_view text, const std::string& path_for_errors);

  // The ids of text, no special tokens added. Added tokens (special or not)
  // whose exact content appears in the text are matched as single tokens.
  // text must be UTF-8 (Error(kInvalidArgument) naming the first bad byte's
  // offset otherwise).
  std::vector<int64_t> encode(std::string_view text) const;

  // The text of ids. Special added tokens are left out when
  // skip_special_tokens; ids with no token (negative, past the vocabulary, a
  // gap in it) are skipped, as `tokenizers` skips them. Invalid UTF-8 (a
  // character cut between ids that are not all there) reads as U+FFFD.
  std::string decode(std::span<const int64_t> ids, bool skip_special_tokens = true) const;
  // The bytes those ids stand for, before the UTF-8 repair of decode().
  std::string decode_bytes(std::span<const int64_t> ids, bool skip_special_tokens = true) const;

  // The pre-tokenizer alone (no added tokens, no BPE): the pieces BPE would
  // see, in the byte-level alphabet (a space reads "Ġ"), as `tokenizers`'
  // pre_tokenizer.pre_tokenize_str gives them.
  std::vector<std::string> pre_tokenize(std::string_view text) const;

  // One more than the largest id of the vocabulary and the added tokens: the
  // number of rows a model's embedding needs at least.
  int64_t vocab_size() const;
  // The id of a token as the file spells it (added tokens first, then the
  // model's vocabulary), e.g. "<|endoftext|>" or "Ġthe".
  std::optional<int64_t> token_id(std::string_view token) const;
  // The token of an id as the file spells it; nullopt for an id with none.
  std::optional<std::string> token(int64_t id) const;
  // Whether id is an added token marked special.
  bool is_special(int64_t id) const;
  // The path given to load() (or from_json_text()).
  const std::string& path() const;

  struct Tables;  // the loaded tables (tokenizer.cc)

 private:
  explicit Tokenizer(std::shared_ptr<const Tables> tables) : tables_(std::move(tables)) {}
  std::shared_ptr<const Tables> tables_;
};

// Incremental decoding for streaming generated tokens as text: step() takes
// the ids as they come and returns only the text they complete; a character
// whose bytes are split over several tokens (an emoji, CJK) comes out whole
// with the token that ends it. The concatenation of every step() and finish()
// equals decode() of all the ids. Not thread-safe (one per stream).
class DecodeStream {
 public:
  explicit DecodeStream(Tokenizer tokenizer, bool skip_special_tokens = true);

  // The complete UTF-8 text newly available after id (may be empty).
  std::string step(int64_t id);
  std::string step(std::span<const int64_t> ids);
  // At the end of the stream: the bytes still held (an unfinished character)
  // as U+FFFD; the stream is then empty and may continue.
  std::string finish();
  // Whether bytes of an unfinished character are held.
  bool pending() const { return !pending_.empty(); }

 private:
  std::string take_complete();

  Tokenizer tokenizer_;
  bool skip_special_tokens_;
  std::string pending_;
};

}  // namespace meshrt::models

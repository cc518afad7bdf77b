#include "models/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <fstream>
#include <queue>
#include <sstream>
#include <unordered_map>

#include "device/error.h"
#include "io/json_limits.h"
#include "models/byte_level.h"

namespace meshrt::models {

namespace {

using nlohmann::json;
using detail::cat;

// GPT-2's pre-tokenizer pattern, the one `tokenizers`' ByteLevel uses with use_regex.
constexpr const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Largest id accepted (exclusive): ids index tables.
constexpr int64_t kMaxId = int64_t{1} << 24;

// Unicode's White_Space characters, as items of a character class: what
// Oniguruma's \s matches in `tokenizers` (PCRE2's \s adds U+180E).
constexpr const char* kWhiteSpaceItems = R"(\x{9}-\x{D}\x{20}\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";

// pattern with \s (in and outside character classes) and \S (outside them)
// spelled as the White_Space set. Escapes are copied as they are; \Q...\E is
// literal text.
std::string explicit_white_space(const std::string& pattern) {
  std::string out;
  bool in_class = false;
  size_t class_start = 0;  // index of the first item of the open class
  for (size_t i = 0; i < pattern.size(); ++i) {
    char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      char d = pattern[i + 1];
      if (d == 'Q') {
        size_t end = pattern.find("\\E", i + 2);
        size_t stop = end == std::string::npos ? pattern.size() : end + 2;
        out.append(pattern, i, stop - i);
        i = stop - 1;
        continue;
      }
      if (d == 's') {
        out += in_class ? std::string(kWhiteSpaceItems) : cat("[", kWhiteSpaceItems, "]");
      } else if (d == 'S' && !in_class) {
        out += cat("[^", kWhiteSpaceItems, "]");
      } else {
        out += c;
        out += d;
      }
      ++i;
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
      class_start = i + 1;
      continue;
    }
    if (in_class && c == '[' && i + 1 < pattern.size() && pattern[i + 1] == ':') {
      size_t end = pattern.find(":]", i + 2);  // a POSIX class [:name:]
      if (end != std::string::npos) {
        out.append(pattern, i, end + 2 - i);
        i = end + 1;
        continue;
      }
    }
    if (in_class && c == ']' && i != class_start) in_class = false;  // "[]" and "[^]" start with a literal ]
    out += c;
  }
  return out;
}

std::string pcre2_message(int code) {
  PCRE2_UCHAR buffer[256];
  int n = pcre2_get_error_message(code, buffer, sizeof buffer);
  return n < 0 ? cat("PCRE2 error ", code) : std::string(reinterpret_cast<const char*>(buffer), static_cast<size_t>(n));
}

// One match data (an ovector of one pair) for the matches of one encode call.
class MatchData {
 public:
  MatchData() : data_(pcre2_match_data_create(1, nullptr)) {
    MESHRT_CHECK(data_ != nullptr, ErrorKind::kInternal, "pcre2_match_data_create failed");
  }
  ~MatchData() { pcre2_match_data_free(data_); }
  MatchData(const MatchData&) = delete;
  MatchData& operator=(const MatchData&) = delete;
  pcre2_match_data* get() const { return data_; }

 private:
  pcre2_match_data* data_;
};

// A compiled pattern (UTF, Unicode properties; JIT when the library has it).
class Regex {
 public:
  // where: "<file>: <field>", for errors.
  Regex(const std::string& pattern, bool literal, const std::string& where) {
    std::string source = literal ? pattern : explicit_white_space(pattern);
    int code = 0;
    PCRE2_SIZE offset = 0;
    uint32_t options = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);  // PCRE2 takes no UCP with LITERAL
    pcre2_code* compiled = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(source.data()), source.size(), options, &code,
                                         &offset, nullptr);
    MESHRT_CHECK_ARG(compiled != nullptr, where, ": the pattern does not compile (", pcre2_message(code), " at offset ",
                     offset, " of ", io::json_limits::brief(json(pattern)), ")");
    code_.reset(compiled, pcre2_code_free);
    uint32_t min_length = 0;
    pcre2_pattern_info(compiled, PCRE2_INFO_MINLENGTH, &min_length);
    MESHRT_CHECK_ARG(min_length > 0, where, ": ", io::json_limits::brief(json(pattern)),
                     " can match the empty string, which is not supported");
    jit_ = pcre2_jit_compile(compiled, PCRE2_JIT_COMPLETE) == 0;
  }

  // Splits subject as `tokenizers`' Split with behavior Isolated does: each
  // match and each stretch between matches is a piece; empty pieces are dropped.
  void split(std::string_view subject, MatchData& md, std::vector<std::string>& out) const {
    auto* s = reinterpret_cast<PCRE2_SPTR>(subject.data());
    size_t n = subject.size(), position = 0, previous = 0;
    while (position < n) {
      // The subject was checked to be UTF-8 once, in encode().
      int rc = pcre2_match(code_.get(), s, n, position, PCRE2_NO_UTF_CHECK, md.get(), nullptr);
      if (rc == PCRE2_ERROR_JIT_STACKLIMIT && jit_) {
        rc = pcre2_match(code_.get(), s, n, position, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md.get(), nullptr);
      }
      if (rc == PCRE2_ERROR_NOMATCH) break;
      MESHRT_CHECK_ARG(rc >= 0, "the pre-tokenizer's pattern failed on a text of ", n, " bytes: ", pcre2_message(rc));
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
      size_t start = ov[0], end = ov[1];
      if (end <= position || start < previous) {  // no progress (\K and the like): give up on the rest
        break;
      }
      if (start > previous) out.emplace_back(subject.substr(previous, start - previous));
      out.emplace_back(subject.substr(start, end - start));
      previous = position = end;
    }
    if (previous < n) out.emplace_back(subject.substr(previous));
  }

 private:
  std::shared_ptr<pcre2_code> code_;
  bool jit_ = false;
};

struct PreTokenizerStep {
  std::shared_ptr<const Regex> regex;  // Split's pattern, or ByteLevel's when use_regex; null: no split
  bool byte_level = false;
  bool add_prefix_space = false;  // ByteLevel
};

struct AddedToken {
  std::string content;
  int64_t id = 0;
  bool special = false;
  bool normalized = false;
};

// Leftmost-longest matching of added tokens' contents.
class AddedTokenMatcher {
 public:
  void add(const AddedToken& t) {
    auto& list = by_first_byte_[static_cast<uint8_t>(t.content[0])];
    list.push_back({t.content, t.id});
    std::stable_sort(list.begin(), list.end(), [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
    empty_ = false;
  }
  bool empty() const { return empty_; }
  // The longest token at text[i]: its id and length.
  std::optional<std::pair<int64_t, size_t>> at(std::string_view text, size_t i) const {
    for (const auto& [content, id] : by_first_byte_[static_cast<uint8_t>(text[i])]) {
      if (text.compare(i, content.size(), content) == 0) return std::make_pair(id, content.size());
    }
    return std::nullopt;
  }

 private:
  std::array<std::vector<std::pair<std::string, int64_t>>, 256> by_first_byte_;
  bool empty_ = true;
};

// A stretch of the text: plain text (id < 0) or an added token.
struct Segment {
  std::string_view text;
  int64_t id = -1;
};

void split_added(const AddedTokenMatcher& matcher, std::vector<Segment>& segments) {
  if (matcher.empty()) return;
  std::vector<Segment> out;
  for (const Segment& s : segments) {
    if (s.id >= 0) {
      out.push_back(s);
      continue;
    }
    size_t previous = 0;
    for (size_t i = 0; i < s.text.size();) {
      auto m = matcher.at(s.text, i);
      if (!m) {
        ++i;
        continue;
      }
      if (i > previous) out.push_back({s.text.substr(previous, i - previous)});
      out.push_back({s.text.substr(i, m->second), m->first});
      i += m->second;
      previous = i;
    }
    if (previous < s.text.size()) out.push_back({s.text.substr(previous)});
  }
  segments = std::move(out);
}

struct Merge {
  uint32_t rank = 0;
  int64_t new_id = 0;
};

uint64_t pair_key(int64_t left, int64_t right) {
  return (static_cast<uint64_t>(left) << 32) | static_cast<uint64_t>(right);
}

}  // namespace

struct Tokenizer::Tables {
  std::string path;

  // model: BPE
  std::unordered_map<std::string, int64_t> vocab;
  std::unordered_map<uint64_t, Merge> merges;  // (left id, right id) -> rank, merged id
  std::array<int64_t, 256> byte_ids{};         // the token of each byte, -1 when missing
  bool ignore_merges = false;
  std::optional<int64_t> unk_id;
  bool fuse_unk = false;

  // added_tokens
  std::unordered_map<std::string, int64_t> added_ids;
  AddedTokenMatcher raw_added, normalized_added;  // normalized false, true

  std::vector<PreTokenizerStep> pre_tokenizer;

  // by id: the token as spelled in the file, the bytes it decodes to, its kind
  std::vector<std::string> tokens, bytes;
  std::vector<uint8_t> kinds;  // 0: no token, 1: a token, 2: a special added token
  int64_t vocab_size = 0;

  const Merge* merge(int64_t left, int64_t right) const {
    auto it = merges.find(pair_key(left, right));
    return it == merges.end() ? nullptr : &it->second;
  }

  // The pre-tokenizer on one stretch of plain text: its pieces, raw bytes.
  void pre_tokenize(std::string_view text, MatchData& md, std::vector<std::string>& pieces) const;
  // BPE on one piece (raw bytes), ids appended to out.
  void bpe(std::string_view piece, std::vector<int64_t>& out) const;
};

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

namespace {

class Loader {
 public:
  Loader(const json& root, std::string path) : root_(root), path_(std::move(path)) {}

  std::shared_ptr<Tokenizer::Tables> load() {
    MESHRT_CHECK_ARG(root_.is_object(), path_, ": expected a JSON object (a tokenizer.json), got ",
                     io::json_limits::brief(root_));
    t_ = std::make_shared<Tokenizer::Tables>();
    t_->path = path_;
    refuse_normalizer();
    read_model();
    read_added_tokens();
    read_pre_tokenizer();
    read_decoder();
    read_post_processor();
    build_id_tables();
    return t_;
  }

 private:
  [[noreturn]] void fail(const std::string& field, const std::string& why) const {
    throw Error(ErrorKind::kInvalidArgument, cat(path_, ": ", field, ": ", why));
  }
  static bool present(const json& object, const char* key) { return object.contains(key) && !object[key].is_null(); }

  const json& need(const json& object, const std::string& where, const char* key) const {
    if (!object.contains(key)) fail(cat(where, ".", key), "is missing");
    return object[key];
  }
  bool flag(const json& object, const std::string& where, const char* key, bool fallback) const {
    if (!present(object, key)) return fallback;
    const json& v = object[key];
    if (!v.is_boolean()) fail(cat(where, ".", key), cat("must be true or false, got ", io::json_limits::brief(v)));
    return v.get<bool>();
  }
  std::string text(const json& v, const std::string& where) const {
    if (!v.is_string()) fail(where, cat("must be a string, got ", io::json_limits::brief(v)));
    return v.get<std::string>();
  }
  std::string type_of(const json& object, const std::string& where) const {
    if (!object.is_object()) fail(where, cat("must be an object, got ", io::json_limits::brief(object)));
    return text(need(object, where, "type"), cat(where, ".type"));
  }
  int64_t id(const json& v, const std::string& where) const {
    if (!v.is_number_integer()) fail(where, cat("must be an integer id, got ", io::json_limits::brief(v)));
    bool in_range = v.is_number_unsigned() ? v.get<uint64_t>() < static_cast<uint64_t>(kMaxId)
                                           : v.get<int64_t>() >= 0 && v.get<int64_t>() < kMaxId;
    if (!in_range) fail(where, cat("id ", io::json_limits::brief(v), " is out of range [0, 2^24)"));
    return v.get<int64_t>();
  }
  int64_t vocab_id(const std::string& token, const std::string& where) const {
    auto it = t_->vocab.find(token);
    if (it == t_->vocab.end()) fail(where, cat(io::json_limits::brief(json(token)), " is not in model.vocab"));
    return it->second;
  }

  [[noreturn]] void refuse_sentencepiece(const std::string& field) const {
    fail(field, "Metaspace (SentencePiece) tokenizers are not supported; byte-level BPE (GPT-2, Llama 3) is");
  }

  void refuse_normalizer() const {
    if (!present(root_, "normalizer")) return;
    const json& n = root_["normalizer"];
    std::string type = n.is_object() && n.contains("type") && n["type"].is_string() ? n["type"].get<std::string>()
                                                                                     : io::json_limits::brief(n);
    fail("normalizer", cat(type, " is not supported: normalizers are not (byte-level BPE tokenizers such as GPT-2's "
                                 "and Llama 3's have none)"));
  }

  void read_model() {
    if (!present(root_, "model")) fail("model", "is missing");
    const json& m = root_["model"];
    if (!m.is_object()) fail("model", cat("must be an object, got ", io::json_limits::brief(m)));
    // Old files leave the type out; `tokenizers` then tells the models apart by their fields.
    std::string type = present(m, "type") ? text(m["type"], "model.type") : (m.contains("merges") ? "BPE" : "");
    if (type != "BPE") {
      fail("model.type", cat(type.empty() ? std::string("(none)") : type,
                             type == "Unigram" ? " (SentencePiece)" : "",
                             " is not supported; byte-level BPE tokenizers (model BPE: GPT-2, Llama 3) are"));
    }
    if (flag(m, "model", "byte_fallback", false)) {
      fail("model.byte_fallback", "true (SentencePiece-style <0x..> byte tokens) is not supported; byte-level BPE "
                                  "(GPT-2, Llama 3) is");
    }
    if (present(m, "dropout")) {
      const json& d = m["dropout"];
      if (!d.is_number() || d.get<double>() != 0) {
        fail("model.dropout", cat(io::json_limits::brief(d), " is not supported (null or 0 is): it makes encoding random"));
      }
    }
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      if (present(m, key) && text(m[key], cat("model.", key)) != "") {
        fail(cat("model.", key), cat(io::json_limits::brief(m[key]), " is not supported (null or \"\" is)"));
      }
    }
    t_->ignore_merges = flag(m, "model", "ignore_merges", false);
    t_->fuse_unk = flag(m, "model", "fuse_unk", false);

    const json& vocab = need(m, "model", "vocab");
    if (!vocab.is_object()) fail("model.vocab", cat("must be an object of token: id, got ", io::json_limits::brief(vocab)));
    std::unordered_map<int64_t, const std::string*> by_id;
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
      int64_t i = id(it.value(), cat("model.vocab[", io::json_limits::brief(json(it.key())), "]"));
      auto [at, fresh] = t_->vocab.emplace(it.key(), i);
      auto [other, unique] = by_id.emplace(i, &at->first);
      if (!unique) {
        fail("model.vocab", cat("id ", i, " is given to both ", io::json_limits::brief(json(*other->second)), " and ",
                                io::json_limits::brief(json(it.key()))));
      }
    }
    for (int b = 0; b < 256; ++b) {
      auto it = t_->vocab.find(byte_level::utf8_of_byte(static_cast<uint8_t>(b)));
      t_->byte_ids[static_cast<size_t>(b)] = it == t_->vocab.end() ? -1 : it->second;
    }
    if (present(m, "unk_token")) {
      std::string unk = text(m["unk_token"], "model.unk_token");
      auto it = t_->vocab.find(unk);
      if (it == t_->vocab.end()) fail("model.unk_token", cat(io::json_limits::brief(json(unk)), " is not in model.vocab"));
      t_->unk_id = it->second;
    }

    const json& merges = need(m, "model", "merges");
    if (!merges.is_array()) fail("model.merges", cat("must be an array, got ", io::json_limits::brief(merges)));
    for (size_t r = 0; r < merges.size(); ++r) {
      std::string where = cat("model.merges[", r, "]");
      const json& e = merges[r];
      std::string left, right;
      if (e.is_string()) {  // "a b"
        std::string s = e.get<std::string>();
        size_t space = s.find(' ');
        if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
          fail(where, cat(io::json_limits::brief(e), " must be two tokens with one space between them"));
        }
        left = s.substr(0, space);
        right = s.substr(space + 1);
      } else if (e.is_array() && e.size() == 2) {  // ["a", "b"]
        left = text(e[0], where + "[0]");
        right = text(e[1], where + "[1]");
      } else {
        fail(where, cat("must be \"a b\" or [\"a\", \"b\"], got ", io::json_limits::brief(e)));
      }
      int64_t l = vocab_id(left, where), rt = vocab_id(right, where), merged = vocab_id(left + right, where);
      // A merge listed twice keeps its later rank, as in `tokenizers` (a map built in order).
      t_->merges[pair_key(l, rt)] = Merge{static_cast<uint32_t>(r), merged};
    }
  }

  void read_added_tokens() {
    if (!present(root_, "added_tokens")) return;
    const json& list = root_["added_tokens"];
    if (!list.is_array()) fail("added_tokens", cat("must be an array, got ", io::json_limits::brief(list)));
    std::unordered_map<int64_t, std::string> vocab_by_id;
    for (const auto& [token, i] : t_->vocab) vocab_by_id.emplace(i, token);
    std::unordered_map<int64_t, std::string> added_by_id;
    for (size_t k = 0; k < list.size(); ++k) {
      std::string where = cat("added_tokens[", k, "]");
      const json& e = list[k];
      if (!e.is_object()) fail(where, cat("must be an object, got ", io::json_limits::brief(e)));
      AddedToken t;
      t.content = text(need(e, where, "content"), where + ".content");
      if (t.content.empty()) fail(where + ".content", "is empty");
      t.id = id(need(e, where, "id"), where + ".id");
      t.special = flag(e, where, "special", false);
      t.normalized = flag(e, where, "normalized", !t.special);
      for (const char* key : {"lstrip", "rstrip", "single_word"}) {
        if (flag(e, where, key, false)) {
          fail(cat(where, ".", key), cat("true is not supported (", io::json_limits::brief(json(t.content)),
                                         "): added tokens are matched as their exact content"));
        }
      }
      auto in_vocab = t_->vocab.find(t.content);
      if (in_vocab != t_->vocab.end() && in_vocab->second != t.id) {
        fail(where + ".id", cat(t.id, " differs from the id of ", io::json_limits::brief(json(t.content)),
                                " in model.vocab (", in_vocab->second, ")"));
      }
      auto taken = vocab_by_id.find(t.id);
      if (in_vocab == t_->vocab.end() && taken != vocab_by_id.end()) {
        fail(where + ".id", cat(t.id, " of ", io::json_limits::brief(json(t.content)), " is model.vocab's id of ",
                                io::json_limits::brief(json(taken->second))));
      }
      auto [other, fresh] = added_by_id.emplace(t.id, t.content);
      if (!fresh && other->second != t.content) {
        fail(where + ".id", cat(t.id, " is also the id of the added token ", io::json_limits::brief(json(other->second))));
      }
      auto [same, new_content] = t_->added_ids.emplace(t.content, t.id);
      if (!new_content && same->second != t.id) {
        fail(where, cat(io::json_limits::brief(json(t.content)), " is added twice, with ids ", same->second, " and ", t.id));
      }
      (t.normalized ? t_->normalized_added : t_->raw_added).add(t);
      added_.push_back(std::move(t));
    }
  }

  PreTokenizerStep byte_level_step(const json& p, const std::string& where) {
    PreTokenizerStep s;
    s.byte_level = true;
    s.add_prefix_space = flag(p, where, "add_prefix_space", true);
    flag(p, where, "trim_offsets", true);  // offsets only
    if (flag(p, where, "use_regex", true)) s.regex = std::make_shared<Regex>(kGpt2Pattern, false, cat(path_, ": ", where));
    return s;
  }

  PreTokenizerStep split_step(const json& p, const std::string& where) {
    const json& pattern = need(p, where, "pattern");
    bool literal = false;
    std::string source;
    if (pattern.is_object() && pattern.contains("Regex")) {
      source = text(pattern["Regex"], where + ".pattern.Regex");
    } else if (pattern.is_object() && pattern.contains("String")) {
      source = text(pattern["String"], where + ".pattern.String");
      literal = true;
    } else {
      fail(where + ".pattern", cat("must be {\"Regex\": ...} or {\"String\": ...}, got ", io::json_limits::brief(pattern)));
    }
    std::string behavior = text(need(p, where, "behavior"), where + ".behavior");
    if (behavior != "Isolated") {
      fail(where + ".behavior", cat(behavior, " is not supported (Isolated is, as GPT-2 and Llama 3 use)"));
    }
    if (flag(p, where, "invert", false)) fail(where + ".invert", "true is not supported");
    PreTokenizerStep s;
    s.regex = std::make_shared<Regex>(source, literal, cat(path_, ": ", where, literal ? ".pattern.String" : ".pattern.Regex"));
    return s;
  }

  void read_pre_tokenizer() {
    const char* where = "pre_tokenizer";
    if (!present(root_, where)) {
      fail(where, "null is not supported: byte-level BPE needs a ByteLevel pre-tokenizer (alone or last in a Sequence)");
    }
    const json& p = root_[where];
    std::string type = type_of(p, where);
    if (type == "ByteLevel") {
      t_->pre_tokenizer.push_back(byte_level_step(p, where));
      return;
    }
    if (type == "Metaspace") refuse_sentencepiece(where);
    if (type != "Sequence") {
      fail(where, cat(type, " is not supported (ByteLevel, or a Sequence of Split pre-tokenizers ending in ByteLevel, is)"));
    }
    const json& steps = need(p, where, "pretokenizers");
    std::string list = cat(where, ".pretokenizers");
    if (!steps.is_array() || steps.empty()) fail(list, cat("must be a non-empty array, got ", io::json_limits::brief(steps)));
    for (size_t k = 0; k < steps.size(); ++k) {
      std::string at = cat(list, "[", k, "]");
      std::string step = type_of(steps[k], at);
      bool last = k + 1 == steps.size();
      if (step == "Metaspace") refuse_sentencepiece(at);
      if (step == "ByteLevel" && last) {
        t_->pre_tokenizer.push_back(byte_level_step(steps[k], at));
      } else if (step == "Split" && !last) {
        t_->pre_tokenizer.push_back(split_step(steps[k], at));
      } else {
        fail(at, cat(step, " is not supported here (a Sequence of Split pre-tokenizers ending in one ByteLevel is)"));
      }
    }
  }

  void read_decoder() const {
    if (!present(root_, "decoder")) fail("decoder", "null is not supported: byte-level BPE needs the ByteLevel decoder");
    std::string type = type_of(root_["decoder"], "decoder");
    if (type == "Metaspace") refuse_sentencepiece("decoder");
    if (type != "ByteLevel") fail("decoder", cat(type, " is not supported (ByteLevel is)"));
  }

  void read_post_processor() const {
    if (!present(root_, "post_processor")) return;
    const json& p = root_["post_processor"];
    auto allowed = [](const std::string& type) { return type == "ByteLevel" || type == "TemplateProcessing"; };
    std::string type = type_of(p, "post_processor");
    if (type == "Sequence") {
      const json& list = need(p, "post_processor", "processors");
      if (!list.is_array()) fail("post_processor.processors", cat("must be an array, got ", io::json_limits::brief(list)));
      for (size_t k = 0; k < list.size(); ++k) {
        std::string at = cat("post_processor.processors[", k, "]");
        std::string step = type_of(list[k], at);
        if (!allowed(step)) fail(at, cat(step, " is not supported (ByteLevel and TemplateProcessing are)"));
      }
    } else if (!allowed(type)) {
      fail("post_processor", cat(type, " is not supported (null, ByteLevel, TemplateProcessing or a Sequence of them is)"));
    }
  }

  void build_id_tables() {
    Tokenizer::Tables& t = *t_;
    int64_t size = 0;
    for (const auto& [token, i] : t.vocab) size = std::max(size, i + 1);
    for (const AddedToken& a : added_) size = std::max(size, a.id + 1);
    t.vocab_size = size;
    t.tokens.assign(static_cast<size_t>(size), {});
    t.bytes.assign(static_cast<size_t>(size), {});
    t.kinds.assign(static_cast<size_t>(size), 0);
    auto set = [&](const std::string& token, int64_t i, bool special) {
      auto k = static_cast<size_t>(i);
      t.tokens[k] = token;
      t.bytes[k] = byte_level::from_alphabet(token).value_or(token);
      t.kinds[k] = special ? 2 : 1;
    };
    for (const auto& [token, i] : t.vocab) set(token, i, false);
    for (const AddedToken& a : added_) set(a.content, a.id, a.special);
  }

  const json& root_;
  std::string path_;
  std::shared_ptr<Tokenizer::Tables> t_;
  std::vector<AddedToken> added_;
};

}  // namespace

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

void Tokenizer::Tables::pre_tokenize(std::string_view text, MatchData& md, std::vector<std::string>& pieces) const {
  std::vector<std::string> current{std::string(text)}, next;
  for (const PreTokenizerStep& step : pre_tokenizer) {
    next.clear();
    for (std::string& piece : current) {
      if (step.byte_level && step.add_prefix_space && piece[0] != ' ') piece.insert(0, 1, ' ');
      if (step.regex) {
        step.regex->split(piece, md, next);
      } else {
        next.push_back(std::move(piece));
      }
    }
    std::swap(current, next);
  }
  for (std::string& piece : current) pieces.push_back(std::move(piece));
}

void Tokenizer::Tables::bpe(std::string_view piece, std::vector<int64_t>& out) const {
  if (ignore_merges) {
    auto it = vocab.find(byte_level::to_alphabet(piece));
    if (it != vocab.end()) {
      out.push_back(it->second);
      return;
    }
  }
  // The byte tokens; a byte whose token is missing becomes unk_token (runs of
  // them one with fuse_unk) or, without unk_token, is dropped (`tokenizers`' merge_word).
  std::vector<int64_t> symbols;
  symbols.reserve(piece.size());
  bool unk_open = false;
  for (char c : piece) {
    int64_t i = byte_ids[static_cast<uint8_t>(c)];
    if (i >= 0) {
      symbols.push_back(i);
      unk_open = false;
    } else if (unk_id) {
      if (!(unk_open && fuse_unk)) symbols.push_back(*unk_id);
      unk_open = true;
    }
  }
  // The merges by rank, the leftmost first among equal ranks (`tokenizers`'
  // Word::merge_all: a heap of candidate pairs over a linked list).
  size_t n = symbols.size();
  if (n >= 2 && !merges.empty()) {
    std::vector<int64_t> prev(n), next(n);
    std::vector<bool> alive(n, true);
    for (size_t i = 0; i < n; ++i) {
      prev[i] = static_cast<int64_t>(i) - 1;
      next[i] = i + 1 < n ? static_cast<int64_t>(i + 1) : -1;
    }
    struct Candidate {
      uint32_t rank;
      int64_t pos;
      int64_t new_id;
    };
    auto later = [](const Candidate& a, const Candidate& b) { return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos; };
    std::priority_queue<Candidate, std::vector<Candidate>, decltype(later)> queue(later);
    for (size_t i = 0; i + 1 < n; ++i) {
      if (const Merge* m = merge(symbols[i], symbols[i + 1])) queue.push({m->rank, static_cast<int64_t>(i), m->new_id});
    }
    while (!queue.empty()) {
      Candidate top = queue.top();
      queue.pop();
      auto p = static_cast<size_t>(top.pos);
      if (!alive[p] || next[p] < 0) continue;
      auto q = static_cast<size_t>(next[p]);
      const Merge* m = merge(symbols[p], symbols[q]);
      if (m == nullptr || m->new_id != top.new_id) continue;  // the pair has changed since
      symbols[p] = top.new_id;
      alive[q] = false;
      next[p] = next[q];
      if (next[q] >= 0) prev[static_cast<size_t>(next[q])] = top.pos;
      if (prev[p] >= 0) {
        if (const Merge* left = merge(symbols[static_cast<size_t>(prev[p])], symbols[p])) {
          queue.push({left->rank, prev[p], left->new_id});
        }
      }
      if (next[p] >= 0) {
        if (const Merge* right = merge(symbols[p], symbols[static_cast<size_t>(next[p])])) {
          queue.push({right->rank, top.pos, right->new_id});
        }
      }
    }
    for (size_t i = 0; i < n; ++i) {
      if (alive[i]) out.push_back(symbols[i]);
    }
    return;
  }
  out.insert(out.end(), symbols.begin(), symbols.end());
}

namespace {

void check_utf8(std::string_view text) {
  size_t valid = utf8::valid_prefix(text);
  MESHRT_CHECK_ARG(valid == text.size(), "the text to tokenize is not UTF-8: byte ", valid, " (0x", std::hex,
                   static_cast<int>(static_cast<uint8_t>(text[valid])), std::dec, ") of ", text.size());
}

}  // namespace

Tokenizer Tokenizer::from_json_text(std::string_view text, const std::string& path_for_errors) {
  json root;
  try {
    root = io::json_limits::parse(text);
  } catch (const std::exception& e) {
    throw Error(ErrorKind::kInvalidArgument, cat(path_for_errors, ": not valid JSON: ", e.what()));
  }
  return Tokenizer(Loader(root, path_for_errors).load());
}

Tokenizer Tokenizer::load(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  MESHRT_CHECK_ARG(f.good(), path, ": cannot open the tokenizer file");
  std::ostringstream text;
  text << f.rdbuf();
  MESHRT_CHECK_ARG(!f.bad(), path, ": cannot read the tokenizer file");
  return from_json_text(text.str(), path);
}

std::vector<int64_t> Tokenizer::encode(std::string_view text) const {
  check_utf8(text);
  const Tables& t = *tables_;
  std::vector<Segment> segments;
  if (!text.empty()) segments.push_back({text});
  split_added(t.raw_added, segments);
  split_added(t.normalized_added, segments);
  MatchData md;
  std::vector<int64_t> ids;
  std::vector<std::string> pieces;
  for (const Segment& s : segments) {
    if (s.id >= 0) {
      ids.push_back(s.id);
      continue;
    }
    pieces.clear();
    t.pre_tokenize(s.text, md, pieces);
    for (const std::string& piece : pieces) t.bpe(piece, ids);
  }
  return ids;
}

std::vector<std::string> Tokenizer::pre_tokenize(std::string_view text) const {
  check_utf8(text);
  std::vector<std::string> pieces;
  if (text.empty()) return pieces;
  MatchData md;
  tables_->pre_tokenize(text, md, pieces);
  for (std::string& p : pieces) p = byte_level::to_alphabet(p);
  return pieces;
}

// ---------------------------------------------------------------------------
// Decoding and the vocabulary
// ---------------------------------------------------------------------------

std::string Tokenizer::decode_bytes(std::span<const int64_t> ids, bool skip_special_tokens) const {
  const Tables& t = *tables_;
  std::string out;
  for (int64_t id : ids) {
    if (id < 0 || id >= t.vocab_size) continue;
    auto k = static_cast<size_t>(id);
    if (t.kinds[k] == 0 || (skip_special_tokens && t.kinds[k] == 2)) continue;
    out += t.bytes[k];
  }
  return out;
}

std::string Tokenizer::decode(std::span<const int64_t> ids, bool skip_special_tokens) const {
  return utf8::repair(decode_bytes(ids, skip_special_tokens));
}

int64_t Tokenizer::vocab_size() const { return tables_->vocab_size; }

std::optional<int64_t> Tokenizer::token_id(std::string_view token) const {
  const Tables& t = *tables_;
  std::string key(token);
  if (auto it = t.added_ids.find(key); it != t.added_ids.end()) return it->second;
  if (auto it = t.vocab.find(key); it != t.vocab.end()) return it->second;
  return std::nullopt;
}

std::optional<std::string> Tokenizer::token(int64_t id) const {
  const Tables& t = *tables_;
  if (id < 0 || id >= t.vocab_size || t.kinds[static_cast<size_t>(id)] == 0) return std::nullopt;
  return t.tokens[static_cast<size_t>(id)];
}

bool Tokenizer::is_special(int64_t id) const {
  const Tables& t = *tables_;
  return id >= 0 && id < t.vocab_size && t.kinds[static_cast<size_t>(id)] == 2;
}

const std::string& Tokenizer::path() const { return tables_->path; }

// ---------------------------------------------------------------------------
// DecodeStream
// ---------------------------------------------------------------------------

DecodeStream::DecodeStream(Tokenizer tokenizer, bool skip_special_tokens)
    : tokenizer_(std::move(tokenizer)), skip_special_tokens_(skip_special_tokens) {}

std::string DecodeStream::take_complete() {
  size_t n = utf8::complete_prefix(pending_);
  std::string text = utf8::repair(std::string_view(pending_).substr(0, n));
  pending_.erase(0, n);
  return text;
}

std::string DecodeStream::step(int64_t id) { return step(std::span<const int64_t>(&id, 1)); }

std::string DecodeStream::step(std::span<const int64_t> ids) {
  pending_ += tokenizer_.decode_bytes(ids, skip_special_tokens_);
  return take_complete();
}

std::string DecodeStream::finish() {
  std::string text = utf8::repair(pending_);
  pending_.clear();
  return text;
}

}  // namespace meshrt::models

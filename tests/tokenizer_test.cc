// Byte-level BPE tokenizers (models/tokenizer.h) and the writer of small ones
// (models/tokenizer_writer.h):
//   - hand-computed encodings of the two committed tokenizers
//     (tests/data/tokenizer_gpt2_tiny.json: GPT-2 style, merges as "a b",
//     added tokens special and not, normalized and not;
//     tests/data/tokenizer_llama3_tiny.json: Llama 3 style, Split + ByteLevel,
//     ignore_merges, merges as pairs, tokens only ignore_merges reaches);
//   - TokenizerReference.*: C++ against the independent Python reference
//     tests/tokenizer_reference.py (regex module) on those two and on two the
//     writer trains (vocab 503, GPT-2 and Llama 3 style), over hand-picked and
//     random strings (ASCII, contractions, numbers, whitespace runs and
//     newlines, punctuation, accents, CJK, emoji, special tokens inside text)
//     and random id sequences (cut characters, unknown ids); skipped when
//     python3-regex is missing (the CTest entry tokenizer_reference then
//     reports Skipped);
//   - round trips, the decode stream, the refusals by name, the writer.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "device/error.h"
#include "models/tokenizer.h"
#include "models/tokenizer_writer.h"

namespace meshrt::models {
namespace {

using nlohmann::json;

// The source tree (tests/data, tests/tokenizer_reference.py); MESHRT_SOURCE_DIR
// in the environment overrides it.
std::string source_dir() {
  const char* dir = std::getenv("MESHRT_SOURCE_DIR");
  return dir && *dir ? dir : MESHRT_SOURCE_DIR;
}
std::string data_file(const std::string& name) { return source_dir() + "/tests/data/" + name; }

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

// A fresh temporary directory, removed with the object.
class TempDir {
 public:
  TempDir() {
    path_ = std::filesystem::temp_directory_path() /
            ("meshrt-tokenizer-" + std::to_string(::getpid()) + "-" + std::to_string(counter_++));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  static inline int counter_ = 0;
  std::filesystem::path path_;
};

// Ids of tokens spelled as in the file.
std::vector<int64_t> ids_of(const Tokenizer& t, const std::vector<std::string>& tokens) {
  std::vector<int64_t> ids;
  for (const auto& s : tokens) {
    auto id = t.token_id(s);
    EXPECT_TRUE(id.has_value()) << "no token " << s;
    ids.push_back(id.value_or(-1));
  }
  return ids;
}

// The text the writer's tokenizers are trained on: prose, code, numbers, some
// other scripts and a special token.
const char* kTrainingText = R"(The quick brown fox jumps over the lazy dog. The dog did not mind; it was asleep.
Meanwhile, in the server room, the tokenizer turned text into tokens and tokens back into text.
It's the job of a tokenizer: they're small, we've seen many, and I'm sure you'll like this one. He'd agree.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 256 503 1024 2048 65536 3.14159 2.71828 1e-5 1,000,000.
def encode(text):
    return [vocab[piece] for piece in pre_tokenize(text)]

if (x >= 10 && y != 0) { z = x / y; } else { z = -1; }
Café, naïve, résumé, jalapeño, façade, Ångström, Größe, Straße, déjà vu.
中文分词是一个有趣的问题。日本語のテキストも少し。한국어 문장도 있습니다.
Emoji: 🙂 😀 🚀 👍🏽 👨‍👩‍👧 ❤️ — and dashes – too…
<|endoftext|>A new document starts here. Tokenizers learn merges from pairs that occur often:
the the the the, and and and, ing ing ing, tion tion tion, th th th, er er er, in in in.
Whitespace:    four spaces, a	tab, and
newlines

twice. Quotes "double" and 'single' and `back`. Brackets (round) [square] {curly} <angle>.
Hyphenated-words, under_scores, CamelCase, snake_case, kebab-case, ALLCAPS, MiXeD.
The end of the training text is here, with a final line of plain words to make enough pairs:
alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau
upsilon phi chi psi omega; January February March April May June July August September October
November December; Monday Tuesday Wednesday Thursday Friday Saturday Sunday.
)";

BpeTokenizerSpec make_spec(int64_t vocab_size, TokenizerStyle style, const std::vector<std::string>& specials,
                           bool specials_first = false, const std::string& bos = "") {
  BpeTokenizerSpec spec;
  spec.vocab_size = vocab_size;
  spec.style = style;
  spec.special_tokens = specials;
  spec.special_tokens_first = specials_first;
  spec.bos_token = bos;
  return spec;
}

Tokenizer written(TokenizerStyle style, int64_t vocab_size, const std::vector<std::string>& specials) {
  return Tokenizer::from_json_text(bpe_tokenizer_json(kTrainingText, make_spec(vocab_size, style, specials)),
                                   "written.json");
}

// Strings to compare on: hand-picked cases, then random mixes of fragments.
std::vector<std::string> test_strings(const std::vector<std::string>& specials, int random_count = 250) {
  std::vector<std::string> s = {
      "",
      "Hello world",
      "Hello, world! How are you today?",
      " leading space",
      "trailing space ",
      "  two leading spaces",
      "the the the  the   the",
      "It's, they're, we've, I'm, you'll, he'd, don't.",
      "IT'S THEY'RE WE'VE I'M YOU'LL HE'D DON'T 'S 'T 'Re",
      "'s's's 'll'll",
      "0 1 12 123 1234 12345 123456 1234567 12345678",
      "3.14159 2,718 1e-5 -42 +7 0x1F 1_000_000",
      "x1y22z333w4444",
      "Tab\tseparated\tvalues\t\t",
      "new\nline\n\nand\r\nwindows\rold mac",
      "\n\n\n",
      "   ",
      "\t \n \t",
      "ends with newline\n",
      "a  \n  b",
      "!!!???...;;;:::",
      "(parens) [brackets] {braces} <angle> \"quotes\" 'single' `tick`",
      "a-b_c.d/e\\f|g@h#i$j%k^l&m*n",
      "-- -> => ::= !== ...",
      "Café naïve résumé jalapeño façade Ångström Größe Straße déjà vu",
      "e\u0301 (combining acute) n\u0303",
      "中文分词是一个有趣的问题。",
      "日本語のテキスト、カタカナ、ひらがな",
      "한국어 문장도 있습니다",
      "Ελληνικά και русский язык",
      "עברית ועربية",
      "नमस्ते दुनिया",
      "ภาษาไทย",
      "🙂😀🚀 👍🏽 👨‍👩‍👧 ❤️",
      "emoji🙂inside words🚀",
      "½ ² ٣ Ⅻ ⁴ 𝟙",
      "no\u00a0break\u00a0space and\u3000ideographic\u2003em",
      "zero\u200bwidth\u200djoiner",
      "mongolian\u180evowel separator !\u180e x",
      "line\u2028separator\u2029paragraph \u0085nel",
      "vertical\vtab\fform feed",
      "ſ 'ſ 'K 'K",
      "\x01\x02\x1b[0m\x7f",
      std::string("nul\0byte", 8),
      "a\u00a0\u00a0b \u00a0c",
  };
  for (const auto& special : specials) {
    s.push_back(special);
    s.push_back("before" + special + "after");
    s.push_back(" " + special + " spaced " + special);
    s.push_back(special + special + "\n" + special);
    s.push_back("partial " + special.substr(0, special.size() - 1) + " not matched");
  }
  std::vector<std::string> fragments = {
      "the", " the", "The", " quick", "fox", "'s", "'T", " don't", "123", "45678", " 9", "3.14", "  ",
      " ", "\n", "\n\n", "\t", "\r\n", "!", "?", "...", ",", " (", ")", "\"", "é", "ß", "中文", "日本",
      "🙂", "👍🏽", "\u00a0", "\u3000", "\u180e", "x", "yz", "CamelCase", "snake_case", "-", "🚀🚀",
      "e\u0301", "ـ", "٣", "½"};
  for (const auto& special : specials) fragments.push_back(special);
  std::mt19937 rng(20240611);
  for (int k = 0; k < random_count; ++k) {
    std::string text;
    int n = 1 + static_cast<int>(rng() % 12);
    for (int i = 0; i < n; ++i) text += fragments[rng() % fragments.size()];
    s.push_back(text);
  }
  return s;
}

// Random id sequences: any id, unknown ones (negative, past the end) too.
std::vector<std::vector<int64_t>> random_ids(int64_t vocab_size, int count, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::vector<int64_t>> out;
  for (int k = 0; k < count; ++k) {
    std::vector<int64_t> ids;
    int n = static_cast<int>(rng() % 12);
    for (int i = 0; i < n; ++i) ids.push_back(static_cast<int64_t>(rng() % static_cast<uint32_t>(vocab_size + 4)) - 2);
    out.push_back(ids);
  }
  return out;
}

// ---------------------------------------------------------------------------
// The Python reference
// ---------------------------------------------------------------------------

bool reference_available() {
  return std::system("/usr/bin/python3 -c 'import regex' > /dev/null 2>&1") == 0;
}

// The reference's answers to {"encode": texts, "decode": id lists}.
json run_reference(const std::string& tokenizer_path, const std::vector<std::string>& texts,
                   const std::vector<std::vector<int64_t>>& decodes) {
  TempDir dir;
  json requests = {{"encode", texts}, {"decode", decodes}};
  std::ofstream(dir.file("requests.json")) << requests.dump();
  std::string command = "/usr/bin/python3 " + source_dir() + "/tests/tokenizer_reference.py --tokenizer '" +
                        tokenizer_path + "' --requests '" + dir.file("requests.json") + "' > '" +
                        dir.file("answers.json") + "'";
  int rc = std::system(command.c_str());
  EXPECT_EQ(rc, 0) << command;
  if (rc != 0) return json();
  return json::parse(read_file(dir.file("answers.json")));
}

std::string printable(const std::string& s) { return json(s).dump(-1, ' ', true, json::error_handler_t::replace); }

// C++ against the reference on one tokenizer file: encode of every string,
// decode of every encoding and of random ids (special tokens skipped and kept).
void expect_agreement(const std::string& path, const std::vector<std::string>& specials) {
  Tokenizer t = Tokenizer::load(path);
  std::vector<std::string> texts = test_strings(specials);
  std::vector<std::vector<int64_t>> encodings;
  for (const auto& s : texts) encodings.push_back(t.encode(s));
  std::vector<std::vector<int64_t>> decodes = encodings;
  for (auto& ids : random_ids(t.vocab_size(), 150, 7)) decodes.push_back(ids);

  json answers = run_reference(path, texts, decodes);
  ASSERT_TRUE(answers.is_object());
  ASSERT_EQ(answers["encode"].size(), texts.size());
  ASSERT_EQ(answers["decode"].size(), decodes.size());
  int mismatches = 0;
  for (size_t i = 0; i < texts.size() && mismatches < 10; ++i) {
    auto expected = answers["encode"][i].get<std::vector<int64_t>>();
    if (encodings[i] != expected) {
      ++mismatches;
      ADD_FAILURE() << path << ": encode(" << printable(texts[i]) << ")\n  C++:       " << json(encodings[i]).dump()
                    << "\n  reference: " << json(expected).dump();
    }
  }
  for (size_t i = 0; i < decodes.size() && mismatches < 10; ++i) {
    for (bool skip : {true, false}) {
      std::string expected = answers[skip ? "decode" : "decode_keep_special"][i].get<std::string>();
      std::string got = t.decode(decodes[i], skip);
      if (got != expected) {
        ++mismatches;
        ADD_FAILURE() << path << ": decode(" << json(decodes[i]).dump() << ", skip_special_tokens=" << skip
                      << ")\n  C++:       " << printable(got) << "\n  reference: " << printable(expected);
      }
    }
  }
  EXPECT_EQ(mismatches, 0);
  std::cout << "[          ] " << path << ": " << texts.size() << " texts encoded, " << decodes.size()
            << " id lists decoded twice, as the reference does\n";
}

TEST(TokenizerReference, HandWrittenGpt2Style) {
  if (!reference_available()) GTEST_SKIP() << "python3-regex is not installed: the reference cannot run";
  expect_agreement(data_file("tokenizer_gpt2_tiny.json"), {"<|endoftext|>", "<|fim|>", "hello world", "abc", "bcd"});
}

TEST(TokenizerReference, HandWrittenLlama3Style) {
  if (!reference_available()) GTEST_SKIP() << "python3-regex is not installed: the reference cannot run";
  expect_agreement(data_file("tokenizer_llama3_tiny.json"),
                   {"<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|eot_id|>"});
}

TEST(TokenizerReference, WrittenGpt2StyleVocab503) {
  if (!reference_available()) GTEST_SKIP() << "python3-regex is not installed: the reference cannot run";
  TempDir dir;
  write_bpe_tokenizer(dir.file("tokenizer.json"), kTrainingText, make_spec(503, TokenizerStyle::kGpt2, {"<|endoftext|>"}));
  expect_agreement(dir.file("tokenizer.json"), {"<|endoftext|>"});
}

TEST(TokenizerReference, WrittenLlama3StyleVocab503) {
  if (!reference_available()) GTEST_SKIP() << "python3-regex is not installed: the reference cannot run";
  TempDir dir;
  std::vector<std::string> specials = {"<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"};
  write_bpe_tokenizer(dir.file("tokenizer.json"), kTrainingText, make_spec(503, TokenizerStyle::kLlama3, specials));
  expect_agreement(dir.file("tokenizer.json"), specials);
}

// Special tokens first (ids 0, 1, 2 as the Llama examples' bos 1 and eos 2 want).
TEST(TokenizerReference, WrittenSpecialTokensFirst) {
  if (!reference_available()) GTEST_SKIP() << "python3-regex is not installed: the reference cannot run";
  TempDir dir;
  std::vector<std::string> specials = {"<unk>", "<s>", "</s>"};
  for (TokenizerStyle style : {TokenizerStyle::kLlama3, TokenizerStyle::kGpt2}) {
    std::string path = dir.file(std::string(to_string(style)) + ".json");
    write_bpe_tokenizer(path, kTrainingText, make_spec(503, style, specials, /*specials_first=*/true));
    expect_agreement(path, specials);
  }
}

// The options the committed files leave at one value: add_prefix_space true
// (GPT-2 style, and after a Split, where each piece gets its space), ByteLevel
// with use_regex after a Split, a Split with a literal "String" pattern, two
// Splits in a row.
TEST(TokenizerReference, PreTokenizerVariants) {
  if (!reference_available()) GTEST_SKIP() << "python3-regex is not installed: the reference cannot run";
  json gpt2 = json::parse(read_file(data_file("tokenizer_gpt2_tiny.json")));
  json llama = json::parse(read_file(data_file("tokenizer_llama3_tiny.json")));
  json split = llama["pre_tokenizer"]["pretokenizers"][0];
  json literal = {{"type", "Split"}, {"pattern", {{"String", "--"}}}, {"behavior", "Isolated"}, {"invert", false}};
  json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
  std::vector<json> variants;
  variants.push_back(gpt2);
  variants.back()["pre_tokenizer"]["add_prefix_space"] = true;
  variants.push_back(llama);
  variants.back()["pre_tokenizer"]["pretokenizers"][1] = byte_level;
  variants.push_back(llama);
  variants.back()["pre_tokenizer"]["pretokenizers"] = {literal, split, llama["pre_tokenizer"]["pretokenizers"][1]};
  variants.push_back(gpt2);
  variants.back()["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", {literal, byte_level}}};
  TempDir dir;
  for (size_t k = 0; k < variants.size(); ++k) {
    std::string path = dir.file("variant" + std::to_string(k) + ".json");
    std::ofstream(path) << variants[k].dump();
    SCOPED_TRACE(variants[k]["pre_tokenizer"].dump());
    expect_agreement(path, {"<|endoftext|>", "<|begin_of_text|>", "--", "a--b-- --"});
  }
  // add_prefix_space: " Hello" and "Hello" read alike; a piece after a special token gets its space too
  Tokenizer t = Tokenizer::load(dir.file("variant0.json"));
  EXPECT_EQ(t.encode("Hello"), t.encode(" Hello"));
  EXPECT_EQ(t.pre_tokenize("a<|endoftext|>b"), (std::vector<std::string>{"Ġa", "<|", "endoftext", "|>", "b"}));
  auto ids = t.encode("a<|endoftext|>b");
  EXPECT_EQ(ids, ids_of(t, {"Ġa", "<|endoftext|>", "Ġ", "b"}));  // "Ġ a" is a merge, "Ġ b" is not
}

// A vocabulary without some bytes: dropped without unk_token, unk_token (fused
// or not) with one; the reference does the same.
TEST(TokenizerReference, MissingBytesAndUnk) {
  if (!reference_available()) GTEST_SKIP() << "python3-regex is not installed: the reference cannot run";
  json j = json::parse(read_file(data_file("tokenizer_gpt2_tiny.json")));
  // Without the tokens of 'q' and of the lead byte 0xE4 (中's first byte).
  j["model"]["vocab"].erase("q");
  j["model"]["vocab"].erase("ä");
  json merges = json::array();
  for (const auto& m : j["model"]["merges"]) {
    std::string s = m.get<std::string>();
    if (s.find("ä") == std::string::npos) merges.push_back(m);
  }
  j["model"]["merges"] = merges;
  TempDir dir;
  for (int variant = 0; variant < 3; ++variant) {
    if (variant > 0) {
      j["model"]["vocab"]["<unk>"] = 400;
      j["model"]["unk_token"] = "<unk>";
      j["model"]["fuse_unk"] = variant == 2;
    }
    std::string path = dir.file("missing" + std::to_string(variant) + ".json");
    std::ofstream(path) << j.dump();
    SCOPED_TRACE(path);
    expect_agreement(path, {"<|endoftext|>"});
    Tokenizer t = Tokenizer::load(path);
    auto ids = t.encode("qq");
    EXPECT_EQ(ids.size(), variant == 0 ? 0u : variant == 1 ? 2u : 1u);
  }
}

// ---------------------------------------------------------------------------
// Hand-computed encodings
// ---------------------------------------------------------------------------

TEST(Tokenizer, Gpt2StyleHandComputed) {
  Tokenizer t = Tokenizer::load(data_file("tokenizer_gpt2_tiny.json"));
  EXPECT_EQ(t.vocab_size(), 300);  // 256 bytes, 38 merged, Ġhello, <|endoftext|> (295), 4 more added
  EXPECT_EQ(t.token_id("<|endoftext|>"), 295);
  EXPECT_EQ(t.token(295), "<|endoftext|>");
  EXPECT_TRUE(t.is_special(295));
  EXPECT_TRUE(t.is_special(296));
  EXPECT_FALSE(t.is_special(297));
  EXPECT_FALSE(t.is_special(0));
  EXPECT_EQ(t.token_id("!"), 0);      // GPT-2's byte order: '!' first
  EXPECT_EQ(t.token_id("Ġ"), 220);    // the space, as in GPT-2's vocab.json
  EXPECT_EQ(t.token_id("Ā"), 188);    // byte 0
  EXPECT_EQ(t.token_id("nope"), std::nullopt);
  EXPECT_EQ(t.token(100000), std::nullopt);

  // t h e -> t he (h e ranks 1; no merge of t he); Ġ c a t -> Ġc a t -> Ġc at
  EXPECT_EQ(t.encode("the cat"), ids_of(t, {"t", "he", "Ġc", "at"}));
  // Ġ t h e -> Ġt h e -> Ġt he -> Ġthe; Ġ w o r l d -> Ġw o r l d -> Ġw or l d -> Ġwor l d
  EXPECT_EQ(t.encode(" the world"), ids_of(t, {"Ġthe", "Ġwor", "l", "d"}));
  // ignore_merges is false: Ġhello is in the vocabulary, but no merge reaches it
  EXPECT_EQ(t.encode(" hello"), ids_of(t, {"Ġ", "he", "ll", "o"}));
  EXPECT_EQ(t.encode("a<|endoftext|>b"), ids_of(t, {"a", "<|endoftext|>", "b"}));
  EXPECT_EQ(t.encode("hello world"), std::vector<int64_t>{297});  // a non-special added token
  // "bcd" (normalized false) is cut out before "abc" (normalized true) is looked for
  EXPECT_EQ(t.encode("abcd"), ids_of(t, {"a", "bcd"}));
  EXPECT_EQ(t.encode("abc d"), ids_of(t, {"abc", "Ġ", "d"}));
  EXPECT_EQ(t.encode(""), std::vector<int64_t>{});

  EXPECT_EQ(t.pre_tokenize("Hello world's 123  x\n"),
            (std::vector<std::string>{"Hello", "Ġworld", "'s", "Ġ123", "Ġ", "Ġx", "Ċ"}));
  // U+180E is not whitespace (Unicode 6.3 on; Oniguruma agrees, PCRE2's own \s does not)
  EXPECT_EQ(t.pre_tokenize("!\u180e").size(), 1u);
  // a no-break space is whitespace but not the optional " " before a word
  EXPECT_EQ(t.pre_tokenize("a\u00a0\u00a0b").size(), 4u);
}

TEST(Tokenizer, Llama3StyleHandComputed) {
  Tokenizer t = Tokenizer::load(data_file("tokenizer_llama3_tiny.json"));
  EXPECT_EQ(t.vocab_size(), 296);
  // digits in runs of at most 3; 1 2 3 -> 12 3 -> 123
  EXPECT_EQ(t.encode("x 1234567"), ids_of(t, {"x", "Ġ", "123", "4", "5", "6", "7"}));
  // ignore_merges: pieces in the vocabulary are one token, no merge needed
  EXPECT_EQ(t.encode(" hello world"), ids_of(t, {"Ġhello", "Ġworld"}));
  EXPECT_EQ(t.encode("hello"), ids_of(t, {"hello"}));
  EXPECT_EQ(t.encode("9999"), ids_of(t, {"999", "9"}));
  EXPECT_EQ(t.encode("a\n\n\nb"), ids_of(t, {"a", "ĊĊĊ", "b"}));
  // contractions in any case
  EXPECT_EQ(t.encode("DON'T"), ids_of(t, {"D", "O", "N", "'T"}));
  EXPECT_EQ(t.encode("<|begin_of_text|>Hi<|eot_id|>"), ids_of(t, {"<|begin_of_text|>", "H", "i", "<|eot_id|>"}));
  EXPECT_EQ(t.pre_tokenize("Hello, world!\n\n"), (std::vector<std::string>{"Hello", ",", "Ġworld", "!ĊĊ"}));
}

// ---------------------------------------------------------------------------
// Round trips and the decode stream
// ---------------------------------------------------------------------------

std::vector<Tokenizer> all_tokenizers() {
  return {Tokenizer::load(data_file("tokenizer_gpt2_tiny.json")), Tokenizer::load(data_file("tokenizer_llama3_tiny.json")),
          written(TokenizerStyle::kGpt2, 503, {"<|endoftext|>"}),
          written(TokenizerStyle::kLlama3, 503, {"<|begin_of_text|>", "<|end_of_text|>"})};
}

TEST(Tokenizer, RoundTrip) {
  for (const Tokenizer& t : all_tokenizers()) {
    for (const std::string& s : test_strings({"<|endoftext|>", "<|begin_of_text|>", "<|eot_id|>"})) {
      auto ids = t.encode(s);
      EXPECT_EQ(t.decode(ids, /*skip_special_tokens=*/false), s) << t.path() << ": " << printable(s);
    }
  }
}

TEST(Tokenizer, SkipsSpecialTokensOnDecode) {
  Tokenizer t = Tokenizer::load(data_file("tokenizer_gpt2_tiny.json"));
  auto ids = t.encode("<|endoftext|>Hi<|fim|> there hello world");
  EXPECT_EQ(t.decode(ids), "Hi there hello world");  // "hello world" is added but not special
  EXPECT_EQ(t.decode(ids, false), "<|endoftext|>Hi<|fim|> there hello world");
  std::vector<int64_t> unknown = {-1, 300, 1 << 30, t.token_id("H").value()};
  EXPECT_EQ(t.decode(unknown), "H");
}

TEST(Tokenizer, DecodeRepairsCutCharacters) {
  Tokenizer t = Tokenizer::load(data_file("tokenizer_gpt2_tiny.json"));
  // 😀 is F0 9F 98 80: "ðŁĺ" (F0 9F 98) and "Ģ" (80)
  int64_t first = t.token_id("ðŁĺ").value(), last = t.token_id("Ģ").value();
  EXPECT_EQ(t.decode(std::vector<int64_t>{first, last}), "😀");
  EXPECT_EQ(t.decode(std::vector<int64_t>{first}), "\uFFFD");
  EXPECT_EQ(t.decode(std::vector<int64_t>{last, t.token_id("A").value()}), "\uFFFDA");
  EXPECT_EQ(t.decode_bytes(std::vector<int64_t>{first}), "\xF0\x9F\x98");
}

TEST(Tokenizer, DecodeStreamGivesWholeCharacters) {
  Tokenizer t = Tokenizer::load(data_file("tokenizer_gpt2_tiny.json"));
  int64_t first = t.token_id("ðŁĺ").value(), last = t.token_id("Ģ").value();
  DecodeStream stream(t);
  EXPECT_EQ(stream.step(t.token_id("H").value()), "H");
  EXPECT_EQ(stream.step(first), "");
  EXPECT_TRUE(stream.pending());
  EXPECT_EQ(stream.step(last), "😀");
  EXPECT_FALSE(stream.pending());
  EXPECT_EQ(stream.step(295), "");  // <|endoftext|>, skipped
  EXPECT_EQ(stream.step(first), "");
  EXPECT_EQ(stream.step(t.token_id("A").value()), "\uFFFDA");  // cut short: one U+FFFD, as decode()
  EXPECT_EQ(stream.step(first), "");
  EXPECT_EQ(stream.finish(), "\uFFFD");
  EXPECT_FALSE(stream.pending());

  DecodeStream keep(t, /*skip_special_tokens=*/false);
  EXPECT_EQ(keep.step(295), "<|endoftext|>");
}

TEST(Tokenizer, DecodeStreamEqualsDecode) {
  for (const Tokenizer& t : all_tokenizers()) {
    std::vector<std::vector<int64_t>> lists;
    for (const std::string& s : test_strings({"<|endoftext|>"}, 100)) lists.push_back(t.encode(s));
    for (auto& ids : random_ids(t.vocab_size(), 300, 11)) lists.push_back(ids);
    for (const auto& ids : lists) {
      for (bool skip : {true, false}) {
        DecodeStream stream(t, skip);
        std::string text;
        for (int64_t id : ids) {
          std::string piece = stream.step(id);
          // each step's text is complete UTF-8: no U+FFFD that decode() of everything would not have
          text += piece;
        }
        text += stream.finish();
        EXPECT_EQ(text, t.decode(ids, skip)) << t.path() << ": " << json(ids).dump();
      }
    }
    // Valid text streams without any U+FFFD, whatever the token boundaries.
    for (const std::string& s : test_strings({}, 50)) {
      DecodeStream stream(t, false);
      for (int64_t id : t.encode(s)) EXPECT_EQ(stream.step(id).find("\uFFFD"), std::string::npos) << printable(s);
      EXPECT_EQ(stream.finish(), "");
    }
  }
}

TEST(Tokenizer, LongInputs) {
  Tokenizer gpt2 = written(TokenizerStyle::kGpt2, 503, {"<|endoftext|>"});
  Tokenizer llama = written(TokenizerStyle::kLlama3, 503, {"<|begin_of_text|>"});
  std::string mixed;
  while (mixed.size() < (1u << 20)) mixed += kTrainingText;
  std::vector<std::string> inputs = {mixed, std::string(200000, ' '), std::string(200000, 'a'), std::string(100000, '7'),
                                     std::string(100000, '\n') + "x", std::string(50000, '!') + " end"};
  for (const Tokenizer* t : {&gpt2, &llama}) {
    for (const std::string& s : inputs) {
      auto start = std::chrono::steady_clock::now();
      auto ids = t->encode(s);
      double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      EXPECT_EQ(t->decode(ids, false), s);
      EXPECT_LT(seconds, 20.0) << s.size() << " bytes";
    }
  }
}

// ---------------------------------------------------------------------------
// Refusals, by name
// ---------------------------------------------------------------------------

// The message of the Error(kInvalidArgument) the tokenizer file j gives, or "" when it loads.
std::string load_error(const json& j) {
  try {
    Tokenizer::from_json_text(j.dump(), "tokenizer.json");
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument) << e.what();
    return e.message();
  }
  return "";
}

TEST(Tokenizer, RefusesByName) {
  const json base = json::parse(read_file(data_file("tokenizer_gpt2_tiny.json")));
  const json llama = json::parse(read_file(data_file("tokenizer_llama3_tiny.json")));
  ASSERT_EQ(load_error(base), "");
  ASSERT_EQ(load_error(llama), "");
  json metaspace = {{"type", "Metaspace"}, {"replacement", "▁"}, {"prepend_scheme", "always"}, {"split", false}};
  struct Case {
    const char* name;
    std::function<void(json&)> change;
    std::string expected;
  };
  std::vector<Case> cases = {
      {"pre_tokenizer Metaspace", [&](json& j) { j["pre_tokenizer"] = metaspace; },
       "tokenizer.json: pre_tokenizer: Metaspace (SentencePiece) tokenizers are not supported; byte-level BPE (GPT-2, "
       "Llama 3) is"},
      {"decoder Metaspace", [&](json& j) { j["decoder"] = metaspace; },
       "tokenizer.json: decoder: Metaspace (SentencePiece) tokenizers are not supported"},
      {"Metaspace in a Sequence",
       [&](json& j) { j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", {metaspace}}}; },
       "tokenizer.json: pre_tokenizer.pretokenizers[0]: Metaspace (SentencePiece)"},
      {"Unigram", [](json& j) { j["model"] = {{"type", "Unigram"}, {"vocab", json::array()}}; },
       "tokenizer.json: model.type: Unigram (SentencePiece) is not supported"},
      {"WordPiece", [](json& j) { j["model"]["type"] = "WordPiece"; }, "tokenizer.json: model.type: WordPiece is not supported"},
      {"WordLevel", [](json& j) { j["model"]["type"] = "WordLevel"; }, "tokenizer.json: model.type: WordLevel is not supported"},
      {"byte_fallback", [](json& j) { j["model"]["byte_fallback"] = true; },
       "tokenizer.json: model.byte_fallback: true (SentencePiece-style <0x..> byte tokens) is not supported"},
      {"normalizer", [](json& j) { j["normalizer"] = {{"type", "NFC"}}; },
       "tokenizer.json: normalizer: NFC is not supported"},
      {"normalizer Sequence", [](json& j) { j["normalizer"] = {{"type", "Sequence"}, {"normalizers", json::array()}}; },
       "tokenizer.json: normalizer: Sequence is not supported"},
      {"pre_tokenizer Whitespace", [](json& j) { j["pre_tokenizer"] = {{"type", "Whitespace"}}; },
       "tokenizer.json: pre_tokenizer: Whitespace is not supported"},
      {"pre_tokenizer null", [](json& j) { j["pre_tokenizer"] = nullptr; }, "tokenizer.json: pre_tokenizer: null is not supported"},
      {"decoder null", [](json& j) { j["decoder"] = nullptr; }, "tokenizer.json: decoder: null is not supported"},
      {"decoder WordPiece", [](json& j) { j["decoder"] = {{"type", "WordPiece"}}; },
       "tokenizer.json: decoder: WordPiece is not supported (ByteLevel is)"},
      {"post_processor Bert", [](json& j) { j["post_processor"] = {{"type", "BertProcessing"}}; },
       "tokenizer.json: post_processor: BertProcessing is not supported"},
      {"dropout", [](json& j) { j["model"]["dropout"] = 0.1; }, "tokenizer.json: model.dropout: 0.1 is not supported"},
      {"continuing_subword_prefix", [](json& j) { j["model"]["continuing_subword_prefix"] = "##"; },
       "tokenizer.json: model.continuing_subword_prefix: \"##\" is not supported"},
      {"merge of unknown token", [](json& j) { j["model"]["merges"].push_back("zz q"); },
       "tokenizer.json: model.merges[38]: \"zz\" is not in model.vocab"},
      {"merge result unknown", [](json& j) { j["model"]["merges"].push_back("q q"); },
       "tokenizer.json: model.merges[38]: \"qq\" is not in model.vocab"},
      {"merge of three", [](json& j) { j["model"]["merges"][0] = "a b c"; },
       "tokenizer.json: model.merges[0]: \"a b c\" must be two tokens"},
      {"duplicate id", [](json& j) { j["model"]["vocab"]["zzz"] = 5; }, "tokenizer.json: model.vocab: id 5 is given to both"},
      {"negative id", [](json& j) { j["model"]["vocab"]["zzz"] = -3; }, "is out of range [0, 2^24)"},
      {"huge id", [](json& j) { j["model"]["vocab"]["zzz"] = 1LL << 40; }, "is out of range [0, 2^24)"},
      {"lstrip", [](json& j) { j["added_tokens"][0]["lstrip"] = true; },
       "tokenizer.json: added_tokens[0].lstrip: true is not supported"},
      {"single_word", [](json& j) { j["added_tokens"][1]["single_word"] = true; },
       "tokenizer.json: added_tokens[1].single_word: true is not supported"},
      {"added id differs from vocab", [](json& j) { j["added_tokens"][0]["id"] = 299; },
       "tokenizer.json: added_tokens[0].id: 299 differs from the id of \"<|endoftext|>\" in model.vocab (295)"},
      {"added id taken", [](json& j) { j["added_tokens"][1]["id"] = 3; },
       "tokenizer.json: added_tokens[1].id: 3 of \"<|fim|>\" is model.vocab's id of \"$\""},
      {"Split Removed", [&](json& j) { j = llama; j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed"; },
       "tokenizer.json: pre_tokenizer.pretokenizers[0].behavior: Removed is not supported"},
      {"Split invert", [&](json& j) { j = llama; j["pre_tokenizer"]["pretokenizers"][0]["invert"] = true; },
       "tokenizer.json: pre_tokenizer.pretokenizers[0].invert: true is not supported"},
      {"Split empty match", [&](json& j) { j = llama; j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "a*"; },
       "tokenizer.json: pre_tokenizer.pretokenizers[0].pattern.Regex: \"a*\" can match the empty string"},
      {"Split bad regex", [&](json& j) { j = llama; j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(a"; },
       "tokenizer.json: pre_tokenizer.pretokenizers[0].pattern.Regex: the pattern does not compile"},
      {"ByteLevel not last", [&](json& j) {
         j = llama;
         auto steps = j["pre_tokenizer"]["pretokenizers"];
         j["pre_tokenizer"]["pretokenizers"] = {steps[1], steps[0]};
       },
       "tokenizer.json: pre_tokenizer.pretokenizers[0]: ByteLevel is not supported here"},
      {"Digits", [&](json& j) {
         j = llama;
         j["pre_tokenizer"]["pretokenizers"].insert(j["pre_tokenizer"]["pretokenizers"].begin(),
                                                    json{{"type", "Digits"}, {"individual_digits", true}});
       },
       "tokenizer.json: pre_tokenizer.pretokenizers[0]: Digits is not supported here"},
      {"not an object", [](json& j) { j = json::array(); }, "tokenizer.json: expected a JSON object"},
      {"no model", [](json& j) { j.erase("model"); }, "tokenizer.json: model: is missing"},
  };
  for (const Case& c : cases) {
    json j = base;
    c.change(j);
    std::string message = load_error(j);
    EXPECT_NE(message.find(c.expected), std::string::npos) << c.name << ": got \"" << message << "\"";
  }
}

TEST(Tokenizer, LoadAndEncodeErrors) {
  try {
    Tokenizer::load("/nonexistent/tokenizer.json");
    ADD_FAILURE() << "loaded a missing file";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
    EXPECT_NE(e.message().find("/nonexistent/tokenizer.json: cannot open"), std::string::npos) << e.what();
  }
  try {
    Tokenizer::from_json_text("{\"model\": ", "broken.json");
    ADD_FAILURE() << "parsed broken JSON";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("broken.json: not valid JSON"), std::string::npos) << e.what();
  }
  Tokenizer t = Tokenizer::load(data_file("tokenizer_gpt2_tiny.json"));
  for (std::string bad : {"ab\xff", "\xc3", "\xed\xa0\x80 surrogate", "\xc0\xaf overlong"}) {
    try {
      t.encode(bad);
      ADD_FAILURE() << "encoded invalid UTF-8 " << printable(bad);
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
      EXPECT_NE(e.message().find("is not UTF-8"), std::string::npos) << e.what();
    }
  }
}

// Copies share the tables and may encode from several threads.
TEST(Tokenizer, ConcurrentEncode) {
  Tokenizer t = written(TokenizerStyle::kLlama3, 503, {"<|begin_of_text|>"});
  std::vector<std::string> texts = test_strings({"<|begin_of_text|>"}, 50);
  std::vector<std::vector<int64_t>> expected;
  for (const auto& s : texts) expected.push_back(t.encode(s));
  std::vector<std::thread> threads;
  std::atomic<int> wrong{0};
  for (int k = 0; k < 4; ++k) {
    threads.emplace_back([&, copy = t] {
      for (int round = 0; round < 5; ++round) {
        for (size_t i = 0; i < texts.size(); ++i) wrong += copy.encode(texts[i]) != expected[i];
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(wrong.load(), 0);
}

// ---------------------------------------------------------------------------
// The writer
// ---------------------------------------------------------------------------

TEST(TokenizerWriter, VocabularySizeIsExact) {
  for (TokenizerStyle style : {TokenizerStyle::kGpt2, TokenizerStyle::kLlama3}) {
    for (int64_t size : {256 + 1, 300, 503}) {
      Tokenizer t = written(style, size, {"<|endoftext|>"});
      EXPECT_EQ(t.vocab_size(), size) << to_string(style);
      for (int64_t id = 0; id < size; ++id) EXPECT_TRUE(t.token(id).has_value()) << id;  // no gaps
      EXPECT_EQ(t.token_id("<|endoftext|>"), size - 1);
      EXPECT_TRUE(t.is_special(size - 1));
    }
  }
}

TEST(TokenizerWriter, SpecialTokensFirst) {
  for (TokenizerStyle style : {TokenizerStyle::kGpt2, TokenizerStyle::kLlama3}) {
    BpeTokenizerSpec spec = make_spec(503, style, {"<unk>", "<s>", "</s>"}, true, "<s>");
    json j = json::parse(bpe_tokenizer_json(kTrainingText, spec));
    Tokenizer t = Tokenizer::from_json_text(j.dump(), "first.json");
    EXPECT_EQ(t.vocab_size(), 503);
    for (int64_t id = 0; id < 503; ++id) EXPECT_TRUE(t.token(id).has_value()) << id;
    EXPECT_EQ(t.token_id("<s>"), 1);
    EXPECT_EQ(t.token_id("</s>"), 2);
    EXPECT_TRUE(t.is_special(0));
    EXPECT_EQ(t.token_id("!"), 3);  // the bytes after them, in GPT-2's order
    EXPECT_EQ(t.token_id("Ġ"), 223);
    EXPECT_EQ(t.encode("<s>Hello</s>").front(), 1);
    EXPECT_EQ(t.decode(t.encode("<s>Hello world</s>")), "Hello world");
    // the same merges as with the specials at the end, only the ids move
    BpeTokenizerSpec last = spec;
    last.special_tokens_first = false;
    json k = json::parse(bpe_tokenizer_json(kTrainingText, last));
    EXPECT_EQ(j["model"]["merges"], k["model"]["merges"]);
    EXPECT_EQ(j["model"]["vocab"]["Ġthe"].get<int64_t>(), k["model"]["vocab"]["Ġthe"].get<int64_t>() + 3);
    if (style == TokenizerStyle::kLlama3) {
      EXPECT_EQ(j["post_processor"]["processors"][1]["special_tokens"]["<s>"]["ids"][0], 1);
      EXPECT_EQ(j["post_processor"]["processors"][1]["single"][0]["SpecialToken"]["id"], "<s>");
    }
  }
}

TEST(TokenizerWriter, FileLayout) {
  BpeTokenizerSpec gpt2 = make_spec(503, TokenizerStyle::kGpt2, {"<|endoftext|>"});
  json g = json::parse(bpe_tokenizer_json(kTrainingText, gpt2));
  EXPECT_EQ(g["pre_tokenizer"]["type"], "ByteLevel");
  EXPECT_EQ(g["pre_tokenizer"]["use_regex"], true);
  EXPECT_EQ(g["decoder"]["type"], "ByteLevel");
  EXPECT_EQ(g["model"]["type"], "BPE");
  EXPECT_TRUE(g["model"]["merges"][0].is_string());
  EXPECT_EQ(g["model"]["vocab"]["<|endoftext|>"], 502);  // in the vocabulary too, as GPT-2's
  EXPECT_EQ(g["added_tokens"][0]["id"], 502);
  EXPECT_EQ(g["model"]["vocab"]["!"], 0);
  EXPECT_EQ(g["model"]["vocab"]["Ġ"], 220);

  BpeTokenizerSpec llama = make_spec(503, TokenizerStyle::kLlama3, {"<|begin_of_text|>", "<|end_of_text|>"});
  json l = json::parse(bpe_tokenizer_json(kTrainingText, llama));
  EXPECT_EQ(l["pre_tokenizer"]["type"], "Sequence");
  EXPECT_EQ(l["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"], kLlama3Pattern);
  EXPECT_EQ(l["pre_tokenizer"]["pretokenizers"][1]["use_regex"], false);
  EXPECT_EQ(l["model"]["ignore_merges"], true);
  EXPECT_TRUE(l["model"]["merges"][0].is_array());
  EXPECT_FALSE(l["model"]["vocab"].contains("<|begin_of_text|>"));
  EXPECT_EQ(l["added_tokens"][1]["content"], "<|end_of_text|>");
  EXPECT_EQ(l["added_tokens"][1]["id"], 502);
  EXPECT_EQ(l["post_processor"]["processors"][1]["special_tokens"]["<|begin_of_text|>"]["ids"][0], 501);
  // deterministic
  EXPECT_EQ(bpe_tokenizer_json(kTrainingText, llama), bpe_tokenizer_json(kTrainingText, llama));
}

// Hand-computed training on "aaabdaaabac": counts (a,a) 4 -> [a a]; then (aa,a)
// and (a,b) tie at 2 and (a,b) has the smaller ids -> [a b]; (aa,ab) 2 ->
// [aa ab]; then all pairs once: the smallest left id, a (64) with c -> [a c];
// then d (67) with aaab -> [d aaab].
TEST(TokenizerWriter, MergesByCountThenSmallestIds) {
  BpeTokenizerSpec spec = make_spec(256 + 5 + 1, TokenizerStyle::kGpt2, {"<|endoftext|>"});
  json j = json::parse(bpe_tokenizer_json("aaabdaaabac", spec));
  EXPECT_EQ(j["model"]["merges"], json({"a a", "a b", "aa ab", "a c", "d aaab"}));
  EXPECT_EQ(j["model"]["vocab"]["daaab"], 260);
  // special tokens in the text are cut out first: "aaabd" and "aaabac" train
  // apart, so d and aaab never meet; the last merge is then (aaab, d), the
  // smaller right id of the two pairs of aaab
  json k = json::parse(bpe_tokenizer_json("aaabd<|endoftext|>aaabac", spec));
  EXPECT_EQ(k["model"]["merges"], json({"a a", "a b", "aa ab", "a c", "aaab d"}));
  Tokenizer t = Tokenizer::from_json_text(j.dump(), "trained.json");
  // a a a b d a a a b a c -> aa a b d aa a b a c -> aa ab d aa ab a c -> aaab d aaab a c -> ... ac -> aaab daaab ac
  EXPECT_EQ(t.encode("aaabdaaabac"), ids_of(t, {"aaab", "daaab", "ac"}));
}

TEST(TokenizerWriter, RefusesWhatCannotBeExact) {
  auto fails = [](std::string_view text, BpeTokenizerSpec spec, const std::string& expected) {
    try {
      bpe_tokenizer_json(text, spec);
      ADD_FAILURE() << "trained: " << expected;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument);
      EXPECT_NE(e.message().find(expected), std::string::npos) << e.what();
    }
  };
  fails("abc", make_spec(300, TokenizerStyle::kGpt2, {}), "the training text gives only 258 tokens");
  fails("abc", make_spec(256, TokenizerStyle::kGpt2, {"<|endoftext|>"}), "needs a vocab_size of at least 257");
  fails("abc", make_spec(260, TokenizerStyle::kGpt2, {"<s>", "<s>"}), "is given twice");
  fails("xyz", make_spec(257, TokenizerStyle::kLlama3, {"a"}), "special token \"a\" is also a token of the vocabulary");
  fails("abc", make_spec(258, TokenizerStyle::kLlama3, {"<s>"}, false, "<bos>"), "bos_token \"<bos>\" is not one of the special tokens");
}

}  // namespace
}  // namespace meshrt::models

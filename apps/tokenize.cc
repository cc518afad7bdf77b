// meshrt-tokenize: byte-level BPE tokenizers (Hugging Face tokenizer.json of
// GPT-2's and Llama 3's kind, models/tokenizer.h) from the command line, and
// the writer of small trained ones (models/tokenizer_writer.h).
//
//   meshrt-tokenize --tokenizer tokenizer.json "Hello world"        the ids (no special tokens added)
//   meshrt-tokenize --tokenizer tokenizer.json --tokens "Hello"     each id with its token
//   meshrt-tokenize --tokenizer tokenizer.json --decode 15496 995   the text of the ids
//   meshrt-tokenize --write tokenizer.json --train-text corpus.txt --vocab-size 503
//       --style gpt2 --special "<|endoftext|>"                      trains and writes one
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>

#include "apps/cli.h"
#include "device/error.h"
#include "models/tokenizer.h"
#include "models/tokenizer_writer.h"

namespace {

using meshrt::models::Tokenizer;

std::string read_all(std::istream& in) {
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

int write(const std::string& path, const std::string& text_path, int64_t vocab_size, const std::string& style,
          const std::vector<std::string>& specials, bool specials_first, const std::string& bos) {
  std::ifstream f(text_path, std::ios::binary);
  if (!f) {
    std::fprintf(stderr, "meshrt-tokenize: cannot read --train-text %s\n", text_path.c_str());
    return 1;
  }
  meshrt::models::BpeTokenizerSpec spec;
  spec.vocab_size = vocab_size;
  spec.style = style == "gpt2" ? meshrt::models::TokenizerStyle::kGpt2 : meshrt::models::TokenizerStyle::kLlama3;
  spec.special_tokens = specials;
  spec.special_tokens_first = specials_first;
  spec.bos_token = bos;
  meshrt::models::write_bpe_tokenizer(path, read_all(f), spec);
  Tokenizer t = Tokenizer::load(path);
  std::printf("%s: %s style, %lld ids\n", path.c_str(), style.c_str(), static_cast<long long>(t.vocab_size()));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string tokenizer_path, write_path, train_text, style = "gpt2", bos;
  std::vector<std::string> inputs, specials;
  int64_t vocab_size = 0;
  bool decode = false, keep_special = false, tokens = false, specials_first = false;
  meshrt::apps::CommandLine app{
      "meshrt-tokenize: Hugging Face tokenizer.json files of the byte-level BPE kind (GPT-2, Llama 3).\n"
      "With --tokenizer: encodes each INPUT (a text; none or \"-\": standard input) and prints its ids on a line,\n"
      "no special tokens added; with --decode the INPUTs are ids and their text is printed.\n"
      "With --write: trains a deterministic byte-level BPE of exactly --vocab-size ids on --train-text and\n"
      "writes it as a tokenizer.json (models/tokenizer_writer.h)."};
  app.add("INPUT", inputs, "texts to encode, or ids to decode with --decode");
  app.add("--tokenizer", tokenizer_path, "a tokenizer.json to encode or decode with");
  app.flag("--decode", decode, "the INPUTs are ids: print their text");
  app.flag("--keep-special", keep_special, "with --decode: keep special tokens (skipped by default)");
  app.flag("--tokens", tokens, "print each id with its token (as the file spells it) on its own line");
  app.add("--write", write_path, "train a tokenizer and write it to this path");
  app.add("--train-text", train_text, "with --write: the file of text to train on");
  app.add("--vocab-size", vocab_size, "with --write: the number of ids (256 bytes + merges + special tokens)");
  app.add("--style", style, "with --write: the pre-tokenizer and layout").show_default().one_of({"gpt2", "llama3"});
  app.add("--special", specials, "with --write: special tokens (repeat for several), e.g. \"<|endoftext|>\"");
  app.flag("--special-first", specials_first, "with --write: the special tokens at ids 0.. instead of at the end");
  app.add("--bos", bos, "with --write --style llama3: the BOS of its TemplateProcessing (default: the first --special)");
  if (auto exit_code = app.parse(argc, argv)) return *exit_code;
  try {
    if (!write_path.empty()) {
      if (train_text.empty() || vocab_size <= 0) {
        std::fprintf(stderr, "meshrt-tokenize: --write needs --train-text and --vocab-size\n");
        return 2;
      }
      return write(write_path, train_text, vocab_size, style, specials, specials_first, bos);
    }
    if (tokenizer_path.empty()) {
      std::fprintf(stderr, "meshrt-tokenize: give --tokenizer (or --write); --help says more\n");
      return 2;
    }
    Tokenizer t = Tokenizer::load(tokenizer_path);
    auto print_tokens = [&](const std::vector<int64_t>& ids) {
      for (int64_t id : ids) std::printf("%lld\t%s\n", static_cast<long long>(id), t.token(id).value_or("(none)").c_str());
    };
    if (decode) {
      std::vector<int64_t> ids;
      for (const std::string& s : inputs) {
        size_t used = 0;
        long long id = 0;
        try {
          id = std::stoll(s, &used);
        } catch (const std::exception&) {
          used = 0;
        }
        if (used != s.size() || s.empty()) {
          std::fprintf(stderr, "meshrt-tokenize: --decode takes ids, not \"%s\"\n", s.c_str());
          return 2;
        }
        ids.push_back(id);
      }
      if (tokens) print_tokens(ids);
      std::printf("%s\n", t.decode(ids, !keep_special).c_str());
      return 0;
    }
    if (inputs.empty() || (inputs.size() == 1 && inputs[0] == "-")) inputs = {read_all(std::cin)};
    for (const std::string& text : inputs) {
      std::vector<int64_t> ids = t.encode(text);
      if (tokens) {
        print_tokens(ids);
        continue;
      }
      for (size_t i = 0; i < ids.size(); ++i) std::printf("%s%lld", i ? " " : "", static_cast<long long>(ids[i]));
      std::printf("\n");
    }
    return 0;
  } catch (const meshrt::Error& e) {
    std::fprintf(stderr, "meshrt-tokenize: %s\n", e.message().c_str());
    return 1;
  }
}

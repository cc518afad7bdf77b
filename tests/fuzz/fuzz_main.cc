// A driver for the fuzz targets when they are not built with libFuzzer (gcc, or
// clang without MESHRT_FUZZ): it runs every file of the corpus folders (or
// files) it is given through LLVMFuzzerTestOneInput, then, with -seconds=N,
// random mutations of them for N seconds (bit flips, byte changes, cuts,
// splices, tokens of the -dict=FILE dictionary). Not coverage-guided: the
// coverage-guided runs are libFuzzer's (run_libfuzzer.sh).
//
//   fuzz_x [-seconds=N] [-seed=S] [-dict=FILE] CORPUS_DIR_OR_FILE...
//
// A failing input crashes the process (abort, sanitizer report); the driver
// writes each input to ./fuzz-current-input first (with -keep_input=1) so that
// it can be replayed with `fuzz_x fuzz-current-input`.
#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

using Bytes = std::vector<uint8_t>;

bool read_file(const std::string& path, Bytes& out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  out.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  return true;
}

// Files of path (a file, or a folder's regular files, sorted; not recursive).
std::vector<std::string> files_of(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    std::fprintf(stderr, "fuzz driver: %s does not exist\n", path.c_str());
    std::exit(2);
  }
  if (!S_ISDIR(st.st_mode)) return {path};
  std::vector<std::string> out;
  if (DIR* d = ::opendir(path.c_str())) {
    while (dirent* e = ::readdir(d)) {
      std::string f = path + "/" + e->d_name;
      if (e->d_name[0] != '.' && ::stat(f.c_str(), &st) == 0 && S_ISREG(st.st_mode)) out.push_back(f);
    }
    ::closedir(d);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// A libFuzzer/AFL dictionary: lines `name="value"` or `"value"`, with \\, \" and
// \xNN escapes; # starts a comment.
std::vector<Bytes> read_dictionary(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    std::fprintf(stderr, "fuzz driver: cannot read the dictionary %s\n", path.c_str());
    std::exit(2);
  }
  std::vector<Bytes> out;
  std::string line;
  while (std::getline(in, line)) {
    size_t first = line.find_first_not_of(" \t");
    if (first == std::string::npos || line[first] == '#') continue;
    size_t open = line.find('"'), close = line.rfind('"');
    if (open == std::string::npos || close <= open) continue;
    Bytes token;
    for (size_t i = open + 1; i < close; ++i) {
      if (line[i] == '\\' && i + 1 < close) {
        char c = line[++i];
        if (c == 'x' && i + 2 < close) {
          token.push_back(static_cast<uint8_t>(std::strtoul(line.substr(i + 1, 2).c_str(), nullptr, 16)));
          i += 2;
        } else {
          token.push_back(static_cast<uint8_t>(c));
        }
      } else {
        token.push_back(static_cast<uint8_t>(line[i]));
      }
    }
    if (!token.empty()) out.push_back(token);
  }
  return out;
}

void mutate(Bytes& input, const std::vector<Bytes>& corpus, const std::vector<Bytes>& dictionary, std::mt19937_64& rng) {
  int mutations = 1 + static_cast<int>(rng() % 4);
  for (int m = 0; m < mutations; ++m) {
    size_t at = input.empty() ? 0 : rng() % input.size();
    switch (rng() % 7) {
      case 0:  // flip a bit
        if (!input.empty()) input[at] ^= static_cast<uint8_t>(1u << (rng() % 8));
        break;
      case 1:  // set a byte
        if (!input.empty()) input[at] = static_cast<uint8_t>(rng());
        break;
      case 2:  // cut the tail
        input.resize(at);
        break;
      case 3:  // drop a few bytes
        if (!input.empty()) input.erase(input.begin() + static_cast<long>(at), input.begin() + static_cast<long>(std::min(input.size(), at + 1 + rng() % 8)));
        break;
      case 4:
      case 5:  // insert a dictionary token
        if (!dictionary.empty()) {
          const Bytes& token = dictionary[rng() % dictionary.size()];
          input.insert(input.begin() + static_cast<long>(at), token.begin(), token.end());
        }
        break;
      case 6: {  // splice: a piece of another corpus input
        const Bytes& other = corpus[rng() % corpus.size()];
        if (other.empty()) break;
        size_t from = rng() % other.size(), n = 1 + rng() % std::min<size_t>(64, other.size() - from);
        input.insert(input.begin() + static_cast<long>(at), other.begin() + static_cast<long>(from),
                     other.begin() + static_cast<long>(from + n));
        break;
      }
    }
  }
  if (input.size() > 1 << 16) input.resize(1 << 16);
}

}  // namespace

int main(int argc, char** argv) {
  double seconds = 0;
  uint64_t seed = 1;
  bool keep_input = false;
  std::vector<Bytes> dictionary;
  std::vector<std::string> paths;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("-seconds=", 0) == 0) {
      seconds = std::atof(a.c_str() + 9);
    } else if (a.rfind("-seed=", 0) == 0) {
      seed = std::strtoull(a.c_str() + 6, nullptr, 10);
    } else if (a.rfind("-dict=", 0) == 0) {
      dictionary = read_dictionary(a.substr(6));
    } else if (a == "-keep_input=1") {
      keep_input = true;
    } else if (!a.empty() && a[0] == '-') {
      std::fprintf(stderr, "fuzz driver: unknown flag %s (usage: %s [-seconds=N] [-seed=S] [-dict=FILE] CORPUS...)\n",
                   a.c_str(), argv[0]);
      return 2;
    } else {
      paths.push_back(a);
    }
  }
  std::string name = argv[0];
  name = name.substr(name.find_last_of('/') + 1);
  auto run = [&](const Bytes& input) {
    if (keep_input) {
      std::ofstream("fuzz-current-input", std::ios::binary | std::ios::trunc)
          .write(reinterpret_cast<const char*>(input.data()), static_cast<std::streamsize>(input.size()));
    }
    // A copy of exactly the input's size, so that AddressSanitizer sees a read past its end.
    std::unique_ptr<uint8_t[]> copy(new uint8_t[input.size() == 0 ? 1 : input.size()]);
    std::memcpy(copy.get(), input.data(), input.size());
    LLVMFuzzerTestOneInput(copy.get(), input.size());
  };

  auto start = std::chrono::steady_clock::now();
  std::vector<Bytes> corpus;
  for (const std::string& p : paths) {
    for (const std::string& f : files_of(p)) {
      Bytes b;
      if (!read_file(f, b)) {
        std::fprintf(stderr, "fuzz driver: cannot read %s\n", f.c_str());
        return 2;
      }
      run(b);
      corpus.push_back(std::move(b));
    }
  }
  const size_t corpus_size = corpus.size();
  uint64_t mutated = 0;
  if (seconds > 0) {
    if (corpus.empty()) corpus.push_back({});
    std::mt19937_64 rng(seed);
    auto deadline = start + std::chrono::duration<double>(seconds);
    while (std::chrono::steady_clock::now() < deadline) {
      Bytes input = corpus[rng() % corpus.size()];
      mutate(input, corpus, dictionary, rng);
      run(input);
      ++mutated;
    }
  }
  double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("%s: %zu corpus inputs and %llu mutated ones in %.1f s, no crash\n", name.c_str(), corpus_size,
              static_cast<unsigned long long>(mutated), took);
  return 0;
}

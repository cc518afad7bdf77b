// Helpers of the tests that compare meshrt's transformer logits with the
// independent float64 reference tests/hf_reference.py (numpy, Hugging Face's
// semantics): token inputs, running the reference, and the error measure.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace meshrt::testing {

// A batch of token ids and its attention mask (1 attend, 0 padding).
struct TokenInput {
  int64_t batch = 2, seq = 7;
  std::vector<int64_t> ids;
  std::vector<int64_t> mask;
};

// Random ids (the first two: 0 and vocab - 1, the edges of the vocabulary
// blocks); row 1 left-padded by 2 when batch > 1.
inline TokenInput make_token_input(int64_t vocab, int64_t batch = 2, int64_t seq = 7, uint64_t seed = 7) {
  TokenInput in;
  in.batch = batch;
  in.seq = seq;
  std::mt19937_64 rng(seed);
  for (int64_t i = 0; i < batch * seq; ++i) in.ids.push_back(static_cast<int64_t>(rng() % static_cast<uint64_t>(vocab)));
  in.ids[0] = 0;
  if (batch * seq > 1) in.ids[1] = vocab - 1;
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t s = 0; s < seq; ++s) in.mask.push_back(b == 1 && s < 2 ? 0 : 1);
  }
  return in;
}

// "[[1,2],[3,4]]": rows x cols values as nested JSON lists.
inline std::string nested_json(const std::vector<int64_t>& v, int64_t rows, int64_t cols) {
  std::ostringstream s;
  s << "[";
  for (int64_t r = 0; r < rows; ++r) {
    s << (r ? ",[" : "[");
    for (int64_t c = 0; c < cols; ++c) s << (c ? "," : "") << v[static_cast<size_t>(r * cols + c)];
    s << "]";
  }
  s << "]";
  return s.str();
}

inline void flatten_json(const nlohmann::json& j, std::vector<double>& out) {
  if (j.is_array()) {
    for (const auto& x : j) flatten_json(x, out);
  } else {
    out.push_back(j.get<double>());
  }
}

inline bool reference_can_run() { return std::system("/usr/bin/python3 -c 'import numpy' > /dev/null 2>&1") == 0; }

// The reference's logits [batch * seq * vocab] for the model folder; empty when it failed.
inline std::vector<double> run_reference(const std::string& source_dir, const std::string& folder, const TokenInput& in) {
  std::string out = std::filesystem::temp_directory_path() /
                    ("meshrt-hf-ref-" + std::to_string(::getpid()) + "-" + std::to_string(std::rand()) + ".json");
  std::string command = "/usr/bin/python3 " + source_dir + "/tests/hf_reference.py --model " + folder +
                        " --input-ids '" + nested_json(in.ids, in.batch, in.seq) + "' --attention-mask '" +
                        nested_json(in.mask, in.batch, in.seq) + "' > " + out;
  std::vector<double> logits;
  if (std::system(command.c_str()) == 0) {
    std::ifstream f(out);
    flatten_json(nlohmann::json::parse(f).at("logits"), logits);
  }
  std::remove(out.c_str());
  return logits;
}

// The largest error of a token's logits against their scale (the largest
// reference logit of that token), over the tokens the mask keeps (a padded
// query attends to no key: its logits are undefined in Hugging Face).
// got: batch * seq * vocab values.
template <class T>
double worst_relative_error(const std::vector<double>& expected, const T* got, const TokenInput& in, int64_t vocab) {
  double worst = 0;
  for (int64_t t = 0; t < in.batch * in.seq; ++t) {
    if (in.mask[static_cast<size_t>(t)] == 0) continue;
    double scale = 0, error = 0;
    for (int64_t v = 0; v < vocab; ++v) {
      double e = expected[static_cast<size_t>(t * vocab + v)];
      double g = static_cast<double>(got[t * vocab + v]);
      scale = std::max(scale, std::abs(e));
      error = std::max(error, std::abs(g - e));
      if (std::isnan(g)) error = INFINITY;
    }
    worst = std::max(worst, error / scale);
  }
  return worst;
}

}  // namespace meshrt::testing

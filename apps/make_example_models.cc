// meshrt-make-example-models: writes the example model repository
// (examples/models): configs and safetensors weights, generated here from fixed
// seeds so the files are reproducible (a test checks the committed files are
// exactly this tool's output).
//
//   matmul_neg  the classic distributed MatMul+Neg (MindSpore Serving's example):
//               rank_size 4, stage_size 2; stage 0: x[-1,96] @ w[96,16] (w = 0.5,
//               row-parallel over the stage's 2 ranks), stage 1: neg. Ones in -> -48 out.
//   mlp         a small multi-layer MLP, rank_size 4, stage_size 2: a projection,
//               a layernorm'd column/row-parallel feed-forward block with a residual
//               connection, then rmsnorm, a column-parallel head and softmax.
#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <random>

#include "apps/cli.h"
#include "io/safetensors.h"

namespace {

using meshrt::HostTensor;

HostTensor random_matrix(int64_t rows, int64_t cols, uint64_t seed, float scale) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  HostTensor t = HostTensor::empty({rows, cols}, meshrt::DType::kF32);
  for (float& v : t.span<float>()) v = dist(rng);
  return t;
}

HostTensor random_vector(int64_t n, uint64_t seed, float center, float scale) {
  HostTensor m = random_matrix(1, n, seed, scale);
  for (float& v : m.span<float>()) v += center;
  return m.reshape({n});
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  if (!out) throw meshrt::Error(meshrt::ErrorKind::kUnavailable, "cannot write " + path);
}

void make_dir(const std::string& path) { ::mkdir(path.c_str(), 0755); }

void matmul_neg(const std::string& root) {
  std::string dir = root + "/matmul_neg";
  make_dir(dir);
  meshrt::io::write_safetensors_file(dir + "/weights.safetensors",
                                           {{"w", HostTensor::full<float>({96, 16}, 0.5f)}}, {{"format", "pt"}});
  write_text(dir + "/config.json", R"({
  "name": "matmul_neg",
  "version": "1",
  "description": "y = -(x @ w), w = 0.5: ones in, -48 out. Stage 0 multiplies (w row-parallel over 2 ranks), stage 1 negates.",
  "rank_size": 4,
  "stage_size": 2,
  "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 96]}],
  "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 16]}],
  "weights": "weights.safetensors",
  "stages": [
    {"layers": [{"type": "linear", "weight": "w", "parallel": "row"}]},
    {"layers": [{"type": "neg"}]}
  ],
  "batching": {"max_batch_size": 256, "max_queue_delay_us": 2000, "preferred_batch_sizes": [128, 256],
               "micro_batches": 2, "max_queue_size": 256}
}
)");
}

void mlp(const std::string& root) {
  std::string dir = root + "/mlp";
  make_dir(dir);
  meshrt::io::write_safetensors_file(
      dir + "/weights.safetensors",
      {
          {"proj.weight", random_matrix(32, 32, 1, 0.3f)}, {"proj.bias", random_vector(32, 2, 0.0f, 0.1f)},
          {"ln.gamma", random_vector(32, 3, 1.0f, 0.1f)},  {"ln.beta", random_vector(32, 4, 0.0f, 0.1f)},
          {"up.weight", random_matrix(32, 64, 5, 0.3f)},   {"up.bias", random_vector(64, 6, 0.0f, 0.1f)},
          {"down.weight", random_matrix(64, 32, 7, 0.3f)}, {"down.bias", random_vector(32, 8, 0.0f, 0.1f)},
          {"norm.gamma", random_vector(32, 9, 1.0f, 0.1f)},
          {"head.weight", random_matrix(32, 8, 10, 0.3f)}, {"head.bias", random_vector(8, 11, 0.0f, 0.1f)},
      },
      {{"format", "pt"}});
  write_text(dir + "/config.json", R"({
  "name": "mlp",
  "version": "1",
  "description": "A small MLP: projection, layernorm, column/row-parallel feed-forward with a residual connection (stage 0); rmsnorm, column-parallel head, softmax (stage 1).",
  "rank_size": 4,
  "stage_size": 2,
  "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 32]}],
  "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 8]}],
  "weights": "weights.safetensors",
  "stages": [
    {"layers": [
      {"type": "linear", "weight": "proj.weight", "bias": "proj.bias", "parallel": "none", "save": "residual"},
      {"type": "layernorm", "gamma": "ln.gamma", "beta": "ln.beta"},
      {"type": "linear", "weight": "up.weight", "bias": "up.bias", "parallel": "column"},
      {"type": "gelu"},
      {"type": "linear", "weight": "down.weight", "bias": "down.bias", "parallel": "row"},
      {"type": "residual_add", "from": "residual"}
    ]},
    {"layers": [
      {"type": "rmsnorm", "gamma": "norm.gamma"},
      {"type": "linear", "weight": "head.weight", "bias": "head.bias", "parallel": "column"},
      {"type": "softmax"}
    ]}
  ],
  "batching": {"max_batch_size": 64, "max_queue_delay_us": 1000, "preferred_batch_sizes": [32, 64],
               "micro_batches": 2, "max_queue_size": 512}
}
)");
}

}  // namespace

int main(int argc, char** argv) {
  std::string out = "examples/models";
  meshrt::apps::CommandLine app{"meshrt-make-example-models: writes the example model repository (configs and weights)"};
  app.add("-o,--out", out, "the repository folder to write").show_default();
  if (auto exit_code = app.parse(argc, argv)) return *exit_code;
  try {
    make_dir(out);
    matmul_neg(out);
    mlp(out);
    std::printf("wrote %s/matmul_neg and %s/mlp\n", out.c_str(), out.c_str());
  } catch (const meshrt::Error& e) {
    std::fprintf(stderr, "meshrt-make-example-models: %s\n", e.what());
    return 1;
  }
  return 0;
}

// meshrt-bench-transformer: prefill throughput of a Hugging Face checkpoint
// (GPT-2 or Llama, models/transformer.h), tensor parallel over the job's ranks,
// beside the reference implementation's figure from the same run
// (tests/hf_reference.py: numpy, float64, one BLAS thread, on rank 0).
//
//   mpirun -np 2 meshrt-bench-transformer --model examples/hf/llama-tiny --batch 4 --seq 64
//
// Prefill: one forward pass over batch x seq tokens (every position's logits),
// the pass served models run on a request's prompt.
#include <cblas.h>

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "apps/app_common.h"
#include "apps/cli.h"
#include "comm/world.h"
#include "models/transformer.h"

extern "C" void openblas_set_num_threads(int);

namespace meshrt::apps {
namespace {

struct Options {
  std::string model = "examples/hf/llama-tiny";
  int64_t batch = 4, seq = 64;
  int iters = 10, warmup = 2, blas_threads = 1;
  std::string device, dtype = "f32";
  ReferenceOptions reference;
};

// The reference's seconds per forward pass, or a negative number (with why) when it cannot run.
double reference_seconds(const Options& o, const std::vector<int64_t>& ids, std::string* why) {
  std::ostringstream json;
  json << "[";
  for (int64_t b = 0; b < o.batch; ++b) {
    json << (b ? ",[" : "[");
    for (int64_t s = 0; s < o.seq; ++s) json << (s ? "," : "") << ids[static_cast<size_t>(b * o.seq + s)];
    json << "]";
  }
  json << "]";
  std::optional<std::string> out = o.reference.run("--model '" + o.model + "' --input-ids '" + json.str() + "' --time " +
                                                       std::to_string(std::max(1, o.iters / 2)),
                                                   why);
  try {
    if (out) return nlohmann::json::parse(*out).at("seconds").get<double>();
  } catch (const std::exception& e) {
    *why = "the reference's output is not what was expected (" + o.reference.script + "): " + e.what();
  }
  return -1;
}

int run(const Options& o) {
  World& world = World::get();
  int n = world.size();
  openblas_set_num_threads(o.blas_threads);
  MESHRT_CHECK_ARG(o.batch >= 1 && o.seq >= 1, "--batch and --seq must be at least 1");
  MESHRT_CHECK_ARG(o.iters >= 1 && o.warmup >= 0, "-n must be at least 1 and -w at least 0");
  Device device = world.device(o.device);
  DType compute = parse_dtype(o.dtype);
  models::hf::HfConfig config = models::hf::read_config(o.model);
  sharding::Mesh mesh({{"model", n}}, device);
  models::Transformer model(o.model, config, mesh, models::TransformerPart{0, config.num_layers, true, true}, compute);

  std::mt19937_64 rng(1);
  std::vector<int64_t> ids(static_cast<size_t>(o.batch * o.seq));
  for (int64_t& id : ids) id = static_cast<int64_t>(rng() % static_cast<uint64_t>(config.vocab_size));
  models::TokenBatch batch = models::TokenBatch::make(o.batch, o.seq, HostTensor(), device);
  sharding::DTensor input = sharding::DTensor::from_global(HostTensor::from_vector(ids, {o.batch, o.seq}), mesh,
                                                           sharding::Layout::replicated(2), "input_ids");
  std::vector<double> times;
  for (int i = 0; i < o.warmup + o.iters; ++i) {
    mesh.world_communicator().barrier();
    auto start = std::chrono::steady_clock::now();
    model.forward(input, batch).block_until_ready();
    if (i >= o.warmup) times.push_back(seconds_since(start));
  }
  std::sort(times.begin(), times.end());
  double median = times[times.size() / 2];
  // The slowest rank's median.
  DeviceTensor t = to_device(HostTensor::full<double>({1}, median), device);
  mesh.world_communicator().all_reduce(t, ReduceOp::kMax).wait();
  median = to_host(t).data<double>()[0];
  if (world.rank() != 0) return 0;
  double tokens = static_cast<double>(o.batch * o.seq);
  std::string why;
  double ref = o.reference.skip ? -1 : reference_seconds(o, ids, &why);
  std::printf("# meshrt-bench-transformer: %s (%s, %lld layers, hidden %lld, %lld heads / %lld kv heads, vocab %lld), "
              "%d rank(s) tensor parallel, device %s, compute %s, %d BLAS thread(s) per rank\n",
              o.model.c_str(), models::hf::to_string(config.architecture), static_cast<long long>(config.num_layers),
              static_cast<long long>(config.hidden_size), static_cast<long long>(config.num_heads),
              static_cast<long long>(config.num_kv_heads), static_cast<long long>(config.vocab_size), n,
              device.to_string().c_str(), to_string(compute), o.blas_threads);
  std::printf("# prefill of batch %lld x seq %lld tokens (median of %d, slowest rank); reference: tests/hf_reference.py "
              "(numpy, float64, one BLAS thread)\n",
              static_cast<long long>(o.batch), static_cast<long long>(o.seq), o.iters);
  std::printf("#%5s %8s %6s %12s %14s %14s %16s %10s\n", "TP", "batch", "seq", "meshrt ms", "meshrt tok/s",
              "reference ms", "reference tok/s", "ratio");
  if (ref > 0) {
    std::printf(" %5d %8lld %6lld %12.3f %14.0f %14.3f %16.0f %10.2f\n", n, static_cast<long long>(o.batch),
                static_cast<long long>(o.seq), median * 1e3, tokens / median, ref * 1e3, tokens / ref, ref / median);
  } else {
    std::printf(" %5d %8lld %6lld %12.3f %14.0f %14s %16s %10s\n", n, static_cast<long long>(o.batch),
                static_cast<long long>(o.seq), median * 1e3, tokens / median, "-", "-", "-");
    if (!o.reference.skip) std::printf("# no reference figure: %s\n", why.c_str());
  }
  return 0;
}

}  // namespace
}  // namespace meshrt::apps

int main(int argc, char** argv) {
  meshrt::World::init(&argc, &argv);
  meshrt::apps::Options o;
  meshrt::apps::CommandLine app{
      "meshrt-bench-transformer: prefill tokens/s of a Hugging Face GPT-2 or Llama checkpoint, tensor parallel over\n"
      "the job's ranks, beside the float64 numpy reference (tests/hf_reference.py) from the same run.\n"
      "Run it under mpirun, e.g.: mpirun -np 2 meshrt-bench-transformer --model examples/hf/llama-tiny"};
  app.add("--model", o.model, "a Hugging Face model folder (config.json and safetensors weights)").show_default();
  app.add("--batch", o.batch, "sequences per forward pass").show_default();
  app.add("--seq", o.seq, "tokens per sequence").show_default();
  app.add("-n,--iters", o.iters, "timed passes (the reference runs half as many)").show_default();
  app.add("-w,--warmup", o.warmup, "untimed passes").show_default();
  app.add("--dtype", o.dtype, "compute dtype: f32, bf16 or f16").show_default();
  app.add("--blas-threads", o.blas_threads, "OpenBLAS threads per rank").show_default();
  app.add("--device", o.device, "cpu or cuda:N (default: cuda:<local rank> when GPUs exist, else cpu)");
  o.reference.add_to(app);
  return meshrt::apps::run_mpi_app("meshrt-bench-transformer", app, argc, argv, [&] { return meshrt::apps::run(o); });
}

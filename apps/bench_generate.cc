// meshrt-bench-generate: token generation of a Hugging Face checkpoint through
// the serving engine and the generator (iteration-level batching, KV cache),
// at several concurrencies, beside the reference implementation's figures from
// the same run (tests/hf_reference.py: numpy, float64, full recompute of the
// batch per token, one BLAS thread, on rank 0).
//
//   mpirun -np 2 meshrt-bench-generate --model examples/hf/llama-tiny --concurrency 1,8,32
//
// For each concurrency c: c requests of --prompt random tokens, each asking
// for --tokens tokens (greedy), submitted at once. Printed: decode tokens/s
// (tokens generated / wall time), the median time to first token, and the
// median inter-token latency over the requests.
#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "apps/app_common.h"
#include "apps/cli.h"
#include "comm/world.h"
#include "serving/generator.h"
#include "serving/hf_servable.h"

namespace meshrt::apps {
namespace {

struct Options {
  std::string model = "examples/hf/llama-tiny";
  std::string concurrency = "1,8,32";
  int64_t prompt = 16, tokens = 32;
  int stages = 1;
  std::string device, dtype;
  ReferenceOptions reference;
};

struct Figures {
  double tokens_per_second = 0, first_token = 0, inter_token = 0;
};

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// The reference's figures for c rows of the same prompts, or tokens_per_second < 0 with why.
Figures reference_figures(const Options& o, const std::vector<std::vector<int64_t>>& prompts, std::string* why) {
  std::ostringstream json;
  json << "[";
  for (size_t r = 0; r < prompts.size(); ++r) {
    json << (r ? ",[" : "[");
    for (size_t i = 0; i < prompts[r].size(); ++i) json << (i ? "," : "") << prompts[r][i];
    json << "]";
  }
  json << "]";
  Figures f;
  f.tokens_per_second = -1;
  std::optional<std::string> out =
      o.reference.run("--model '" + o.model + "' --input-ids '" + json.str() + "' --time-generate " + std::to_string(o.tokens), why);
  try {
    if (out) {
      nlohmann::json j = nlohmann::json::parse(*out);
      double seconds = j.at("seconds").get<double>(), first = j.at("first_token_seconds").get<double>();
      f.tokens_per_second = j.at("tokens").get<double>() / seconds;
      f.first_token = first;
      f.inter_token = o.tokens > 1 ? (seconds - first) / static_cast<double>(o.tokens - 1) : 0;
      return f;
    }
  } catch (const std::exception& e) {
    *why = "the reference's output is not what was expected (" + o.reference.script + "): " + e.what();
  }
  return f;
}

// c requests at once through the generator; rank 0.
Figures measure(serving::Generator& g, const std::vector<std::vector<int64_t>>& prompts, int64_t tokens) {
  struct Track {
    std::chrono::steady_clock::time_point submitted, first, last;
    int64_t count = 0;
    bool done = false;
  };
  std::vector<Track> tracks(prompts.size());
  std::mutex mutex;
  std::condition_variable cv;
  size_t finished = 0;
  auto start = std::chrono::steady_clock::now();
  for (size_t r = 0; r < prompts.size(); ++r) {
    serving::GenerateRequest request;
    request.input_ids = prompts[r];
    request.max_tokens = tokens;
    request.stop_token_ids = {};
    tracks[r].submitted = std::chrono::steady_clock::now();
    serving::GenerateAdmission a = g.submit(request, [&, r](const serving::GenerateUpdate& u) {
      std::lock_guard<std::mutex> lock(mutex);
      Track& t = tracks[r];
      auto now = std::chrono::steady_clock::now();
      if (!u.tokens.empty()) {
        if (t.count == 0) t.first = now;
        t.last = now;
        t.count += static_cast<int64_t>(u.tokens.size());
      }
      if (u.done() && !t.done) {
        t.done = true;
        ++finished;
        cv.notify_all();
      }
      return true;
    });
    MESHRT_CHECK(a == serving::GenerateAdmission::kQueued, ErrorKind::kUnavailable,
                 "request ", r, " was not admitted (raise --kv-blocks or the queue size)");
  }
  std::unique_lock<std::mutex> lock(mutex);
  cv.wait(lock, [&] { return finished == prompts.size(); });
  double wall = seconds_since(start);
  Figures f;
  std::vector<double> first, inter;
  int64_t total = 0;
  for (const Track& t : tracks) {
    total += t.count;
    first.push_back(std::chrono::duration<double>(t.first - t.submitted).count());
    if (t.count > 1) inter.push_back(std::chrono::duration<double>(t.last - t.first).count() / static_cast<double>(t.count - 1));
  }
  f.tokens_per_second = static_cast<double>(total) / wall;
  f.first_token = median(first);
  f.inter_token = median(inter);
  return f;
}

int run(const Options& o) {
  World& world = World::get();
  int n = world.size();
  MESHRT_CHECK_ARG(o.prompt >= 1 && o.tokens >= 1, "--prompt and --tokens must be at least 1");
  MESHRT_CHECK_ARG(o.stages >= 1 && n % o.stages == 0, "--stages (", o.stages, ") must divide the ", n, " ranks");
  std::vector<int> levels;
  {
    std::istringstream in(o.concurrency);
    for (std::string item; std::getline(in, item, ',');) {
      levels.push_back(std::stoi(item));
      MESHRT_CHECK_ARG(levels.back() >= 1, "--concurrency takes counts >= 1, got ", item);
    }
  }
  int most = *std::max_element(levels.begin(), levels.end());
  Device device = world.device(o.device);
  serving::ModelConfig c = serving::load_model_config(o.model);
  c.rank_size = n;
  c.stage_size = o.stages;
  if (!o.dtype.empty()) c.compute_dtype = o.dtype;
  int64_t per_request = (o.prompt + o.tokens + c.kv_cache.block_size - 1) / c.kv_cache.block_size;
  c.kv_cache.num_blocks = std::max<int64_t>(c.kv_cache.num_blocks, per_request * most);
  c.batching.max_batch_size = std::max<int64_t>(c.batching.max_batch_size, most);
  c.batching.max_queue_size = std::max<int64_t>(c.batching.max_queue_size, most);
  serving::ServableDefinition s = serving::servable_from_config(c, device);
  MESHRT_CHECK_ARG(!s.generation->max_positions || o.prompt + o.tokens <= s.generation->max_positions, "--prompt + --tokens (",
                   o.prompt + o.tokens, ") exceed the model's ", s.generation->max_positions, " positions");
  serving::Engine engine({s}, device);
  if (world.rank() != 0) {
    engine.serve();
    return 0;
  }
  std::printf("# meshrt-bench-generate: %s, %d rank(s): %d pipeline stage(s) x %d-way tensor parallel, device %s; "
              "prompts of %lld tokens, %lld tokens generated each (greedy)\n",
              o.model.c_str(), n, o.stages, n / o.stages, device.to_string().c_str(), static_cast<long long>(o.prompt),
              static_cast<long long>(o.tokens));
  std::printf("# reference: tests/hf_reference.py (numpy, float64, one BLAS thread, full recompute of the batch per "
              "token); ttft and itl are medians over the requests\n");
  std::printf("#%4s %4s %12s %10s %10s %14s %10s %10s %8s\n", "TP", "conc", "tok/s", "ttft ms", "itl ms", "ref tok/s",
              "ref ttft", "ref itl", "ratio");
  int status = 0;
  try {
    serving::Metrics metrics;
    serving::Generator g(engine, 0, metrics);
    std::mt19937_64 rng(3);
    // A warm-up request.
    measure(g, {std::vector<int64_t>(static_cast<size_t>(o.prompt), 1)}, 2);
    for (int level : levels) {
      std::vector<std::vector<int64_t>> prompts(static_cast<size_t>(level));
      for (auto& p : prompts) {
        for (int64_t i = 0; i < o.prompt; ++i) p.push_back(static_cast<int64_t>(rng() % static_cast<uint64_t>(s.generation->vocab_size)));
      }
      Figures mine = measure(g, prompts, o.tokens);
      std::string why;
      Figures ref;
      ref.tokens_per_second = -1;
      if (!o.reference.skip) ref = reference_figures(o, prompts, &why);
      if (ref.tokens_per_second > 0) {
        std::printf(" %4d %4d %12.0f %10.3f %10.3f %14.0f %10.3f %10.3f %8.2f\n", n / o.stages, level, mine.tokens_per_second,
                    mine.first_token * 1e3, mine.inter_token * 1e3, ref.tokens_per_second, ref.first_token * 1e3,
                    ref.inter_token * 1e3, mine.tokens_per_second / ref.tokens_per_second);
      } else {
        std::printf(" %4d %4d %12.0f %10.3f %10.3f %14s %10s %10s %8s\n", n / o.stages, level, mine.tokens_per_second,
                    mine.first_token * 1e3, mine.inter_token * 1e3, "-", "-", "-", "-");
        if (!o.reference.skip) std::printf("# no reference figure: %s\n", why.c_str());
      }
      std::fflush(stdout);
    }
    g.drain();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "meshrt-bench-generate: %s\n", e.what());
    status = 1;
  }
  engine.stop();
  return status;
}

}  // namespace
}  // namespace meshrt::apps

int main(int argc, char** argv) {
  meshrt::World::init(&argc, &argv);
  meshrt::apps::Options o;
  meshrt::apps::CommandLine app{
      "meshrt-bench-generate: decode tokens/s, time to first token and inter-token latency of a Hugging Face\n"
      "checkpoint served by meshrt's generator (KV cache, iteration-level batching) at several concurrencies,\n"
      "beside the float64 numpy reference (tests/hf_reference.py) from the same run.\n"
      "Run it under mpirun, e.g.: mpirun -np 2 meshrt-bench-generate --model examples/hf/llama-tiny"};
  app.add("--model", o.model, "a Hugging Face model folder with meshrt.json").show_default();
  app.add("--concurrency", o.concurrency, "requests at once, comma-separated").show_default();
  app.add("--prompt", o.prompt, "prompt tokens per request").show_default();
  app.add("--tokens", o.tokens, "tokens generated per request").show_default();
  app.add("--stages", o.stages, "pipeline stages (the rest of the ranks: tensor parallel)").show_default();
  app.add("--dtype", o.dtype, "compute dtype: float32, bfloat16 or float16 (default: meshrt.json's, else the device's)");
  app.add("--device", o.device, "cpu or cuda:N (default: cuda:<local rank> when GPUs exist, else cpu)");
  o.reference.add_to(app);
  return meshrt::apps::run_mpi_app("meshrt-bench-generate", app, argc, argv, [&] { return meshrt::apps::run(o); });
}

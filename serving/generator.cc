#include "serving/generator.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "device/log.h"

namespace meshrt::serving {

namespace {
double seconds_between(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}
// A uniform double in [0, 1) from 53 bits of the generator (the same on every platform).
double uniform(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }
}  // namespace

struct Generator::Sequence {
  GenerateRequest request;
  GenerateSink sink;
  std::vector<int64_t> blocks;
  int64_t limit = 0;       // tokens to generate at most
  int64_t cached = 0;      // tokens whose keys and values are in the cache
  int64_t next_token = -1; // the last token generated (not yet in the cache)
  int64_t generated = 0;
  bool finished = false;
  uint64_t generation = 0;  // the engine's generation of the model when admitted (its cache)
  std::mt19937_64 rng;
  std::chrono::steady_clock::time_point arrived, last_token;
};

Generator::Generator(Engine& engine, int model, Metrics& metrics)
    : engine_(engine), model_(model), metrics_(metrics), def_(engine.servable(model)),
      spec_(*engine.servable(model).generation) {
  for (int64_t b = spec_.num_blocks - 1; b >= 0; --b) free_blocks_.push_back(b);
  metrics_.kv_blocks(def_.name, def_.version, 0, spec_.num_blocks);
  thread_ = std::thread([this] { loop(); });
}

Generator::~Generator() { drain(); }

void Generator::check(const GenerateRequest& r) const {
  MESHRT_CHECK_ARG(!r.input_ids.empty(), "\"input_ids\" must hold at least one token id");
  for (size_t i = 0; i < r.input_ids.size(); ++i) {
    int64_t id = r.input_ids[i];
    MESHRT_CHECK_ARG(id >= 0 && id < spec_.vocab_size, "\"input_ids\"[", i, "] is ", id, ": token ids are 0 to ",
                     spec_.vocab_size - 1, " (vocab_size ", spec_.vocab_size, ")");
  }
  if (spec_.max_positions > 0) {
    MESHRT_CHECK_ARG(static_cast<int64_t>(r.input_ids.size()) < spec_.max_positions, "a prompt of ",
                     r.input_ids.size(), " tokens leaves no room to generate: the model has ", spec_.max_positions,
                     " positions");
  }
  MESHRT_CHECK_ARG(r.max_tokens >= 1 && r.max_tokens <= (int64_t{1} << 24), "\"max_tokens\" must be from 1 to ",
                   int64_t{1} << 24, ", got ", r.max_tokens);
  MESHRT_CHECK_ARG(std::isfinite(r.temperature) && r.temperature >= 0, "\"temperature\" must be >= 0, got ",
                   r.temperature);
  MESHRT_CHECK_ARG(r.top_k >= 0, "\"top_k\" must be >= 0 (0: every token), got ", r.top_k);
  MESHRT_CHECK_ARG(std::isfinite(r.top_p) && r.top_p > 0 && r.top_p <= 1, "\"top_p\" must be in (0, 1], got ", r.top_p);
}

int64_t Generator::blocks_needed(const GenerateRequest& r) const {
  int64_t prompt = static_cast<int64_t>(r.input_ids.size());
  int64_t limit = r.max_tokens;
  if (spec_.max_positions > 0) limit = std::min(limit, spec_.max_positions - prompt);
  return (prompt + limit + spec_.block_size - 1) / spec_.block_size;
}

int64_t Generator::blocks_in_use() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return spec_.num_blocks - static_cast<int64_t>(free_blocks_.size());
}

GenerateAdmission Generator::submit(GenerateRequest request, GenerateSink sink) {
  if (blocks_needed(request) > spec_.num_blocks) return GenerateAdmission::kNeverFits;
  if (!engine_.failure(model_).empty()) return GenerateAdmission::kModelUnavailable;
  auto s = std::make_unique<Sequence>();
  int64_t prompt = static_cast<int64_t>(request.input_ids.size());
  s->limit = request.max_tokens;
  if (spec_.max_positions > 0) s->limit = std::min(s->limit, spec_.max_positions - prompt);
  s->rng.seed(request.seed ? *request.seed : std::random_device{}());
  s->request = std::move(request);
  s->sink = std::move(sink);
  s->arrived = std::chrono::steady_clock::now();
  std::lock_guard<std::mutex> lock(mutex_);
  if (draining_) return GenerateAdmission::kDraining;
  if (static_cast<int64_t>(queue_.size()) >= def_.batching.max_queue_size) return GenerateAdmission::kQueueFull;
  queue_.push_back(std::move(s));
  cv_.notify_all();
  return GenerateAdmission::kQueued;
}

void Generator::drain(std::chrono::milliseconds within) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    draining_ = true;
    drain_deadline_ = std::chrono::steady_clock::now() + within;
    cv_.notify_all();
  }
  std::lock_guard<std::mutex> joining(join_mutex_);
  if (thread_.joinable()) thread_.join();
}

int64_t Generator::slot(const Sequence& s, int64_t position) const {
  return s.blocks[static_cast<size_t>(position / spec_.block_size)] * spec_.block_size + position % spec_.block_size;
}

void Generator::release(Sequence& s) {
  s.finished = true;
  std::lock_guard<std::mutex> lock(mutex_);
  free_blocks_.insert(free_blocks_.end(), s.blocks.begin(), s.blocks.end());
  s.blocks.clear();
  metrics_.kv_blocks(def_.name, def_.version, spec_.num_blocks - static_cast<int64_t>(free_blocks_.size()),
                     spec_.num_blocks);
}

void Generator::finish(Sequence& s, GenerateUpdate last) {
  if (s.finished) return;
  release(s);  // before the answer: a client that comes back at once finds the blocks free
  try {
    s.sink(last);
  } catch (const std::exception& e) {
    log::error("answering a generate request of '" + def_.name + "' failed: " + e.what());
    if (last.status == 200) {  // one more try, as an error: the request must be answered
      try {
        s.sink({{}, "", 500, std::string("internal error: ") + e.what()});
      } catch (const std::exception&) {
      }
    }
  }
}

void Generator::advance(Sequence& s, int64_t token) {
  auto now = std::chrono::steady_clock::now();
  ++s.generated;
  if (s.generated == 1) {
    metrics_.first_token(def_.name, def_.version, seconds_between(s.arrived, now));
  } else {
    metrics_.inter_token(def_.name, def_.version, seconds_between(s.last_token, now));
  }
  s.last_token = now;
  s.next_token = token;
  metrics_.tokens_generated(def_.name, def_.version, 1);
  GenerateUpdate update;
  update.tokens = {token};
  bool wanted = true;
  try {
    wanted = s.sink(update);
  } catch (const std::exception& e) {
    finish(s, {{}, "", 500, std::string("internal error: ") + e.what()});  // answered, once
    return;
  }
  if (!wanted) {  // the client is gone: leave the batch quietly
    release(s);
    return;
  }
  const std::vector<int64_t>& stops = s.request.stop_token_ids;
  bool stop = std::find(spec_.eos_token_ids.begin(), spec_.eos_token_ids.end(), token) != spec_.eos_token_ids.end() ||
              std::find(stops.begin(), stops.end(), token) != stops.end();
  if (stop) {
    finish(s, {{}, "stop", 200, ""});
  } else if (s.generated >= s.limit) {
    finish(s, {{}, "length", 200, ""});
  }
}

int64_t Generator::sample(Sequence& s, const float* logits) const {
  const int64_t vocab = spec_.vocab_size;
  const GenerateRequest& r = s.request;
  if (r.temperature == 0) return std::max_element(logits, logits + vocab) - logits;  // the first maximum
  std::vector<int64_t> order(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  // Largest first, ties by the lower id (a stable order, as the reference's).
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return logits[a] > logits[b]; });
  size_t keep = r.top_k > 0 ? std::min<size_t>(static_cast<size_t>(r.top_k), order.size()) : order.size();
  std::vector<double> p(keep);
  double top = logits[order[0]], total = 0;
  for (size_t i = 0; i < keep; ++i) total += p[i] = std::exp((static_cast<double>(logits[order[i]]) - top) / r.temperature);
  if (r.top_p < 1) {
    double reach = r.top_p * total, sum = 0;
    size_t n = 0;
    while (n < keep && sum < reach) sum += p[n++];
    keep = std::max<size_t>(n, 1);
    total = std::accumulate(p.begin(), p.begin() + static_cast<std::ptrdiff_t>(keep), 0.0);
  }
  double u = uniform(s.rng) * total, sum = 0;
  for (size_t i = 0; i < keep; ++i) {
    sum += p[i];
    if (u < sum) return order[i];
  }
  return order[keep - 1];
}

bool Generator::step(std::vector<Sequence*>& rows, bool prefill) {
  int64_t n = static_cast<int64_t>(rows.size()), q = 1, kv = 0;
  for (Sequence* s : rows) {
    if (prefill) q = std::max(q, static_cast<int64_t>(s->request.input_ids.size()));
    kv = std::max(kv, s->cached + 1);
  }
  if (prefill) kv = q;
  const int64_t width = 3 * q + 2 * kv + 1;
  HostTensor in = HostTensor::zeros({n, width}, DType::kI64);
  for (int64_t r = 0; r < n; ++r) {
    Sequence& s = *rows[static_cast<size_t>(r)];
    int64_t* row = in.data<int64_t>() + r * width;
    int64_t *ids = row, *positions = row + q, *write = row + 2 * q, *read = row + 3 * q, *mask = row + 3 * q + kv;
    if (prefill) {
      int64_t length = static_cast<int64_t>(s.request.input_ids.size());
      for (int64_t i = 0; i < q; ++i) {
        bool real = i < length;
        ids[i] = real ? s.request.input_ids[static_cast<size_t>(i)] : 0;
        positions[i] = i;
        write[i] = read[i] = real ? slot(s, i) : -1;
        mask[i] = real ? 1 : 0;
      }
      row[width - 1] = length - 1;
    } else {
      ids[0] = s.next_token;
      positions[0] = s.cached;
      write[0] = slot(s, s.cached);
      for (int64_t j = 0; j < kv; ++j) {
        bool real = j <= s.cached;
        read[j] = real ? slot(s, j) : -1;
        mask[j] = real ? 1 : 0;
      }
      row[width - 1] = 0;
    }
  }
  // The statistics (Metrics::generation_step): this step is one execution
  // of batch size n; a prefill starts its requests (their queue waits end here).
  auto start = std::chrono::steady_clock::now();
  std::vector<double> queued;
  if (prefill) {
    for (Sequence* s : rows) queued.push_back(seconds_between(s->arrived, start));
  }
  auto counted = [&](bool ok) {
    metrics_.generation_step(def_.name, def_.version, n, queued,
                             seconds_between(start, std::chrono::steady_clock::now()), ok);
  };
  HostTensor logits;
  BatchReport report;
  try {
    logits = engine_.run(model_, in, 1, &report, {kGenerationStep, q, kv});
    MESHRT_CHECK(logits.shape() == (Shape{n, spec_.vocab_size}) && logits.dtype() == DType::kF32, ErrorKind::kInternal,
                 "a generation step of '", def_.name, "' returned ", logits.description());
  } catch (const Error& e) {
    counted(false);
    int status = e.kind() == ErrorKind::kUnavailable ? 503 : 500;
    for (Sequence* s : rows) finish(*s, {{}, "", status, "model '" + def_.name + "' failed: " + e.message()});
    return status != 503;  // a failed model (503) fails everything waiting too
  } catch (const std::exception& e) {
    counted(false);
    for (Sequence* s : rows) finish(*s, {{}, "", 500, std::string("internal error: ") + e.what()});
    return true;
  }
  counted(true);
  metrics_.engine(def_.name, def_.version, report.engine_seconds, report.forward_seconds);
  for (int64_t r = 0; r < n; ++r) {
    Sequence& s = *rows[static_cast<size_t>(r)];
    s.cached = prefill ? static_cast<int64_t>(s.request.input_ids.size()) : s.cached + 1;
    if (s.finished) continue;  // cancelled meanwhile
    advance(s, sample(s, logits.data<float>() + r * spec_.vocab_size));
  }
  return true;
}

void Generator::loop() {
  const size_t most = static_cast<size_t>(std::max<int64_t>(1, def_.batching.max_batch_size));
  for (;;) {
    std::vector<Sequence*> fresh;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      cv_.wait(lock, [&] { return draining_ || !queue_.empty() || !active_.empty(); });
      if (draining_ && queue_.empty() && active_.empty()) break;
      if (draining_ && std::chrono::steady_clock::now() >= drain_deadline_) {
        // Out of time: what still runs or waits is answered and dropped.
        std::deque<std::unique_ptr<Sequence>> waiting;
        waiting.swap(queue_);
        lock.unlock();
        for (const auto& s : active_) finish(*s, {{}, "", 503, "the server shut down before this generation ended"});
        for (const auto& s : waiting) finish(*s, {{}, "", 503, "the server shut down before this generation started"});
        active_.clear();
        break;
      }
      // Admission in arrival order while the pool has room (blocks reserved for prompt and max_tokens).
      while (!queue_.empty() && static_cast<int64_t>(free_blocks_.size()) >= blocks_needed(queue_.front()->request)) {
        std::unique_ptr<Sequence> s = std::move(queue_.front());
        queue_.pop_front();
        for (int64_t b = blocks_needed(s->request); b > 0; --b) {
          s->blocks.push_back(free_blocks_.back());
          free_blocks_.pop_back();
        }
        s->generation = engine_.generation(model_);
        fresh.push_back(s.get());
        active_.push_back(std::move(s));
      }
      metrics_.kv_blocks(def_.name, def_.version, spec_.num_blocks - static_cast<int64_t>(free_blocks_.size()),
                         spec_.num_blocks);
    }
    // A model rebuilt since a request was admitted (recovery) has a new, empty cache.
    uint64_t generation = engine_.generation(model_);
    for (const auto& s : active_) {
      if (s->generation != generation) finish(*s, {{}, "", 503, "model '" + def_.name + "' was rebuilt (recovered after a failure) while this request ran"});
    }
    std::erase_if(fresh, [](Sequence* s) { return s->finished; });
    // Running requests decode one token each; the new ones are prefilled first.
    std::vector<Sequence*> running;
    for (const auto& s : active_) {
      if (!s->finished && std::find(fresh.begin(), fresh.end(), s.get()) == fresh.end()) running.push_back(s.get());
    }
    bool ok = true;
    for (size_t i = 0; ok && i < fresh.size(); i += most) {
      std::vector<Sequence*> chunk(fresh.begin() + static_cast<std::ptrdiff_t>(i),
                                   fresh.begin() + static_cast<std::ptrdiff_t>(std::min(fresh.size(), i + most)));
      ok = step(chunk, true);
    }
    for (size_t i = 0; ok && i < running.size(); i += most) {
      std::vector<Sequence*> chunk(running.begin() + static_cast<std::ptrdiff_t>(i),
                                   running.begin() + static_cast<std::ptrdiff_t>(std::min(running.size(), i + most)));
      ok = step(chunk, false);
    }
    if (!ok) {  // the model failed: every request admitted or waiting is answered
      std::string why = "model '" + def_.name + "' is unavailable: " + engine_.failure(model_);
      std::deque<std::unique_ptr<Sequence>> waiting;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        waiting.swap(queue_);
      }
      for (const auto& s : active_) finish(*s, {{}, "", 503, why});
      for (const auto& s : waiting) finish(*s, {{}, "", 503, why});
    }
    // Finished requests leave the batch (their blocks went back when they finished).
    std::erase_if(active_, [](const std::unique_ptr<Sequence>& s) { return s->finished; });
  }
}

}  // namespace meshrt::serving

// Token generation on rank 0 (Triton's generate extension, iteration-level
// batching as vLLM and TensorRT-LLM do it) for a servable with a
// GenerationSpec (a Hugging Face decoder-only model).
//
// One thread runs the model step by step. Between steps, queued requests are
// admitted while the KV cache has room for them, and each iteration runs one
// prefill step of the newly admitted requests (their prompts, right-padded to
// the longest) and one decode step of every running request (one token each),
// so a new request joins the running batch between decode steps, a finished
// one leaves it, and a request's first token never waits for other requests to
// finish. Rows per step are bounded by the model's max_batch_size (more run in
// several steps).
//
// KV cache: every rank's pool has num_blocks blocks of block_size tokens; a
// request reserves blocks for its prompt and max_tokens when admitted (no
// preemption: a running request is never evicted), and gives them back when it
// finishes. A request that could never fit (more blocks than the pool) is
// refused at once (kNeverFits: 503); otherwise it waits in a bounded queue
// (max_queue_size; full: kQueueFull, 503).
//
// Sampling (on rank 0, from the last token's logits): temperature 0 is greedy
// (the lowest id among equal maxima); otherwise softmax(logits / temperature)
// restricted to the top_k largest (0: all) and then to the smallest set whose
// probability reaches top_p, drawn with the request's own generator (seeded by
// "seed", else at random): the same seed gives the same tokens whatever else
// is in the batch. Generation stops after a stop token (eos_token_id or one of
// stop_token_ids; it is part of the output, as in transformers' generate) with
// finish_reason "stop", or after max_tokens tokens (or the model's last
// position) with "length".
//
// Statistics (Triton's extension, Metrics::generation_step): every step is one
// model execution of batch size "sequences in the step" (execution_count,
// batch_stats), as the dynamic batcher counts a batch; a request is one
// inference, counted when its prefill step succeeds (inference_count, queue:
// arrival to that step); compute_infer counts it then and adds the time of
// every step it is in. A failed step counts in no statistic but the requests'
// fail (the front end counts success and fail when they are answered); a
// request that fails after its prefill stays counted as an inference.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "serving/engine.h"
#include "serving/metrics.h"
#include "serving/protocol.h"

namespace meshrt::serving {

// What a request gets: its new tokens as they come, then an update with the
// finish reason ("stop" or "length"), or an error (status 503 when the model
// failed, 500 for a bug).
struct GenerateUpdate {
  std::vector<int64_t> tokens;  // new since the last update
  std::string finish_reason;    // "" while generating
  int status = 200;
  std::string error;
  bool done() const { return !finish_reason.empty() || status != 200; }
};
// Called on the generator's thread; returning false cancels the request (its
// client is gone): it leaves the batch and gets no more updates.
using GenerateSink = std::function<bool(const GenerateUpdate&)>;

enum class GenerateAdmission { kQueued, kQueueFull, kNeverFits, kDraining, kModelUnavailable };

class Generator {
 public:
  // model: a servable of engine with a GenerationSpec. Starts the thread.
  Generator(Engine& engine, int model, Metrics& metrics);
  ~Generator();

  // Error(kInvalidArgument) naming what is wrong (empty prompt, ids outside the
  // vocabulary, a prompt as long as the model's positions, bad sampling values).
  void check(const GenerateRequest& request) const;
  // Queues a checked request; sink is then called until an update is done()
  // (not called at all unless kQueued).
  GenerateAdmission submit(GenerateRequest request, GenerateSink sink);
  // Blocks per request: ceil((prompt + max_tokens) / block_size).
  int64_t blocks_needed(const GenerateRequest& request) const;
  int64_t blocks_in_use() const;
  // Stops taking requests, finishes those admitted or queued, then stops the
  // thread; what has not finished within `within` is answered with 503.
  void drain(std::chrono::milliseconds within = std::chrono::hours(24));

 private:
  struct Sequence;
  void loop();
  // Runs one step over sequences (prefill when their cache is empty, else
  // decode) and gives each its next token. Returns false when the model failed.
  bool step(std::vector<Sequence*>& rows, bool prefill);
  int64_t sample(Sequence& s, const float* logits) const;
  // After a token: emits it and finishes the sequence when it stops.
  void advance(Sequence& s, int64_t token);
  void finish(Sequence& s, GenerateUpdate last);
  // Marks s finished and gives its blocks back.
  void release(Sequence& s);
  int64_t slot(const Sequence& s, int64_t position) const;

  Engine& engine_;
  int model_;
  Metrics& metrics_;
  const ServableDefinition& def_;
  const GenerationSpec& spec_;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Sequence>> queue_;     // waiting for blocks
  std::vector<std::unique_ptr<Sequence>> active_;   // admitted (thread's own)
  std::vector<int64_t> free_blocks_;
  bool draining_ = false, stopped_ = false;
  std::chrono::steady_clock::time_point drain_deadline_;
  std::thread thread_;
  std::mutex join_mutex_;  // drain() from two threads (an unload and the server's drain) joins once
};

}  // namespace meshrt::serving

#include "serving/engine.h"

#include <algorithm>
#include <cstdio>
#include <deque>
#include <sstream>

#include "device/poll.h"
#include "comm/world.h"
#include "sharding/redistribute.h"

namespace meshrt::serving {

using sharding::Layout;

namespace {
// Channel tags of the engine's messages.
// Commands (rank 0 -> all), each naming the servable's generation where it has one:
//   run <index> <batch id> <generation> <rows of each micro-batch>...
//   fail <index> <generation>      rank 0 gave the servable up (a batch failed)
//   ping <token>                   answer "pong <token>" (recovery)
//   rebuild <index> <generation>   new communicators for the servable (recovery)
//   stop
constexpr int kCommandTag = 1000;
constexpr int kInputTag = 1001;    // rank 0 -> first stage: the batch
constexpr int kResultTag = 1002;   // last stage -> rank 0: "<batch id>" then the result
constexpr int kErrorTag = 1003;    // any rank -> rank 0: "<batch id> <message>"
constexpr int kPongTag = 1004;     // any rank -> rank 0: "pong <token>"
// What went wrong, without the "meshrt ... error:" prefix of our own errors.
std::string reason_of(const std::exception& e) {
  const auto* error = dynamic_cast<const Error*>(&e);
  return error ? error->message() : e.what();
}
}  // namespace

std::vector<int64_t> split_rows(int64_t rows, int parts) {
  parts = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(parts, rows)));
  std::vector<int64_t> out(static_cast<size_t>(parts), rows / parts);
  for (int64_t i = 0; i < rows % parts; ++i) ++out[static_cast<size_t>(i)];
  return out;
}

struct Engine::Placed {
  Mesh mesh;        // {stage, model} over all ranks
  Mesh stage_mesh;  // this rank's stage
  int stage = 0, stages = 1, model_coordinate = 0;
  std::vector<int64_t> input_widths;  // of each stage
  std::unique_ptr<StageModule> module;
};

Engine::Engine(std::vector<ServableDefinition> servables, const Device& device, EngineOptions options)
    : servables_(std::move(servables)), device_(device), options_(options), channel_(Channel::world()) {
  World& world = World::get();
  channel_.set_timeout(options_.result_timeout);
  for (ServableDefinition& s : servables_) {
    complete_servable(s);
    MESHRT_CHECK_ARG(s.rank_size == world.size(), "model '", s.name, "' needs rank_size = ", s.rank_size,
                     " ranks but this job has ", world.size(), ": start it with mpirun -np ", s.rank_size);
  }
  for (const ServableDefinition& s : servables_) placed_.push_back(place(s));
  failures_.resize(servables_.size());
  generations_.assign(servables_.size(), 1);
}

// Collective over all ranks (the mesh's communicators are new duplicates of the world).
std::unique_ptr<Engine::Placed> Engine::place(const ServableDefinition& s) {
  auto p = std::make_unique<Placed>();
  p->mesh = Mesh({{"stage", s.stage_size}, {"model", s.rank_size / s.stage_size}}, device_);
  if (options_.comm_timeout.count() > 0) p->mesh.set_timeout(options_.comm_timeout);
  // A stalled rank must not leave its peers' threads inside MPI: the model is
  // given up at the deadline, and later rebuilt (try_recover).
  p->mesh.set_abortable_collectives(true);
  p->stage_mesh = p->mesh.slice("stage");
  p->stage = p->mesh.coordinate("stage");
  p->stages = s.stage_size;
  p->model_coordinate = p->mesh.coordinate("model");
  p->input_widths.push_back(s.input.shape[1]);
  for (size_t i = 0; i + 1 < s.stages.size(); ++i) p->input_widths.push_back(s.stages[i].output_width);
  p->module = s.stages[static_cast<size_t>(p->stage)].build(p->stage_mesh);
  return p;
}

void Engine::rebuild(int index, uint64_t generation) {
  auto i = static_cast<size_t>(index);
  placed_[i].reset();  // the old communicators (aborted) go first
  placed_[i] = place(servables_[i]);
  failures_[i].clear();
  generations_[i] = generation;
}

void Engine::mark_failed(int index, const std::string& reason) {
  std::string& failure = failures_[static_cast<size_t>(index)];
  if (!failure.empty()) return;
  failure = reason;
  placed_[static_cast<size_t>(index)]->mesh.abort("model '" + servables_[static_cast<size_t>(index)].name +
                                                  "' failed: " + reason);
}

Engine::~Engine() = default;

int Engine::find(const std::string& name, const std::string& version) const {
  for (size_t i = 0; i < servables_.size(); ++i) {
    if (servables_[i].name == name && (version.empty() || servables_[i].version == version)) return static_cast<int>(i);
  }
  return -1;
}

HostTensor Engine::run_local(int index, uint64_t batch_id, const std::vector<int64_t>& micro_rows, const HostTensor& input) {
  const ServableDefinition& def = servables_[static_cast<size_t>(index)];
  Placed& p = *placed_[static_cast<size_t>(index)];
  const Communicator& across = p.mesh.communicator("stage");  // rank there = stage index
  bool first = p.stage == 0, last = p.stage == p.stages - 1;
  int64_t width = p.input_widths[static_cast<size_t>(p.stage)];
  std::vector<Work> sends;
  std::vector<HostTensor> outputs;
  int64_t row = 0;
  for (int64_t rows : micro_rows) {
    DTensor x;
    if (first) {
      x = def.hooks.client_preprocessing(
          DTensor::from_global(input.narrow(row, rows), p.stage_mesh, Layout::replicated(2), def.input.name));
    } else {
      DeviceTensor buffer = DeviceTensor::empty({rows, width}, def.input.dtype, device_);
      across.recv(buffer, p.stage - 1).wait();
      x = DTensor(buffer, Shape{rows, width}, p.stage_mesh, Layout::replicated(2), "activation");
    }
    DTensor y = p.module->forward(x);
    if (!y.layout().is_replicated()) y = sharding::redistribute(y, Layout::replicated(y.ndim()));
    if (!last) {
      sends.push_back(across.send(y.local(), p.stage + 1));  // overlaps the next micro-batch
    } else {
      outputs.push_back(def.hooks.distributed_postprocessing(def.hooks.client_postprocessing(y)));
    }
    row += rows;
  }
  for (const Work& w : sends) w.wait();
  // A collective that failed on its stream (its deadline passed with nobody
  // waiting on it) left garbage behind: never hand that on as a result.
  std::string failed = p.mesh.failure();
  MESHRT_CHECK(failed.empty(), ErrorKind::kUnavailable, failed);
  if (!last || p.model_coordinate != 0) return HostTensor();
  HostTensor result = concat_rows(outputs);  // the micro-batches one after another
  if (World::get().rank() != 0) {
    channel_.send(std::to_string(batch_id), 0, kResultTag);
    channel_.send(result, 0, kResultTag);
    return HostTensor();
  }
  return result;
}

HostTensor Engine::await_result(int index, uint64_t batch_id) {
  const Placed& p = *placed_[static_cast<size_t>(index)];
  int from = p.mesh.rank_at({p.stages - 1, 0});
  auto deadline = std::chrono::steady_clock::now() + options_.result_timeout;
  PollPause pause(std::chrono::microseconds(200));
  for (;;) {
    if (channel_.probe(Channel::kAnySource, kErrorTag)) {
      int rank = -1;
      std::string message = channel_.recv_string(Channel::kAnySource, kErrorTag, &rank);
      std::istringstream in(message);
      uint64_t id = 0;
      in >> id;
      if (id == batch_id) {
        throw Error(ErrorKind::kUnavailable, detail::cat(World::get().describe_rank(rank), " failed: ",
                                                         message.substr(message.find(' ') + 1)));
      }
      continue;  // a stale report of an earlier batch
    }
    if (channel_.probe(from, kResultTag)) {
      uint64_t id = std::stoull(channel_.recv_string(from, kResultTag));
      HostTensor result = channel_.recv_tensor(from, kResultTag);
      if (id == batch_id) return result;
      continue;
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      // Which ranks are gone (stopped, lost) rather than busy?
      World& world = World::get();
      std::vector<int> all;
      for (int r = 0; r < world.size(); ++r) all.push_back(r);
      std::string silent;
      for (int r : world.unanswering(all, std::chrono::milliseconds(1000))) {
        silent += (silent.empty() ? "" : ", ") + world.describe_rank(r);
      }
      throw Error(ErrorKind::kUnavailable,
                  detail::cat("the result of batch ", batch_id, " of '", servables_[static_cast<size_t>(index)].name,
                              "' did not come from ", world.describe_rank(from), " within ",
                              options_.result_timeout.count(), " ms: ",
                              silent.empty() ? "every rank answers, so a worker is stuck in its work"
                                             : silent + " did not answer (stopped or lost)"));
    }
    pause();
  }
}

HostTensor Engine::run(int index, const HostTensor& batch, int micro_batches) {
  World& world = World::get();
  MESHRT_CHECK(world.rank() == 0, ErrorKind::kInternal, "Engine::run is for rank 0");
  MESHRT_CHECK(!stopped_, ErrorKind::kUnavailable, "the engine was stopped");
  const ServableDefinition& def = servables_.at(static_cast<size_t>(index));
  MESHRT_CHECK(failure(index).empty(), ErrorKind::kUnavailable, "model '", def.name, "' failed earlier: ", failure(index));
  MESHRT_CHECK_SHAPE(batch.ndim() == 2 && batch.dim(1) == def.input.shape[1] && batch.dtype() == def.input.dtype,
                     "model '", def.name, "' takes ", kserve_datatype(def.input.dtype), "[-1, ", def.input.shape[1],
                     "], got ", batch.description());
  uint64_t id = next_batch_++;
  std::vector<int64_t> micro = split_rows(batch.dim(0), micro_batches);
  std::ostringstream command;
  command << "run " << index << " " << id << " " << generation(index);
  for (int64_t r : micro) command << " " << r;
  HostTensor input = def.hooks.distributed_preprocessing(batch);
  const Placed& p = *placed_[static_cast<size_t>(index)];
  try {
    for (int r = 1; r < world.size(); ++r) {
      channel_.send(command.str(), r, kCommandTag);
      if (p.mesh.coordinates(r)[0] == 0) channel_.send(input, r, kInputTag);  // the first stage's ranks
    }
    HostTensor result = run_local(index, id, micro, input);
    return result.defined() ? result : await_result(index, id);
  } catch (const std::exception& e) {
    // The ranks may now be at different points of this batch: give the model up,
    // and tell the others, so a rank that comes back late drops this generation's
    // batches still waiting for it instead of running them into aborted peers.
    std::string reason = reason_of(e);
    mark_failed(index, reason);
    for (int r = 1; r < world.size(); ++r) {
      try {
        channel_.send(detail::cat("fail ", index, " ", generation(index)), r, kCommandTag);
      } catch (const std::exception&) {
        // a lost rank cannot be told; recovery asks every rank first anyway
      }
    }
    throw Error(ErrorKind::kUnavailable, detail::cat("batch ", id, " of model '", def.name, "' failed: ", reason));
  }
}

std::string Engine::try_recover(int index, std::chrono::milliseconds within) {
  World& world = World::get();
  MESHRT_CHECK(world.rank() == 0, ErrorKind::kInternal, "Engine::try_recover is for rank 0");
  MESHRT_CHECK(!stopped_, ErrorKind::kUnavailable, "the engine was stopped");
  uint64_t token = next_ping_++;
  std::vector<bool> answered(static_cast<size_t>(world.size()), false);
  answered[0] = true;
  for (int r = 1; r < world.size(); ++r) channel_.send(detail::cat("ping ", token), r, kCommandTag);
  std::string expected = detail::cat("pong ", token);
  auto deadline = std::chrono::steady_clock::now() + within;
  PollPause pause(std::chrono::microseconds(500));
  while (std::chrono::steady_clock::now() < deadline &&
         !std::all_of(answered.begin(), answered.end(), [](bool a) { return a; })) {
    if (channel_.probe(Channel::kAnySource, kPongTag)) {
      int from = -1;
      std::string pong = channel_.recv_string(Channel::kAnySource, kPongTag, &from);
      if (pong == expected) answered[static_cast<size_t>(from)] = true;  // older tokens are dropped
      continue;
    }
    pause();
  }
  std::string missing;
  for (int r = 1; r < world.size(); ++r) {
    if (!answered[static_cast<size_t>(r)]) missing += (missing.empty() ? "" : ", ") + world.describe_rank(r);
  }
  if (!missing.empty()) return missing + " did not answer within " + std::to_string(within.count()) + " ms";
  uint64_t next = generation(index) + 1;
  for (int r = 1; r < world.size(); ++r) channel_.send(detail::cat("rebuild ", index, " ", next), r, kCommandTag);
  rebuild(index, next);
  return "";
}

void Engine::handle_command(const std::string& command) {
  std::istringstream in(command);
  std::string verb;
  in >> verb;
  if (verb == "ping") {
    std::string token;
    in >> token;
    channel_.send("pong " + token, 0, kPongTag);
    return;
  }
  int index = -1;
  uint64_t generation = 0;
  if (verb == "fail" || verb == "rebuild") {
    in >> index >> generation;
    MESHRT_CHECK(index >= 0 && index < servable_count(), ErrorKind::kInternal, "unknown engine command '", command, "'");
    if (verb == "rebuild") {
      rebuild(index, generation);
    } else if (generation == this->generation(index)) {
      mark_failed(index, "rank 0 gave the model up (generation " + std::to_string(generation) + ")");
    }
    return;
  }
  uint64_t id = 0;
  in >> index >> id >> generation;
  std::vector<int64_t> micro;
  for (int64_t r; in >> r;) micro.push_back(r);
  try {
    MESHRT_CHECK(verb == "run" && index >= 0 && index < servable_count() && !micro.empty(), ErrorKind::kInternal,
                 "unknown engine command '", command, "'");
    HostTensor input;
    if (placed_[static_cast<size_t>(index)]->stage == 0) input = channel_.recv_tensor(0, kInputTag);
    // A batch of an older generation, or of one rank 0 already gave up: its
    // peers will not run it. Dropped (rank 0 has answered it already).
    if (generation != this->generation(index) || !failure(index).empty()) return;
    run_local(index, id, micro, input);
  } catch (const std::exception& e) {
    std::string reason = reason_of(e);
    std::fprintf(stderr, "meshrt-serve: %s: batch %llu failed: %s\n", World::get().describe_rank(World::get().rank()).c_str(),
                 static_cast<unsigned long long>(id), reason.c_str());
    if (index >= 0 && index < servable_count()) mark_failed(index, reason);
    channel_.send(std::to_string(id) + " " + reason, 0, kErrorTag);
  }
}

void Engine::serve() {
  World& world = World::get();
  MESHRT_CHECK(world.rank() != 0, ErrorKind::kInternal, "Engine::serve is for the ranks other than 0");
  for (;;) {
    channel_.set_timeout(std::chrono::hours(24 * 365));  // idle for as long as the server runs
    std::deque<std::string> commands{channel_.recv_string(0, kCommandTag)};
    channel_.set_timeout(options_.result_timeout);
    // Everything already waiting (a rank that was stopped finds a backlog): the
    // failures first, so that no stale batch enters a collective its peers
    // abandoned (a blocking MPI collective cannot be taken back).
    while (channel_.probe(0, kCommandTag)) commands.push_back(channel_.recv_string(0, kCommandTag));
    for (const std::string& c : commands) {
      if (c.rfind("fail ", 0) == 0) handle_command(c);
    }
    for (const std::string& c : commands) {
      if (c == "stop") return;
      handle_command(c);
    }
  }
}

void Engine::stop() {
  World& world = World::get();
  if (stopped_ || world.rank() != 0) return;
  stopped_ = true;
  for (int r = 1; r < world.size(); ++r) channel_.send(std::string("stop"), r, kCommandTag);
}

}  // namespace meshrt::serving

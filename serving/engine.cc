#include "serving/engine.h"

#include <algorithm>
#include <cstdio>
#include <deque>
#include <fstream>
#include <future>
#include <sstream>

#include <nlohmann/json.hpp>

#include "comm/world.h"
#include "device/log.h"
#include "device/poll.h"
#include "sharding/redistribute.h"

namespace meshrt::serving {

using sharding::Layout;

namespace {
// Channel tags of the engine's messages.
// Commands (rank 0 -> all), each naming the servable's generation where it has one:
//   run <index> <batch id> <generation> <micro-batches> <rows of each>... <dims> <extent of each>...
//       <params> <each>...
//                                  (the input's extents after its rows axis; the
//                                  first stage's ranks then take part in the
//                                  broadcast of each micro-batch from rank 0)
//   fail <index> <generation>      rank 0 gave the servable up (a batch failed)
//   ping <token>                   answer "pong <token>" (recovery)
//   rebuild <index> <generation>   new communicators for the servable (recovery)
//   stop
constexpr int kCommandTag = 1000;
constexpr int kResultTag = 1002;   // last stage -> rank 0: "<batch id> <forward seconds>" then the result
constexpr int kErrorTag = 1003;    // any rank -> rank 0: "<batch id> <message>"
constexpr int kPongTag = 1004;     // any rank -> rank 0: "pong <token>"
constexpr int kTimingTag = 1005;   // a middle stage's first rank -> rank 0: "<batch id> <forward seconds>"
// At most this many trace events are kept per rank (the oldest are kept).
constexpr size_t kMaxTraceEvents = 1000000;
constexpr int kEngineTid = 1000;  // the trace's row of rank 0's "batch" events

int64_t wall_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}
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
  int stage = 0, stages = 1, model_coordinate = 0, tensor_parallel = 1;
  int result_rank = 0;                // world rank of the last stage's first rank
  std::unique_ptr<StageModule> module;
  // Activations this rank sent to the next stage and not yet seen taken (they
  // keep their buffers alive; the next batch does not wait for them).
  std::deque<Work> sends;
};

struct Engine::Pending {
  int index = 0;
  BatchDone done;
  std::chrono::steady_clock::time_point started, deadline;
  double forward_seconds = 0;
  int64_t start_us = 0, rows = 0;
  int micro_batches = 0;
  int result_rank = 0;  // the world rank its result comes from
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
  if (world.rank() == 0) collector_ = std::thread([this] { collect(); });
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
  p->tensor_parallel = s.rank_size / s.stage_size;
  p->result_rank = p->mesh.rank_at({p->stages - 1, 0});
  p->module = s.stages[static_cast<size_t>(p->stage)].build(p->stage_mesh);
  return p;
}

void Engine::rebuild(int index, uint64_t generation) {
  auto i = static_cast<size_t>(index);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    placed_[i].reset();  // the old communicators (aborted) go first
  }
  std::unique_ptr<Placed> placed = place(servables_[i]);
  std::lock_guard<std::mutex> lock(mutex_);
  placed_[i] = std::move(placed);
  failures_[i].clear();
  generations_[i] = generation;
}

void Engine::mark_failed(int index, const std::string& reason) {
  std::lock_guard<std::mutex> lock(mutex_);
  std::string& failure = failures_[static_cast<size_t>(index)];
  if (!failure.empty()) return;
  failure = reason;
  placed_[static_cast<size_t>(index)]->mesh.abort("model '" + servables_[static_cast<size_t>(index)].name +
                                                  "' failed: " + reason);
}

std::string Engine::failure(int index) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return failures_.at(static_cast<size_t>(index));
}

uint64_t Engine::generation(int index) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return generations_.at(static_cast<size_t>(index));
}

Engine::~Engine() {
  if (collector_.joinable()) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      collector_stop_ = true;
    }
    idle_cv_.notify_all();
    collector_.join();
  }
  try {
    write_trace();
  } catch (const std::exception& e) {
    log::error(std::string("writing the engine's trace failed: ") + e.what());
  }
}

int Engine::find(const std::string& name, const std::string& version) const {
  // "10" after "9": longer digit strings are larger (version folders have no leading zeros).
  auto later = [](const std::string& a, const std::string& b) {
    bool numeric = a.find_first_not_of("0123456789") == std::string::npos &&
                   b.find_first_not_of("0123456789") == std::string::npos;
    if (numeric && a.size() != b.size()) return a.size() > b.size();
    return a > b;
  };
  int found = -1;
  for (size_t i = 0; i < servables_.size(); ++i) {
    const ServableDefinition& s = servables_[i];
    if (s.name != name) continue;
    if (!version.empty()) {
      if (s.version == version) return static_cast<int>(i);
      continue;
    }
    if (found < 0 || later(s.version, servables_[static_cast<size_t>(found)].version)) found = static_cast<int>(i);
  }
  return found;
}

HostTensor Engine::run_local(int index, uint64_t batch_id, const std::vector<int64_t>& micro_rows,
                             const std::vector<int64_t>& input_dims, const BatchParams& params, const HostTensor& input,
                             double* forward_seconds) {
  const ServableDefinition& def = servables_[static_cast<size_t>(index)];
  Placed& p = *placed_[static_cast<size_t>(index)];
  const Communicator& across = p.mesh.communicator("stage");       // rank there = stage index
  const Communicator& within = p.stage_mesh.communicator("model");  // rank there = model coordinate
  bool first = p.stage == 0, last = p.stage == p.stages - 1;
  // What enters this stage and what leaves it (every rank computes them from the command).
  std::vector<ActivationSpec> in_specs = stage_inputs(def, p.stage, input_dims, params);
  std::vector<ActivationSpec> out_specs = def.stages[static_cast<size_t>(p.stage)].outputs(input_dims, params);
  auto shape_of = [](int64_t rows, const std::vector<int64_t>& dims) {
    std::vector<int64_t> shape{rows};
    shape.insert(shape.end(), dims.begin(), dims.end());
    return Shape(shape);
  };
  while (!p.sends.empty() && p.sends.front().is_completed()) p.sends.pop_front();
  int64_t start_us = wall_us();
  std::vector<HostTensor> outputs;
  double forward = 0;
  int64_t row = 0, total_rows = 0;
  for (int64_t rows : micro_rows) {
    std::vector<DTensor> xs;
    if (first) {
      // Rank 0 holds the batch; the stage's other ranks get it by broadcast.
      Shape shape = shape_of(rows, input_dims);
      DeviceTensor buffer = p.model_coordinate == 0 ? to_device(input.narrow(row, rows), device_)
                                                    : DeviceTensor::empty(shape, def.input.dtype, device_);
      if (p.tensor_parallel > 1) within.broadcast(buffer, 0).wait();
      xs.push_back(def.hooks.client_preprocessing(
          DTensor(buffer, shape, p.stage_mesh, Layout::replicated(shape.ndim()), def.input.name)));
    } else {
      // The previous stage's tensors, in order (point-to-point messages between
      // two ranks arrive in the order they were sent).
      for (const ActivationSpec& spec : in_specs) {
        Shape shape = shape_of(rows, spec.dims);
        DeviceTensor buffer = DeviceTensor::empty(shape, spec.dtype, device_);
        across.recv(buffer, p.stage - 1).wait();
        xs.emplace_back(buffer, shape, p.stage_mesh, Layout::replicated(shape.ndim()), "activation");
      }
    }
    auto began = std::chrono::steady_clock::now();
    std::vector<DTensor> ys = p.module->forward_tensors(xs, params);
    MESHRT_CHECK(ys.size() == out_specs.size(), ErrorKind::kInternal, "stage ", p.stage, " of model '", def.name,
                 "' returned ", ys.size(), " tensors, its definition says ", out_specs.size());
    for (size_t k = 0; k < ys.size(); ++k) {
      DTensor& y = ys[k];
      Shape expected = shape_of(rows, out_specs[k].dims);
      MESHRT_CHECK(y.global_shape() == expected && y.dtype() == out_specs[k].dtype, ErrorKind::kInternal, "stage ",
                   p.stage, " of model '", def.name, "' returned ", y.description(), " as its tensor ", k,
                   ", its definition says ", to_string(out_specs[k].dtype), expected.to_string());
      if (!y.layout().is_replicated()) y = sharding::redistribute(y, Layout::replicated(y.ndim()));
    }
    for (DTensor& y : ys) y.block_until_ready();  // ops are asynchronous: the forward time is the computation's
    if (!last) {
      forward += seconds_since(began);
      for (DTensor& y : ys) p.sends.push_back(across.send(y.local(), p.stage + 1));  // overlaps the next micro-batch
    } else {
      outputs.push_back(def.hooks.distributed_postprocessing(def.hooks.client_postprocessing(ys.at(0))));
      forward += seconds_since(began);
    }
    row += rows;
    total_rows += rows;
  }
  // A collective that failed on its stream (its deadline passed with nobody
  // waiting on it) left garbage behind: never hand that on as a result.
  std::string failed = p.mesh.failure();
  MESHRT_CHECK(failed.empty(), ErrorKind::kUnavailable, failed);
  *forward_seconds = forward;
  if (!options_.trace_file.empty()) {
    record({"stage", def.name, batch_id, p.stage, World::get().rank(), static_cast<int>(micro_rows.size()), total_rows,
            start_us, wall_us()});
  }
  if (!last || p.model_coordinate != 0) return HostTensor();
  return concat_rows(outputs);  // the micro-batches one after another
}

void Engine::start(int index, const HostTensor& batch, int micro_batches, BatchDone done, const BatchParams& params) {
  std::lock_guard<std::mutex> starting(start_mutex_);
  World& world = World::get();
  MESHRT_CHECK(world.rank() == 0, ErrorKind::kInternal, "Engine::start is for rank 0");
  MESHRT_CHECK(!stopped_, ErrorKind::kUnavailable, "the engine was stopped");
  const ServableDefinition& def = servables_.at(static_cast<size_t>(index));
  std::string failed = failure(index);
  MESHRT_CHECK(failed.empty(), ErrorKind::kUnavailable, "model '", def.name, "' failed earlier: ", failed);
  std::vector<int64_t> dims(batch.shape().dims().begin() + (batch.ndim() > 0 ? 1 : 0), batch.shape().dims().end());
  // A batch with parameters is the servable's own kind (a generation step): its stages check it.
  MESHRT_CHECK_SHAPE(batch.ndim() >= 1 && batch.dim(0) >= 1 && (!params.empty() || fits_spec(def.input, dims)) &&
                         batch.dtype() == def.input.dtype,
                     "model '", def.name, "' takes ", kserve_datatype(def.input.dtype), shape_text(def.input.shape),
                     " (-1: any extent), got ", batch.description());
  uint64_t id = next_batch_++;
  std::vector<int64_t> micro = split_rows(batch.dim(0), micro_batches);
  std::string command = detail::cat("run ", index, " ", id, " ", generation(index), " ", micro.size());
  auto append = [&command](auto number) {
    command += ' ';
    command += std::to_string(number);
  };
  for (int64_t r : micro) append(r);
  append(dims.size());
  for (int64_t d : dims) append(d);
  append(params.size());
  for (int64_t v : params) append(v);
  HostTensor input = def.hooks.distributed_preprocessing(batch);
  auto pending = std::make_unique<Pending>();
  pending->index = index;
  pending->done = std::move(done);
  pending->started = std::chrono::steady_clock::now();
  pending->deadline = pending->started + options_.result_timeout;
  pending->start_us = wall_us();
  pending->rows = batch.dim(0);
  pending->micro_batches = static_cast<int>(micro.size());
  pending->result_rank = placed_[static_cast<size_t>(index)]->result_rank;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    pending_[id] = std::move(pending);
  }
  idle_cv_.notify_all();  // the result thread starts listening
  try {
    for (int r = 1; r < world.size(); ++r) channel_.send(command, r, kCommandTag);
    double forward = 0;
    HostTensor result = run_local(index, id, micro, dims, params, input, &forward);
    add_forward_time(id, forward);
    if (result.defined()) finish(id, std::move(result), nullptr);
  } catch (const std::exception& e) {
    fail_model(index, reason_of(e), id);
  }
}

HostTensor Engine::run(int index, const HostTensor& batch, int micro_batches, BatchReport* report,
                       const BatchParams& params) {
  std::promise<HostTensor> promise;
  std::future<HostTensor> future = promise.get_future();
  BatchReport got;
  start(index, batch, micro_batches, [&](HostTensor result, std::exception_ptr error, const BatchReport& r) {
    got = r;
    if (error) {
      promise.set_exception(error);
    } else {
      promise.set_value(std::move(result));
    }
  }, params);
  HostTensor result = future.get();
  if (report) *report = got;
  return result;
}

int Engine::in_flight(int index) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return static_cast<int>(std::count_if(pending_.begin(), pending_.end(),
                                        [&](const auto& p) { return p.second->index == index; }));
}

void Engine::wait_idle() const {
  std::unique_lock<std::mutex> lock(mutex_);
  // Idle once every batch's done callback has returned, not only left pending_.
  idle_cv_.wait(lock, [&] { return pending_.empty() && completing_ == 0; });
}

void Engine::finish(uint64_t id, HostTensor result, std::exception_ptr error) {
  std::unique_ptr<Pending> p;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = pending_.find(id);
    if (it == pending_.end()) return;  // failed already (with its model)
    p = std::move(it->second);
    pending_.erase(it);
    ++completing_;
  }
  BatchReport report{id, seconds_since(p->started), p->forward_seconds};
  if (!options_.trace_file.empty()) {
    record({"batch", servables_[static_cast<size_t>(p->index)].name, id, 0, 0, p->micro_batches, p->rows, p->start_us,
            wall_us()});
  }
  try {
    p->done(std::move(result), error, report);
  } catch (const std::exception& e) {
    log::error(detail::cat("completing batch ", id, " failed: ", e.what()));
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    --completing_;
  }
  idle_cv_.notify_all();
}

void Engine::fail_model(int index, const std::string& reason, uint64_t batch_id) {
  // The ranks may now be at different points of this batch: give the model up,
  // and tell the others, so a rank that comes back late drops this generation's
  // batches still waiting for it instead of running them into aborted peers.
  mark_failed(index, reason);
  World& world = World::get();
  uint64_t gen = generation(index);
  for (int r = 1; r < world.size(); ++r) {
    try {
      channel_.send(detail::cat("fail ", index, " ", gen), r, kCommandTag);
    } catch (const std::exception&) {
      // a lost rank cannot be told; recovery asks every rank first anyway
    }
  }
  const std::string& name = servables_[static_cast<size_t>(index)].name;
  std::vector<uint64_t> ids;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& [id, p] : pending_) {
      if (p->index == index) ids.push_back(id);
    }
  }
  for (uint64_t id : ids) {
    std::string why = id == batch_id ? reason : detail::cat("batch ", batch_id, " failed before it: ", reason);
    finish(id, HostTensor(),
           std::make_exception_ptr(Error(ErrorKind::kUnavailable,
                                         detail::cat("batch ", id, " of model '", name, "' failed: ", why))));
  }
}

void Engine::add_forward_time(uint64_t id, double seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = pending_.find(id);
  if (it != pending_.end()) it->second->forward_seconds += seconds;  // else: failed already
}

uint64_t Engine::add_forward_time(const std::string& message) {
  std::istringstream in(message);
  uint64_t id = 0;
  double seconds = 0;
  in >> id >> seconds;
  add_forward_time(id, seconds);
  return id;
}

void Engine::collect() {
  // Waits for results with the pause of a batch that is running (it is not idle
  // while batches are in flight); parks on idle_cv_ when none is.
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      idle_cv_.wait(lock, [&] { return collector_stop_ || !pending_.empty(); });
      if (collector_stop_) break;
    }
    // A batch is running: yield for 1 ms, then sleep at most 100 us.
    auto running = [] { return PollPause(std::chrono::microseconds(100), PollPause::kLongestSpin); };
    PollPause pause = running();
    for (;;) {
      bool got = false;
      // Stage times first: a middle stage sends its time before the result exists.
      while (auto from = channel_.probe(Channel::kAnySource, kTimingTag)) {
        add_forward_time(channel_.recv_string(*from, kTimingTag));
        got = true;
      }
      if (auto from = channel_.probe(Channel::kAnySource, kErrorTag)) {
        std::string message = channel_.recv_string(*from, kErrorTag);
        std::istringstream in(message);
        uint64_t id = 0;
        in >> id;
        int index = -1;
        {
          std::lock_guard<std::mutex> lock(mutex_);
          auto it = pending_.find(id);
          if (it != pending_.end()) index = it->second->index;
        }
        // A report of a batch no longer in flight (failed with its model) is stale.
        if (index >= 0) {
          fail_model(index, detail::cat(World::get().describe_rank(*from), " failed: ", message.substr(message.find(' ') + 1)),
                     id);
        }
        got = true;
      }
      if (auto from = channel_.probe(Channel::kAnySource, kResultTag)) {
        uint64_t id = add_forward_time(channel_.recv_string(*from, kResultTag));
        finish(id, channel_.recv_tensor(*from, kResultTag), nullptr);
        got = true;
      }
      // The oldest batch past its deadline: which ranks are gone rather than busy?
      uint64_t late = 0;
      int late_index = -1, from = 0;
      bool empty = false, stop = false;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        auto now = std::chrono::steady_clock::now();
        for (const auto& [id, p] : pending_) {
          if (now >= p->deadline) {
            late = id;
            late_index = p->index;
            from = p->result_rank;
            break;
          }
        }
        empty = pending_.empty();
        stop = collector_stop_;
      }
      if (late_index >= 0) {
        World& world = World::get();
        std::vector<int> all;
        for (int r = 0; r < world.size(); ++r) all.push_back(r);
        std::string silent;
        for (int r : world.unanswering(all, std::chrono::milliseconds(1000))) {
          silent += (silent.empty() ? "" : ", ") + world.describe_rank(r);
        }
        fail_model(late_index,
                   detail::cat("the result of batch ", late, " of '", servables_[static_cast<size_t>(late_index)].name,
                               "' did not come from ", world.describe_rank(from), " within ",
                               options_.result_timeout.count(), " ms: ",
                               silent.empty() ? "every rank answers, so a worker is stuck in its work"
                                              : silent + " did not answer (stopped or lost)"),
                   late);
        continue;
      }
      if (empty || stop) break;
      if (got) {
        pause = running();  // something came: the next may come soon
      } else {
        pause();
      }
    }
  }
  // The engine goes away: whatever is still in flight will not be answered.
  std::vector<std::pair<uint64_t, int>> left;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& [id, p] : pending_) left.emplace_back(id, p->index);
  }
  for (const auto& [id, index] : left) {
    finish(id, HostTensor(),
           std::make_exception_ptr(Error(ErrorKind::kUnavailable,
                                         detail::cat("batch ", id, " of model '", servables_[static_cast<size_t>(index)].name,
                                                     "' was in flight when the engine was destroyed"))));
  }
}

std::string Engine::try_recover(int index, std::chrono::milliseconds within) {
  std::lock_guard<std::mutex> starting(start_mutex_);
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
  size_t count = 0;
  in >> index >> id >> generation >> count;
  std::vector<int64_t> micro(count), dims;
  for (int64_t& r : micro) in >> r;
  in >> count;
  dims.resize(in.fail() ? 0 : count);
  for (int64_t& d : dims) in >> d;
  BatchParams params;
  in >> count;
  params.resize(in.fail() ? 0 : count);
  for (int64_t& v : params) in >> v;
  try {
    MESHRT_CHECK(verb == "run" && !in.fail() && index >= 0 && index < servable_count() && !micro.empty(),
                 ErrorKind::kInternal, "unknown engine command '", command, "'");
    // A batch of an older generation, or of one rank 0 already gave up: its
    // peers will not run it. Dropped (rank 0 has answered it already).
    if (generation != this->generation(index) || !failure(index).empty()) return;
    double forward = 0;
    HostTensor result = run_local(index, id, micro, dims, params, HostTensor(), &forward);
    const Placed& p = *placed_[static_cast<size_t>(index)];
    if (p.model_coordinate != 0) return;
    // "%.9f": the stage's time to the nanosecond, whatever the locale.
    char timing[64];
    std::snprintf(timing, sizeof timing, "%llu %.9f", static_cast<unsigned long long>(id), forward);
    if (p.stage == p.stages - 1) {
      channel_.send(std::string(timing), 0, kResultTag);
      channel_.send(result, 0, kResultTag);
    } else {
      channel_.send(std::string(timing), 0, kTimingTag);
    }
  } catch (const std::exception& e) {
    std::string reason = reason_of(e);
    log::error(detail::cat(World::get().describe_rank(World::get().rank()), ": batch ", id, " failed: ", reason));
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

void Engine::record(TraceEvent event) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (trace_.size() < kMaxTraceEvents) trace_.push_back(std::move(event));
}

std::vector<TraceEvent> Engine::trace() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return trace_;
}

void Engine::write_trace() const {
  if (options_.trace_file.empty()) return;
  int rank = World::get().rank();
  nlohmann::json events = nlohmann::json::array();
  for (const TraceEvent& e : trace()) {
    std::string name = e.name == "batch" ? detail::cat(e.model, " batch ", e.batch_id)
                                         : detail::cat(e.model, " batch ", e.batch_id, " stage ", e.stage);
    events.push_back({{"name", name},
                      {"cat", e.name},
                      {"ph", "X"},
                      {"ts", e.start_us},
                      {"dur", e.end_us - e.start_us},
                      {"pid", e.rank},
                      {"tid", e.name == "batch" ? kEngineTid : e.stage},
                      {"args",
                       {{"model", e.model},
                        {"batch", e.batch_id},
                        {"stage", e.stage},
                        {"rows", e.rows},
                        {"micro_batches", e.micro_batches}}}});
  }
  // Names for the rows: the process is the rank, a thread each stage (and the engine on rank 0).
  events.push_back({{"name", "process_name"}, {"ph", "M"}, {"pid", rank}, {"args", {{"name", detail::cat("rank ", rank)}}}});
  for (const auto& p : placed_) {
    if (!p) continue;
    events.push_back({{"name", "thread_name"}, {"ph", "M"}, {"pid", rank}, {"tid", p->stage},
                      {"args", {{"name", detail::cat("stage ", p->stage)}}}});
  }
  if (rank == 0) {
    events.push_back({{"name", "thread_name"}, {"ph", "M"}, {"pid", rank}, {"tid", kEngineTid},
                      {"args", {{"name", "engine (start to result)"}}}});
  }
  std::string path = detail::cat(options_.trace_file, ".", rank, ".json");
  std::ofstream out(path);
  out << nlohmann::json{{"traceEvents", events}, {"displayTimeUnit", "ms"}}.dump() << "\n";
  MESHRT_CHECK(out.good(), ErrorKind::kInvalidArgument, "cannot write the engine trace to '", path, "'");
}

}  // namespace meshrt::serving

#include "serving/engine.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <charconv>
#include <cstdio>
#include <deque>
#include <fstream>
#include <future>
#include <set>
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
//   rebuild <index> <generation> <attempt>
//                                  new communicators for the servable (recovery);
//                                  every rank answers "rebuilt <index> <generation>
//                                  <attempt> ok" (or why not) on kRebuildTag
//   load <sequence> <n> (<rank_size> <stage_size> <first rank> <version>)*n <request>
//                                  add the n servables loader(request) gives, placed
//                                  so: every rank makes their communicators, one
//                                  after another, then builds its stages, then
//                                  answers "<sequence> ok" (or why not) on kLoadTag
//   drop <index>                   unload the servable (every rank)
//   stop
// "run" and "fail" go to the ranks of the servable's placement, the others to every rank.
constexpr int kCommandTag = 1000;
constexpr int kResultTag = 1002;   // last stage -> rank 0: "<batch id> <forward seconds>" then the result
constexpr int kErrorTag = 1003;    // any rank -> rank 0: "<batch id> <message>"
constexpr int kPongTag = 1004;     // any rank -> rank 0: "pong <token>"
constexpr int kTimingTag = 1005;   // a middle stage's first rank -> rank 0: "<batch id> <forward seconds>"
constexpr int kInputTag = 1006;    // rank 0 -> a placement's first rank (rank 0 not in it): "<batch id>", the batch
constexpr int kLoadTag = 1007;     // any rank -> rank 0: "<sequence> ok", or "<sequence> <why not>"
constexpr int kRebuildTag = 1008;  // any rank -> rank 0: "rebuilt <index> <generation> ok", or "... <why not>"
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
  Mesh mesh;        // {stage, model} over the placement's ranks
  Mesh stage_mesh;  // this rank's stage
  int stage = 0, stages = 1, model_coordinate = 0, tensor_parallel = 1;
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

struct Engine::Slot {
  ServableDefinition def;
  int first_rank = 0;  // placed on the world ranks [first_rank, first_rank + def.rank_size)
  std::atomic<ServableState> state{ServableState::kLoading};
  // The rest under mutex_:
  std::unique_ptr<Placed> placed;  // null off the placement, and once unloaded
  std::string failure;             // "" while it works
  std::string broken;              // another rank: why its rebuild failed here (its runs fail, saying so)
  uint64_t generation = 1;         // 1 + recoveries

  // The world rank of the last stage's first rank (the mesh is row-major {stage, model}).
  int result_rank() const { return first_rank + (def.stage_size - 1) * (def.rank_size / def.stage_size); }
  bool holds(int rank) const { return rank >= first_rank && rank < first_rank + def.rank_size; }
};

Engine::Engine(std::vector<ServableDefinition> servables, const Device& device, EngineOptions options)
    : device_(device), options_(std::move(options)), channel_(Channel::world()) {
  channel_.set_timeout(options_.result_timeout);
  building_.assign(static_cast<size_t>(World::get().size()), 0);
  for (ServableDefinition& s : servables) complete_servable(s);
  std::vector<int> firsts = plan(servables);
  for (size_t i = 0; i < servables.size(); ++i) {
    int index = add_slot(std::move(servables[i]), firsts[i], ServableState::kServing);
    Slot& sl = slot(index);
    sl.placed = place(sl.def, sl.first_rank);
  }
  if (World::get().rank() == 0) collector_ = std::thread([this] { collect(); });
}

Engine::Slot& Engine::slot(int index) const {
  std::shared_lock<std::shared_mutex> lock(slots_mutex_);
  MESHRT_CHECK_ARG(index >= 0 && static_cast<size_t>(index) < slots_.size(), "no servable ", index, " (the engine has ",
                   slots_.size(), ")");
  return const_cast<Slot&>(slots_[static_cast<size_t>(index)]);
}

int Engine::servable_count() const {
  std::shared_lock<std::shared_mutex> lock(slots_mutex_);
  return static_cast<int>(slots_.size());
}

const ServableDefinition& Engine::servable(int index) const { return slot(index).def; }

ServableState Engine::state(int index) const { return slot(index).state.load(); }

std::vector<int> Engine::ranks(int index) const {
  const Slot& sl = slot(index);
  std::vector<int> out;
  for (int r = 0; r < sl.def.rank_size; ++r) out.push_back(sl.first_rank + r);
  return out;
}

std::string Engine::placement(int index) const {
  const Slot& sl = slot(index);
  if (sl.def.rank_size == 1) return detail::cat("rank ", sl.first_rank);
  return detail::cat("ranks ", sl.first_rank, "-", sl.first_rank + sl.def.rank_size - 1);
}

int Engine::add_slot(ServableDefinition def, int first_rank, ServableState state) {
  std::unique_lock<std::shared_mutex> lock(slots_mutex_);
  Slot& sl = slots_.emplace_back();
  sl.def = std::move(def);
  sl.first_rank = first_rank;
  sl.state = state;
  return static_cast<int>(slots_.size()) - 1;
}

std::vector<int> Engine::plan(const std::vector<ServableDefinition>& defs) const {
  const int world = World::get().size();
  // How many placed servables hold each rank, and which (for the refusal).
  std::vector<int> load(static_cast<size_t>(world), 0);
  std::vector<std::string> holders(static_cast<size_t>(world));
  auto take = [&](const std::string& name, const std::string& version, int first, int size) {
    for (int r = first; r < first + size; ++r) {
      ++load[static_cast<size_t>(r)];
      holders[static_cast<size_t>(r)] += detail::cat(holders[static_cast<size_t>(r)].empty() ? "" : ", ", "'", name,
                                                     "' version ", version);
    }
  };
  for (int i = 0; i < servable_count(); ++i) {
    const Slot& sl = slot(i);
    if (sl.state != ServableState::kUnloaded) take(sl.def.name, sl.def.version, sl.first_rank, sl.def.rank_size);
  }
  std::vector<int> firsts;
  for (const ServableDefinition& s : defs) {
    MESHRT_CHECK_ARG(s.rank_size >= 1 && s.rank_size <= world, "model '", s.name, "' needs rank_size = ", s.rank_size,
                     " ranks but this job has ", world, ": start it with mpirun -np ", s.rank_size, " (or more)");
    // The window whose busiest rank is least busy, the first of those (a free one if there is one).
    int best = 0, best_load = -1;
    for (int first = 0; first + s.rank_size <= world; ++first) {
      int busiest = *std::max_element(load.begin() + first, load.begin() + first + s.rank_size);
      if (best_load < 0 || busiest < best_load) {
        best = first;
        best_load = busiest;
      }
    }
    if (best_load > 0 && !options_.share_ranks) {
      std::string held;
      for (int r = 0; r < world; ++r) {
        if (load[static_cast<size_t>(r)] > 0) held += detail::cat("; rank ", r, ": ", holders[static_cast<size_t>(r)]);
      }
      throw Error(ErrorKind::kInvalidArgument,
                  detail::cat("model '", s.name, "' version ", s.version, " needs ", s.rank_size,
                              " consecutive free ranks and this job of ", world,
                              " has none (ranks are not shared between models)", held,
                              ": start more ranks, unload a model, or let models share ranks"));
    }
    if (best_load > 0 && World::get().rank() == 0) {
      std::string where = s.rank_size == 1 ? detail::cat("rank ", best)
                                           : detail::cat("ranks ", best, "-", best + s.rank_size - 1);
      std::string free = s.rank_size == 1 ? "no free rank" : detail::cat("no ", s.rank_size, " free ranks");
      log::info(detail::cat("model '", s.name, "' version ", s.version, " shares ", where,
                            " with other models (", free, " left: they take turns)"));
    }
    take(s.name, s.version, best, s.rank_size);
    firsts.push_back(best);
  }
  return firsts;
}

// Collective over all ranks: the mesh's communicators are new (a duplicate of
// the world, or of the placement's ranks split from it).
std::unique_ptr<Engine::Placed> Engine::place_communicators(const ServableDefinition& s, int first_rank) {
  World& world = World::get();
  std::vector<sharding::MeshAxis> axes{{"stage", s.stage_size}, {"model", s.rank_size / s.stage_size}};
  auto p = std::make_unique<Placed>();
  if (s.rank_size == world.size()) {
    p->mesh = Mesh(axes, device_);
  } else {
    Communicator all = Communicator::world(device_, "placement");
    bool member = world.rank() >= first_rank && world.rank() < first_rank + s.rank_size;
    Communicator over = all.split(member ? 0 : Communicator::kNoColor, world.rank(), "model '" + s.name + "'");
    if (!member) return nullptr;
    p->mesh = Mesh(axes, over);
  }
  if (options_.comm_timeout.count() > 0) p->mesh.set_timeout(options_.comm_timeout);
  // A stalled rank must not leave its peers' threads inside MPI: the model is
  // given up at the deadline, and later rebuilt (try_recover).
  p->mesh.set_abortable_collectives(true);
  p->stage_mesh = p->mesh.slice("stage");
  p->stage = p->mesh.coordinate("stage");
  p->stages = s.stage_size;
  p->model_coordinate = p->mesh.coordinate("model");
  p->tensor_parallel = s.rank_size / s.stage_size;
  return p;
}

void Engine::build(const ServableDefinition& s, Placed* p) {
  if (!p) return;  // off the placement
  MESHRT_CHECK(static_cast<size_t>(p->stage) < s.stages.size(), ErrorKind::kInvalidArgument, "model '", s.name,
               "' has no stage ", p->stage, " on this rank");
  p->module = s.stages[static_cast<size_t>(p->stage)].build(p->stage_mesh);
}

std::unique_ptr<Engine::Placed> Engine::place(const ServableDefinition& s, int first_rank) {
  std::unique_ptr<Placed> p = place_communicators(s, first_rank);
  build(s, p.get());
  return p;
}

void Engine::rebuild(int index, uint64_t generation) {
  Slot& sl = slot(index);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    sl.placed.reset();  // the old communicators (aborted) go first
  }
  std::unique_ptr<Placed> placed;
  std::string broken;
  try {
    placed = place(sl.def, sl.first_rank);
  } catch (const std::exception& e) {
    if (World::get().rank() == 0) throw;  // try_recover says why
    // Here, on another rank: the new generation's runs fail at once, saying
    // why (rank 0 does not wait for their results).
    broken = detail::cat(World::get().describe_rank(World::get().rank()), " could not rebuild model '", sl.def.name,
                         "': ", reason_of(e));
  }
  std::lock_guard<std::mutex> lock(mutex_);
  sl.placed = std::move(placed);
  sl.failure = broken;
  sl.broken = broken;
  sl.generation = generation;
}

void Engine::mark_failed(int index, const std::string& reason) {
  Slot& sl = slot(index);
  std::lock_guard<std::mutex> lock(mutex_);
  if (!sl.failure.empty()) return;
  sl.failure = reason;
  if (sl.placed) sl.placed->mesh.abort("model '" + sl.def.name + "' failed: " + reason);
}

std::string Engine::failure(int index) const {
  const Slot& sl = slot(index);
  std::lock_guard<std::mutex> lock(mutex_);
  return sl.failure;
}

uint64_t Engine::generation(int index) const {
  const Slot& sl = slot(index);
  std::lock_guard<std::mutex> lock(mutex_);
  return sl.generation;
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
  std::string found_version;
  for (int i = 0; i < servable_count(); ++i) {
    const Slot& sl = slot(i);
    if (sl.def.name != name || sl.state != ServableState::kServing) continue;
    if (!version.empty() && sl.def.version != version) continue;
    // Ties go to the later index: a reload's servables come after the ones they replace.
    if (found < 0 || !later(found_version, sl.def.version)) {
      found = i;
      found_version = sl.def.version;
    }
  }
  return found;
}

HostTensor Engine::run_local(int index, uint64_t batch_id, const std::vector<int64_t>& micro_rows,
                             const std::vector<int64_t>& input_dims, const BatchParams& params, const HostTensor& input,
                             double* forward_seconds) {
  const Slot& sl = slot(index);
  const ServableDefinition& def = sl.def;
  MESHRT_CHECK(sl.placed, ErrorKind::kInternal, "rank ", World::get().rank(), " is not in the placement of model '",
               def.name, "'");
  Placed& p = *sl.placed;
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
  // The stage's first rank holds the batch (rank 0's, or what rank 0 sent the placement's first rank).
  const HostTensor& batch = input;
  MESHRT_CHECK(!first || p.model_coordinate != 0 || (batch.defined() && batch.ndim() >= 1), ErrorKind::kInternal,
               "model '", def.name, "': the first stage's first rank has no batch");
  std::vector<HostTensor> outputs;
  double forward = 0;
  int64_t row = 0, total_rows = 0;
  for (int64_t rows : micro_rows) {
    std::vector<DTensor> xs;
    if (first) {
      // The stage's first rank holds the batch; the others get it by broadcast.
      Shape shape = shape_of(rows, input_dims);
      DeviceTensor buffer = p.model_coordinate == 0 ? to_device(batch.narrow(row, rows), device_)
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
  // Not while a load builds on this servable's ranks: the batch would wait
  // there behind the weights (and past its deadline). Checked again under the
  // lock, which a load takes to begin.
  std::unique_lock<std::mutex> starting(start_mutex_);
  while (busy(index)) {
    starting.unlock();
    {
      std::unique_lock<std::mutex> lock(mutex_);
      building_cv_.wait(lock, [&] { return !building_on(slot(index)); });
    }
    starting.lock();
  }
  World& world = World::get();
  MESHRT_CHECK(world.rank() == 0, ErrorKind::kInternal, "Engine::start is for rank 0");
  MESHRT_CHECK(!stopped_, ErrorKind::kUnavailable, "the engine was stopped");
  const Slot& sl = slot(index);
  const ServableDefinition& def = sl.def;
  MESHRT_CHECK(sl.state != ServableState::kUnloaded && sl.state != ServableState::kLoading, ErrorKind::kUnavailable,
               "model '", def.name, "' version ", def.version, " is not loaded");
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
  pending->result_rank = sl.result_rank();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    // Again with the lock the result thread fails models under: a model failed
    // since the check above would never answer this batch (its ranks drop it).
    MESHRT_CHECK(sl.failure.empty(), ErrorKind::kUnavailable, "model '", def.name, "' failed earlier: ", sl.failure);
    pending_[id] = std::move(pending);
  }
  idle_cv_.notify_all();  // the result thread starts listening
  try {
    for (int r = std::max(sl.first_rank, 1); r < sl.first_rank + def.rank_size; ++r) send_command(command, r);
    if (!sl.holds(0)) {
      // Rank 0 is not in the placement: its first rank takes the batch from here.
      // (A large batch waits here until that rank has finished its earlier work.)
      // Under start_mutex_, the only sender on this tag: the two go together.
      // (Not under send_mutex_: a command, the result thread's "fail" say,
      // must not wait for a large batch to be taken.)
      channel_.send(std::to_string(id), sl.first_rank, kInputTag);
      channel_.send(input, sl.first_rank, kInputTag);
      return;
    }
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
    record({"batch", servable(p->index).name, id, 0, 0, p->micro_batches, p->rows, p->start_us,
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
  const Slot& sl = slot(index);
  uint64_t gen = generation(index);
  for (int r = std::max(sl.first_rank, 1); r < sl.first_rank + sl.def.rank_size; ++r) {
    try {
      send_command(detail::cat("fail ", index, " ", gen), r);
    } catch (const std::exception&) {
      // a lost rank cannot be told; recovery asks every rank first anyway
    }
  }
  const std::string& name = sl.def.name;
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
      try {
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
      } catch (const std::exception& e) {
        // A message that could not be read: its batch is answered at its deadline.
        log::error(std::string("the engine's result thread: ") + reason_of(e));
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
                   detail::cat("the result of batch ", late, " of '", servable(late_index).name,
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
                                         detail::cat("batch ", id, " of model '", servable(index).name,
                                                     "' was in flight when the engine was destroyed"))));
  }
}

std::string Engine::try_recover(int index, std::chrono::milliseconds within) {
  std::lock_guard<std::mutex> starting(start_mutex_);
  World& world = World::get();
  MESHRT_CHECK(world.rank() == 0, ErrorKind::kInternal, "Engine::try_recover is for rank 0");
  MESHRT_CHECK(!stopped_, ErrorKind::kUnavailable, "the engine was stopped");
  ServableState now = state(index);
  if (now == ServableState::kUnloaded || now == ServableState::kLoading) {
    return detail::cat("model '", servable(index).name, "' version ", servable(index).version, " is not loaded");
  }
  {
    // Every rank takes part in a rebuild, and a rank that builds a load
    // answers only after it.
    if (loads_building_ > 0) return "a load is building: recovery waits for it";
  }
  uint64_t token = next_ping_++;
  std::vector<bool> answered(static_cast<size_t>(world.size()), false);
  answered[0] = true;
  for (int r = 1; r < world.size(); ++r) send_command(detail::cat("ping ", token), r);
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
  for (int r = 1; r < world.size(); ++r) send_command(detail::cat("rebuild ", index, " ", next, " ", token), r);
  // Every rank says whether it rebuilt its part (a rank that could not would
  // otherwise fail the next batch only once its peers are inside it); the
  // answers name this attempt, so a later one never reads them.
  std::string key = detail::cat("rebuilt ", index, " ", next, " ", token);
  try {
    rebuild(index, next);
  } catch (const std::exception&) {
    // Rank 0's own part failed: this attempt's answers are read (and dropped) first.
    collect_answers(kRebuildTag, key, std::chrono::steady_clock::now() + options_.load_timeout, nullptr);
    throw;
  }
  std::vector<std::string> answers =
      collect_answers(kRebuildTag, key, std::chrono::steady_clock::now() + options_.load_timeout, nullptr);
  std::string failed;
  for (int r = 1; r < world.size(); ++r) {
    if (answers[static_cast<size_t>(r)] != "ok") {
      failed += detail::cat(failed.empty() ? "" : "; ", world.describe_rank(r), ": ", answers[static_cast<size_t>(r)]);
    }
  }
  if (failed.empty()) return "";
  mark_failed(index, failed);
  const Slot& sl = slot(index);
  for (int r = std::max(sl.first_rank, 1); r < sl.first_rank + sl.def.rank_size; ++r) {
    try {
      send_command(detail::cat("fail ", index, " ", next), r);
    } catch (const std::exception&) {
      // a lost rank cannot be told; the next recovery asks every rank first
    }
  }
  return "the ranks rebuilt it, but " + failed;
}

std::vector<std::string> Engine::collect_answers(int tag, const std::string& key,
                                                 std::chrono::steady_clock::time_point deadline,
                                                 const std::function<void(int rank)>& answered) {
  World& world = World::get();
  std::vector<std::string> out(static_cast<size_t>(world.size()));
  std::vector<bool> done(static_cast<size_t>(world.size()), false);
  done[0] = true;
  auto settle = [&](int r, std::string answer) {
    out[static_cast<size_t>(r)] = std::move(answer);
    done[static_cast<size_t>(r)] = true;
    if (answered) answered(r);  // as each comes, in whatever order
  };
  PollPause pause(std::chrono::milliseconds(1));
  while (!std::all_of(done.begin(), done.end(), [](bool d) { return d; })) {
    bool got = false;
    for (int r = 1; r < world.size(); ++r) {
      if (done[static_cast<size_t>(r)]) continue;
      try {
        if (!channel_.probe(r, tag)) continue;
        got = true;
        std::string message = channel_.recv_string(r, tag);
        if (message.rfind(key + " ", 0) != 0) continue;  // an answer to an earlier request that gave up
        settle(r, message.substr(key.size() + 1));
      } catch (const std::exception& e) {
        settle(r, reason_of(e));
      }
    }
    if (got) continue;
    std::string why = stopping_ ? "the engine is stopping"
                      : std::chrono::steady_clock::now() > deadline ? "did not answer in time"
                                                                     : "";
    if (!why.empty()) {
      for (int r = 1; r < world.size(); ++r) {
        if (!done[static_cast<size_t>(r)]) settle(r, why);
      }
      break;
    }
    pause();
  }
  return out;
}

void Engine::send_command(const std::string& command, int rank) {
  std::lock_guard<std::mutex> sending(send_mutex_);
  channel_.send(command, rank, kCommandTag);
}

HostTensor Engine::take_input(uint64_t id) {
  // Each batch comes as "<batch id>" and the tensor. One whose run has not
  // come yet is kept for it; one of an earlier batch (its run never came) is
  // dropped; when a later batch comes first, this one's did not come at all.
  early_inputs_.erase(early_inputs_.begin(), early_inputs_.lower_bound(id));  // of runs that never came
  auto kept = early_inputs_.find(id);
  if (kept != early_inputs_.end()) {
    HostTensor input = std::move(kept->second);
    early_inputs_.erase(kept);
    return input;
  }
  for (;;) {
    std::string text = channel_.recv_string(0, kInputTag);
    uint64_t of = 0;
    auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), of);
    MESHRT_CHECK(error == std::errc() && end == text.data() + text.size(), ErrorKind::kInternal,
                 "a batch's id from rank 0 reads '", text, "'");
    HostTensor input = channel_.recv_tensor(0, kInputTag);
    if (of == id) return input;
    if (of > id) {
      early_inputs_.emplace(of, std::move(input));
      throw Error(ErrorKind::kUnavailable, detail::cat("the batch of batch ", id, " never came from rank 0"));
    }
  }
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
  if (verb == "load") return handle_load(in);
  if (verb == "drop") {
    in >> index;
    MESHRT_CHECK(!in.fail() && index >= 0 && index < servable_count(), ErrorKind::kInternal, "unknown engine command '",
                 command, "'");
    return drop(index);
  }
  if (verb == "fail" || verb == "rebuild") {
    in >> index >> generation;
    MESHRT_CHECK(index >= 0 && index < servable_count(), ErrorKind::kInternal, "unknown engine command '", command, "'");
    if (verb == "rebuild") {
      std::string attempt;
      in >> attempt;
      std::string broken;
      try {
        if (state(index) != ServableState::kUnloaded) rebuild(index, generation);
        std::lock_guard<std::mutex> lock(mutex_);
        broken = slot(index).broken;
      } catch (const std::exception& e) {
        broken = reason_of(e);
      }
      channel_.send(detail::cat("rebuilt ", index, " ", generation, " ", attempt, " ",
                                broken.empty() ? std::string("ok") : broken),
                    0, kRebuildTag);
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
    // The placement's first rank, when rank 0 is not in it, gets the batch from
    // rank 0: taken whatever becomes of the run, so that a dropped run's batch
    // is never left for the next one.
    const Slot& sl = slot(index);
    HostTensor input;
    if (sl.first_rank == World::get().rank() && !sl.holds(0)) input = take_input(id);
    // A batch of an older generation, or of one rank 0 already gave up: its
    // peers will not run it. Dropped (rank 0 has answered it already).
    if (generation != this->generation(index)) return;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!sl.broken.empty()) throw Error(ErrorKind::kUnavailable, sl.broken);  // reported to rank 0 below
    }
    if (!failure(index).empty()) return;
    double forward = 0;
    HostTensor result = run_local(index, id, micro, dims, params, input, &forward);
    const Placed& p = *slot(index).placed;
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

std::vector<int> Engine::load(const std::string& request) {
  World& world = World::get();
  MESHRT_CHECK(world.rank() == 0, ErrorKind::kInternal, "Engine::load is for rank 0");
  MESHRT_CHECK_ARG(options_.loader != nullptr, "this server loads no models while it runs");
  MESHRT_CHECK_ARG(!request.empty() && request.find_first_of(" \t\r\n") == std::string::npos, "cannot load '", request,
                   "': a model name has no spaces");
  std::lock_guard<std::mutex> loading(load_mutex_);  // one load at a time: its answers are read in order
  // Rank 0 reads it first: a config that does not parse is refused with nothing sent.
  std::vector<ServableDefinition> defs = options_.loader(request);
  MESHRT_CHECK_ARG(!defs.empty(), "'", request, "' names no servable to load");
  for (ServableDefinition& d : defs) {
    complete_servable(d);
    MESHRT_CHECK_ARG(!d.version.empty() && d.version.find_first_of(" \t\r\n") == std::string::npos, "model '", d.name,
                     "' has version '", d.version, "': a version has no spaces");
  }
  uint64_t sequence = 0;
  std::vector<int> indices;
  std::vector<std::unique_ptr<Placed>> placed(defs.size());
  std::string failed;
  auto note = [&](int rank, const std::string& why) {
    failed += detail::cat(failed.empty() ? "" : "; ", world.describe_rank(rank), ": ", why);
  };
  {
    // The commands and the communicators (collective) in rank 0's one order of
    // commands; building the stages (the weights) happens after, without
    // holding up the start of other batches (those of models on the ranks
    // that build wait: busy()).
    std::lock_guard<std::mutex> starting(start_mutex_);
    MESHRT_CHECK(!stopped_, ErrorKind::kUnavailable, "the engine was stopped");
    std::vector<int> firsts = plan(defs);
    sequence = next_load_++;
    std::string command = detail::cat("load ", sequence, " ", defs.size());
    for (size_t i = 0; i < defs.size(); ++i) {
      command += detail::cat(" ", defs[i].rank_size, " ", defs[i].stage_size, " ", firsts[i], " ", defs[i].version);
    }
    command += " " + request;
    for (int r = 1; r < world.size(); ++r) send_command(command, r);
    // Every slot first (as every other rank adds them), then their communicators.
    for (size_t i = 0; i < defs.size(); ++i) indices.push_back(add_slot(defs[i], firsts[i], ServableState::kLoading));
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (size_t i = 0; i < defs.size(); ++i) {
        for (int r = firsts[i]; r < firsts[i] + defs[i].rank_size; ++r) ++building_[static_cast<size_t>(r)];
      }
      ++loads_building_;
    }
    placed = place_slots(indices, [&](const std::string& why) { note(0, why); });
  }
  // A rank's builds are over once it answers (rank 0's: once its own are):
  // the batches held for its ranks may go then.
  auto release = [&](int rank) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (int index : indices) {
        if (slot(index).holds(rank)) --building_[static_cast<size_t>(rank)];
      }
    }
    building_cv_.notify_all();
  };
  build_slots(indices, placed, [&](const std::string& why) { note(0, why); });
  release(0);
  // Every other rank says whether it built its part: "<sequence> ok" or
  // "<sequence> <why not>" (answers of an earlier load that gave up are dropped).
  std::vector<std::string> answers = collect_answers(
      kLoadTag, std::to_string(sequence), std::chrono::steady_clock::now() + options_.load_timeout, release);
  for (int r = 1; r < world.size(); ++r) {
    if (answers[static_cast<size_t>(r)] != "ok") note(r, answers[static_cast<size_t>(r)]);
  }
  --loads_building_;  // every rank is released by now
  if (!failed.empty()) {
    std::lock_guard<std::mutex> starting(start_mutex_);
    for (int index : indices) {
      if (!stopped_) {
        for (int r = 1; r < world.size(); ++r) {
          try {
            send_command(detail::cat("drop ", index), r);
          } catch (const std::exception&) {
            // a lost rank: the job is going anyway
          }
        }
      }
      drop(index);
    }
    throw Error(ErrorKind::kUnavailable, detail::cat("loading '", request, "' failed: ", failed));
  }
  return indices;
}

std::vector<std::unique_ptr<Engine::Placed>> Engine::place_slots(const std::vector<int>& indices,
                                                                  const std::function<void(const std::string&)>& failed) {
  std::vector<std::unique_ptr<Placed>> placed(indices.size());
  for (size_t i = 0; i < indices.size(); ++i) {
    const Slot& sl = slot(indices[i]);
    try {
      placed[i] = place_communicators(sl.def, sl.first_rank);
    } catch (const std::exception& e) {
      failed(reason_of(e));
    }
  }
  return placed;
}

void Engine::build_slots(const std::vector<int>& indices, std::vector<std::unique_ptr<Placed>>& placed,
                         const std::function<void(const std::string&)>& failed) {
  for (size_t i = 0; i < indices.size(); ++i) {
    Slot& sl = slot(indices[i]);
    try {
      if (placed[i]) build(sl.def, placed[i].get());
      std::lock_guard<std::mutex> lock(mutex_);
      sl.placed = std::move(placed[i]);
    } catch (const std::exception& e) {
      failed(reason_of(e));
    }
  }
}

bool Engine::building_on(const Slot& sl) const {
  for (int r = sl.first_rank; r < sl.first_rank + sl.def.rank_size; ++r) {
    if (building_[static_cast<size_t>(r)] > 0) return true;
  }
  return false;
}

bool Engine::busy(int index) const {
  // Asked before every batch: no lock unless some load is building.
  if (loads_building_ == 0) return false;
  const Slot& sl = slot(index);
  std::lock_guard<std::mutex> lock(mutex_);
  return building_on(sl);
}

void Engine::handle_load(std::istringstream& in) {
  World& world = World::get();
  uint64_t sequence = 0;
  size_t n = 0;
  in >> sequence >> n;
  struct Shape {
    int rank_size = 0, stage_size = 0, first_rank = 0;
    std::string version;
  };
  std::vector<Shape> shapes(in.fail() ? 0 : n);
  for (Shape& shape : shapes) in >> shape.rank_size >> shape.stage_size >> shape.first_rank >> shape.version;
  std::string request;
  in >> request;
  if (in.fail() || n == 0) {
    // Without its shapes this rank cannot take part: rank 0 hears why (the job is then out of step).
    channel_.send(detail::cat(sequence, " malformed load command"), 0, kLoadTag);
    return;
  }
  std::string failed;
  std::vector<ServableDefinition> defs;
  try {
    defs = options_.loader ? options_.loader(request) : std::vector<ServableDefinition>{};
    for (ServableDefinition& d : defs) complete_servable(d);
    MESHRT_CHECK(defs.size() == n, ErrorKind::kInvalidArgument, "'", request, "' gives ", defs.size(),
                 " servable(s) here and ", n, " on rank 0 (do all ranks read the same files?)");
    for (size_t i = 0; i < n; ++i) {
      // The same versions, of the same shape, as rank 0 read (a folder may change in between).
      MESHRT_CHECK(defs[i].rank_size == shapes[i].rank_size && defs[i].stage_size == shapes[i].stage_size &&
                       defs[i].version == shapes[i].version,
                   ErrorKind::kInvalidArgument, "model '", defs[i].name, "' is version ", defs[i].version,
                   " with rank_size ", defs[i].rank_size, " and stage_size ", defs[i].stage_size, " here, version ",
                   shapes[i].version, " with ", shapes[i].rank_size, " and ", shapes[i].stage_size,
                   " on rank 0 (do all ranks read the same files?)");
    }
  } catch (const std::exception& e) {
    failed = reason_of(e);
    defs.clear();
  }
  // As rank 0: every slot, then every placement's communicators (a rank
  // without a definition of its own still takes part: its peers do), then
  // the stages.
  std::vector<int> indices;
  for (size_t i = 0; i < n; ++i) {
    ServableDefinition def;
    if (!defs.empty()) {
      def = std::move(defs[i]);
    } else {
      def.name = request;
      def.version = shapes[i].version;
      def.rank_size = shapes[i].rank_size;
      def.stage_size = shapes[i].stage_size;
    }
    indices.push_back(add_slot(std::move(def), shapes[i].first_rank, ServableState::kLoading));
  }
  auto first_failure = [&](const std::string& why) {
    if (failed.empty()) failed = why;
  };
  std::vector<std::unique_ptr<Placed>> placed = place_slots(indices, first_failure);
  build_slots(indices, placed, first_failure);
  bool member = std::any_of(shapes.begin(), shapes.end(), [&](const Shape& shape) {
    return world.rank() >= shape.first_rank && world.rank() < shape.first_rank + shape.rank_size;
  });
  if (!failed.empty() && !member) {
    // This rank holds no part of it (it only took part in making the
    // communicators): its own reading does not decide the load.
    log::warn(detail::cat(world.describe_rank(world.rank()), ": reading '", request, "' failed here (", failed,
                          "); this rank holds no part of it"));
    failed.clear();
  }
  if (!failed.empty()) log::error(detail::cat(world.describe_rank(world.rank()), ": loading '", request, "' failed: ", failed));
  channel_.send(detail::cat(sequence, " ", failed.empty() ? std::string("ok") : failed), 0, kLoadTag);
}

void Engine::publish(const std::vector<int>& indices) {
  for (int index : indices) slot(index).state = ServableState::kServing;
}

void Engine::close(int index) {
  Slot& sl = slot(index);
  ServableState serving = ServableState::kServing;
  sl.state.compare_exchange_strong(serving, ServableState::kClosed);
}

void Engine::unload(int index) {
  std::lock_guard<std::mutex> starting(start_mutex_);
  World& world = World::get();
  MESHRT_CHECK(world.rank() == 0, ErrorKind::kInternal, "Engine::unload is for rank 0");
  const Slot& sl = slot(index);
  MESHRT_CHECK_ARG(in_flight(index) == 0, "model '", sl.def.name, "' version ", sl.def.version, " has ",
                   in_flight(index), " batch(es) in flight: finish them before unloading it");
  if (sl.state == ServableState::kUnloaded) return;
  if (!stopped_) {
    for (int r = 1; r < world.size(); ++r) send_command(detail::cat("drop ", index), r);
  }
  drop(index);
}

void Engine::drop(int index) {
  Slot& sl = slot(index);
  sl.state = ServableState::kUnloaded;
  std::unique_ptr<Placed> placed;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    placed = std::move(sl.placed);
    if (sl.failure.empty()) sl.failure = "unloaded";
  }
  placed.reset();  // its stage, weights and communicators, outside the lock
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
    // A command that fails here (a run reports its own failure to rank 0) is
    // logged, and serving goes on: the rank is needed by the other models.
    auto handle = [&](const std::string& c) {
      try {
        handle_command(c);
      } catch (const std::exception& e) {
        log::error(detail::cat(world.describe_rank(world.rank()), ": engine command '", c.substr(0, 80),
                               "' failed: ", reason_of(e)));
      }
    };
    for (const std::string& c : commands) {
      if (c.rfind("fail ", 0) == 0) handle(c);
    }
    for (const std::string& c : commands) {
      if (c == "stop") return;
      if (c.rfind("fail ", 0) != 0) handle(c);
    }
  }
}

void Engine::stop() {
  stopping_ = true;  // a load waiting for answers gives up (the ranks answer it before they stop)
  std::lock_guard<std::mutex> loading(load_mutex_);    // after a load that is running (its ranks are needed)
  std::lock_guard<std::mutex> starting(start_mutex_);
  World& world = World::get();
  if (stopped_ || world.rank() != 0) return;
  stopped_ = true;
  for (int r = 1; r < world.size(); ++r) send_command("stop", r);
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
  std::set<int> stages;
  for (int i = 0; i < servable_count(); ++i) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (slot(i).placed) stages.insert(slot(i).placed->stage);
  }
  for (int stage : stages) {
    events.push_back({{"name", "thread_name"}, {"ph", "M"}, {"pid", rank}, {"tid", stage},
                      {"args", {{"name", detail::cat("stage ", stage)}}}});
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

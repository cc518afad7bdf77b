// meshrt-bench-sharding: time per step of sharded programs at the job's number of
// ranks against the same computation on one rank, measured in the same run, and
// the share of each step spent in communication.
//
//   mpirun -np 4 meshrt-bench-sharding [--size 1024] [--batch 64 --hidden 1024 --ffn 4096]
//
// Programs (1-D mesh "model" over all ranks):
//   matmul  a[n, n] [R, S(model)] @ b[n, n] [S(model), R]: local GEMMs, then the
//           partial result reduced (all_reduce) to a replicated c.
//   tp_mlp  x[batch, hidden] replicated -> column-parallel (hidden -> ffn) -> gelu ->
//           row-parallel (ffn -> hidden): one all_reduce.
// The one-rank time is measured by rank 0 alone while the other ranks sleep, with
// the same BLAS thread count (--blas-threads, 1 by default, so that ranks do not
// compete for cores with BLAS threads).
//
// --overlap adds whether communication overlaps compute under asynchronous
// dispatch (sharding/dtensor.h): a step dispatches --micro micro-batches back
// to back, without waiting, then waits for all of them. Programs:
//   tp_mlp  models::ParallelMLP on x[batch, hidden] (its one all_reduce per micro-batch);
//   chain   x[batch, hidden] @ W1[hidden, ffn] [R, S(model)] (column-parallel) @ W2[ffn, hidden]
//           [S(model), R] (row-parallel) with the sharded ops themselves: a pending
//           sum reduced by one all_reduce (the MLP's shapes, without bias and gelu).
// Each step is timed against its two baselines, dispatched the same way: the
// compute alone (the same ops up to the pending sum, no collective) and the
// communication alone (the same redistribution of a ready pending sum of the
// same size). overlap = (compute + comm - step) / min(compute, comm): 0 when the
// step is their sum, 1 when the shorter one is hidden entirely.
// --compute wait:<us> replaces every GEMM by a timed wait of <us> on the
// device's stream (a stand-in for a GPU kernel that takes no CPU: with 2 cores,
// BLAS and MPI compete for them). Then the host cost to dispatch one step (the
// call that returns the DTensor, with the device held busy) against running it
// synchronously (the call and block_until_ready()).
#include <cblas.h>

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "apps/app_common.h"
#include "apps/cli.h"
#include "comm/channel.h"
#include "comm/world.h"
#include "device/stream.h"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"
#include "sharding/ops.h"
#include "sharding/redistribute.h"
#include "models/tensor_parallel.h"
#include "sharding/trace.h"

extern "C" void openblas_set_num_threads(int);

namespace meshrt::apps {
namespace {

struct Options {
  int64_t size = 1024, batch = 64, hidden = 1024, ffn = 4096;
  int iters = 10, warmup = 2, blas_threads = 1;
  std::string device;
  bool overlap = false, abortable = false;
  int micro = 4;
  std::string compute = "gemm";
};

struct Timing {
  double step = 0, communication = 0;
};

// Mean seconds per call of step and of its communication (from the trace).
Timing time_steps(const std::function<void()>& step, int warmup, int iters) {
  for (int i = 0; i < warmup; ++i) step();
  Timing t;
  for (int i = 0; i < iters; ++i) {
    sharding::Trace trace;
    auto start = std::chrono::steady_clock::now();
    {
      sharding::TraceScope scope(trace);
      step();
    }
    t.step += seconds_since(start);
    t.communication += trace.communication_seconds();
  }
  t.step /= iters;
  t.communication /= iters;
  return t;
}

// --compute: real GEMMs (wait_us < 0) or a timed wait of wait_us per GEMM.
double parse_compute(const std::string& text) {
  if (text == "gemm") return -1;
  const std::string prefix = "wait:";
  MESHRT_CHECK_ARG(text.rfind(prefix, 0) == 0 && text.size() > prefix.size(),
                   "--compute must be gemm or wait:<microseconds>, got '", text, "'");
  size_t used = 0;
  double us = -1;
  try {
    us = std::stod(text.substr(prefix.size()), &used);
  } catch (const std::exception&) {
    used = 0;
  }
  MESHRT_CHECK_ARG(used == text.size() - prefix.size() && us >= 0,
                   "--compute wait:<microseconds> needs a number >= 0, got '", text, "'");
  return us;
}

// A micro-batched program: compute(i) dispatches micro-batch i's ops up to
// the pending sum (no collective), reduce() its communication (the
// redistribution to replicated) and step(i) the whole micro-batch.
struct OverlapProgram {
  std::string name, shapes;
  std::function<sharding::DTensor(int)> compute, step;
  std::function<sharding::DTensor(const sharding::DTensor&)> reduce;
  sharding::DTensor ready_partial;  // a computed pending sum of compute's size: reduce's input alone
};

// For each of calls, the median over iters of the seconds to dispatch micro
// calls back to back and then wait for all their results. The calls take turns
// within each iteration, so that a change in the machine's load (other jobs on
// its few cores) touches them alike; each starts after a barrier (ranks
// start together).
std::vector<double> time_micro_steps(const sharding::Mesh& mesh,
                                     const std::vector<std::function<sharding::DTensor(int)>>& calls, int micro,
                                     int warmup, int iters) {
  std::vector<std::vector<double>> times(calls.size());
  for (int it = 0; it < warmup + iters; ++it) {
    for (size_t c = 0; c < calls.size(); ++c) {
      mesh.world_communicator().barrier();
      auto start = std::chrono::steady_clock::now();
      std::vector<sharding::DTensor> results;
      results.reserve(static_cast<size_t>(micro));
      for (int i = 0; i < micro; ++i) results.push_back(calls[c](i));
      for (const sharding::DTensor& r : results) r.block_until_ready();
      if (it >= warmup) times[c].push_back(seconds_since(start));
    }
  }
  std::vector<double> medians;
  for (std::vector<double>& t : times) {
    std::sort(t.begin(), t.end());
    size_t h = t.size() / 2;
    medians.push_back(t.size() % 2 ? t[h] : (t[h - 1] + t[h]) / 2);
  }
  return medians;
}

// Holds a cpu stream until release() (or a deadline, so that a dispatch that
// waits for the device ends instead of hanging): the device is busy while the
// host dispatches.
class StreamHold {
 public:
  explicit StreamHold(const Stream& stream) : stream_(stream) {
    stream_.enqueue([state = state_] {
      std::unique_lock<std::mutex> lock(state->mutex);
      if (!state->cv.wait_for(lock, std::chrono::seconds(30), [&] { return state->open; })) state->expired = true;
    });
  }
  // True when the deadline released the stream first (the dispatch waited for it).
  bool release() {
    {
      std::lock_guard<std::mutex> lock(state_->mutex);
      state_->open = true;
    }
    state_->cv.notify_all();
    stream_.synchronize();
    std::lock_guard<std::mutex> lock(state_->mutex);
    return state_->expired;
  }

 private:
  struct State {
    std::mutex mutex;
    std::condition_variable cv;
    bool open = false, expired = false;
  };
  Stream stream_;
  std::shared_ptr<State> state_ = std::make_shared<State>();
};

struct DispatchCost {
  double dispatch = 0, sync = 0;  // seconds per call
  bool waited = false;            // a dispatch outlived the hold: it waited for the device
};

// The mean host time of call(i) with the device busy (on the cpu: its stream
// held; elsewhere: busy with the calls dispatched before), against call(i)
// followed by block_until_ready().
DispatchCost dispatch_cost(const sharding::Mesh& mesh, const std::function<sharding::DTensor(int)>& call, int calls) {
  DispatchCost cost;
  for (int i = 0; i < 2; ++i) call(i).block_until_ready();  // warm: allocator, primitives
  mesh.world_communicator().barrier();
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < calls; ++i) call(i).block_until_ready();
  cost.sync = seconds_since(start) / calls;
  mesh.world_communicator().barrier();
  std::vector<sharding::DTensor> results;
  std::optional<StreamHold> hold;
  if (mesh.device().is_cpu()) hold.emplace(Stream::default_for(mesh.device()));
  start = std::chrono::steady_clock::now();
  for (int i = 0; i < calls; ++i) results.push_back(call(i));
  cost.dispatch = seconds_since(start) / calls;
  if (hold) cost.waited = hold->release();
  for (const sharding::DTensor& r : results) r.block_until_ready();
  return cost;
}

// The overlap section: both programs, then the dispatch cost.
void run_overlap(const Options& o, const sharding::Mesh& mesh, const sharding::DTensor& sa,
                 const sharding::DTensor& sb, const std::function<double(double)>& slowest) {
  using namespace sharding;
  using Dims = std::vector<std::vector<std::string>>;
  const Device& device = mesh.device();
  double wait_us = parse_compute(o.compute);
  bool wait = wait_us >= 0;
  MESHRT_CHECK_ARG(!wait || device.is_cpu(), "--compute wait:<us> queues host waits: the cpu device only, not ",
                   device.to_string(), " (use --compute gemm)");
  MESHRT_CHECK_ARG(o.micro >= 1, "--micro must be at least 1, got ", o.micro);

  // The GEMM of a @ b for the layouts these programs use (a [M, K], b [K, N] ->
  // [M, N] partial over K's axes): the sharded matmul, or its stand-in, a
  // timed wait on the device's stream giving a zero block of the same shape
  // and layout.
  // The stand-in writes nothing, so one zero block per shape serves every call:
  // zeroing a new one each time is work for the cores that MPI's progress
  // threads are polling on (2 cores, 2 ranks), which the stand-in is meant to avoid.
  Stream stream = Stream::default_for(device);
  std::map<std::pair<int64_t, int64_t>, DeviceTensor> zero_blocks;
  auto gemm = [&, stream](const DTensor& a, const DTensor& b, const std::string& name) {
    if (!wait) return matmul(a, b, name);
    std::pair<int64_t, int64_t> rows_cols{a.local().dim(0), b.local().dim(1)};
    DeviceTensor& out = zero_blocks[rows_cols];
    if (!out.defined()) out = DeviceTensor::zeros({rows_cols.first, rows_cols.second}, a.dtype(), device);
    stream.enqueue([wait_us] { std::this_thread::sleep_for(std::chrono::duration<double, std::micro>(wait_us)); });
    Layout layout(Dims{a.layout().dim(0), b.layout().dim(1)}, a.layout().dim(1));
    return DTensor(out, {a.global_shape()[0], b.global_shape()[1]}, a.mesh(), layout, name).after(a).after(b);
  };
  auto replicate = [](const DTensor& y) { return redistribute(y, y.layout().with_partial({})); };

  std::vector<OverlapProgram> programs;
  HostTensor w1 = random_host({o.hidden, o.ffn}, DType::kF32, 4), b1 = random_host({o.ffn}, DType::kF32, 5);
  HostTensor w2 = random_host({o.ffn, o.hidden}, DType::kF32, 6), b2 = random_host({o.hidden}, DType::kF32, 7);
  models::ParallelMLP mlp(mesh, "model", w1, b1, w2, b2);
  std::vector<DTensor> mlp_x, chain_x;
  for (int i = 0; i < o.micro; ++i) {
    mlp_x.push_back(DTensor::from_global(random_host({o.batch, o.hidden}, DType::kF32, 100 + static_cast<uint64_t>(i)),
                                         mesh, Layout::replicated(2), "x" + std::to_string(i)));
    chain_x.push_back(DTensor::from_global(random_host({o.batch, o.hidden}, DType::kF32, 200 + static_cast<uint64_t>(i)),
                                           mesh, Layout::replicated(2), "x" + std::to_string(i)));
  }
  {
    OverlapProgram p;
    p.name = "tp_mlp";
    char shapes[128];
    std::snprintf(shapes, sizeof shapes, "x[%lld,%lld] %lld->%lld->%lld ParallelMLP", static_cast<long long>(o.batch),
                  static_cast<long long>(o.hidden), static_cast<long long>(o.hidden), static_cast<long long>(o.ffn),
                  static_cast<long long>(o.hidden));
    p.shapes = shapes;
    // ParallelMLP's forward up to its all_reduce: column-parallel + gelu, then
    // the row-parallel GEMM and bias, a pending sum.
    p.compute = [&, gemm](int i) {
      DTensor h = gelu(bias_add(gemm(mlp_x[static_cast<size_t>(i)], mlp.up().weight(), "h"), mlp.up().bias()));
      return bias_add(gemm(h, mlp.down().weight(), "y"), mlp.down().bias());
    };
    p.reduce = replicate;
    if (wait) {
      p.step = [compute = p.compute, replicate](int i) { return replicate(compute(i)); };
    } else {
      p.step = [&](int i) { return mlp.forward(mlp_x[static_cast<size_t>(i)]); };
    }
    programs.push_back(std::move(p));
  }
  DTensor cw1 = DTensor::from_global(random_host({o.hidden, o.ffn}, DType::kF32, 8), mesh, Layout(Dims{{}, {"model"}}), "W1");
  DTensor cw2 = DTensor::from_global(random_host({o.ffn, o.hidden}, DType::kF32, 9), mesh, Layout(Dims{{"model"}, {}}), "W2");
  {
    OverlapProgram p;
    p.name = "chain";
    char shapes[128];
    std::snprintf(shapes, sizeof shapes, "x[%lld,%lld] @ W1[R,S] %lld->%lld @ W2[S,R]", static_cast<long long>(o.batch),
                  static_cast<long long>(o.hidden), static_cast<long long>(o.hidden), static_cast<long long>(o.ffn));
    p.shapes = shapes;
    p.compute = [&, gemm](int i) { return gemm(gemm(chain_x[static_cast<size_t>(i)], cw1, "h"), cw2, "y"); };
    p.reduce = replicate;
    p.step = [compute = p.compute, replicate](int i) { return replicate(compute(i)); };
    programs.push_back(std::move(p));
  }

  // Check each program's shape of communication: compute has no collective,
  // a step one all_reduce, as its communication baseline (traced runs wait).
  for (OverlapProgram& p : programs) {
    Trace compute_trace, step_trace, reduce_trace;
    DTensor partial;
    {
      TraceScope scope(compute_trace);
      partial = p.compute(0);
    }
    {
      TraceScope scope(step_trace);
      p.step(0).block_until_ready();
    }
    partial.block_until_ready();
    p.ready_partial = partial;
    {
      TraceScope scope(reduce_trace);
      p.reduce(p.ready_partial).block_until_ready();
    }
    MESHRT_CHECK(compute_trace.collectives() == 0 && step_trace.collectives() == reduce_trace.collectives() &&
                     step_trace.count("all_reduce") == 1,
                 ErrorKind::kInternal, "bench ", p.name, ": compute ran ", compute_trace.collectives(),
                 " collective(s), a step ", step_trace.collectives(), " (", step_trace.count("all_reduce"),
                 " all_reduce), the communication baseline ", reduce_trace.collectives(), ":\n", step_trace.to_string());
  }
  if (wait) {
    // The stand-in gives what the sharded matmul gives (shape, layout, local block).
    auto check_stand_in = [&](const DTensor& a, const DTensor& b) {
      DTensor real = matmul(a, b), stand_in = gemm(a, b, "stand-in");
      MESHRT_CHECK(real.layout() == stand_in.layout() && real.global_shape() == stand_in.global_shape() &&
                       real.local().shape() == stand_in.local().shape(),
                   ErrorKind::kInternal, "bench: the GEMM stand-in gives ", stand_in.description(),
                   ", the sharded matmul ", real.description());
      real.block_until_ready();
    };
    check_stand_in(chain_x[0], cw1);
    check_stand_in(matmul(chain_x[0], cw1), cw2);
    check_stand_in(mlp_x[0], mlp.up().weight());
    check_stand_in(gelu(mlp.up().forward(mlp_x[0])), mlp.down().weight());
  }
  stream.synchronize();

  struct Row {
    double compute, comm, step;
  };
  std::vector<Row> rows;
  for (const OverlapProgram& p : programs) {
    Row r;
    std::vector<double> t = time_micro_steps(
        mesh, {p.compute, [&](int) { return p.reduce(p.ready_partial); }, p.step}, o.micro, o.warmup, o.iters);
    r.compute = slowest(t[0]);
    r.comm = slowest(t[1]);
    r.step = slowest(t[2]);
    rows.push_back(r);
  }

  // Dispatch cost: the existing sharded matmul (+ redistribute to replicated)
  // and one micro-batch of each program.
  struct Dispatch {
    std::string name;
    DispatchCost cost;
  };
  std::vector<Dispatch> dispatches;
  int calls = std::max(o.iters, 4);
  dispatches.push_back({"matmul", dispatch_cost(mesh, [&](int) { return replicate(matmul(sa, sb, "c")); }, calls)});
  for (const OverlapProgram& p : programs) {
    dispatches.push_back({p.name, dispatch_cost(mesh, [&](int i) { return p.step(i % o.micro); }, calls)});
  }
  for (Dispatch& d : dispatches) {
    d.cost.dispatch = slowest(d.cost.dispatch);
    d.cost.sync = slowest(d.cost.sync);
    d.cost.waited = slowest(d.cost.waited ? 1 : 0) > 0;
  }

  if (mesh.rank() != 0) return;
  char mode[64];
  if (wait) {
    std::snprintf(mode, sizeof mode, "each GEMM a %.0f us wait on the device stream", wait_us);
  } else {
    std::snprintf(mode, sizeof mode, "real GEMMs, %d BLAS thread(s)", o.blas_threads);
  }
  std::string collectives = o.abortable ? "non-blocking (abortable) collectives, polled" : "blocking MPI collectives";
  std::printf("#\n# overlap: %d micro-batch(es) dispatched back to back, then block_until_ready(); %s; %s;\n"
              "# ms per step, median of %d (the three taking turns), slowest rank. compute: the ops up to the pending sum alone;\n"
              "# comm: its redistribution (all_reduce) alone on a ready pending sum of the same size;\n"
              "# overlap = (compute + comm - step) / min(compute, comm)\n",
              o.micro, mode, collectives.c_str(), o.iters);
  std::printf("#%-8s %-48s %10s %10s %10s %10s %9s %8s\n", "program", "shapes and layouts", "compute ms", "comm ms",
              "sum ms", "step ms", "step/sum", "overlap");
  for (size_t i = 0; i < programs.size(); ++i) {
    const Row& r = rows[i];
    double sum = r.compute + r.comm;
    std::printf(" %-8s %-48s %10.3f %10.3f %10.3f %10.3f %9.3f %8.2f\n", programs[i].name.c_str(),
                programs[i].shapes.c_str(), r.compute * 1e3, r.comm * 1e3, sum * 1e3, r.step * 1e3, r.step / sum,
                (sum - r.step) / std::min(r.compute, r.comm));
  }
  std::printf("#\n# dispatch cost of one step (mean of %d calls, slowest rank): the call returning the DTensor while\n"
              "# the device is busy%s, against the call + block_until_ready()\n",
              calls, device.is_cpu() ? " (its stream held)" : " (with the calls before)");
  std::printf("#%-8s %-48s %12s %12s %9s\n", "program", "what", "dispatch us", "sync us", "sync/disp");
  for (const Dispatch& d : dispatches) {
    std::string what = d.name == "matmul" ? "the sharded matmul above + redistribute to R"
                       : d.name == "tp_mlp" ? "mlp.forward(x) of one micro-batch"
                                            : "one micro-batch of the chain";
    if (d.name != "matmul" && wait) what += " (waits)";
    std::printf(" %-8s %-48s %12.1f %12.1f %9.1f%s\n", d.name.c_str(), what.c_str(), d.cost.dispatch * 1e6,
                d.cost.sync * 1e6, d.cost.sync / d.cost.dispatch,
                d.cost.waited ? "  (the dispatch waited for the device)" : "");
  }
}

int run(const Options& o) {
  using namespace sharding;
  World& world = World::get();
  int n = world.size(), rank = world.rank();
  openblas_set_num_threads(o.blas_threads);
  if (o.overlap) {  // a bad --compute or --micro ends the run before any timing
    (void)parse_compute(o.compute);
    MESHRT_CHECK_ARG(o.micro >= 1, "--micro must be at least 1, got ", o.micro);
  }
  Device device = world.device(o.device);
  Mesh mesh({{"model", n}}, device);
  // Non-blocking collectives, polled with yields and sleeps (as a server runs
  // them): on a machine with fewer cores than busy threads, a blocking MPI
  // call spins and keeps the compute stream's thread off the cores.
  if (o.abortable) mesh.set_abortable_collectives(true);
  MESHRT_CHECK_ARG(o.size >= n && o.ffn >= n, "--size (", o.size, ") and --ffn (", o.ffn,
                   ") must be at least the number of ranks (", n, ")");
  HostTensor a = random_host({o.size, o.size}, DType::kF32, 1), b = random_host({o.size, o.size}, DType::kF32, 2);
  HostTensor x = random_host({o.batch, o.hidden}, DType::kF32, 3);
  HostTensor w1 = random_host({o.hidden, o.ffn}, DType::kF32, 4), b1 = random_host({o.ffn}, DType::kF32, 5);
  HostTensor w2 = random_host({o.ffn, o.hidden}, DType::kF32, 6), b2 = random_host({o.hidden}, DType::kF32, 7);

  // One rank alone (rank 0), the others asleep on a host message.
  Channel channel = Channel::world();
  Timing one_matmul, one_mlp;
  if (rank == 0) {
    DeviceTensor da = to_device(a, device), db = to_device(b, device);
    one_matmul = time_steps([&] { (void)to_host(kernels::matmul(da, db)); }, o.warmup, o.iters);
    DeviceTensor dx = to_device(x, device), dw1 = to_device(w1, device), db1 = to_device(b1, device);
    DeviceTensor dw2 = to_device(w2, device), db2 = to_device(b2, device);
    one_mlp = time_steps([&] {
      DeviceTensor h = kernels::gelu(kernels::bias_add(kernels::matmul(dx, dw1), db1));
      (void)to_host(kernels::bias_add(kernels::matmul(h, dw2), db2));
    }, o.warmup, o.iters);
    for (int r = 1; r < n; ++r) channel.send(std::string("go"), r, 1);
  } else {
    channel.set_timeout(std::chrono::hours(1));
    channel.recv_string(0, 1);
  }

  // Sharded over all ranks.
  DTensor sa = DTensor::from_global(a, mesh, Layout(std::vector<std::vector<std::string>>{{}, {"model"}}), "a");
  DTensor sb = DTensor::from_global(b, mesh, Layout(std::vector<std::vector<std::string>>{{"model"}, {}}), "b");
  mesh.world_communicator().barrier();
  Timing sharded_matmul = time_steps([&] {
    DTensor c = matmul(sa, sb, "c");
    (void)redistribute(c, Layout::replicated(2)).local();
  }, o.warmup, o.iters);
  models::ParallelMLP mlp(mesh, "model", w1, b1, w2, b2);
  DTensor sx = DTensor::from_global(x, mesh, Layout::replicated(2), "x");
  mesh.world_communicator().barrier();
  Timing sharded_mlp = time_steps([&] { (void)mlp.forward(sx).local(); }, o.warmup, o.iters);

  // Every rank's times, reported as the slowest rank's (a step ends when all do).
  auto slowest = [&](double v) {
    DeviceTensor t = to_device(HostTensor::full<double>({1}, v), mesh.device());
    mesh.world_communicator().all_reduce(t, ReduceOp::kMax).wait();
    return to_host(t).data<double>()[0];
  };
  double mm_step = slowest(sharded_matmul.step), mm_comm = slowest(sharded_matmul.communication);
  double mlp_step = slowest(sharded_mlp.step), mlp_comm = slowest(sharded_mlp.communication);
  if (rank == 0) {
    std::printf("# meshrt-bench-sharding: %d rank(s) on %d node(s), %s, device %s, %d BLAS thread(s) per rank\n", n,
                world.node_count(), mesh.to_string().c_str(), device.to_string().c_str(), o.blas_threads);
    std::printf("#%-8s %-48s %11s %11s %8s %10s %10s\n", "program", "shapes and layouts", "1-rank ms", "sharded ms",
                "speedup", "comm ms", "comm share");
    char shapes[128];
    std::snprintf(shapes, sizeof shapes, "[%lld,%lld][R,S(model)] @ [S(model),R]", static_cast<long long>(o.size),
                  static_cast<long long>(o.size));
    std::printf(" %-8s %-48s %11.3f %11.3f %8.2f %10.3f %9.1f%%\n", "matmul", shapes, one_matmul.step * 1e3, mm_step * 1e3,
                one_matmul.step / mm_step, mm_comm * 1e3, 100 * mm_comm / mm_step);
    std::snprintf(shapes, sizeof shapes, "x[%lld,%lld] %lld->%lld->%lld column/row-parallel", static_cast<long long>(o.batch),
                  static_cast<long long>(o.hidden), static_cast<long long>(o.hidden), static_cast<long long>(o.ffn),
                  static_cast<long long>(o.hidden));
    std::printf(" %-8s %-48s %11.3f %11.3f %8.2f %10.3f %9.1f%%\n", "tp_mlp", shapes, one_mlp.step * 1e3, mlp_step * 1e3,
                one_mlp.step / mlp_step, mlp_comm * 1e3, 100 * mlp_comm / mlp_step);
    std::fflush(stdout);
  }
  if (o.overlap) run_overlap(o, mesh, sa, sb, slowest);
  return 0;
}

}  // namespace
}  // namespace meshrt::apps

int main(int argc, char** argv) {
  meshrt::World::init(&argc, &argv);
  meshrt::apps::Options o;
  meshrt::apps::CommandLine app{"meshrt-bench-sharding: time per step of a sharded matmul and a tensor-parallel MLP at the job's\n"
               "number of ranks against one rank, and the share spent in communication.\n"
               "Run it under mpirun, e.g.: mpirun -np 4 meshrt-bench-sharding --size 1024\n"
               "With --overlap, whether communication overlaps compute under asynchronous dispatch, e.g.:\n"
               "  mpirun -np 2 meshrt-bench-sharding --overlap --compute wait:2000"};
  app.add("--size", o.size, "n of the n x n matmul").show_default();
  app.add("--batch", o.batch, "rows of the MLP input (and of the chain's; per micro-batch with --overlap)").show_default();
  app.add("--hidden", o.hidden, "MLP (and chain) input and output width").show_default();
  app.add("--ffn", o.ffn, "MLP (and chain) inner width").show_default();
  app.add("-n,--iters", o.iters, "timed steps").show_default();
  app.add("-w,--warmup", o.warmup, "untimed steps").show_default();
  app.add("--blas-threads", o.blas_threads, "OpenBLAS threads per rank").show_default();
  app.add("--device", o.device, "cpu or cuda:N (default: cuda:<local rank> when GPUs exist, else cpu)");
  app.flag("--overlap", o.overlap,
           "also time tp_mlp and the chain x[batch,hidden] @ W1[hidden,ffn] @ W2[ffn,hidden], --micro "
           "micro-batches dispatched back to back per step: compute alone, communication alone, the step, "
           "their overlap; then the host cost to dispatch a step against running it synchronously");
  app.add("--micro", o.micro, "micro-batches per step of the overlap section").show_default();
  app.flag("--abortable", o.abortable,
           "run the collectives non-blocking and polled (Communicator::set_abortable_collectives), as meshrt-serve "
           "does, instead of MPI's blocking calls, which spin on a core while they wait");
  app.add("--compute", o.compute,
          "overlap section: gemm (real GEMMs) or wait:<us> (every GEMM a <us> microsecond wait queued on the "
          "device's stream, cpu device only)")
      .show_default();
  return meshrt::apps::run_mpi_app("meshrt-bench-sharding", app, argc, argv, [&] { return meshrt::apps::run(o); });
}

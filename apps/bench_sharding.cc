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
#include <cblas.h>

#include <algorithm>
#include <cstdio>
#include <functional>

#include "apps/app_common.h"
#include "apps/cli.h"
#include "comm/channel.h"
#include "comm/world.h"
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

int run(const Options& o) {
  using namespace sharding;
  World& world = World::get();
  int n = world.size(), rank = world.rank();
  openblas_set_num_threads(o.blas_threads);
  Device device = world.device(o.device);
  Mesh mesh({{"model", n}}, device);
  MESHRT_CHECK_ARG(o.size % n == 0 && o.ffn % n == 0, "--size (", o.size, ") and --ffn (", o.ffn,
                   ") must be divisible by the number of ranks (", n, ")");
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
  }
  return 0;
}

}  // namespace
}  // namespace meshrt::apps

int main(int argc, char** argv) {
  meshrt::World::init(&argc, &argv);
  meshrt::apps::Options o;
  meshrt::apps::CommandLine app{"meshrt-bench-sharding: time per step of a sharded matmul and a tensor-parallel MLP at the job's\n"
               "number of ranks against one rank, and the share spent in communication.\n"
               "Run it under mpirun, e.g.: mpirun -np 4 meshrt-bench-sharding --size 1024"};
  app.add("--size", o.size, "n of the n x n matmul").show_default();
  app.add("--batch", o.batch, "rows of the MLP input").show_default();
  app.add("--hidden", o.hidden, "MLP input and output width").show_default();
  app.add("--ffn", o.ffn, "MLP inner width").show_default();
  app.add("-n,--iters", o.iters, "timed steps").show_default();
  app.add("-w,--warmup", o.warmup, "untimed steps").show_default();
  app.add("--blas-threads", o.blas_threads, "OpenBLAS threads per rank").show_default();
  app.add("--device", o.device, "cpu or cuda:N (default: cuda:<local rank> when GPUs exist, else cpu)");
  return meshrt::apps::run_mpi_app("meshrt-bench-sharding", app, argc, argv, [&] { return meshrt::apps::run(o); });
}

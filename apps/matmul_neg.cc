// meshrt-matmul-neg: the classic distributed MatMul+Neg, y = -(x @ w), with x a
// rows x inner input of ones and w an inner x cols weight of 0.5, sharded over
// the ranks: every element of y is -(inner x 0.5), -48 for the default 128x96 @ 96x16.
// Prints the layouts, the communication each step used, and the result, and
// checks it against the same computation on one rank.
//
//   mpirun -np 4 meshrt-matmul-neg [--mesh data=2,model=2] [--x-layout "[S(data), S(model)]"]
#include <cmath>
#include <cstdio>

#include "apps/app_common.h"
#include "apps/cli.h"
#include "comm/world.h"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"
#include "sharding/ops.h"
#include "sharding/redistribute.h"
#include "sharding/trace.h"

namespace meshrt::apps {
namespace {

struct Options {
  std::string mesh, x_layout, w_layout, device;
  int64_t rows = 128, inner = 96, cols = 16;
  float x_value = 1.0f, w_value = 0.5f;
};

void print_trace(const char* step, const sharding::Trace& trace, int rank) {
  if (rank != 0) return;
  std::printf("  %s\n", step);
  std::string text = trace.to_string();
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    std::printf("    %s\n", text.substr(start, end - start).c_str());
    start = end + 1;
  }
}

int run(const Options& o) {
  using namespace sharding;
  World& world = World::get();
  int n = world.size(), rank = world.rank();
  std::string mesh_text = o.mesh;
  if (mesh_text.empty()) mesh_text = n == 4 ? "data=2,model=2" : n % 2 == 0 && n > 2 ? "data=2,model=" + std::to_string(n / 2) : "model=" + std::to_string(n);
  Device device = world.device(o.device);
  Mesh mesh(Mesh::parse_axes(mesh_text), device);
  // Defaults: shard x's rows over the first axis (data parallel) and the
  // contracted dimension over the last (tensor parallel), and w's rows with it.
  std::string first = mesh.axes().front().name, last = mesh.axes().back().name;
  Layout x_layout = o.x_layout.empty()
                        ? Layout(std::vector<std::vector<std::string>>{mesh.ndim() > 1 ? std::vector<std::string>{first}
                                                                                      : std::vector<std::string>{},
                                                                        {last}})
                        : Layout::parse(o.x_layout);
  Layout w_layout = o.w_layout.empty() ? Layout(std::vector<std::vector<std::string>>{{last}, {}}) : Layout::parse(o.w_layout);

  HostTensor x_global = HostTensor::full<float>({o.rows, o.inner}, o.x_value);
  HostTensor w_global = HostTensor::full<float>({o.inner, o.cols}, o.w_value);
  if (rank == 0) {
    std::printf("meshrt MatMul+Neg: y = -(x @ w) on %d rank(s), %s, device %s\n", n, mesh.to_string().c_str(),
                device.to_string().c_str());
    std::printf("  x: f32[%lld, %lld] of %g, layout %s\n", static_cast<long long>(o.rows),
                static_cast<long long>(o.inner), o.x_value, x_layout.to_string().c_str());
    std::printf("  w: f32[%lld, %lld] of %g, layout %s\n", static_cast<long long>(o.inner),
                static_cast<long long>(o.cols), o.w_value, w_layout.to_string().c_str());
  }
  DTensor x = DTensor::from_global(x_global, mesh, x_layout, "x");
  DTensor w = DTensor::from_global(w_global, mesh, w_layout, "w");
  if (rank == 0) {
    std::printf("  this rank's shards: x %s, w %s\n", x.local().shape().to_string().c_str(),
                w.local().shape().to_string().c_str());
  }

  Trace step1;
  DTensor xw;
  {
    TraceScope scope(step1);
    xw = matmul(x, w, "x @ w");
  }
  print_trace(("1. x @ w -> " + xw.layout().to_string()).c_str(), step1, rank);
  Trace step2;
  DTensor y;
  {
    TraceScope scope(step2);
    y = neg(xw).renamed("y");
  }
  print_trace(("2. y = -(x @ w) -> " + y.layout().to_string() +
               (y.layout().is_partial() ? " (neg is linear: a partial value stays partial)" : ""))
                  .c_str(),
              step2, rank);
  Trace step3;
  HostTensor result;
  {
    TraceScope scope(step3);
    result = y.gather();
  }
  print_trace("3. y.gather(): the whole value on every rank", step3, rank);

  // The same on one rank, with the kernels directly.
  HostTensor reference = to_host(kernels::neg(kernels::matmul(to_device(x_global, device), to_device(w_global, device))));
  double max_diff = 0;
  for (int64_t i = 0; i < result.numel(); ++i) {
    max_diff = std::max(max_diff, std::fabs(static_cast<double>(result.data<float>()[i]) - reference.data<float>()[i]));
  }
  float expected = -static_cast<float>(o.inner) * o.x_value * o.w_value;
  bool uniform = true;
  for (float v : result.span<float>()) uniform = uniform && v == expected;
  if (rank == 0) {
    std::printf("result y: f32[%lld, %lld]\n", static_cast<long long>(o.rows), static_cast<long long>(o.cols));
    for (int64_t r = 0; r < std::min<int64_t>(3, o.rows); ++r) {
      std::printf("  [");
      for (int64_t c = 0; c < std::min<int64_t>(6, o.cols); ++c) std::printf("%s%g", c ? ", " : "", result.data<float>()[r * o.cols + c]);
      std::printf("%s]\n", o.cols > 6 ? ", ..." : "");
    }
    if (o.rows > 3) std::printf("  ...\n");
    std::printf("every element is %g: %s\n", expected, uniform ? "yes" : "NO");
    std::printf("one-rank check: max |sharded - one rank| = %g: %s\n", max_diff, max_diff == 0 ? "identical" : "DIFFERENT");
  }
  return uniform && max_diff == 0 ? 0 : 1;
}

}  // namespace
}  // namespace meshrt::apps

int main(int argc, char** argv) {
  meshrt::World::init(&argc, &argv);
  meshrt::apps::Options o;
  meshrt::apps::CommandLine app{"meshrt-matmul-neg: the distributed MatMul+Neg, y = -(x @ w), sharded over the ranks.\n"
               "Run it under mpirun, e.g.: mpirun -np 4 meshrt-matmul-neg --mesh data=2,model=2"};
  app.add("--mesh", o.mesh, "mesh axes, e.g. data=2,model=2 (default: data=2,model=2 at 4 ranks, model=N otherwise)");
  app.add("--x-layout", o.x_layout, "layout of x, e.g. \"[S(data), S(model)]\" (default: rows over the first axis, columns over the last)");
  app.add("--w-layout", o.w_layout, "layout of w, e.g. \"[S(model), R]\" (default: rows over the last axis)");
  app.add("--rows", o.rows, "rows of x").show_default();
  app.add("--inner", o.inner, "columns of x = rows of w").show_default();
  app.add("--cols", o.cols, "columns of w").show_default();
  app.add("--x-value", o.x_value, "every element of x").show_default();
  app.add("--w-value", o.w_value, "every element of w").show_default();
  app.add("--device", o.device, "cpu or cuda:N (default: cuda:<local rank> when GPUs exist, else cpu)");
  return meshrt::apps::run_mpi_app("meshrt-matmul-neg", app, argc, argv, [&] { return meshrt::apps::run(o); });
}

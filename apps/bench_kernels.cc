// meshrt-bench-kernels: memory bandwidth of meshrt's memory-bound kernels
// against a device-to-device copy of the same bytes, measured in the same run.
// Every op of the elementwise table, bias_add, softmax, layernorm, rmsnorm and
// sum over the last dimension; one process.
//
//   meshrt-bench-kernels --elements 64M --dtype bf16 [--device cuda:0]
//
// Columns: op, dtype, elements, bytes moved (read + written once), time per call
// (us), GB/s, the copy's GB/s for the same bytes, and op/copy (1.00 = as fast as
// copying its bytes). On a GPU a row times --iters back-to-back calls between
// CUDA events; on the cpu, calls in a row with a host clock, until the stream
// is done. Then the dispatch cost per op: a tiny op against the same loop
// written inline, on an idle stream and (cpu) queued behind a held one.
#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <functional>
#include <mutex>
#include <sstream>
#include <vector>

#include "apps/app_common.h"
#include "apps/cli.h"
#include "comm/world.h"
#include "kernels/elementwise.h"
#include "kernels/reduction.h"

namespace meshrt::apps {
namespace {

struct Options {
  std::string elements = "16M";
  std::string dtypes = "f32,bf16";
  int64_t cols = 4096;  // row length of the row-wise ops
  int iters = 20, warmup = 3;
  std::string device;
};

// Seconds per call of call, `iters` calls in a row, until the last is done.
double time_calls(const std::function<void()>& call, const Device& device, int warmup, int iters) {
  for (int i = 0; i < warmup; ++i) call();
  Stream stream = Stream::default_for(device);
  if (device.is_cuda()) {
    Event start(device, true), end(device, true);
    start.record(stream);
    for (int i = 0; i < iters; ++i) call();
    end.record(stream);
    end.synchronize();
    return start.elapsed_ms(end) / 1e3 / iters;
  }
  stream.synchronize();
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) call();
  stream.synchronize();  // cpu kernels are queued too
  return seconds_since(start) / iters;
}

// What one op costs beyond its arithmetic: a tiny neg (256 f32) called many
// times, against the same loop written inline here (the baseline). Rows:
//   idle stream   each call on an idle stream (on the cpu: run at once, no thread hop)
//   queued        calls queued behind a held stream: the caller's cost per call,
//                 then the worker's per call once released (cpu only)
void dispatch_cost(const Device& device, int iters) {
  constexpr int64_t kTiny = 256;
  int calls = std::max(1000, iters * 100);
  DeviceTensor x = random_device({kTiny}, DType::kF32, 7, device), out = DeviceTensor::empty({kTiny}, DType::kF32, device);
  Stream stream = Stream::default_for(device);
  auto per_call_us = [&](const std::function<void()>& call) {
    for (int i = 0; i < calls / 10; ++i) call();
    stream.synchronize();
    auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < calls; ++i) call();
    stream.synchronize();
    return seconds_since(start) * 1e6 / calls;
  };
  std::vector<float> hx(kTiny, 1.5f), hy(kTiny);
  volatile float sink = 0;
  double raw = per_call_us([&] {
    for (int64_t i = 0; i < kTiny; ++i) hy[static_cast<size_t>(i)] = -hx[static_cast<size_t>(i)];
    sink = sink + hy[0];
  });
  double idle = per_call_us([&] { kernels::unary(kernels::UnaryOp::kNeg, x, out); });
  std::printf("# dispatch cost per op: neg of %lld f32, %d calls, baseline the same loop inline (%.3f us)\n",
              static_cast<long long>(kTiny), calls, raw);
  std::printf("#%-30s %12s %12s\n", "path", "us per op", "op - raw us");
  std::printf("%-31s %12.3f %12.3f\n", "idle stream", idle, idle - raw);
  if (device.is_cpu() && !cpu_streams_delayed()) {
    Stream side = Stream::create(device);
    std::mutex mutex;
    std::condition_variable cv;
    bool open = false;
    side.enqueue([&] {
      std::unique_lock<std::mutex> lock(mutex);
      cv.wait(lock, [&] { return open; });
    });
    auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < calls; ++i) kernels::unary(kernels::UnaryOp::kNeg, x, out, 1.0, &side);
    double enqueue = seconds_since(start) * 1e6 / calls;
    start = std::chrono::steady_clock::now();
    {
      std::lock_guard<std::mutex> lock(mutex);
      open = true;
    }
    cv.notify_all();
    side.synchronize();
    double worker = seconds_since(start) * 1e6 / calls;
    std::printf("%-31s %12.3f %12.3f\n", "queued: caller, per call", enqueue, enqueue - raw);
    std::printf("%-31s %12.3f %12.3f\n", "queued: worker, per call", worker, worker - raw);
  }
  std::fflush(stdout);
}

// One row of the table: what it runs on x (and y, gamma, ...) and how many bytes
// it must move (in elements of the dtype: inputs read plus the output written).
struct KernelRow {
  std::string name;
  bool floats_only;
  double elements_moved;  // per element of x
  std::function<void()> run;
};

int run(const Options& o) {
  World& world = World::get();
  Device device = world.device(o.device);
  int64_t n = parse_size(o.elements);
  MESHRT_CHECK_ARG(n > 0 && o.cols > 0 && n % o.cols == 0, "--elements (", n, ") must be a positive multiple of --cols (",
                   o.cols, ")");
  MESHRT_CHECK_ARG(o.iters > 0 && o.warmup >= 0, "--iters must be > 0 and --warmup >= 0");
  std::printf("# meshrt-bench-kernels: device %s, %lld elements (rows of %lld for the row-wise ops), %d warmup + %d timed "
              "calls per row\n",
              device.to_string().c_str(), static_cast<long long>(n), static_cast<long long>(o.cols), o.warmup, o.iters);
  std::printf("#%-22s %5s %11s %12s %10s %9s %9s %8s\n", "op", "type", "elements", "bytes", "time us", "GB/s", "copy GB/s",
              "op/copy");
  std::stringstream list(o.dtypes);
  double ratio_sum = 0;
  int ratios = 0;
  for (std::string dtype_name; std::getline(list, dtype_name, ',');) {
    DType dtype = parse_dtype(dtype_name);
    Shape shape{n / o.cols, o.cols};
    DeviceTensor x = random_device(shape, dtype, 1, device), y = random_device(shape, dtype, 2, device);
    DeviceTensor out = DeviceTensor::empty(shape, dtype, device);
    DeviceTensor vector = random_device({o.cols}, dtype, 3, device);
    DeviceTensor row_sums = DeviceTensor::empty({n / o.cols}, dtype, device);
    std::vector<KernelRow> rows;
    for (kernels::UnaryOp op : kernels::unary_ops()) {
      rows.push_back({kernels::to_string(op), false, 2, [&, op] { kernels::unary(op, x, out, 0.5); }});
    }
    for (kernels::BinaryOp op : kernels::binary_ops()) {
      rows.push_back({kernels::to_string(op), false, 3, [&, op] { kernels::binary(op, x, y, out); }});
    }
    rows.push_back({"bias_add", true, 2, [&] { kernels::bias_add(x, vector, out); }});
    rows.push_back({"softmax", true, 2, [&] { kernels::softmax(x, out); }});
    rows.push_back({"layernorm", true, 2, [&] { kernels::layernorm(x, vector, vector, 1e-5, out); }});
    rows.push_back({"rmsnorm", true, 2, [&] { kernels::rmsnorm(x, vector, 1e-6, out); }});
    rows.push_back({"sum (last dim)", false, 1, [&] { kernels::sum(x, -1, row_sums); }});
    for (const KernelRow& row : rows) {
      if (!is_floating(dtype) && row.floats_only) continue;
      double bytes = row.elements_moved * static_cast<double>(n) * static_cast<double>(size_of(dtype));
      // The copy moves the same bytes: read half, write half.
      int64_t copy_elements = static_cast<int64_t>(bytes / 2 / static_cast<double>(size_of(dtype)));
      DeviceTensor from = DeviceTensor::empty({copy_elements}, dtype, device), to = DeviceTensor::empty({copy_elements}, dtype, device);
      double op_seconds = 0, copy_seconds = 0;
      try {
        op_seconds = time_calls(row.run, device, o.warmup, o.iters);
      } catch (const Error& e) {
        if (e.kind() != ErrorKind::kShape) throw;
        continue;  // the op does not take this dtype (the table says which)
      }
      copy_seconds = time_calls([&] { copy(from, to); }, device, o.warmup, o.iters);
      double gbs = bytes / op_seconds / 1e9, copy_gbs = bytes / copy_seconds / 1e9;
      ratio_sum += gbs / copy_gbs;
      ++ratios;
      std::printf("%-23s %5s %11lld %12.0f %10.1f %9.1f %9.1f %8.3f\n", row.name.c_str(), to_string(dtype),
                  static_cast<long long>(n), bytes, op_seconds * 1e6, gbs, copy_gbs, gbs / copy_gbs);
      std::fflush(stdout);
    }
  }
  if (ratios) std::printf("# mean op/copy bandwidth ratio: %.3f over %d row(s)\n", ratio_sum / ratios, ratios);
  dispatch_cost(device, o.iters);
  return 0;
}

}  // namespace
}  // namespace meshrt::apps

int main(int argc, char** argv) {
  meshrt::World::init(&argc, &argv);
  meshrt::apps::Options o;
  meshrt::apps::CommandLine app{
      "meshrt-bench-kernels: bandwidth of the memory-bound kernels (the elementwise table, bias_add, softmax,\n"
      "layernorm, rmsnorm, sum) against a device-to-device copy of the same bytes in the same run.\n"
      "Example: meshrt-bench-kernels --elements 64M --dtype f32,bf16 --device cuda:0"};
  app.add("-e,--elements", o.elements, "elements per tensor, with K/M/G suffixes").show_default();
  app.add("-d,--dtype", o.dtypes, "comma-separated dtypes").show_default();
  app.add("--cols", o.cols, "row length of softmax, the norms and the row sums").show_default();
  app.add("-n,--iters", o.iters, "timed calls per row").show_default();
  app.add("-w,--warmup", o.warmup, "untimed calls per row").show_default();
  app.add("--device", o.device, "cpu or cuda:N (default: cuda:0 when a GPU exists, else cpu)");
  return meshrt::apps::run_mpi_app("meshrt-bench-kernels", app, argc, argv, [&] { return meshrt::apps::run(o); });
}

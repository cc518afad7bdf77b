// meshrt-bench-gemm: GFLOP/s of meshrt's GEMM against the raw library call at
// the same shapes in the same run. cpu device: cblas_sgemm / cblas_dgemm for
// f32 / f64; for bf16 a oneDNN matmul primitive created once, outside the
// timing (meshrt/raw is then the cost of meshrt's dispatch and primitive
// cache); for f16 the same with f16 where oneDNN has an f16 kernel, else
// oneDNN's f32 matmul on f32 copies of the operands made once outside the
// timing (what meshrt's f16 path runs after widening: meshrt/raw is the cost of
// the conversions). CUDA devices: cublasSgemm / cublasGemmEx. One process (a
// world of one).
//
//   meshrt-bench-gemm --sizes 512,1024,2048 --dtype f32
//   meshrt-bench-gemm --device cpu --sizes 512,1024,2048 --dtype bf16
//
// Columns: m n k, dtype, meshrt ms per GEMM and GFLOP/s (2mnk / time), the same
// for the raw call, meshrt/raw (GFLOP/s ratio, 1.00 = the same speed), and the
// largest |difference| between the two results. On a GPU the time is that of
// --iters back-to-back calls between CUDA events, over 3 rounds alternating with
// the raw call's; on the cpu each call is timed alone.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <oneapi/dnnl/dnnl.hpp>
#include <sstream>

#include "apps/app_common.h"
#include "apps/cli.h"
#include "comm/world.h"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"
#include "kernels/gemm_cpu.h"

#if MESHRT_WITH_CUDA
#include <cuda_runtime.h>

#include "device/cuda_check.h"
#include "kernels/cublas_check.h"
#endif

namespace meshrt::apps {
namespace {

struct Options {
  std::string sizes = "512,1024,2048";
  std::string dtype = "f32";
  int64_t m = 0, n = 0, k = 0;
  int iters = 10, warmup = 2;
  std::string device;
  bool no_raw = false;
};

std::vector<int64_t> parse_list(const std::string& text) {
  std::vector<int64_t> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) out.push_back(parse_size(item));
  MESHRT_CHECK_ARG(!out.empty(), "--sizes needs at least one size");
  return out;
}

double max_difference(const DeviceTensor& a, const DeviceTensor& b) {
  HostTensor x = cast_host(to_host(a), DType::kF64), y = cast_host(to_host(b), DType::kF64);
  double d = 0;
  for (int64_t i = 0; i < x.numel(); ++i) d = std::max(d, std::fabs(x.data<double>()[i] - y.data<double>()[i]));
  return d;
}

// oneDNN's matmul c = a @ b (row-major, dense) created once for a shape: the
// raw baseline of the 16-bit dtypes on the cpu. Runs on the calling thread.
struct OnednnMatmul {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  dnnl::matmul matmul;
  dnnl::memory a, b, c;
  std::string kernel;

  OnednnMatmul(dnnl::memory::data_type type, int64_t m, int64_t n, int64_t k, void* a_data, void* b_data,
               void* c_data) {
    dnnl::memory::desc ad({m, k}, type, {k, 1}), bd({k, n}, type, {n, 1}), cd({m, n}, type, {n, 1});
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(ad, bd, cd), engine);
    matmul = dnnl::matmul(pd);
    kernel = pd.impl_info_str();
    a = dnnl::memory(ad, engine, a_data);
    b = dnnl::memory(bd, engine, b_data);
    c = dnnl::memory(cd, engine, c_data);
  }
  void operator()() {
    matmul.execute(stream, {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, c}});
    stream.wait();
  }
};

// The raw call for one shape, or null when there is none for this dtype/device.
// *result is the tensor it writes (c, or an f32 tensor when it multiplies f32 copies).
std::function<void()> raw_gemm(const Device& device, const std::string& dtype_name, DType dtype,
                               int64_t m, int64_t n, int64_t k, const DeviceTensor& a,
                               const DeviceTensor& b, const DeviceTensor& c, std::string* name,
                               DeviceTensor* result) {
  int M = static_cast<int>(m), N = static_cast<int>(n), K = static_cast<int>(k);
  *result = c;
  if (device.is_cpu()) {
    if (dtype == DType::kBF16 || dtype == DType::kF16) {
      bool native = kernels::cpu::onednn_has_kernel(dtype);
      std::shared_ptr<OnednnMatmul> raw;
      if (native) {
        raw = std::make_shared<OnednnMatmul>(dtype == DType::kBF16 ? dnnl::memory::data_type::bf16
                                                                   : dnnl::memory::data_type::f16,
                                             m, n, k, a.raw_data(), b.raw_data(), c.raw_data());
        *name = "oneDNN matmul, " + std::string(to_string(dtype)) + ", kernel " + raw->kernel +
                ", created once outside the timing";
      } else {
        // The copies are made here, once (kernels are queued: wait for them).
        DeviceTensor a32 = kernels::cast(a, DType::kF32), b32 = kernels::cast(b, DType::kF32);
        *result = DeviceTensor::zeros({m, n}, DType::kF32, device);
        Stream::default_for(device).synchronize();
        raw = std::make_shared<OnednnMatmul>(dnnl::memory::data_type::f32, m, n, k, a32.raw_data(), b32.raw_data(),
                                             result->raw_data());
        *name = "oneDNN matmul on f32 copies (oneDNN has no f16 matmul here), kernel " + raw->kernel +
                ", created once and the copies made outside the timing";
        return [raw, a32, b32] { (*raw)(); };
      }
      return [raw] { (*raw)(); };
    }
    if (dtype == DType::kF32) {
      *name = "cblas_sgemm";
      return [=] {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, static_cast<const float*>(a.raw_data()), K,
                    static_cast<const float*>(b.raw_data()), N, 0.0f, static_cast<float*>(c.raw_data()), N);
      };
    }
    if (dtype == DType::kF64) {
      *name = "cblas_dgemm";
      return [=] {
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0, static_cast<const double*>(a.raw_data()), K,
                    static_cast<const double*>(b.raw_data()), N, 0.0, static_cast<double*>(c.raw_data()), N);
      };
    }
    *name = "none";
    return nullptr;
  }
#if MESHRT_WITH_CUDA
  static cublasHandle_t handle = [] {
    cublasHandle_t h = nullptr;
    MESHRT_CUBLAS_CHECK(cublasCreate(&h));
    return h;
  }();
  MESHRT_CUBLAS_CHECK(cublasSetStream(handle, static_cast<cudaStream_t>(Stream::default_for(device).native_handle())));
  // Row-major C = A B is column-major C^T = B^T A^T: pass B first.
  if (dtype == DType::kF32 && dtype_name != "tf32") {
    *name = "cublasSgemm";
    return [=] {
      float one = 1, zero = 0;
      MESHRT_CUBLAS_CHECK(cublasSgemm(handle, CUBLAS_OP_N, CUBLAS_OP_N, N, M, K, &one, static_cast<const float*>(b.raw_data()), N,
                                     static_cast<const float*>(a.raw_data()), K, &zero, static_cast<float*>(c.raw_data()), N));
    };
  }
  cudaDataType type = dtype == DType::kF16 ? CUDA_R_16F : dtype == DType::kBF16 ? CUDA_R_16BF
                                                                               : dtype == DType::kF64 ? CUDA_R_64F : CUDA_R_32F;
  cublasComputeType_t compute = dtype == DType::kF64 ? CUBLAS_COMPUTE_64F
                                : dtype_name == "tf32" ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  *name = "cublasGemmEx";
  return [=] {
    double one_d = 1, zero_d = 0;
    float one_f = 1, zero_f = 0;
    const void* alpha = dtype == DType::kF64 ? static_cast<const void*>(&one_d) : &one_f;
    const void* beta = dtype == DType::kF64 ? static_cast<const void*>(&zero_d) : &zero_f;
    MESHRT_CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, N, M, K, alpha, b.raw_data(), type, N, a.raw_data(),
                                    type, K, beta, c.raw_data(), type, N, compute, CUBLAS_GEMM_DEFAULT));
  };
#else
  *name = "none";
  return nullptr;
#endif
}

// Seconds per call of ours and theirs (null: not run). On the cpu each call is
// timed alone, alternating one call of each so that drifts of the machine fall
// on both alike. On a GPU the calls return at once: `iters` calls are queued
// back to back between two CUDA events, alternating such rounds of ours and
// theirs (no host synchronisation in the figure; launch gaps count only when a
// call's GPU time is shorter than its host time, as for small shapes).
std::pair<double, double> time_pair(const std::function<void()>& ours, const std::function<void()>& theirs,
                                    const Device& device, int warmup, int iters) {
  Stream stream = Stream::default_for(device);
  if (device.is_cuda()) {
    auto round = [&](const std::function<void()>& call, int calls) {
      Event start(device, true), end(device, true);
      start.record(stream);
      for (int i = 0; i < calls; ++i) call();
      end.record(stream);
      end.synchronize();
      return start.elapsed_ms(end) / 1e3;
    };
    if (warmup > 0) {
      round(ours, warmup);
      if (theirs) round(theirs, warmup);
    }
    constexpr int kRounds = 3;
    double a = 0, b = 0;
    for (int r = 0; r < kRounds; ++r) {
      a += round(ours, iters);
      if (theirs) b += round(theirs, iters);
    }
    return {a / (kRounds * iters), b / (kRounds * iters)};
  }
  auto timed = [&](const std::function<void()>& call) {
    auto start = std::chrono::steady_clock::now();
    call();
    stream.synchronize();  // meshrt's cpu GEMM is queued on the stream (a no-op after the raw call)
    return seconds_since(start);
  };
  for (int i = 0; i < warmup; ++i) {
    timed(ours);
    if (theirs) timed(theirs);
  }
  double a = 0, b = 0;
  for (int i = 0; i < iters; ++i) {
    a += timed(ours);
    if (theirs) b += timed(theirs);
  }
  return {a / iters, b / iters};
}

int run(const Options& o) {
  World& world = World::get();
  Device device = world.device(o.device);
  std::string dtype_name = o.dtype;
  DType dtype = dtype_name == "tf32" ? DType::kF32 : parse_dtype(dtype_name);
  MESHRT_CHECK_ARG(is_floating(dtype), "--dtype must be f32, tf32, f64, f16 or bf16, got ", o.dtype);
  MESHRT_CHECK_ARG(o.iters > 0 && o.warmup >= 0, "--iters must be > 0 and --warmup >= 0");
  std::vector<std::array<int64_t, 3>> shapes;
  if (o.m || o.n || o.k) {
    MESHRT_CHECK_ARG(o.m > 0 && o.n > 0 && o.k > 0, "-m, -n and -k must all be given and positive");
    shapes.push_back({o.m, o.n, o.k});
  } else {
    for (int64_t s : parse_list(o.sizes)) shapes.push_back({s, s, s});
  }
  kernels::GemmOptions options;
  options.math = dtype_name == "tf32" ? kernels::MathMode::kTf32 : kernels::MathMode::kDefault;

  std::printf("# meshrt-bench-gemm: device %s, dtype %s, %d warmup + %d timed iterations per shape\n",
              device.to_string().c_str(), dtype_name.c_str(), o.warmup, o.iters);
  bool header = false;
  double ratio_sum = 0;
  int ratios = 0;
  for (auto [m, n, k] : shapes) {
    DeviceTensor a = random_device({m, k}, dtype, 1, device), b = random_device({k, n}, dtype, 2, device);
    DeviceTensor c = DeviceTensor::zeros({m, n}, dtype, device), c_raw = DeviceTensor::zeros({m, n}, dtype, device);
    std::string raw_name;
    DeviceTensor raw_result;
    auto raw = o.no_raw ? std::function<void()>()
                        : raw_gemm(device, dtype_name, dtype, m, n, k, a, b, c_raw, &raw_name, &raw_result);
    if (!header) {
      if (device.is_cpu()) {
        for (const kernels::cpu::GemmRow& row : kernels::cpu::gemm_rows()) {
          if (row.dtype != dtype) continue;
          std::printf("# meshrt: %s", row.library);
          if (row.run == kernels::cpu::onednn_gemm) {
            std::printf(", kernel %s", kernels::cpu::onednn_gemm_kernel(dtype, m, n, k).c_str());
          }
          std::printf("\n");
        }
      }
      std::printf("# raw baseline: %s\n", o.no_raw ? "skipped (--no-raw)" : raw_name.c_str());
      std::printf("#%7s %7s %7s %5s %10s %10s %10s %10s %11s %10s\n", "m", "n", "k", "type", "meshrt ms", "GFLOP/s",
                  "raw ms", "GFLOP/s", "meshrt/raw", "max|diff|");
      header = true;
    }
    double flops = 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
    auto [ours, theirs] = time_pair([&] { kernels::gemm(a, b, c, options); }, raw, device, o.warmup, o.iters);
    std::printf("%8lld %7lld %7lld %5s %10.3f %10.1f", static_cast<long long>(m), static_cast<long long>(n),
                static_cast<long long>(k), dtype_name.c_str(), ours * 1e3, flops / ours / 1e9);
    if (raw) {
      double ratio = theirs / ours;  // GFLOP/s ratio
      ratio_sum += ratio;
      ++ratios;
      std::printf(" %10.3f %10.1f %11.3f %10.3g\n", theirs * 1e3, flops / theirs / 1e9, ratio,
                  max_difference(c, raw_result));
    } else {
      std::printf(" %10s %10s %11s %10s\n", "N/A", "N/A", "N/A", "N/A");
    }
    std::fflush(stdout);
  }
  if (ratios) std::printf("# mean meshrt/raw GFLOP/s ratio: %.3f over %d shape(s)\n", ratio_sum / ratios, ratios);
  return 0;
}

}  // namespace
}  // namespace meshrt::apps

int main(int argc, char** argv) {
  meshrt::World::init(&argc, &argv);
  meshrt::apps::Options o;
  meshrt::apps::CommandLine app{
      "meshrt-bench-gemm: GFLOP/s of meshrt's GEMM against the raw library call at the same shapes\n"
      "(cpu: cblas_sgemm/cblas_dgemm for f32/f64, a oneDNN matmul created once for bf16 and f16 (f16: on f32\n"
      "copies where oneDNN has no f16 kernel); CUDA devices: cublasSgemm/cublasGemmEx).\n"
      "Example: meshrt-bench-gemm --device cpu --sizes 1024,2048 --dtype bf16"};
  app.add("-s,--sizes", o.sizes, "square sizes m = n = k, comma-separated, K/M suffixes allowed")
      .show_default();
  app.add("-m", o.m, "rows of a and c (with -n and -k instead of --sizes)");
  app.add("-n", o.n, "columns of b and c");
  app.add("-k", o.k, "the contracted extent");
  app.add("-d,--dtype", o.dtype, "f32, tf32 (f32 on TF32 tensor cores), f64, f16, bf16").show_default();
  app.add("-i,--iters", o.iters, "timed iterations per shape").show_default();
  app.add("-w,--warmup", o.warmup, "untimed iterations per shape").show_default();
  app.add("--device", o.device, "cpu or cuda:N (default: cuda:0 when a GPU exists, else cpu)");
  app.flag("--no-raw", o.no_raw, "skip the raw library baseline");
  return meshrt::apps::run_mpi_app("meshrt-bench-gemm", app, argc, argv, [&] { return meshrt::apps::run(o); });
}

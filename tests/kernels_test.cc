// kernels/: every op on the cpu against a float64 reference computed here, and
// every CUDA kernel against its cpu twin (skipped with the reason without a GPU).
//
// Tolerances (rtol, atol) by dtype, for results rounded once to the dtype:
//   f32 (1e-5, 1e-6)  f64 (1e-12, 1e-12)  f16 (2e-3, 1e-3)  bf16 (1.6e-2, 1e-2)  ints exact.
// GEMM and reductions scale atol by sqrt(k) for k accumulated terms.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>

#include "kernels/elementwise.h"
#include "kernels/gemm.h"
#include "kernels/reduction.h"
#include "test_util.h"

namespace meshrt::kernels {
namespace {

using meshrt::testing::all_close;
using meshrt::testing::random_tensor;
using meshrt::testing::throws_error;

struct Tolerance {
  double rtol, atol;
};

Tolerance tolerance(DType dtype, double terms = 1) {
  double s = std::sqrt(terms);
  switch (dtype) {
    case DType::kF32: return {1e-5, 1e-6 * s};
    case DType::kF64: return {1e-12, 1e-12 * s};
    case DType::kF16: return {2e-3, 1e-3 * s};
    case DType::kBF16: return {1.6e-2, 1e-2 * s};
    default: return {0, 0};
  }
}

const std::vector<DType> kFloats = {DType::kF32, DType::kF64, DType::kF16, DType::kBF16};
const std::vector<DType> kNumerics = {DType::kF32, DType::kF64, DType::kF16,
                                      DType::kBF16, DType::kI32, DType::kI64};

// A float64 reference: f(values) over elements, then rounded to dtype.
HostTensor map_reference(const HostTensor& x, const std::function<double(double)>& f) {
  HostTensor d = cast_host(x, DType::kF64);
  for (double& v : d.span<double>()) v = f(v);
  return cast_host(d, x.dtype());
}

DeviceTensor on(const HostTensor& h, const Device& device = Device::cpu()) { return to_device(h, device); }

// ---------------------------------------------------------------- elementwise

struct UnaryCase {
  UnaryOp op;
  double alpha;
  std::function<double(double)> reference;
  bool integers;
};

std::vector<UnaryCase> unary_cases() {
  return {
      {UnaryOp::kNeg, 1, [](double x) { return -x; }, true},
      {UnaryOp::kRelu, 1, [](double x) { return x > 0 ? x : 0; }, true},
      {UnaryOp::kGelu, 1, [](double x) { return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0))); }, false},
      {UnaryOp::kSilu, 1, [](double x) { return x / (1 + std::exp(-x)); }, false},
      {UnaryOp::kScale, -2.5, [](double x) { return -2.5 * x; }, false},
  };
}

TEST(Elementwise, UnaryOpsMatchReferenceOnCpu) {
  for (const UnaryCase& c : unary_cases()) {
    for (DType dtype : c.integers ? kNumerics : kFloats) {
      HostTensor x = random_tensor({37, 29}, dtype, 11, -4, 4);
      DeviceTensor out = DeviceTensor::empty(x.shape(), dtype);
      unary(c.op, on(x), out, c.alpha);
      Tolerance t = tolerance(dtype);
      EXPECT_TRUE(all_close(to_host(out), map_reference(x, c.reference), t.rtol, t.atol))
          << to_string(c.op) << " " << to_string(dtype);
    }
  }
}

TEST(Elementwise, ConvenienceFormsAndInPlace) {
  HostTensor x = HostTensor::from_vector<float>({-2, -0.5, 0, 3}, {4});
  EXPECT_EQ(to_host(neg(on(x))).to_vector<float>(), (std::vector<float>{2, 0.5, 0, -3}));
  EXPECT_EQ(to_host(relu(on(x))).to_vector<float>(), (std::vector<float>{0, 0, 0, 3}));
  EXPECT_EQ(to_host(scale(on(x), 2)).to_vector<float>(), (std::vector<float>{-4, -1, 0, 6}));
  DeviceTensor d = on(x);
  unary(UnaryOp::kNeg, d, d);  // in place
  EXPECT_EQ(to_host(d).to_vector<float>(), (std::vector<float>{2, 0.5, 0, -3}));
  EXPECT_NEAR(to_host(gelu(on(x))).to_vector<float>()[3], 2.99595031, 1e-6);
  EXPECT_NEAR(to_host(silu(on(x))).to_vector<float>()[0], -0.23840584, 1e-6);
}

TEST(Elementwise, BinaryAndBiasAdd) {
  for (DType dtype : kNumerics) {
    HostTensor a = random_tensor({3, 5, 7}, dtype, 1, -50, 50);
    HostTensor b = random_tensor({3, 5, 7}, dtype, 2, -50, 50);
    std::vector<double> va = testing::values(a), vb = testing::values(b);
    HostTensor sum_ref = cast_host(a, DType::kF64), prod_ref = cast_host(a, DType::kF64);
    for (size_t i = 0; i < va.size(); ++i) {
      sum_ref.data<double>()[i] = va[i] + vb[i];
      prod_ref.data<double>()[i] = va[i] * vb[i];
    }
    Tolerance t = tolerance(dtype);
    EXPECT_TRUE(all_close(to_host(add(on(a), on(b))), cast_host(sum_ref, dtype), t.rtol, t.atol)) << to_string(dtype);
    EXPECT_TRUE(all_close(to_host(mul(on(a), on(b))), cast_host(prod_ref, dtype), t.rtol, t.atol)) << to_string(dtype);
  }
  for (DType dtype : kFloats) {
    HostTensor x = random_tensor({4, 6}, dtype, 3), bias = random_tensor({6}, dtype, 4);
    HostTensor ref = cast_host(x, DType::kF64);
    std::vector<double> vb = testing::values(bias);
    for (int64_t i = 0; i < ref.numel(); ++i) ref.data<double>()[i] += vb[static_cast<size_t>(i % 6)];
    Tolerance t = tolerance(dtype);
    EXPECT_TRUE(all_close(to_host(bias_add(on(x), on(bias))), cast_host(ref, dtype), t.rtol, t.atol));
  }
}

TEST(Elementwise, CastBetweenEveryPairOfDtypes) {
  HostTensor source = HostTensor::from_vector<double>({-3.75, -1, 0, 0.5, 1, 2.25, 100, 7}, {8});
  for (DType from : kAllDTypes) {
    HostTensor x = cast_host(source, from);
    for (DType to : kAllDTypes) {
      HostTensor expected = cast_host(x, to);
      HostTensor got = to_host(cast(on(x), to));
      EXPECT_TRUE(all_close(got, expected, 0, 0)) << to_string(from) << " -> " << to_string(to);
    }
  }
}

TEST(Elementwise, FloatToIntegerCastsSaturateTheSameEverywhere) {
  HostTensor x = HostTensor::from_vector<float>({-5.3f, 300.0f, std::nanf(""), 3e9f, -3e9f, 7.9f}, {6});
  EXPECT_EQ(to_host(cast(on(x), DType::kU8)).to_vector<uint8_t>(), (std::vector<uint8_t>{0, 255, 0, 255, 0, 7}));
  EXPECT_EQ(to_host(cast(on(x), DType::kI32)).to_vector<int32_t>(),
            (std::vector<int32_t>{-5, 300, 0, INT32_MAX, INT32_MIN, 7}));
  EXPECT_EQ(cast_host(x, DType::kI32).to_vector<int32_t>(), to_host(cast(on(x), DType::kI32)).to_vector<int32_t>());
  // Integers to integers wrap, as in C++.
  HostTensor i = HostTensor::from_vector<int64_t>({-1, 256, 257}, {3});
  EXPECT_EQ(to_host(cast(on(i), DType::kU8)).to_vector<uint8_t>(), (std::vector<uint8_t>{255, 0, 1}));
  EXPECT_EQ(cast_host(i, DType::kU8).to_vector<uint8_t>(), (std::vector<uint8_t>{255, 0, 1}));
}

TEST(Elementwise, ErrorsNameTheOpAndTheTensors) {
  DeviceTensor i = on(random_tensor({4}, DType::kI32, 1, 0, 9));
  DeviceTensor f = on(random_tensor({4}, DType::kF32, 1));
  DeviceTensor g = on(random_tensor({5}, DType::kF32, 1));
  EXPECT_TRUE(throws_error(ErrorKind::kShape, [&] { gelu(i); }, {"gelu", "i32[4]", "f32, f64, f16, bf16"}));
  EXPECT_TRUE(throws_error(ErrorKind::kShape, [&] { add(f, g); }, {"add", "f32[4]", "f32[5]"}));
  EXPECT_TRUE(throws_error(ErrorKind::kShape, [&] { bias_add(f, g); }, {"bias_add", "bias must be f32[4]"}));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { neg(DeviceTensor()); }, {"undefined"}));
  if (cuda_device_count() == 0) {
    EXPECT_TRUE(throws_error(ErrorKind::kUnavailable,
                             [&] { neg(DeviceTensor::empty({4}, DType::kF32, Device::cuda(0))); },
                             {"cuda:0"}));
  }
}

// ---------------------------------------------------------------- reductions

HostTensor sum_reference(const HostTensor& x, int axis) {
  int a = x.shape().axis(axis);
  int64_t outer = x.shape().outer(a), n = x.dim(a), inner = x.shape().inner(a);
  std::vector<int64_t> dims;
  for (int i = 0; i < x.ndim(); ++i) if (i != a) dims.push_back(x.dim(i));
  HostTensor out = HostTensor::zeros(Shape(dims), DType::kF64);
  std::vector<double> v = testing::values(x);
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t k = 0; k < n; ++k)
      for (int64_t i = 0; i < inner; ++i)
        out.data<double>()[o * inner + i] += v[static_cast<size_t>((o * n + k) * inner + i)];
  return cast_host(out, x.dtype());
}

TEST(Reduction, SumOverEveryAxis) {
  for (DType dtype : kNumerics) {
    HostTensor x = random_tensor({6, 33, 5}, dtype, 7, -8, 8);
    for (int axis : {0, 1, 2, -1}) {
      Tolerance t = tolerance(dtype, x.dim(axis));
      EXPECT_TRUE(all_close(to_host(sum(on(x), axis)), sum_reference(x, axis), t.rtol, t.atol))
          << to_string(dtype) << " axis " << axis;
    }
  }
}

HostTensor rows_reference(const HostTensor& x, const std::function<void(std::vector<double>&)>& f) {
  HostTensor d = cast_host(x, DType::kF64);
  int64_t cols = x.dim(-1);
  for (int64_t r = 0; r < x.numel() / cols; ++r) {
    std::vector<double> row(d.data<double>() + r * cols, d.data<double>() + (r + 1) * cols);
    f(row);
    std::copy(row.begin(), row.end(), d.data<double>() + r * cols);
  }
  return cast_host(d, x.dtype());
}

TEST(Reduction, SoftmaxLayernormRmsnorm) {
  for (DType dtype : kFloats) {
    for (int64_t cols : {1, 7, 300, 1025}) {
      HostTensor x = random_tensor({5, cols}, dtype, 9, -6, 6);
      HostTensor gamma = random_tensor({cols}, dtype, 10, 0.5, 1.5);
      HostTensor beta = random_tensor({cols}, dtype, 11);
      std::vector<double> g = testing::values(gamma), b = testing::values(beta);
      Tolerance t = tolerance(dtype, 4);
      HostTensor soft = rows_reference(x, [](std::vector<double>& r) {
        double m = *std::max_element(r.begin(), r.end()), s = 0;
        for (double& v : r) s += (v = std::exp(v - m));
        for (double& v : r) v /= s;
      });
      EXPECT_TRUE(all_close(to_host(softmax(on(x))), soft, t.rtol, t.atol)) << to_string(dtype) << " " << cols;
      HostTensor ln = rows_reference(x, [&](std::vector<double>& r) {
        double mean = 0, var = 0;
        for (double v : r) mean += v;
        mean /= static_cast<double>(r.size());
        for (double v : r) var += (v - mean) * (v - mean);
        var /= static_cast<double>(r.size());
        for (size_t c = 0; c < r.size(); ++c) r[c] = (r[c] - mean) / std::sqrt(var + 1e-5) * g[c] + b[c];
      });
      EXPECT_TRUE(all_close(to_host(layernorm(on(x), on(gamma), on(beta), 1e-5)), ln, t.rtol, t.atol * 4))
          << to_string(dtype) << " " << cols;
      HostTensor rms = rows_reference(x, [&](std::vector<double>& r) {
        double sq = 0;
        for (double v : r) sq += v * v;
        double inv = 1 / std::sqrt(sq / static_cast<double>(r.size()) + 1e-6);
        for (size_t c = 0; c < r.size(); ++c) r[c] = r[c] * inv * g[c];
      });
      EXPECT_TRUE(all_close(to_host(rmsnorm(on(x), on(gamma), 1e-6)), rms, t.rtol, t.atol * 4))
          << to_string(dtype) << " " << cols;
    }
  }
}

TEST(Reduction, Errors) {
  DeviceTensor x = on(random_tensor({4, 6}, DType::kF32, 1));
  DeviceTensor wrong = on(random_tensor({5}, DType::kF32, 1));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { sum(x, 2); }, {"axis 2", "[4, 6]"}));
  EXPECT_TRUE(throws_error(ErrorKind::kShape, [&] { layernorm(x, wrong, wrong); },
                           {"layernorm", "gamma must be f32[6]", "f32[5]"}));
  EXPECT_TRUE(throws_error(ErrorKind::kShape,
                           [&] { softmax(on(random_tensor({4}, DType::kI64, 1, 0, 3))); },
                           {"softmax", "i64[4]"}));
}

// ---------------------------------------------------------------- GEMM

HostTensor gemm_reference(const HostTensor& a, const HostTensor& b, const GemmOptions& o,
                          const HostTensor* c_in) {
  auto dims = [](const HostTensor& t) {
    return t.ndim() == 2 ? std::array<int64_t, 3>{1, t.dim(0), t.dim(1)}
                         : std::array<int64_t, 3>{t.dim(0), t.dim(1), t.dim(2)};
  };
  auto da = dims(a), db = dims(b);
  int64_t m = o.transpose_a ? da[2] : da[1], k = o.transpose_a ? da[1] : da[2];
  int64_t n = o.transpose_b ? db[1] : db[2];
  int64_t batch = std::max(da[0], db[0]);
  bool batched = a.ndim() == 3 || b.ndim() == 3;
  std::vector<double> va = testing::values(a), vb = testing::values(b);
  HostTensor out = batched ? HostTensor::zeros({batch, m, n}, DType::kF64) : HostTensor::zeros({m, n}, DType::kF64);
  std::vector<double> vc = c_in ? testing::values(*c_in) : std::vector<double>(static_cast<size_t>(out.numel()));
  for (int64_t p = 0; p < batch; ++p) {
    int64_t pa = a.ndim() == 3 ? p : 0, pb = b.ndim() == 3 ? p : 0;
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double s = 0;
        for (int64_t q = 0; q < k; ++q) {
          double x = o.transpose_a ? va[static_cast<size_t>(pa * k * m + q * m + i)] : va[static_cast<size_t>(pa * m * k + i * k + q)];
          double y = o.transpose_b ? vb[static_cast<size_t>(pb * n * k + j * k + q)] : vb[static_cast<size_t>(pb * k * n + q * n + j)];
          s += x * y;
        }
        size_t at = static_cast<size_t>(p * m * n + i * n + j);
        out.data<double>()[at] = o.alpha * s + o.beta * vc[at];
      }
  }
  return cast_host(out, a.dtype());
}

struct GemmCase {
  std::vector<int64_t> a, b;
  bool ta, tb;
  double alpha, beta;
};

std::vector<GemmCase> gemm_cases() {
  return {
      {{17, 9}, {9, 13}, false, false, 1, 0},
      {{9, 17}, {9, 13}, true, false, 1, 0},
      {{17, 9}, {13, 9}, false, true, 0.5, 0},
      {{9, 17}, {13, 9}, true, true, 1, 0.75},
      {{3, 17, 9}, {3, 9, 13}, false, false, 1, 0},   // strided batches
      {{3, 17, 9}, {9, 13}, false, false, 2, 0.5},    // b shared by every batch
      {{17, 9}, {3, 13, 9}, false, true, 1, 0},       // a shared by every batch
      {{128, 96}, {96, 16}, false, false, 1, 0},      // the MatMul+Neg shapes
  };
}

TEST(Gemm, MatchesReferenceOnCpu) {
  for (DType dtype : kFloats) {
    uint64_t seed = 1;
    for (const GemmCase& g : gemm_cases()) {
      HostTensor a = random_tensor(Shape(g.a), dtype, seed++), b = random_tensor(Shape(g.b), dtype, seed++);
      GemmOptions o{g.ta, g.tb, g.alpha, g.beta};
      DeviceTensor c = matmul(on(a), on(b), o);  // shape of the result
      HostTensor c0 = random_tensor(c.shape(), dtype, seed++);
      DeviceTensor cd = on(c0);
      gemm(on(a), on(b), cd, o);
      int64_t k = g.ta ? g.a[g.a.size() - 2] : g.a.back();
      Tolerance t = tolerance(dtype, static_cast<double>(k));
      EXPECT_TRUE(all_close(to_host(cd), gemm_reference(a, b, o, &c0), t.rtol, t.atol))
          << to_string(dtype) << " a" << Shape(g.a) << " b" << Shape(g.b) << " ta " << g.ta << " tb " << g.tb;
    }
  }
}

TEST(Gemm, Tf32ModeIsExactF32OnCpuAndOnesGiveMinus48AfterNeg) {
  DeviceTensor x = on(HostTensor::full<float>({128, 96}, 1.0f));
  DeviceTensor w = on(HostTensor::full<float>({96, 16}, 0.5f));
  DeviceTensor y = neg(matmul(x, w, GemmOptions{.math = MathMode::kTf32}));
  for (float v : to_host(y).span<float>()) ASSERT_EQ(v, -48.0f);
}

TEST(Gemm, ErrorsNameBothOperands) {
  DeviceTensor a = on(random_tensor({4, 5}, DType::kF32, 1)), b = on(random_tensor({6, 3}, DType::kF32, 2));
  EXPECT_TRUE(throws_error(ErrorKind::kShape, [&] { matmul(a, b); }, {"k = 5", "k = 6", "f32[4, 5]", "f32[6, 3]"}));
  DeviceTensor bi = on(random_tensor({5, 3}, DType::kI32, 2, 0, 5));
  EXPECT_TRUE(throws_error(ErrorKind::kShape, [&] { matmul(on(random_tensor({4, 5}, DType::kI32, 1, 0, 5)), bi); },
                           {"gemm does not support", "i32"}));
  DeviceTensor c = DeviceTensor::empty({4, 4}, DType::kF32);
  EXPECT_TRUE(throws_error(ErrorKind::kShape, [&] { gemm(a, on(random_tensor({5, 3}, DType::kF32, 3)), c); },
                           {"c is f32[4, 4]", "is [4, 3]"}));
  EXPECT_TRUE(throws_error(ErrorKind::kShape,
                           [&] { matmul(on(random_tensor({2, 4, 5}, DType::kF32, 1)), on(random_tensor({3, 5, 2}, DType::kF32, 1))); },
                           {"batch extents differ"}));
}

// ---------------------------------------------------------------- CUDA twins

const Device kGpu = Device::cuda(0);

TEST(CudaKernels, UnaryBinaryCastMatchCpu) {
  MESHRT_REQUIRE_CUDA();
  for (const UnaryCase& c : unary_cases()) {
    for (DType dtype : c.integers ? kNumerics : kFloats) {
      HostTensor x = random_tensor({1000, 37}, dtype, 21, -4, 4);
      DeviceTensor cpu_out = DeviceTensor::empty(x.shape(), dtype), gpu_out = DeviceTensor::empty(x.shape(), dtype, kGpu);
      unary(c.op, on(x), cpu_out, c.alpha);
      unary(c.op, on(x, kGpu), gpu_out, c.alpha);
      Tolerance t = tolerance(dtype);
      EXPECT_TRUE(all_close(to_host(gpu_out), to_host(cpu_out), 2 * t.rtol, 2 * t.atol)) << to_string(c.op) << " " << to_string(dtype);
    }
  }
  for (DType dtype : kNumerics) {
    HostTensor a = random_tensor({333, 7}, dtype, 1, -50, 50), b = random_tensor({333, 7}, dtype, 2, -50, 50);
    Tolerance t = tolerance(dtype);
    EXPECT_TRUE(all_close(to_host(add(on(a, kGpu), on(b, kGpu))), to_host(add(on(a), on(b))), t.rtol, t.atol));
    EXPECT_TRUE(all_close(to_host(mul(on(a, kGpu), on(b, kGpu))), to_host(mul(on(a), on(b))), t.rtol, t.atol));
  }
  for (DType dtype : kFloats) {
    HostTensor x = random_tensor({9, 130}, dtype, 3), bias = random_tensor({130}, dtype, 4);
    Tolerance t = tolerance(dtype);
    EXPECT_TRUE(all_close(to_host(bias_add(on(x, kGpu), on(bias, kGpu))), to_host(bias_add(on(x), on(bias))), t.rtol, t.atol));
  }
  HostTensor source = random_tensor({4097}, DType::kF64, 5, -300, 300);
  for (DType from : kAllDTypes) {
    HostTensor x = cast_host(source, from);
    for (DType to : kAllDTypes) {
      EXPECT_TRUE(all_close(to_host(cast(on(x, kGpu), to)), to_host(cast(on(x), to)), 0, 0))
          << to_string(from) << " -> " << to_string(to);
    }
  }
}

TEST(CudaKernels, ReductionsMatchCpu) {
  MESHRT_REQUIRE_CUDA();
  for (DType dtype : kNumerics) {
    HostTensor x = random_tensor({7, 300, 33}, dtype, 8, -8, 8);
    for (int axis : {0, 1, 2}) {
      Tolerance t = tolerance(dtype, x.dim(axis));
      EXPECT_TRUE(all_close(to_host(sum(on(x, kGpu), axis)), to_host(sum(on(x), axis)), 2 * t.rtol, 2 * t.atol))
          << to_string(dtype) << " axis " << axis;
    }
  }
  for (DType dtype : kFloats) {
    for (int64_t cols : {1, 31, 256, 4099}) {
      HostTensor x = random_tensor({67, cols}, dtype, 9, -6, 6);
      HostTensor g = random_tensor({cols}, dtype, 10, 0.5, 1.5), b = random_tensor({cols}, dtype, 11);
      Tolerance t = tolerance(dtype, 4);
      EXPECT_TRUE(all_close(to_host(softmax(on(x, kGpu))), to_host(softmax(on(x))), 2 * t.rtol, 2 * t.atol));
      EXPECT_TRUE(all_close(to_host(layernorm(on(x, kGpu), on(g, kGpu), on(b, kGpu))),
                            to_host(layernorm(on(x), on(g), on(b))), 2 * t.rtol, 8 * t.atol));
      EXPECT_TRUE(all_close(to_host(rmsnorm(on(x, kGpu), on(g, kGpu))), to_host(rmsnorm(on(x), on(g))),
                            2 * t.rtol, 8 * t.atol));
    }
  }
}

TEST(CudaKernels, GemmMatchesCpu) {
  MESHRT_REQUIRE_CUDA();
  for (DType dtype : kFloats) {
    uint64_t seed = 100;
    for (const GemmCase& g : gemm_cases()) {
      HostTensor a = random_tensor(Shape(g.a), dtype, seed++), b = random_tensor(Shape(g.b), dtype, seed++);
      GemmOptions o{g.ta, g.tb, g.alpha, g.beta};
      HostTensor c0 = random_tensor(matmul(on(a), on(b), o).shape(), dtype, seed++);
      DeviceTensor c_cpu = on(c0), c_gpu = on(c0, kGpu);
      gemm(on(a), on(b), c_cpu, o);
      gemm(on(a, kGpu), on(b, kGpu), c_gpu, o);
      int64_t k = g.ta ? g.a[g.a.size() - 2] : g.a.back();
      Tolerance t = tolerance(dtype, static_cast<double>(k));
      EXPECT_TRUE(all_close(to_host(c_gpu), to_host(c_cpu), 2 * t.rtol, 2 * t.atol)) << to_string(dtype);
    }
  }
  // TF32 keeps 10 mantissa bits: f32 results within ~1e-3 relative.
  HostTensor a = random_tensor({64, 256}, DType::kF32, 1), b = random_tensor({256, 32}, DType::kF32, 2);
  GemmOptions tf32{.math = MathMode::kTf32};
  EXPECT_TRUE(all_close(to_host(matmul(on(a, kGpu), on(b, kGpu), tf32)), to_host(matmul(on(a), on(b))), 5e-3, 5e-3 * 16));
}

}  // namespace
}  // namespace meshrt::kernels

// kernels/: one table of op cases (ggml's test-backend-ops shape), each run on
// every device there is against a float64 reference computed here: the cpu
// always, a GPU when one is present (skipped with the reason otherwise). The
// elementwise cases come from the op table itself, so a new row is tested on
// every device once tests/op_references.h has its reference. cast is checked
// against an independent reference of the conversion rule, on every 16-bit bit
// pattern and on special values of the other dtypes.
//
// Tolerances (rtol, atol) by dtype, for results rounded once to the dtype:
//   f32 (1e-5, 1e-6)  f64 (1e-12, 1e-12)  f16 (2e-3, 1e-3)  bf16 (1.6e-2, 1e-2)  ints exact,
// with atol scaled by sqrt(k) for k accumulated terms, and doubled on a GPU
// (another order of accumulation).
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <numbers>
#include <random>
#include <sstream>
#include <thread>
#include <tuple>

#include "kernels/attention.h"
#include "kernels/cpu_math.h"
#include "kernels/cpu_vector.h"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"
#include "kernels/gemm_cpu.h"
#include "kernels/movement.h"
#include "kernels/reduction.h"
#include "op_references.h"
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

DeviceTensor on(const HostTensor& h, const Device& device = Device::cpu()) { return to_device(h, device); }

HostTensor f64(const HostTensor& t) { return cast_host(t, DType::kF64); }
double* values_of(HostTensor& t) { return t.data<double>(); }

// ---------------------------------------------------------------- the case table

struct OpCase {
  std::string name;
  std::vector<DType> dtypes;
  std::vector<Shape> inputs;  // shapes, one per input
  double lo = -1, hi = 1;     // input values are drawn from [lo, hi)
  double terms = 1;           // accumulated terms per result element (tolerance grows as sqrt)
  double atol_factor = 1;
  // The op on a device, and its float64 reference on float64 copies of the inputs.
  std::function<DeviceTensor(const std::vector<DeviceTensor>&)> run;
  std::function<HostTensor(std::vector<HostTensor>&)> reference;
};

HostTensor map_unary(HostTensor x, const std::function<double(double)>& f) {
  for (double& v : x.span<double>()) v = f(v);
  return x;
}

HostTensor sum_reference(const HostTensor& x, int axis) {
  int a = x.shape().axis(axis);
  int64_t outer = x.shape().outer(a), n = x.dim(a), inner = x.shape().inner(a);
  HostTensor out = HostTensor::zeros(x.shape().without(a), DType::kF64);
  const double* v = x.data<double>();
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t k = 0; k < n; ++k)
      for (int64_t i = 0; i < inner; ++i) out.data<double>()[o * inner + i] += v[(o * n + k) * inner + i];
  return out;
}

HostTensor rows_reference(HostTensor x, const std::function<void(std::vector<double>&, int64_t row)>& f) {
  int64_t cols = x.dim(-1);
  for (int64_t r = 0; r < x.numel() / cols; ++r) {
    std::vector<double> row(x.data<double>() + r * cols, x.data<double>() + (r + 1) * cols);
    f(row, r);
    std::copy(row.begin(), row.end(), x.data<double>() + r * cols);
  }
  return x;
}

HostTensor gemm_reference(const HostTensor& a, const HostTensor& b, const GemmOptions& o, const HostTensor& c_in) {
  auto dims = [](const HostTensor& t) {
    return t.ndim() == 2 ? std::array<int64_t, 3>{1, t.dim(0), t.dim(1)}
                         : std::array<int64_t, 3>{t.dim(0), t.dim(1), t.dim(2)};
  };
  auto da = dims(a), db = dims(b);
  int64_t m = o.transpose_a ? da[2] : da[1], k = o.transpose_a ? da[1] : da[2];
  int64_t n = o.transpose_b ? db[1] : db[2];
  int64_t batch = std::max(da[0], db[0]);
  HostTensor out = HostTensor::zeros(c_in.shape(), DType::kF64);
  const double *va = a.data<double>(), *vb = b.data<double>(), *vc = c_in.data<double>();
  for (int64_t p = 0; p < batch; ++p) {
    int64_t pa = a.ndim() == 3 ? p : 0, pb = b.ndim() == 3 ? p : 0;
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double s = 0;
        for (int64_t q = 0; q < k; ++q) {
          double x = o.transpose_a ? va[pa * k * m + q * m + i] : va[pa * m * k + i * k + q];
          double y = o.transpose_b ? vb[pb * n * k + j * k + q] : vb[pb * k * n + q * n + j];
          s += x * y;
        }
        int64_t at = p * m * n + i * n + j;
        out.data<double>()[at] = o.alpha * s + o.beta * vc[at];
      }
  }
  return out;
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
      {{5, 0}, {0, 4}, false, false, 1, 0},           // k = 0: zeros (c not read)
      {{0, 5}, {4, 0}, true, true, 1, 0.5},           // k = 0: 0.5 c
  };
}

std::vector<OpCase> op_cases() {
  std::vector<OpCase> cases;
  // Every elementwise op of the table, with its reference.
  for (UnaryOp op : unary_ops()) {
    const ElementwiseOpInfo& i = info(op);
    auto ref = testing::unary_references().find(i.name);
    if (ref == testing::unary_references().end()) continue;  // EveryTableRowHasAReference fails
    double alpha = i.takes_alpha ? -2.5 : 1.0;
    auto f = ref->second.f;
    cases.push_back({i.name, {i.dtypes.begin(), i.dtypes.end()}, {{37, 29}}, ref->second.lo, ref->second.hi, 1, 1,
                     [op, alpha](const auto& in) {
                       DeviceTensor out = DeviceTensor::empty(in[0].shape(), in[0].dtype(), in[0].device());
                       unary(op, in[0], out, alpha);
                       return out;
                     },
                     [f, alpha](auto& in) { return map_unary(in[0], [&](double x) { return f(x, alpha); }); }});
  }
  for (BinaryOp op : binary_ops()) {
    const ElementwiseOpInfo& i = info(op);
    auto ref = testing::binary_references().find(i.name);
    if (ref == testing::binary_references().end()) continue;
    auto f = ref->second.f;
    cases.push_back({i.name, {i.dtypes.begin(), i.dtypes.end()}, {{3, 5, 7}, {3, 5, 7}}, ref->second.lo, ref->second.hi, 1, 1,
                     [op](const auto& in) {
                       DeviceTensor out = DeviceTensor::empty(in[0].shape(), in[0].dtype(), in[0].device());
                       binary(op, in[0], in[1], out);
                       return out;
                     },
                     [f](auto& in) {
                       HostTensor out = in[0].clone();
                       for (int64_t k = 0; k < out.numel(); ++k) values_of(out)[k] = f(values_of(in[0])[k], values_of(in[1])[k]);
                       return out;
                     }});
  }
  cases.push_back({"bias_add", kFloats, {{4, 6}, {6}}, -1, 1, 1, 1,
                   [](const auto& in) { return bias_add(in[0], in[1]); },
                   [](auto& in) {
                     HostTensor out = in[0].clone();
                     for (int64_t k = 0; k < out.numel(); ++k) values_of(out)[k] += values_of(in[1])[k % 6];
                     return out;
                   }});
  for (int axis : {0, 1, 2, -1}) {
    int64_t extent = Shape{6, 33, 5}[axis];
    cases.push_back({"sum axis " + std::to_string(axis), kNumerics, {{6, 33, 5}}, -8, 8, static_cast<double>(extent), 1,
                     [axis](const auto& in) { return sum(in[0], axis); },
                     [axis](auto& in) { return sum_reference(in[0], axis); }});
  }
  for (int64_t cols : {1, 7, 300, 1025, 4099}) {
    std::string n = " cols " + std::to_string(cols);
    cases.push_back({"softmax" + n, kFloats, {{5, cols}}, -6, 6, 4, 1,
                     [](const auto& in) { return softmax(in[0]); },
                     [](auto& in) {
                       return rows_reference(in[0], [](std::vector<double>& r, int64_t) {
                         double m = *std::max_element(r.begin(), r.end()), s = 0;
                         for (double& v : r) s += (v = std::exp(v - m));
                         for (double& v : r) v /= s;
                       });
                     }});
    // gamma near 1 (inputs drawn from [0.5, 1.5) are the second input's; x and beta share [-6, 6)).
    cases.push_back({"layernorm" + n, kFloats, {{5, cols}, {cols}, {cols}}, -6, 6, 4, 4,
                     [](const auto& in) { return layernorm(in[0], in[1], in[2], 1e-5); },
                     [](auto& in) {
                       const double *g = in[1].template data<double>(), *b = in[2].template data<double>();
                       return rows_reference(in[0], [&](std::vector<double>& r, int64_t) {
                         double mean = 0, var = 0;
                         for (double v : r) mean += v;
                         mean /= static_cast<double>(r.size());
                         for (double v : r) var += (v - mean) * (v - mean);
                         var /= static_cast<double>(r.size());
                         for (size_t c = 0; c < r.size(); ++c) r[c] = (r[c] - mean) / std::sqrt(var + 1e-5) * g[c] + b[c];
                       });
                     }});
    cases.push_back({"rmsnorm" + n, kFloats, {{5, cols}, {cols}}, -6, 6, 4, 4,
                     [](const auto& in) { return rmsnorm(in[0], in[1], 1e-6); },
                     [](auto& in) {
                       const double* g = in[1].template data<double>();
                       return rows_reference(in[0], [&](std::vector<double>& r, int64_t) {
                         double sq = 0;
                         for (double v : r) sq += v * v;
                         double inv = 1 / std::sqrt(sq / static_cast<double>(r.size()) + 1e-6);
                         for (size_t c = 0; c < r.size(); ++c) r[c] = r[c] * inv * g[c];
                       });
                     }});
  }
  for (const GemmCase& g : gemm_cases()) {
    GemmOptions o{g.ta, g.tb, g.alpha, g.beta};
    // c's shape: what matmul gives for these operands (on the cpu, cheap).
    Shape c_shape = matmul(DeviceTensor::empty(Shape(g.a), DType::kF32), DeviceTensor::empty(Shape(g.b), DType::kF32), o).shape();
    int64_t k = g.ta ? g.a[g.a.size() - 2] : g.a.back();
    cases.push_back({"gemm a" + Shape(g.a).to_string() + " b" + Shape(g.b).to_string() + (g.ta ? " ta" : "") +
                         (g.tb ? " tb" : "") + (g.beta != 0 ? " beta" : ""),
                     kFloats, {Shape(g.a), Shape(g.b), c_shape}, -1, 1, static_cast<double>(k), 1,
                     [o](const auto& in) {
                       DeviceTensor c = in[2].clone();
                       gemm(in[0], in[1], c, o);
                       return c;
                     },
                     [o](auto& in) { return gemm_reference(in[0], in[1], o, in[2]); }});
  }
  // Operands that start one row into their storage (not 16-byte aligned for
  // f16/bf16), as slices of a batch are.
  cases.push_back({"gemm of misaligned slices", kFloats, {{18, 9}, {10, 13}, {17, 13}}, -1, 1, 9, 1,
                   [](const auto& in) {
                     DeviceTensor c = in[2].clone();
                     gemm(in[0].narrow(1, 17), in[1].narrow(1, 9), c, GemmOptions{false, false, 1, 0.5});
                     return c;
                   },
                   [](auto& in) {
                     HostTensor a = in[0].narrow(1, 17).clone(), b = in[1].narrow(1, 9).clone();
                     return gemm_reference(a, b, GemmOptions{false, false, 1, 0.5}, in[2]);
                   }});
  return cases;
}

// Whether case `name` runs: all do, unless MESHRT_OP_CASES lists name prefixes
// (tools/gpu-check.sh runs the reductions alone under racecheck and synccheck).
bool selected(const std::string& name) {
  const char* list = std::getenv("MESHRT_OP_CASES");
  if (!list || !*list) return true;
  std::stringstream in(list);
  for (std::string prefix; std::getline(in, prefix, ',');) {
    if (!prefix.empty() && name.rfind(prefix, 0) == 0) return true;
  }
  return false;
}

// Runs every case for every dtype on device; factor widens the tolerances.
void run_cases(const Device& device, double factor) {
  uint64_t seed = 1;
  int checked = 0;
  bool everything = selected("");
  for (const OpCase& c : op_cases()) {
    if (!everything && !selected(c.name)) continue;
    for (DType dtype : c.dtypes) {
      std::vector<HostTensor> inputs;
      std::vector<DeviceTensor> on_device;
      std::vector<HostTensor> wide;
      for (size_t i = 0; i < c.inputs.size(); ++i) {
        bool gamma = c.name.rfind("layernorm", 0) == 0 || c.name.rfind("rmsnorm", 0) == 0 ? i == 1 : false;
        inputs.push_back(random_tensor(c.inputs[i], dtype, seed++, gamma ? 0.5 : c.lo, gamma ? 1.5 : c.hi));
        on_device.push_back(on(inputs.back(), device));
        wide.push_back(f64(inputs.back()));
      }
      HostTensor expected = cast_host(c.reference(wide), dtype);
      HostTensor got = to_host(c.run(on_device));
      Tolerance t = tolerance(dtype, c.terms);
      EXPECT_TRUE(all_close(got, expected, factor * t.rtol, factor * t.atol * c.atol_factor))
          << c.name << " " << to_string(dtype) << " on " << device;
      ++checked;
    }
  }
  EXPECT_GT(checked, everything ? 100 : 0);
}

TEST(Ops, EveryTableRowHasAReference) {
  for (UnaryOp op : unary_ops()) {
    EXPECT_TRUE(testing::unary_references().count(info(op).name))
        << "unary op '" << info(op).name << "' has no reference in tests/op_references.h";
  }
  for (BinaryOp op : binary_ops()) {
    EXPECT_TRUE(testing::binary_references().count(info(op).name))
        << "binary op '" << info(op).name << "' has no reference in tests/op_references.h";
  }
}

TEST(Ops, EveryCaseOnTheCpuMatchesTheFloat64Reference) { run_cases(Device::cpu(), 1); }

TEST(CudaOps, EveryCaseOnTheGpuMatchesTheFloat64Reference) {
  MESHRT_REQUIRE_CUDA();
  run_cases(Device::cuda(0), 2);
}

// ---------------------------------------------------------------- cast

// The conversion rule, written here from its statement (kernels/elementwise.h,
// device/convert.h) and not from the code: sources are given as exact values,
// results read back by decoding the bits.

// Rounds v to a binary format with p significant bits and exponents down to
// emin (subnormals below), to nearest even; too large: infinity.
double round_to_format(double v, int p, int emin, int emax) {
  if (std::isnan(v) || std::isinf(v) || v == 0) return v;
  int e = std::ilogb(v);
  if (e < emin) e = emin;
  double quantum = std::ldexp(1.0, e - (p - 1));
  double r = std::nearbyint(v / quantum) * quantum;  // the default rounding mode: to nearest even
  if (std::fabs(r) >= std::ldexp(1.0, emax + 1)) return std::copysign(INFINITY, v);
  return r;
}

double decode_f16(uint16_t bits) {
  int sign = bits >> 15, exponent = (bits >> 10) & 0x1f, mantissa = bits & 0x3ff;
  double magnitude = exponent == 0x1f ? (mantissa ? NAN : INFINITY)
                     : exponent == 0  ? std::ldexp(mantissa, -24)
                                      : std::ldexp(1024 + mantissa, exponent - 25);
  return sign ? -magnitude : magnitude;
}

double decode_bf16(uint16_t bits) {
  uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// A source element: its exact value (integers also as int64, exactly).
struct Exact {
  double value;
  int64_t integer = 0;
};

bool is_integer_type(DType d) { return !is_floating(d); }

// What converting x (of dtype from) to dtype `to` must give, as a double.
double expected_cast(const Exact& x, DType from, DType to) {
  double v = is_integer_type(from) ? static_cast<double>(x.integer) : x.value;
  switch (to) {
    case DType::kBool: return (std::isnan(v) || v != 0) ? 1 : 0;
    case DType::kI32:
    case DType::kI64:
    case DType::kU8: {
      int bits = to == DType::kI32 ? 32 : to == DType::kI64 ? 64 : 8;
      if (is_integer_type(from)) {  // wraps: the low bits, read as the target's signedness
        uint64_t u = static_cast<uint64_t>(x.integer);
        if (bits == 8) return static_cast<double>(u & 0xff);
        if (bits == 32) return static_cast<double>(static_cast<int32_t>(static_cast<uint32_t>(u)));
        return static_cast<double>(x.integer);
      }
      if (std::isnan(v)) return 0;
      double lo = to == DType::kU8 ? 0 : -std::ldexp(1.0, bits - 1);
      double hi = to == DType::kU8 ? 255 : std::ldexp(1.0, bits - 1) - 1;  // (rounds up to 2^63 for i64: compare below)
      double t = std::trunc(v);
      if (t <= lo) return lo;
      if (bits == 64 && t >= std::ldexp(1.0, 63)) return std::ldexp(1.0, 63);  // saturated: INT64_MAX, read as double
      if (t >= hi) return hi;
      return t;
    }
    case DType::kF64: return v;
    case DType::kF32: return static_cast<float>(v);
    case DType::kF16: return round_to_format(static_cast<float>(v), 11, -14, 15);
    case DType::kBF16: return round_to_format(static_cast<float>(v), 8, -126, 127);
  }
  return NAN;
}

// Element i of t read from its bits.
double read_back(const HostTensor& t, int64_t i) {
  const void* p = t.raw_data();
  switch (t.dtype()) {
    case DType::kF32: return static_cast<const float*>(p)[i];
    case DType::kF64: return static_cast<const double*>(p)[i];
    case DType::kF16: return decode_f16(static_cast<const uint16_t*>(p)[i]);
    case DType::kBF16: return decode_bf16(static_cast<const uint16_t*>(p)[i]);
    case DType::kI32: return static_cast<const int32_t*>(p)[i];
    case DType::kI64: return static_cast<double>(static_cast<const int64_t*>(p)[i]);
    case DType::kU8: return static_cast<const uint8_t*>(p)[i];
    case DType::kBool: return static_cast<const uint8_t*>(p)[i];
  }
  return NAN;
}

// Sources of dtype from, with their exact values: every bit pattern of the
// 16-bit floats, special and boundary values of the others.
std::pair<HostTensor, std::vector<Exact>> cast_sources(DType from) {
  std::vector<Exact> exact;
  HostTensor t;
  if (from == DType::kF16 || from == DType::kBF16) {
    t = HostTensor::empty({65536}, from);
    for (uint32_t b = 0; b < 65536; ++b) {
      static_cast<uint16_t*>(t.raw_data())[b] = static_cast<uint16_t>(b);
      exact.push_back({from == DType::kF16 ? decode_f16(static_cast<uint16_t>(b)) : decode_bf16(static_cast<uint16_t>(b))});
    }
    return {t, exact};
  }
  if (is_floating(from)) {
    std::vector<double> v = {0.0, -0.0, 0.5, -0.5, 1.5, 2.5, -2.5, -3.75, 7.9999, 100, 255, 255.5, 256, 300, -1e-3,
                             65504, 65519, 65520, 65536, 1e5, 3e9, -3e9, 2147483647.0, 2147483648.0, -2147483649.0,
                             9.3e18, -9.3e18, 1e-5, 6e-8, 3e-8, 1e-40, 3.4e38, 1e300, INFINITY, -INFINITY, NAN,
                             1.0 + std::ldexp(1.0, -11), 1.0 + 3 * std::ldexp(1.0, -11), 1.0 + std::ldexp(1.0, -8),
                             1.0 + 3 * std::ldexp(1.0, -8), 0.1, -0.7, 123.456};
    t = HostTensor::empty({static_cast<int64_t>(v.size())}, from);
    for (size_t i = 0; i < v.size(); ++i) {
      if (from == DType::kF32) {
        float f = static_cast<float>(v[i]);
        t.data<float>()[i] = f;
        exact.push_back({f});
      } else {
        t.data<double>()[i] = v[i];
        exact.push_back({v[i]});
      }
    }
    return {t, exact};
  }
  std::vector<int64_t> v = {0, 1, -1, 2, 127, 128, 255, 256, 257, -129, 65504, 65505, 16777217, 2147483647,
                            -2147483648LL, 2147483648LL, 4294967297LL, std::numeric_limits<int64_t>::max(),
                            std::numeric_limits<int64_t>::min(), 9007199254740993LL};
  std::vector<int64_t> kept;
  for (int64_t x : v) {
    bool fits = from == DType::kI64 || (from == DType::kI32 && x >= INT32_MIN && x <= INT32_MAX) ||
                (from == DType::kU8 && x >= 0 && x <= 255) || (from == DType::kBool && (x == 0 || x == 1));
    if (fits) kept.push_back(x);
  }
  t = HostTensor::empty({static_cast<int64_t>(kept.size())}, from);
  for (size_t i = 0; i < kept.size(); ++i) {
    switch (from) {
      case DType::kI64: t.data<int64_t>()[i] = kept[i]; break;
      case DType::kI32: t.data<int32_t>()[i] = static_cast<int32_t>(kept[i]); break;
      default: static_cast<uint8_t*>(t.raw_data())[i] = static_cast<uint8_t>(kept[i]); break;
    }
    exact.push_back({static_cast<double>(kept[i]), kept[i]});
  }
  return {t, exact};
}

void check_casts(const Device& device) {
  for (DType from : kAllDTypes) {
    auto [source, exact] = cast_sources(from);
    DeviceTensor x = on(source, device);
    for (DType to : kAllDTypes) {
      HostTensor got = to_host(cast(x, to));
      int wrong = 0;
      for (int64_t i = 0; i < got.numel() && wrong < 5; ++i) {
        double want = expected_cast(exact[static_cast<size_t>(i)], from, to), have = read_back(got, i);
        bool same = (std::isnan(want) && std::isnan(have)) || want == have;
        if (!same) {
          ++wrong;
          ADD_FAILURE() << to_string(from) << " " << exact[static_cast<size_t>(i)].value << " -> " << to_string(to)
                        << ": got " << have << ", expected " << want << " on " << device;
        }
      }
    }
  }
}

TEST(Cast, EveryPairOfDtypesMatchesTheRuleOnTheCpu) { check_casts(Device::cpu()); }

TEST(CudaCast, EveryPairOfDtypesMatchesTheRuleOnTheGpu) {
  MESHRT_REQUIRE_CUDA();
  check_casts(Device::cuda(0));
}

TEST(Cast, HostCastFollowsTheSameRule) {
  for (DType from : kAllDTypes) {
    auto [source, exact] = cast_sources(from);
    for (DType to : kAllDTypes) {
      HostTensor got = cast_host(source, to);
      for (int64_t i = 0; i < got.numel(); ++i) {
        double want = expected_cast(exact[static_cast<size_t>(i)], from, to), have = read_back(got, i);
        ASSERT_TRUE((std::isnan(want) && std::isnan(have)) || want == have)
            << to_string(from) << " " << exact[static_cast<size_t>(i)].value << " -> " << to_string(to) << ": got "
            << have << ", expected " << want;
      }
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

// ---------------------------------------------------------------- API details

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
  // torch.nn.functional.gelu(x, approximate='tanh') at 3 (gelu_new's value, not gelu's 2.99595)
  EXPECT_NEAR(to_host(gelu_tanh(on(x))).to_vector<float>()[3], 2.99636261, 1e-6);
}

TEST(Elementwise, TheTableNamesItsOps) {
  EXPECT_STREQ(to_string(UnaryOp::kRelu), "relu");
  EXPECT_EQ(find_unary_op("gelu"), UnaryOp::kGelu);
  EXPECT_EQ(find_binary_op("mul"), BinaryOp::kMul);
  EXPECT_FALSE(find_unary_op("conv").has_value());
  EXPECT_EQ(info(UnaryOp::kNeg).partial_rule[0], unsigned{kThroughSum | kThroughAvg});
  EXPECT_EQ(info(UnaryOp::kRelu).partial_rule[0], unsigned{kThroughMax | kThroughMin});
  EXPECT_EQ(info(UnaryOp::kGelu).partial_rule[0], unsigned{kNoPartial});
  EXPECT_EQ(find_unary_op("gelu_tanh"), UnaryOp::kGeluTanh);
  EXPECT_EQ(info(UnaryOp::kGeluTanh).partial_rule[0], unsigned{kNoPartial});
  EXPECT_TRUE(info(UnaryOp::kScale).takes_alpha);
  EXPECT_EQ(info(BinaryOp::kAdd).operands, 2);
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

// ---------------------------------------------------------------- the cpu GEMM of bf16 and f16 (oneDNN)

// got against want elementwise: NaN matches NaN, an infinity only the same
// infinity, anything else within atol + rtol |want|.
::testing::AssertionResult close_with_specials(const HostTensor& got, const HostTensor& want, double rtol, double atol) {
  if (got.shape() != want.shape()) {
    return ::testing::AssertionFailure() << "shapes differ: " << got.description() << " vs " << want.description();
  }
  std::vector<double> g = testing::values(got), w = testing::values(want);
  for (size_t i = 0; i < g.size(); ++i) {
    bool same = (std::isnan(g[i]) && std::isnan(w[i])) || g[i] == w[i] ||
                (std::isfinite(w[i]) && std::fabs(g[i] - w[i]) <= atol + rtol * std::fabs(w[i]));
    if (!same) {
      return ::testing::AssertionFailure() << "element " << i << ": " << g[i] << " vs expected " << w[i] << " (rtol "
                                           << rtol << ", atol " << atol << ") in " << got.description();
    }
  }
  return ::testing::AssertionSuccess();
}

struct Gemm16Case {
  int64_t m, n, k;
  bool ta, tb;
  double alpha, beta;
  int64_t batch = 0;          // 0: 2-D operands
  bool a_batched = true, b_batched = true;  // with batch: false shares a 2-D operand over the batches
};

std::string describe(const Gemm16Case& c) {
  std::ostringstream s;
  s << c.m << "x" << c.n << "x" << c.k << (c.ta ? " ta" : "") << (c.tb ? " tb" : "") << " alpha " << c.alpha << " beta "
    << c.beta;
  if (c.batch) s << " batch " << c.batch << (c.a_batched ? "" : " (a shared)") << (c.b_batched ? "" : " (b shared)");
  return s.str();
}

// Runs c on the cpu for dtype with data from seed, against the float64 reference
// on the same (rounded) inputs, rounded to dtype.
void check_gemm16(DType dtype, const Gemm16Case& c, uint64_t seed) {
  auto stored = [&](int64_t rows, int64_t cols, bool transposed, bool batched) {
    std::vector<int64_t> dims;
    if (c.batch && batched) dims.push_back(c.batch);
    dims.push_back(transposed ? cols : rows);
    dims.push_back(transposed ? rows : cols);
    return Shape(dims);
  };
  HostTensor a = random_tensor(stored(c.m, c.k, c.ta, c.a_batched), dtype, seed);
  HostTensor b = random_tensor(stored(c.k, c.n, c.tb, c.b_batched), dtype, seed + 1);
  HostTensor c0 = random_tensor(c.batch ? Shape{c.batch, c.m, c.n} : Shape{c.m, c.n}, dtype, seed + 2);
  GemmOptions o{c.ta, c.tb, c.alpha, c.beta};
  DeviceTensor out = on(c0);
  gemm(on(a), on(b), out, o);
  HostTensor want = cast_host(gemm_reference(f64(a), f64(b), o, f64(c0)), dtype);
  Tolerance t = tolerance(dtype, static_cast<double>(c.k));
  double scale = std::max(1.0, std::fabs(c.alpha)) + std::fabs(c.beta);
  EXPECT_TRUE(all_close(to_host(out), want, t.rtol, t.atol * scale)) << to_string(dtype) << " " << describe(c);
}

std::vector<Gemm16Case> gemm16_cases() {
  std::vector<Gemm16Case> cases;
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      cases.push_back({1, 1, 1, ta, tb, 1, 0});
      cases.push_back({3, 5, 7, ta, tb, -1.5, 0.25});
      cases.push_back({67, 45, 129, ta, tb, 1, 0});
      cases.push_back({45, 67, 33, ta, tb, 0.5, 1});
      cases.push_back({130, 96, 256, ta, tb, 1, ta ? 0.75 : 0});  // AMX-sized blocks and a ragged edge
      cases.push_back({33, 17, 40, ta, tb, 1, 0, 3});
      cases.push_back({33, 17, 40, ta, tb, 2, 0.5, 3, false, true});
      cases.push_back({33, 17, 40, ta, tb, 1, 0, 3, true, false});
    }
  }
  cases.push_back({1, 300, 1, false, false, 1, 0});   // a row times a column
  cases.push_back({300, 1, 513, false, true, 1, 0});  // a matrix-vector product
  return cases;
}

TEST(Gemm16, TransposesShapesAlphaBetaAndBatchesMatchTheFloat64Reference) {
  uint64_t seed = 1000;
  for (DType dtype : {DType::kBF16, DType::kF16}) {
    for (const Gemm16Case& c : gemm16_cases()) check_gemm16(dtype, c, seed += 3);
  }
}

TEST(Gemm16, TheCpuTableNamesOneDnnForTheSixteenBitFloats) {
  for (const cpu::GemmRow& row : cpu::gemm_rows()) {
    bool sixteen = row.dtype == DType::kBF16 || row.dtype == DType::kF16;
    EXPECT_EQ(row.run == cpu::onednn_gemm, sixteen) << to_string(row.dtype) << ": " << row.library;
  }
  EXPECT_EQ(cpu::gemm_rows().size(), 4u);
  EXPECT_TRUE(cpu::onednn_has_kernel(DType::kBF16));
  std::string kernel = cpu::onednn_gemm_kernel(DType::kBF16, 256, 256, 256);
  EXPECT_EQ(kernel.find("none"), std::string::npos) << kernel;
  EXPECT_EQ(kernel.find("ref"), std::string::npos) << "oneDNN's reference kernel (slow): " << kernel;
}

// A second GEMM of a shape finds its primitive in the cache and multiplies the new data.
TEST(Gemm16, ACachedPrimitiveRunsOnNewData) {
  for (DType dtype : {DType::kBF16, DType::kF16}) {
    Gemm16Case c{37, 29, 53, false, true, 0.75, 0.5};  // a key no other test uses
    check_gemm16(dtype, c, 1);
    cpu::OnednnCacheStats before = cpu::onednn_cache_stats();
    check_gemm16(dtype, c, 500);
    cpu::OnednnCacheStats after = cpu::onednn_cache_stats();
    EXPECT_EQ(after.hits, before.hits + 1) << to_string(dtype);
    EXPECT_EQ(after.misses, before.misses) << to_string(dtype);
    // The same shape with another alpha and beta is another primitive.
    check_gemm16(dtype, {37, 29, 53, false, true, -2, 0}, 900);
    EXPECT_EQ(cpu::onednn_cache_stats().misses, after.misses + 1) << to_string(dtype);
  }
}

TEST(Gemm16, TheCacheIsBoundedAndEvictedShapesStillMultiply) {
  size_t capacity = cpu::onednn_cache_stats().capacity;
  ASSERT_GT(capacity, 0u);
  for (int64_t m = 1; m <= static_cast<int64_t>(capacity) + 8; ++m) {
    DeviceTensor a = on(HostTensor::full<BFloat16>({m, 3}, BFloat16(1.0f)));
    DeviceTensor b = on(HostTensor::full<BFloat16>({3, 2}, BFloat16(2.0f)));
    HostTensor c = to_host(matmul(a, b));
    ASSERT_EQ(static_cast<float>(c.data<BFloat16>()[m * 2 - 1]), 6.0f) << "m = " << m;
  }
  EXPECT_LE(cpu::onednn_cache_stats().size, capacity);
  check_gemm16(DType::kBF16, {1, 1, 1, false, false, 1, 0}, 7);  // evicted long ago: created again
}

// Several threads (each with its cpu stream) run one shape at once: one primitive, a scratchpad each.
TEST(Gemm16, ThreadsRunOnePrimitiveAtOnce) {
  constexpr int kThreads = 4, kCalls = 6;
  std::vector<std::thread> threads;
  std::vector<int> failures(kThreads, 0);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([t, &failures] {
      Stream stream = Stream::create(Device::cpu());
      for (int i = 0; i < kCalls; ++i) {
        uint64_t seed = static_cast<uint64_t>(100 * t + i);
        HostTensor a = random_tensor({96, 160}, DType::kBF16, seed), b = random_tensor({160, 80}, DType::kBF16, seed + 50);
        HostTensor got = to_host(matmul(on(a), on(b), {}, &stream), &stream);
        HostTensor want = cast_host(gemm_reference(f64(a), f64(b), {}, HostTensor::zeros({96, 80}, DType::kF64)), DType::kBF16);
        Tolerance tol = tolerance(DType::kBF16, 160);
        if (!all_close(got, want, tol.rtol, tol.atol)) ++failures[static_cast<size_t>(t)];
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(failures[static_cast<size_t>(t)], 0) << "thread " << t;
}

TEST(Gemm16, NaNAndOverflowPropagateAsBefore) {
  for (DType dtype : {DType::kBF16, DType::kF16}) {
    HostTensor a = random_tensor({4, 5}, dtype, 3), b = random_tensor({5, 3}, dtype, 4);
    HostTensor a_nan = cast_host(a, DType::kF64);
    a_nan.data<double>()[1 * 5 + 2] = NAN;
    a_nan = cast_host(a_nan, dtype);
    HostTensor got = cast_host(to_host(matmul(on(a_nan), on(b))), DType::kF64);
    for (int64_t i = 0; i < 4; ++i) {
      for (int64_t j = 0; j < 3; ++j) {
        EXPECT_EQ(std::isnan(got.data<double>()[i * 3 + j]), i == 1) << to_string(dtype) << " c[" << i << ", " << j << "]";
      }
    }
  }
  // 300 * 300 = 90000 is past f16's largest value (65504): infinity, as when
  // the f32 result was narrowed before; bf16 holds it (rounded to 90112).
  HostTensor x16 = cast_host(HostTensor::full<float>({1, 1}, 300.0f), DType::kF16);
  EXPECT_EQ(testing::values(to_host(matmul(on(x16), on(x16))))[0], INFINITY);
  HostTensor xb = cast_host(HostTensor::full<float>({1, 1}, 300.0f), DType::kBF16);
  EXPECT_EQ(testing::values(to_host(matmul(on(xb), on(xb))))[0], 90112.0);
}

// ---------------------------------------------------------------- the vectorized cpu loops

TEST(CpuMath, ExpAndErfcMatchDoubleOnASweepOfFloats) {
  double exp_worst = 0, erfc_worst[3] = {0, 0, 0};  // x < 1, x < 3, the rest with a normal result
  for (uint64_t u = 0; u < (uint64_t{1} << 32); u += 4099) {
    float x = meshrt::bits_float(static_cast<uint32_t>(u));
    if (std::isnan(x)) {
      EXPECT_TRUE(std::isnan(cpu_math::exp(x)) && std::isnan(cpu_math::erfc(x)));
      continue;
    }
    double e = std::exp(static_cast<double>(x));
    if (e >= 1.1754943508222875e-38 && e <= 3.4e38) {
      exp_worst = std::max(exp_worst, std::fabs(cpu_math::exp(x) - e) / e);
    }
    double c = std::erfc(static_cast<double>(x));
    if (c >= 1.1754943508222875e-38) {
      double r = std::fabs(cpu_math::erfc(x) - c) / c;
      double& worst = erfc_worst[x < 1 ? 0 : x < 3 ? 1 : 2];
      worst = std::max(worst, r);
    }
  }
  EXPECT_LT(exp_worst, 1.5e-7);
  EXPECT_LT(erfc_worst[0], 6e-7);
  EXPECT_LT(erfc_worst[1], 1.5e-6);
  EXPECT_LT(erfc_worst[2], 1.2e-5);
  for (float x : {INFINITY, 100.0f, 88.8f}) EXPECT_EQ(cpu_math::exp(x), INFINITY) << x;
  for (float x : {-INFINITY, -100.0f, -87.5f}) EXPECT_EQ(cpu_math::exp(x), 0.0f) << x;
  EXPECT_EQ(cpu_math::erfc(INFINITY), 0.0f);
  EXPECT_EQ(cpu_math::erfc(-INFINITY), 2.0f);
  EXPECT_EQ(cpu_math::exp(0.0f), 1.0f);
}

// The block converters of the 16-bit loops round exactly as Half and BFloat16 do.
TEST(CpuMath, SixteenBitConvertersMatchTheScalarRule) {
  std::vector<Half> h(65536);
  std::vector<BFloat16> b(65536);
  for (uint32_t i = 0; i < 65536; ++i) {
    h[i] = Half::from_bits(static_cast<uint16_t>(i));
    b[i] = BFloat16::from_bits(static_cast<uint16_t>(i));
  }
  std::vector<float> wide(65536);
  cpu::widen_block(h.data(), wide.data(), 65536);
  for (uint32_t i = 0; i < 65536; ++i) {
    ASSERT_EQ(meshrt::float_bits(wide[i]), meshrt::float_bits(static_cast<float>(h[i]))) << "f16 bits " << i;
  }
  cpu::widen_block(b.data(), wide.data(), 65536);
  for (uint32_t i = 0; i < 65536; ++i) {
    ASSERT_EQ(meshrt::float_bits(wide[i]), meshrt::float_bits(static_cast<float>(b[i]))) << "bf16 bits " << i;
  }
  // A sweep of float bit patterns (every 251st, and the neighbours of f16's limits).
  std::vector<float> x;
  for (uint64_t u = 0; u < (uint64_t{1} << 32); u += 251) x.push_back(meshrt::bits_float(static_cast<uint32_t>(u)));
  for (uint32_t edge : {0x38800000u, 0x33000000u, 0x477fefffu, 0x477ff000u, 0x7f800000u, 0x7f800001u, 0x7fc00000u}) {
    for (uint32_t d = 0; d < 3; ++d) {
      x.push_back(meshrt::bits_float(edge - d));
      x.push_back(meshrt::bits_float((edge + d) | 0x80000000u));
    }
  }
  std::vector<Half> hx(x.size());
  std::vector<BFloat16> bx(x.size());
  cpu::narrow_block(x.data(), hx.data(), static_cast<int64_t>(x.size()));
  cpu::narrow_block(x.data(), bx.data(), static_cast<int64_t>(x.size()));
  for (size_t i = 0; i < x.size(); ++i) {
    ASSERT_EQ(hx[i].bits, Half(x[i]).bits) << "f32 bits " << std::hex << meshrt::float_bits(x[i]);
    ASSERT_EQ(bx[i].bits, BFloat16(x[i]).bits) << "f32 bits " << std::hex << meshrt::float_bits(x[i]);
  }
}

// Every 16-bit value through a blocked loop: scale rounds its float product
// as store<T> does, neg flips the sign bit (more than one block: 65536 elements).
TEST(Elementwise, SixteenBitLoopsComputeEveryValueAsTheScalarRule) {
  auto check = [](auto tag) {
    using T = decltype(tag);
    std::vector<T> all(65536);
    for (uint32_t i = 0; i < 65536; ++i) all[i] = T::from_bits(static_cast<uint16_t>(i));
    HostTensor x = HostTensor::from_vector(all, {65536});
    HostTensor scaled = to_host(scale(on(x), 1.0 / 3.0)), negated = to_host(neg(on(x)));
    const float third = static_cast<float>(1.0 / 3.0);
    for (uint32_t i = 0; i < 65536; ++i) {
      float v = static_cast<float>(all[i]);
      T want = store<T>(third * v);
      T got = scaled.data<T>()[i];
      if (std::isnan(v)) {
        ASSERT_TRUE(std::isnan(static_cast<float>(got))) << to_string(dtype_of<T>) << " bits " << i;
        continue;
      }
      ASSERT_EQ(got.bits, want.bits) << to_string(dtype_of<T>) << " scale of bits " << i;
      ASSERT_EQ(negated.data<T>()[i].bits, static_cast<uint16_t>(i ^ 0x8000u)) << to_string(dtype_of<T>) << " neg of bits " << i;
    }
  };
  check(Half{});
  check(BFloat16{});
}

// gelu, gelu_tanh, silu and sigmoid at large |x|, infinities, signed zeros and NaN,
// against the float64 references at the kernel tolerances (NaN where the
// reference is NaN, as at gelu(-inf) = -inf * 0 and silu(-inf) = -inf / inf).
TEST(Elementwise, GeluSiluAndSigmoidAtExtremeInputs) {
  const std::vector<double> inputs = {-INFINITY, -1e30, -1e4, -100, -88.5, -87, -40, -20, -13, -10, -7, -5.5, -4.2, -3,
                                      -1, -1e-3, -1e-20, -0.0, 0.0, 1e-20, 1e-3, 1, 3, 5.5, 10, 20, 88.5, 100, 1e4, 1e30,
                                      INFINITY, NAN};
  HostTensor source = HostTensor::from_vector(inputs, {static_cast<int64_t>(inputs.size())});
  for (DType dtype : kFloats) {
    HostTensor x = cast_host(source, dtype);
    for (const char* name : {"gelu", "gelu_tanh", "silu", "sigmoid"}) {
      UnaryOp op = *find_unary_op(name);
      auto f = testing::unary_references().at(name).f;
      HostTensor want = cast_host(map_unary(f64(x), [&](double v) { return f(v, 1.0); }), dtype);
      DeviceTensor out = DeviceTensor::empty(x.shape(), dtype);
      unary(op, on(x), out);
      Tolerance t = tolerance(dtype);
      EXPECT_TRUE(close_with_specials(to_host(out), want, t.rtol, t.atol)) << name << " " << to_string(dtype);
    }
  }
}

double softmax_row_reference(std::vector<double>& r) {
  double m = -INFINITY;
  bool nan = false;
  for (double v : r) {
    nan = nan || std::isnan(v);
    m = std::max(m, v);
  }
  double s = 0;
  for (double& v : r) s += (v = nan ? NAN : std::exp(v - m));
  for (double& v : r) v /= s;
  return s;
}

// Rows with -inf masks, a row of only -inf (NaN: 0 / 0, as in PyTorch), a NaN
// (the row is NaN), values of +-1e30 (one-hot), equal large values (uniform),
// and a wide spread; 37 columns (two 16-lane blocks and a tail). In place too.
TEST(Reduction, SoftmaxWithMasksInfinitiesAndNaN) {
  constexpr int64_t kCols = 37;
  std::vector<std::vector<double>> rows(7, std::vector<double>(kCols));
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<double> u(-6, 6);
  for (auto& r : rows) {
    for (double& v : r) v = u(rng);
  }
  for (int64_t c = 0; c < kCols; c += 3) rows[0][static_cast<size_t>(c)] = -INFINITY;  // a mask
  for (int64_t c = 0; c < kCols; ++c) rows[1][static_cast<size_t>(c)] = c == 20 ? 2.5 : -INFINITY;
  for (double& v : rows[2]) v = -INFINITY;
  rows[3][33] = NAN;
  rows[4][5] = 1e30;
  rows[4][6] = -1e30;
  for (double& v : rows[5]) v = 1e4;
  for (double& v : rows[6]) v = u(rng) * 2000;
  std::vector<double> flat;
  for (auto& r : rows) flat.insert(flat.end(), r.begin(), r.end());
  HostTensor source = HostTensor::from_vector(flat, {static_cast<int64_t>(rows.size()), kCols});
  for (DType dtype : kFloats) {
    HostTensor x = cast_host(source, dtype);
    HostTensor want = rows_reference(f64(x), [](std::vector<double>& r, int64_t) { softmax_row_reference(r); });
    want = cast_host(want, dtype);
    Tolerance t = tolerance(dtype, 4);
    EXPECT_TRUE(close_with_specials(to_host(softmax(on(x))), want, t.rtol, t.atol)) << to_string(dtype);
    DeviceTensor in_place = on(x);
    softmax(in_place, in_place);
    EXPECT_TRUE(close_with_specials(to_host(in_place), want, t.rtol, t.atol)) << "in place, " << to_string(dtype);
    HostTensor got = cast_host(to_host(softmax(on(x))), DType::kF64);
    EXPECT_EQ(got.data<double>()[1 * kCols + 20], 1.0) << to_string(dtype);
    EXPECT_EQ(got.data<double>()[0], 0.0) << "a masked element, " << to_string(dtype);
  }
}

// Kernels on the cpu are queued on their stream and run in its order,
// asynchronously to the caller, as on a GPU.
TEST(CpuStreams, KernelsRunInStreamOrderAsynchronously) {
  Stream side = Stream::create(Device::cpu());
  DeviceTensor x = on(HostTensor::full<float>({1000}, 2.0f));
  meshrt::testing::Gate gate;
  side.enqueue([&] { gate.wait(); });
  DeviceTensor y = neg(x, &side);  // queued behind the closed gate
  DeviceTensor z = matmul(y.reshape({10, 100}), on(HostTensor::full<float>({100, 2}, 1.0f)), {}, &side);
  EXPECT_FALSE(side.query());
  gate.release();
  for (float v : to_host(z, &side).span<float>()) ASSERT_EQ(v, -200.0f);
}

// The planted bug of the delayed mode, with kernels: reading a kernel's output
// through raw_data() without a synchronize sees unwritten memory.
TEST(CpuStreams, TheDelayedModeExposesAKernelResultReadWithoutASynchronize) {
  if (!cpu_streams_delayed()) GTEST_SKIP() << "runs in the delayed mode (MESHRT_CPU_STREAMS=delayed)";
  DeviceTensor x = on(HostTensor::full<float>({64, 64}, 1.0f));
  DeviceTensor y = matmul(neg(x), x);
  float unsynchronized = static_cast<const float*>(y.raw_data())[0];  // the planted bug
  EXPECT_TRUE(std::isnan(unsynchronized)) << "read " << unsynchronized << " before the kernels ran";
  EXPECT_EQ(to_host(y).data<float>()[0], -64.0f);
}

// GEMMs of one thread on two streams at once: each stream has a cuBLAS
// workspace of its own (cublasSetStream resets a handle's workspace).
TEST(CudaGemm, TwoStreamsOfOneThreadDoNotShareAWorkspace) {
  MESHRT_REQUIRE_CUDA();
  const Device gpu = Device::cuda(0);
  Stream side = Stream::create(gpu);
  HostTensor a = random_tensor({512, 512}, DType::kBF16, 1), b = random_tensor({512, 512}, DType::kBF16, 2);
  HostTensor expected = to_host(matmul(on(a, gpu), on(b, gpu)));
  DeviceTensor da = on(a, gpu), db = on(b, gpu);
  std::vector<DeviceTensor> on_default, on_side;
  for (int i = 0; i < 8; ++i) {
    on_default.push_back(matmul(da, db));
    on_side.push_back(matmul(da, db, GemmOptions{}, &side));
  }
  side.synchronize();
  for (int i = 0; i < 8; ++i) {
    EXPECT_TRUE(all_close(to_host(on_default[static_cast<size_t>(i)]), expected, 0, 0));
    EXPECT_TRUE(all_close(to_host(on_side[static_cast<size_t>(i)]), expected, 0, 0));
  }
}

// A 1-D tensor of n elements of dtype on a GPU whose element i is pattern[i % size]:
// the pattern copied once, then doubled by device copies.
DeviceTensor repeated_on_gpu(const HostTensor& pattern, int64_t n) {
  const Device gpu = Device::cuda(0);
  DeviceTensor out = DeviceTensor::empty({n}, pattern.dtype(), gpu);
  size_t element = size_of(pattern.dtype()), total = static_cast<size_t>(n) * element;
  DeviceTensor first = on(pattern, gpu);
  size_t filled = std::min(first.nbytes(), total);
  char* base = static_cast<char*>(out.raw_data());
  copy_rows(gpu, base, filled, first.raw_data(), filled, filled, 1);
  while (filled < total) {
    size_t bytes = std::min(filled, total - filled);
    copy_rows(gpu, base + filled, bytes, base, bytes, bytes, 1);
    filled += bytes;
  }
  return out;
}

// Indices past 2^31 in an elementwise kernel and in both kinds of sum kernels.
TEST(CudaOps, TensorsOfMoreThanTwoToThe31Elements) {
  MESHRT_REQUIRE_CUDA();
  const int64_t n = (int64_t{1} << 31) + 1000;
  std::vector<float> period(7 << 20);  // element i holds (i mod 7) - 3 (the period divides 7 x 2^20)
  for (size_t i = 0; i < period.size(); ++i) period[i] = static_cast<float>(static_cast<int>(i % 7) - 3);
  DeviceTensor x = repeated_on_gpu(cast_host(HostTensor::from_vector(period, {static_cast<int64_t>(period.size())}),
                                             DType::kBF16), n);
  DeviceTensor y = add(x, x);
  for (int64_t start : {int64_t{0}, (int64_t{1} << 31) - 8, n - 64}) {
    std::vector<double> got = testing::values(to_host(y.narrow(start, 64)));
    for (int64_t i = 0; i < 64; ++i) {
      ASSERT_EQ(got[static_cast<size_t>(i)], 2.0 * (((start + i) % 7) - 3)) << "element " << start + i;
    }
  }
  y = DeviceTensor();
  x = DeviceTensor();
  // Sums of ones over rows of 2^30 + 500 (one block per row) and over the two rows (one thread per column).
  DeviceTensor ones = repeated_on_gpu(HostTensor::full<float>({1 << 20}, 1.0f), n);
  DeviceTensor rows = ones.reshape({2, n / 2});
  EXPECT_EQ(to_host(sum(rows, 1)).to_vector<float>(), std::vector<float>(2, static_cast<float>(n / 2)));
  HostTensor columns = to_host(sum(rows, 0));
  EXPECT_EQ(columns.numel(), n / 2);
  EXPECT_EQ(columns.data<float>()[0], 2.0f);
  EXPECT_EQ(columns.data<float>()[n / 2 - 1], 2.0f);
}

TEST(CudaGemm, Tf32KeepsTenMantissaBits) {
  MESHRT_REQUIRE_CUDA();
  // TF32 keeps 10 mantissa bits: f32 results within ~1e-3 relative of the cpu's.
  const Device gpu = Device::cuda(0);
  HostTensor a = random_tensor({64, 256}, DType::kF32, 1), b = random_tensor({256, 32}, DType::kF32, 2);
  GemmOptions tf32{.math = MathMode::kTf32};
  EXPECT_TRUE(all_close(to_host(matmul(on(a, gpu), on(b, gpu), tf32)), to_host(matmul(on(a), on(b))), 5e-3, 5e-3 * 16));
}

// ---------------------------------------------------------------- data movement and axis reductions
//
// References: plain loops over host tensors. Movement ops copy elements, so
// their references copy bytes and the results must be identical; amax, amin,
// argmax and topk pick elements, so theirs are exact too; mean is checked with
// the sum tolerances.

const std::vector<DType> kAll(std::begin(kAllDTypes), std::end(kAllDTypes));

const char* bytes_of(const HostTensor& t) { return static_cast<const char*>(t.raw_data()); }
char* bytes_of(HostTensor& t) { return static_cast<char*>(t.raw_data()); }

// Row-major coordinates of flat index e in shape.
std::vector<int64_t> coords(const Shape& shape, int64_t e) {
  std::vector<int64_t> c(static_cast<size_t>(shape.ndim()));
  for (int d = shape.ndim() - 1; d >= 0; --d) {
    c[static_cast<size_t>(d)] = e % shape[d];
    e /= shape[d];
  }
  return c;
}
int64_t flat(const Shape& shape, const std::vector<int64_t>& c) {
  int64_t e = 0;
  for (int d = 0; d < shape.ndim(); ++d) e = e * shape[d] + c[static_cast<size_t>(d)];
  return e;
}

// out[i] <- in[j], one element of size es.
void put(HostTensor& out, int64_t i, const HostTensor& in, int64_t j) {
  std::memcpy(bytes_of(out) + i * static_cast<int64_t>(out.element_size()), bytes_of(in) + j * static_cast<int64_t>(in.element_size()), out.element_size());
}

HostTensor permute_reference(const HostTensor& x, const std::vector<int>& dims) {
  std::vector<int> p;
  for (int d : dims) p.push_back(d < 0 ? d + x.ndim() : d);
  std::vector<int64_t> out_dims;
  for (int a : p) out_dims.push_back(x.dim(a));
  HostTensor out = HostTensor::empty(Shape(out_dims), x.dtype());
  for (int64_t e = 0; e < out.numel(); ++e) {
    std::vector<int64_t> c = coords(out.shape(), e), src(static_cast<size_t>(x.ndim()));
    for (size_t i = 0; i < p.size(); ++i) src[static_cast<size_t>(p[i])] = c[i];
    put(out, e, x, flat(x.shape(), src));
  }
  return out;
}

HostTensor concat_reference(const std::vector<HostTensor>& xs, int dim) {
  int a = dim < 0 ? dim + xs[0].ndim() : dim;
  int64_t total = 0;
  for (const HostTensor& x : xs) total += x.dim(a);
  HostTensor out = HostTensor::empty(xs[0].shape().with(a, total), xs[0].dtype());
  for (int64_t e = 0; e < out.numel(); ++e) {
    std::vector<int64_t> c = coords(out.shape(), e);
    size_t piece = 0;
    while (c[static_cast<size_t>(a)] >= xs[piece].dim(a)) c[static_cast<size_t>(a)] -= xs[piece++].dim(a);
    put(out, e, xs[piece], flat(xs[piece].shape(), c));
  }
  return out;
}

HostTensor narrow_reference(const HostTensor& x, int dim, int64_t start, int64_t length) {
  int a = dim < 0 ? dim + x.ndim() : dim;
  HostTensor out = HostTensor::empty(x.shape().with(a, length), x.dtype());
  for (int64_t e = 0; e < out.numel(); ++e) {
    std::vector<int64_t> c = coords(out.shape(), e);
    c[static_cast<size_t>(a)] += start;
    put(out, e, x, flat(x.shape(), c));
  }
  return out;
}

std::vector<int64_t> ids_of(const HostTensor& index) {
  std::vector<int64_t> ids;
  for (double v : testing::values(index)) ids.push_back(static_cast<int64_t>(v));
  return ids;
}

// out[o, j, i] = x[o, index[j] - first, i], zeros outside [0, x.dim(a)).
HostTensor gather_reference(const HostTensor& x, int a, const HostTensor& index, int64_t first = 0) {
  std::vector<int64_t> dims(x.shape().begin(), x.shape().begin() + a);
  dims.insert(dims.end(), index.shape().begin(), index.shape().end());
  dims.insert(dims.end(), x.shape().begin() + a + 1, x.shape().end());
  HostTensor out = HostTensor::zeros(Shape(dims), x.dtype());
  std::vector<int64_t> ids = ids_of(index);
  int64_t outer = x.shape().outer(a), inner = x.shape().inner(a), extent = x.dim(a), count = index.numel();
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t j = 0; j < count; ++j)
      for (int64_t i = 0; i < inner; ++i) {
        int64_t local = ids[static_cast<size_t>(j)] - first;
        if (local >= 0 && local < extent) put(out, (o * count + j) * inner + i, x, (o * extent + local) * inner + i);
      }
  return out;
}

::testing::AssertionResult identical(const HostTensor& got, const HostTensor& expected) {
  if (got.dtype() != expected.dtype()) {
    return ::testing::AssertionFailure() << "dtype " << to_string(got.dtype()) << " instead of " << to_string(expected.dtype());
  }
  return all_close(got, expected, 0, 0);
}

// A random index of shape with values in [lo, hi).
HostTensor random_index(const Shape& shape, DType dtype, uint64_t seed, int64_t lo, int64_t hi) {
  return random_tensor(shape, dtype, seed, static_cast<double>(lo), static_cast<double>(hi));
}

void check_movement(const Device& device) {
  uint64_t seed = 100;
  for (DType dtype : kAll) {
    SCOPED_TRACE(to_string(dtype));
    auto input = [&](const Shape& s) { return random_tensor(s, dtype, seed++, -50, 50); };
    // permute and transpose
    struct P {
      Shape shape;
      std::vector<int> dims;
    };
    for (const P& c : std::vector<P>{{{2, 3, 4}, {2, 0, 1}},
                                     {{2, 3, 4}, {1, 0, 2}},
                                     {{2, 3, 4}, {0, 2, 1}},
                                     {{2, 3, 4}, {0, 1, 2}},
                                     {{2, 3, 4}, {-1, 0, -2}},
                                     {{5, 1, 7, 3}, {3, 1, 2, 0}},
                                     {{4, 0, 3}, {2, 1, 0}},
                                     {{1}, {0}},
                                     {{}, {}},
                                     {{17, 19}, {1, 0}},
                                     {{2, 3, 4, 5, 6}, {4, 2, 0, 3, 1}},
                                     {{2, 3, 2, 3, 2, 3, 2, 3}, {7, 6, 5, 4, 3, 2, 1, 0}},
                                     {{2, 2, 2, 2, 2, 2, 2, 2, 2}, {1, 0, 3, 2, 4, 5, 6, 7, 8}}}) {  // rank 9: 5 blocks once merged
      HostTensor x = input(c.shape);
      EXPECT_TRUE(identical(to_host(permute(on(x, device), c.dims)), permute_reference(x, c.dims)))
          << "permute " << c.shape;
    }
    HostTensor t = input({3, 5, 7});
    EXPECT_TRUE(identical(to_host(transpose(on(t, device), 0, 2)), permute_reference(t, {2, 1, 0})));
    EXPECT_TRUE(identical(to_host(transpose(on(t, device), -1, -2)), permute_reference(t, {0, 2, 1})));
    EXPECT_TRUE(identical(to_host(transpose(on(t, device), 1, 1)), t));
    // concat
    struct C {
      std::vector<Shape> pieces;
      int dim;
    };
    for (const C& c : std::vector<C>{{{{2, 3, 4}, {2, 0, 4}, {2, 5, 4}}, 1},
                                     {{{1, 3}, {4, 3}}, 0},
                                     {{{3, 2}, {3, 17}, {3, 1}}, -1},
                                     {{{0, 3}, {0, 3}}, 0},
                                     {{{2, 0}, {2, 0}}, 0},
                                     {{{5}}, 0},
                                     {{{2, 3, 4}, {2, 3, 4}}, 2}}) {
      std::vector<HostTensor> hs;
      std::vector<DeviceTensor> ds;
      for (const Shape& s : c.pieces) {
        hs.push_back(input(s));
        ds.push_back(on(hs.back(), device));
      }
      EXPECT_TRUE(identical(to_host(concat(ds, c.dim)), concat_reference(hs, c.dim))) << "concat of " << c.pieces.size()
                                                                                      << " along " << c.dim;
    }
    // narrow
    HostTensor n = input({5, 7, 3});
    for (auto [dim, start, length] : std::vector<std::tuple<int, int64_t, int64_t>>{
             {1, 2, 4}, {0, 1, 3}, {-1, 0, 3}, {2, 2, 1}, {1, 7, 0}, {0, 0, 5}}) {
      EXPECT_TRUE(identical(to_host(narrow(on(n, device), dim, start, length)), narrow_reference(n, dim, start, length)))
          << "narrow " << dim << " " << start << " " << length;
    }
    // index_select, with both index dtypes
    for (DType idx : {DType::kI32, DType::kI64}) {
      HostTensor x = input({4, 6, 3});
      struct S {
        int dim;
        Shape index;
        int64_t extent;
      };
      for (const S& s : std::vector<S>{{1, {5}, 6}, {0, {2, 3}, 4}, {-1, {17}, 3}, {1, {0}, 6}, {2, {}, 3}}) {
        HostTensor index = random_index(s.index, idx, seed++, 0, s.extent);
        int a = s.dim < 0 ? s.dim + 3 : s.dim;
        EXPECT_TRUE(identical(to_host(index_select(on(x, device), s.dim, on(index, device))), gather_reference(x, a, index)))
            << "index_select dim " << s.dim << " index " << s.index << " " << to_string(idx);
      }
      HostTensor empty_outer = input({0, 5});
      HostTensor index = random_index({3}, idx, seed++, 0, 5);
      EXPECT_EQ(index_select(on(empty_outer, device), 1, on(index, device)).shape(), Shape({0, 3}));
      // embedding of a vocabulary shard: ids [2, 12) live here, the others give zero rows
      HostTensor table = input({10, 17});
      for (const Shape& ids_shape : {Shape{3, 4}, Shape{1}, Shape{0}, Shape{40}}) {
        HostTensor ids = random_index(ids_shape, idx, seed++, -3, 15);
        EXPECT_TRUE(identical(to_host(embedding(on(table, device), on(ids, device), 2)), gather_reference(table, 0, ids, 2)))
            << "embedding of ids " << ids_shape;
      }
      HostTensor all_ids = random_index({25}, idx, seed++, 0, 10);
      EXPECT_TRUE(identical(to_host(embedding(on(table, device), on(all_ids, device))), gather_reference(table, 0, all_ids)));
      // index_copy: distinct slots in range, and -1 and too-large slots skipped.
      for (int dim : {0, 1, 2}) {
        HostTensor x = input({6, 5, 4});
        int64_t extent = x.dim(dim);
        std::vector<int64_t> slots = {extent - 1, -1, 0, extent, 2};
        HostTensor index = cast_host(HostTensor::from_vector(slots, {5}), idx);
        HostTensor src = input(x.shape().with(dim, 5));
        HostTensor want = x.clone();
        int64_t outer = x.shape().outer(dim), inner = x.shape().inner(dim);
        for (int64_t o = 0; o < outer; ++o)
          for (int64_t j = 0; j < 5; ++j)
            for (int64_t i = 0; i < inner; ++i) {
              int64_t slot = slots[static_cast<size_t>(j)];
              if (slot >= 0 && slot < extent) put(want, (o * extent + slot) * inner + i, src, (o * 5 + j) * inner + i);
            }
        DeviceTensor target = on(x, device);
        index_copy(target, dim, on(index, device), on(src, device));
        EXPECT_TRUE(identical(to_host(target), want)) << "index_copy dim " << dim << " " << to_string(idx);
      }
    }
    // where and masked_fill, with both mask dtypes
    for (DType mask_dtype : {DType::kBool, DType::kU8}) {
      for (const Shape& s : {Shape{37}, Shape{3, 5, 7}, Shape{0, 4}, Shape{1}}) {
        HostTensor cond = random_tensor(s, mask_dtype, seed++, 0, 3);  // u8: 0, 1, 2 (2 is true too)
        HostTensor a = input(s), b = input(s);
        std::vector<double> c = testing::values(cond), va = testing::values(a), vb = testing::values(b);
        std::vector<double> w(c.size());
        for (size_t i = 0; i < c.size(); ++i) w[i] = c[i] != 0 ? va[i] : vb[i];
        EXPECT_TRUE(identical(to_host(where(on(cond, device), on(a, device), on(b, device))),
                              cast_host(HostTensor::from_vector(w, s), dtype)))
            << "where " << s << " cond " << to_string(mask_dtype);
        for (double value : {-2.5, 300.0}) {
          HostTensor fill = cast_host(HostTensor::from_vector(std::vector<double>{value}, {1}), dtype);
          std::vector<double> f(c.size());
          double filled = testing::values(fill)[0];
          for (size_t i = 0; i < c.size(); ++i) f[i] = c[i] != 0 ? filled : vb[i];
          EXPECT_TRUE(identical(to_host(masked_fill(on(b, device), on(cond, device), value)),
                                cast_host(HostTensor::from_vector(f, s), dtype)))
              << "masked_fill " << s << " with " << value;
        }
      }
    }
  }
}

TEST(Movement, EveryOpAndDtypeMatchesTheReferenceOnTheCpu) { check_movement(Device::cpu()); }

TEST(CudaMovement, EveryOpAndDtypeMatchesTheReferenceOnTheGpu) {
  MESHRT_REQUIRE_CUDA();
  check_movement(Device::cuda(0));
}

// ---- index_add

// x with src's slices added at index along dim, by a plain loop in the order of
// j in T (the cpu kernel's order: its result is identical; a GPU adds in
// another order, so close).
template <class T>
HostTensor index_add_reference(HostTensor x, int dim, const std::vector<int64_t>& ids, const HostTensor& src) {
  int64_t outer = x.shape().outer(dim), extent = x.dim(dim), inner = x.shape().inner(dim);
  int64_t count = static_cast<int64_t>(ids.size());
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t j = 0; j < count; ++j)
      for (int64_t i = 0; i < inner; ++i)
        x.data<T>()[(o * extent + ids[static_cast<size_t>(j)]) * inner + i] += src.data<T>()[(o * count + j) * inner + i];
  return x;
}

void check_index_add(const Device& device) {
  uint64_t seed = 300;
  for (DType dtype : {DType::kF32, DType::kF64}) {
    for (DType idx : {DType::kI32, DType::kI64}) {
      struct S {
        Shape x;
        int dim;
        std::vector<int64_t> ids;
      };
      // Repeated ids (3 three times, 0 twice), every dimension, an empty index,
      // and more slices than rows.
      const std::vector<S> cases = {{{6, 5}, 0, {3, 0, 3, 5, 0, 3}},
                                    {{4, 7, 3}, 1, {6, 6, 2}},
                                    {{4, 7, 3}, -1, {0, 2, 2, 1}},
                                    {{5, 8}, 0, {}},
                                    {{3, 4}, 0, std::vector<int64_t>(200, 1)}};
      for (const S& c : cases) {
        int a = c.dim < 0 ? c.dim + c.x.ndim() : c.dim;
        HostTensor x = random_tensor(c.x, dtype, seed++, -1, 1);
        HostTensor src = random_tensor(c.x.with(a, static_cast<int64_t>(c.ids.size())), dtype, seed++, -1, 1);
        HostTensor index = cast_host(HostTensor::from_vector(c.ids, {static_cast<int64_t>(c.ids.size())}), idx);
        HostTensor want = dtype == DType::kF32 ? index_add_reference<float>(x.clone(), a, c.ids, src)
                                               : index_add_reference<double>(x.clone(), a, c.ids, src);
        DeviceTensor target = on(x, device);
        index_add(target, c.dim, on(index, device), on(src, device));
        HostTensor got = to_host(target);
        std::string where = std::string("index_add ") + to_string(dtype) + " x " + to_string(c.x) + " dim " + std::to_string(c.dim) +
                            " " + std::to_string(c.ids.size()) + " ids " + to_string(idx);
        if (device.is_cpu()) {
          EXPECT_TRUE(identical(got, want)) << where;
        } else {
          Tolerance t = tolerance(dtype, 200);
          EXPECT_TRUE(all_close(got, want, t.rtol, t.atol)) << where;
        }
      }
    }
  }
}

TEST(IndexAdd, RepeatedIdsAddUpAsAPlainLoopOnTheCpu) { check_index_add(Device::cpu()); }

TEST(CudaIndexAdd, RepeatedIdsAddUpAsAPlainLoopOnTheGpu) {
  MESHRT_REQUIRE_CUDA();
  check_index_add(Device::cuda(0));
}

// As index_select's: the kernel throws, at the call or at the next wait on
// the stream (a stream of its own for each call here: the error is sticky). It
// checks every id before adding anything, so x is unchanged by the failed call.
TEST(IndexAdd, AnIdOutOfRangeOnTheCpuIsAnErrorAndAddsNothing) {
  HostTensor start = random_tensor({4, 3}, DType::kF32, 1);
  DeviceTensor x = on(start);
  DeviceTensor src = on(random_tensor({3, 3}, DType::kF32, 2));
  for (int64_t bad : {4, -1}) {
    DeviceTensor index = on(HostTensor::from_vector(std::vector<int64_t>{1, bad, 1}, {3}));
    Stream side = Stream::create(Device::cpu());
    EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument,
                             [&] {
                               index_add(x, 0, index, src, &side);
                               side.synchronize();
                             },
                             {"index_add", "index " + std::to_string(bad), "element 1", "[0, 4)", "dimension 0"}));
    EXPECT_TRUE(identical(to_host(x), start)) << "id " << bad;
  }
  DeviceTensor i = on(HostTensor::from_vector(std::vector<int64_t>{0, 1}, {2}));
  EXPECT_TRUE(throws_error(ErrorKind::kShape, [&] { index_add(x, 0, i, src); },
                           {"index_add", "src must be x's shape", "f32[3, 3]"}));
  EXPECT_TRUE(throws_error(ErrorKind::kShape, [&] { index_add(on(random_tensor({4, 3}, DType::kBF16, 1)), 0, i,
                                                              on(random_tensor({2, 3}, DType::kBF16, 1))); },
                           {"index_add", "bf16[4, 3]", "f32, f64"}));
  EXPECT_TRUE(throws_error(ErrorKind::kShape, [&] { index_add(x, 0, src, src); }, {"index_add", "i32, i64"}));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { index_add(x, 2, i, src); }, {"index_add", "dimension 2"}));
}

// ---- axis reductions and topk

// mean, amax, amin or argmax of x (f64 values) along axis a, NaN as the rules say.
HostTensor axis_reference(const HostTensor& x, int dim, const std::string& op) {
  int a = dim < 0 ? dim + x.ndim() : dim;
  int64_t outer = x.shape().outer(a), n = x.dim(a), inner = x.shape().inner(a);
  HostTensor out = HostTensor::empty(x.shape().without(a), DType::kF64);
  const double* v = x.data<double>();
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < inner; ++i) {
      double result;
      if (op == "mean") {
        double s = 0;
        for (int64_t k = 0; k < n; ++k) s += v[(o * n + k) * inner + i];
        result = s / static_cast<double>(n);
      } else {
        int64_t best = 0;
        for (int64_t k = 1; k < n; ++k) {
          double b = v[(o * n + best) * inner + i], c = v[(o * n + k) * inner + i];
          if (std::isnan(b)) break;
          if (std::isnan(c) || (op == "amin" ? c < b : c > b)) best = k;
        }
        result = op == "argmax" ? static_cast<double>(best) : v[(o * n + best) * inner + i];
      }
      out.data<double>()[o * inner + i] = result;
    }
  return out;
}

void check_axis_reductions(const Device& device) {
  uint64_t seed = 500;
  struct R {
    Shape shape;
    int dim;
  };
  const std::vector<R> cases = {{{6, 33, 5}, 0}, {{6, 33, 5}, 1}, {{6, 33, 5}, 2}, {{6, 33, 5}, -1},
                                {{1}, 0},        {{17}, 0},       {{0, 3}, 1},     {{4, 0}, 0}, {{3, 1, 2}, 1}};
  for (DType dtype : kNumerics) {
    for (const R& c : cases) {
      // Integers in [-8, 8) repeat often: ties test the first-index rule.
      HostTensor x = random_tensor(c.shape, dtype, seed++, -8, 8);
      DeviceTensor d = on(x, device);
      HostTensor wide = f64(x);
      std::string where = to_string(dtype) + c.shape.to_string() + " dim " + std::to_string(c.dim);
      EXPECT_TRUE(identical(to_host(amax(d, c.dim)), cast_host(axis_reference(wide, c.dim, "amax"), dtype))) << "amax " << where;
      EXPECT_TRUE(identical(to_host(amin(d, c.dim)), cast_host(axis_reference(wide, c.dim, "amin"), dtype))) << "amin " << where;
      EXPECT_TRUE(identical(to_host(argmax(d, c.dim)), cast_host(axis_reference(wide, c.dim, "argmax"), DType::kI64)))
          << "argmax " << where;
      if (is_floating(dtype)) {
        Tolerance t = tolerance(dtype);
        EXPECT_TRUE(all_close(to_host(mean(d, c.dim)), cast_host(axis_reference(wide, c.dim, "mean"), dtype), t.rtol, t.atol))
            << "mean " << where;
      }
    }
    // Mean of an empty dimension: 0 / 0.
    if (is_floating(dtype)) {
      for (double v : testing::values(to_host(mean(on(random_tensor({3, 0}, dtype, 1), device), 1)))) EXPECT_TRUE(std::isnan(v));
    }
  }
  // NaN: amax and amin give it, argmax points at the first one; ties keep the first index.
  for (DType dtype : kFloats) {
    HostTensor x = cast_host(HostTensor::from_vector(std::vector<double>{1, NAN, 7, NAN, 3, 3, -1, 3, INFINITY, -INFINITY, 2, 5},
                                                     {3, 4}), dtype);
    std::vector<double> mx = testing::values(to_host(amax(on(x, device), 1)));
    std::vector<double> mn = testing::values(to_host(amin(on(x, device), 1)));
    EXPECT_TRUE(std::isnan(mx[0]) && std::isnan(mn[0])) << to_string(dtype);
    EXPECT_EQ(mx[1], 3);
    EXPECT_EQ(mn[1], -1);
    EXPECT_EQ(mx[2], INFINITY);
    EXPECT_EQ(mn[2], -INFINITY);
    EXPECT_EQ(to_host(argmax(on(x, device), 1)).to_vector<int64_t>(), (std::vector<int64_t>{1, 0, 0}));
  }
}

TEST(AxisReduction, MeanAmaxAminArgmaxMatchTheReferenceOnTheCpu) { check_axis_reductions(Device::cpu()); }

TEST(CudaAxisReduction, MeanAmaxAminArgmaxMatchTheReferenceOnTheGpu) {
  MESHRT_REQUIRE_CUDA();
  check_axis_reductions(Device::cuda(0));
}

// topk by a stable sort: NaN first, then larger values, then lower indices.
std::pair<HostTensor, HostTensor> topk_reference(const HostTensor& x, int64_t k) {
  HostTensor wide = f64(x);
  int64_t cols = x.dim(-1), rows = cols == 0 ? 0 : x.numel() / cols;
  HostTensor values = HostTensor::empty(x.shape().with(-1, k), DType::kF64);
  HostTensor indices = HostTensor::empty(x.shape().with(-1, k), DType::kI64);
  for (int64_t r = 0; r < rows; ++r) {
    const double* row = wide.data<double>() + r * cols;
    std::vector<int64_t> order(static_cast<size_t>(cols));
    for (int64_t c = 0; c < cols; ++c) order[static_cast<size_t>(c)] = c;
    std::stable_sort(order.begin(), order.end(), [&](int64_t i, int64_t j) {
      if (std::isnan(row[i]) != std::isnan(row[j])) return std::isnan(row[i]);
      return !std::isnan(row[i]) && row[i] > row[j];
    });
    for (int64_t t = 0; t < k; ++t) {
      indices.data<int64_t>()[r * k + t] = order[static_cast<size_t>(t)];
      values.data<double>()[r * k + t] = row[order[static_cast<size_t>(t)]];
    }
  }
  return {cast_host(values, x.dtype()), indices};
}

void check_topk(const Device& device) {
  uint64_t seed = 900;
  struct K {
    Shape shape;
    int64_t k;
  };
  for (DType dtype : kNumerics) {
    for (const K& c : std::vector<K>{{{5, 37}, 0}, {{5, 37}, 1}, {{5, 37}, 5}, {{5, 37}, 37}, {{3, 1}, 1}, {{2, 0}, 0},
                                     {{0, 4}, 2}, {{4, 2, 300}, 7}, {{1}, 1}, {{2, 1000}, 33}}) {
      HostTensor x = random_tensor(c.shape, dtype, seed++, -20, 20);
      TopK got = topk(on(x, device), c.k);
      auto [values, indices] = topk_reference(x, c.k);
      std::string where = to_string(dtype) + c.shape.to_string() + " k " + std::to_string(c.k);
      EXPECT_TRUE(identical(to_host(got.values), values)) << "topk values " << where;
      EXPECT_TRUE(identical(to_host(got.indices), indices)) << "topk indices " << where;
    }
  }
  for (DType dtype : kFloats) {
    HostTensor x = cast_host(HostTensor::from_vector(std::vector<double>{2, NAN, 5, 2, -INFINITY, 5, NAN, 0}, {8}), dtype);
    TopK got = topk(on(x, device), 6);
    EXPECT_EQ(to_host(got.indices).to_vector<int64_t>(), (std::vector<int64_t>{1, 6, 2, 5, 0, 3})) << to_string(dtype);
  }
}

TEST(TopK, MatchesAStableSortOnTheCpu) { check_topk(Device::cpu()); }

TEST(CudaTopK, MatchesAStableSortOnTheGpu) {
  MESHRT_REQUIRE_CUDA();
  check_topk(Device::cuda(0));
  DeviceTensor x = DeviceTensor::zeros({2, 2000}, DType::kF32, Device::cuda(0));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { topk(x, 1025); }, {"topk", "k = 1025", "1024"}));
  EXPECT_EQ(topk(x, 1024).indices.shape(), Shape({2, 1024}));
}

// On CUDA an index_select index out of range reads nothing and gives zeros (movement.h).
TEST(CudaMovement, AnIndexOutOfRangeGivesZerosOnTheGpu) {
  MESHRT_REQUIRE_CUDA();
  const Device gpu = Device::cuda(0);
  HostTensor x = random_tensor({2, 3}, DType::kF32, 1, 1, 2);  // no zeros
  HostTensor index = HostTensor::from_vector(std::vector<int64_t>{2, 3, -1, 0}, {4});
  std::vector<float> got = to_host(index_select(on(x, gpu), 1, on(index, gpu))).to_vector<float>();
  const float* v = x.data<float>();
  EXPECT_EQ(got, (std::vector<float>{v[2], 0, 0, v[0], v[5], 0, 0, v[3]}));
}

TEST(Movement, ErrorsNameTheOpAndTheTensors) {
  DeviceTensor x = on(random_tensor({2, 3, 4}, DType::kF32, 1));
  DeviceTensor i = on(random_index({2}, DType::kI64, 1, 0, 2));
  auto arg = ErrorKind::kInvalidArgument;
  auto shape = ErrorKind::kShape;
  EXPECT_TRUE(throws_error(arg, [&] { permute(x, {0, 1}); }, {"permute", "[0, 1]", "f32[2, 3, 4]"}));
  EXPECT_TRUE(throws_error(arg, [&] { permute(x, {0, 1, 1}); }, {"permute", "repeats dimension 1"}));
  EXPECT_TRUE(throws_error(arg, [&] { permute(x, {0, 1, 3}); }, {"permute", "dimension 3", "f32[2, 3, 4]"}));
  EXPECT_TRUE(throws_error(shape, [&] { permute(on(random_tensor({2, 2, 2, 2, 2, 2, 2, 2, 2}, DType::kF32, 1)),
                                                {8, 7, 6, 5, 4, 3, 2, 1, 0}); },
                           {"permute", "at most 8"}));
  EXPECT_TRUE(throws_error(arg, [&] { transpose(x, 0, -4); }, {"transpose", "dimension -4"}));
  EXPECT_TRUE(throws_error(arg, [&] { concat({}, 0); }, {"concat of no tensors"}));
  EXPECT_TRUE(throws_error(shape, [&] { concat({x, on(random_tensor({2, 4, 4}, DType::kF32, 1))}, 0); },
                           {"concat", "piece 1 f32[2, 4, 4]", "f32[2, 3, 4]"}));
  EXPECT_TRUE(throws_error(shape, [&] { concat({x, on(random_tensor({2, 3, 4}, DType::kBF16, 1))}, 1); },
                           {"concat", "bf16[2, 3, 4]"}));
  EXPECT_TRUE(throws_error(arg, [&] { concat({x, DeviceTensor()}, 1); }, {"concat", "piece 1", "undefined"}));
  EXPECT_TRUE(throws_error(arg, [&] { narrow(x, 1, 2, 2); }, {"narrow", "[2, 2 + 2)", "[0, 3)", "f32[2, 3, 4]"}));
  EXPECT_TRUE(throws_error(arg, [&] { narrow(x, 1, -1, 1); }, {"narrow"}));
  EXPECT_TRUE(throws_error(arg, [&] { narrow(x, 3, 0, 1); }, {"narrow", "dimension 3"}));
  EXPECT_TRUE(throws_error(shape, [&] { index_select(x, 0, x); }, {"index_select", "f32[2, 3, 4]", "i32, i64"}));
  EXPECT_TRUE(throws_error(arg, [&] { index_select(x, 5, i); }, {"index_select", "dimension 5"}));
  EXPECT_TRUE(throws_error(shape, [&] { index_copy(x, 1, i, x); }, {"index_copy", "src must be x's shape", "along dimension 1"}));
  EXPECT_TRUE(throws_error(shape, [&] { embedding(x, i); }, {"embedding", "[rows, hidden]", "f32[2, 3, 4]"}));
  EXPECT_TRUE(throws_error(shape, [&] { embedding(x.reshape({6, 4}), x); }, {"embedding", "i32, i64"}));
  DeviceTensor mask = on(random_tensor({2, 3, 4}, DType::kBool, 1, 0, 2));
  EXPECT_TRUE(throws_error(shape, [&] { where(x, x, x); }, {"where", "f32[2, 3, 4]", "bool, u8"}));
  EXPECT_TRUE(throws_error(shape, [&] { where(mask, x, on(random_tensor({2, 3, 4}, DType::kI32, 1))); },
                           {"where", "one dtype", "i32[2, 3, 4]"}));
  EXPECT_TRUE(throws_error(shape, [&] { where(mask, x, x.reshape({6, 4})); }, {"where", "one shape", "f32[6, 4]"}));
  EXPECT_TRUE(throws_error(shape, [&] { masked_fill(x, mask.reshape({24}), 0); }, {"masked_fill", "bool[24]"}));
  EXPECT_TRUE(throws_error(shape, [&] { masked_fill(x, x, 0); }, {"masked_fill", "bool, u8"}));
}

// An index out of range on the cpu: the kernel throws, at the call when the
// work ran at once, else at the next wait on the stream (a stream of its own
// here: the error is sticky).
TEST(Movement, AnIndexOutOfRangeOnTheCpuIsAnErrorNamingIt) {
  Stream side = Stream::create(Device::cpu());
  DeviceTensor x = on(random_tensor({2, 3, 4}, DType::kF32, 1));
  DeviceTensor index = on(HostTensor::from_vector(std::vector<int32_t>{0, 2, 3, 1}, {4}));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument,
                           [&] {
                             DeviceTensor out = index_select(x, 1, index, &side);
                             side.synchronize();
                           },
                           {"index_select", "index 3", "element 2", "[0, 3)", "dimension 1"}));
}

TEST(AxisReduction, Errors) {
  DeviceTensor x = on(random_tensor({4, 6}, DType::kF32, 1));
  EXPECT_TRUE(throws_error(ErrorKind::kShape, [&] { mean(on(random_tensor({4}, DType::kI32, 1)), 0); }, {"mean", "i32[4]"}));
  EXPECT_TRUE(throws_error(ErrorKind::kShape, [&] { amax(on(random_tensor({4}, DType::kBool, 1)), 0); }, {"amax", "bool[4]"}));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { amin(x, 2); }, {"amin", "dimension 2", "f32[4, 6]"}));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { argmax(x, -3); }, {"argmax", "dimension -3"}));
  EXPECT_TRUE(throws_error(ErrorKind::kShape, [&] { amax(on(random_tensor({3, 0}, DType::kF32, 1)), 1); },
                           {"amax", "f32[3, 0]", "empty"}));
  EXPECT_TRUE(throws_error(ErrorKind::kShape, [&] { argmax(on(random_tensor({3, 0}, DType::kF32, 1)), -1); }, {"argmax", "empty"}));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { topk(x, 7); }, {"topk", "k = 7", "[0, 6]", "f32[4, 6]"}));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { topk(x, -1); }, {"topk", "k = -1"}));
  EXPECT_TRUE(throws_error(ErrorKind::kShape, [&] { topk(on(random_tensor({}, DType::kF32, 1)), 0); }, {"topk", "f32[]"}));
  EXPECT_TRUE(throws_error(ErrorKind::kShape, [&] { topk(on(random_tensor({4}, DType::kU8, 1)), 1); }, {"topk", "u8[4]"}));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { mean(DeviceTensor(), 0); }, {"mean", "undefined"}));
}

// The new ops queue on the stream they are given, behind what is there.
TEST(CpuStreams, MovementAndAxisOpsRunInStreamOrder) {
  Stream side = Stream::create(Device::cpu());
  HostTensor h = random_tensor({3, 4}, DType::kF32, 7);
  DeviceTensor x = on(h);
  meshrt::testing::Gate gate;
  side.enqueue([&] { gate.wait(); });
  DeviceTensor t = transpose(x, 0, 1, &side);
  DeviceTensor c = concat({t, t}, 0, &side);
  DeviceTensor s = narrow(c, 0, 2, 4, &side);
  DeviceTensor m = amax(s, 0, &side);
  TopK k = topk(s, 2, &side);
  EXPECT_FALSE(side.query());
  gate.release();
  // rows 2, 3 of t then rows 0, 1: the columns 2, 3, 0, 1 of x
  HostTensor expected = narrow_reference(concat_reference({permute_reference(h, {1, 0}), permute_reference(h, {1, 0})}, 0), 0, 2, 4);
  EXPECT_TRUE(identical(to_host(s, &side), expected));
  EXPECT_TRUE(identical(to_host(m, &side), cast_host(axis_reference(f64(expected), 0, "amax"), DType::kF32)));
  EXPECT_TRUE(identical(to_host(k.indices, &side), topk_reference(expected, 2).second));
}

// ---------------------------------------------------------------- rope and attention

// inv_freq of pair i, written from the statement of transformers' rope_scaling
// (attention.h), not from the kernel's code.
double rope_inv_freq_reference(int64_t i, int64_t head_dim, double theta, const RopeScaling& s) {
  double inv = 1.0 / std::pow(theta, 2.0 * static_cast<double>(i) / static_cast<double>(head_dim));
  switch (s.kind) {
    case RopeScaling::Kind::kNone: return inv;
    case RopeScaling::Kind::kLinear: return inv / s.factor;
    case RopeScaling::Kind::kLlama3: {
      double wavelen = 2 * std::numbers::pi / inv;
      double original = static_cast<double>(s.original_max_position_embeddings);
      if (wavelen > original / s.low_freq_factor) return inv / s.factor;
      if (wavelen < original / s.high_freq_factor) return inv;
      double smooth = (original / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
      return (1 - smooth) * inv / s.factor + smooth * inv;
    }
  }
  return NAN;
}

// x [tokens, heads, head_dim] as f64; the rotate_half pairs (i, i + d/2).
HostTensor rope_reference(const HostTensor& x, const std::vector<int64_t>& positions, double theta, const RopeScaling& s) {
  HostTensor out = x.clone();
  const int64_t tokens = x.dim(0), heads = x.dim(1), d = x.dim(2), half = d / 2;
  const double* in = x.data<double>();
  double* o = out.data<double>();
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < half; ++i) {
        double angle = static_cast<double>(positions[static_cast<size_t>(t)]) * rope_inv_freq_reference(i, d, theta, s);
        int64_t at = (t * heads + h) * d;
        double x0 = in[at + i], x1 = in[at + i + half];
        o[at + i] = x0 * std::cos(angle) - x1 * std::sin(angle);
        o[at + i + half] = x1 * std::cos(angle) + x0 * std::sin(angle);
      }
  return out;
}

RopeScaling linear_scaling(double factor) { return {RopeScaling::Kind::kLinear, factor}; }
RopeScaling llama3_scaling(double factor, double low, double high, int64_t original) {
  return {RopeScaling::Kind::kLlama3, factor, low, high, original};
}

void check_rope(const Device& device, double factor) {
  struct Case {
    int64_t heads, head_dim;
    double theta;
    RopeScaling scaling;
    std::vector<int64_t> positions;
  };
  const std::vector<Case> cases = {
      {3, 8, 10000, {}, {0, 1, 2, 3, 4}},
      {4, 2, 10000, {}, {5, 5, 0, 1, 2, 1000}},                      // head_dim 2, repeated and unordered positions
      {1, 128, 10000, linear_scaling(4), {100, 3, 2047}},
      {2, 64, 500000, llama3_scaling(8, 1, 4, 8192), {0, 7, 4096, 131071}},  // Llama 3.1's scaling: all three bands
      {2, 16, 1e6, llama3_scaling(32, 2, 8, 4096), {8191, 12000, 1}},
      {5, 6, 10, {}, {-3, 2, 9}},                                    // a small theta; a negative position
      {2, 4, 10000, {}, {}},                                         // no tokens
  };
  uint64_t seed = 1300;
  for (DType dtype : kFloats) {
    for (const Case& c : cases) {
      const int64_t tokens = static_cast<int64_t>(c.positions.size());
      HostTensor x = random_tensor({tokens, c.heads, c.head_dim}, dtype, seed++, -2, 2);
      HostTensor positions = HostTensor::from_vector(c.positions, {tokens});
      HostTensor want = cast_host(rope_reference(f64(x), c.positions, c.theta, c.scaling), dtype);
      HostTensor got = to_host(rope(on(x, device), on(positions, device), c.theta, c.scaling));
      Tolerance t = tolerance(dtype, 4);
      EXPECT_TRUE(all_close(got, want, factor * t.rtol, factor * t.atol))
          << "rope " << to_string(dtype) << x.shape() << " theta " << c.theta << " scaling "
          << static_cast<int>(c.scaling.kind) << " on " << device;
    }
  }
  // The bands of llama3 are really crossed by the case above (else the scaling
  // would be tested only where it is a plain division or nothing).
  RopeScaling llama3 = llama3_scaling(8, 1, 4, 8192);
  int divided = 0, kept = 0, blended = 0;
  for (int64_t i = 0; i < 32; ++i) {
    double plain = rope_inv_freq_reference(i, 64, 500000, {}), scaled = rope_inv_freq_reference(i, 64, 500000, llama3);
    divided += scaled == plain / 8;
    kept += scaled == plain;
    blended += scaled != plain && scaled != plain / 8;
  }
  EXPECT_GT(divided, 0);
  EXPECT_GT(kept, 0);
  EXPECT_GT(blended, 0);
}

TEST(Rope, MatchesTheFloat64ReferenceForEveryScalingOnTheCpu) { check_rope(Device::cpu(), 1); }

TEST(CudaRope, MatchesTheFloat64ReferenceForEveryScalingOnTheGpu) {
  MESHRT_REQUIRE_CUDA();
  check_rope(Device::cuda(0), 2);
}

// The rotation at known angles: position 1, theta such that pair 0 turns by
// 1 rad (inv_freq 1) and head_dim 2, so out = (cos 1 x0 - sin 1 x1, cos 1 x1 + sin 1 x0).
TEST(Rope, RotatesHalvesNotInterleavedPairs) {
  HostTensor x = HostTensor::from_vector<float>({1, 0, 0, 0, 0, 1, 0, 0}, {2, 1, 4});
  HostTensor positions = HostTensor::from_vector<int64_t>({1, 1}, {2});
  // head_dim 4, theta 1: inv_freq = 1 for both pairs; pairs are (0, 2) and (1, 3).
  std::vector<float> got = to_host(rope(on(x), on(positions), 1.0)).to_vector<float>();
  const float c = static_cast<float>(std::cos(1.0)), s = static_cast<float>(std::sin(1.0));
  std::vector<float> want = {c, 0, s, 0, 0, c, 0, s};
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-6) << i;
}

// Softmax attention with repeat_kv and both masks, in float64; a query row
// with no key to see gives zeros (attention.h). mask: [batch * kv_seq] of 0/1,
// empty for none.
HostTensor attention_reference(const HostTensor& q, const HostTensor& k, const HostTensor& v,
                               const std::vector<int>& mask, bool causal, double scale) {
  const int64_t batch = q.dim(0), q_seq = q.dim(1), heads = q.dim(2), d = q.dim(3);
  const int64_t kv_seq = k.dim(1), kv_heads = k.dim(2), group = heads / kv_heads;
  if (scale == 0) scale = 1 / std::sqrt(static_cast<double>(d));
  HostTensor out = HostTensor::zeros(q.shape(), DType::kF64);
  const double *qs = q.data<double>(), *ks = k.data<double>(), *vs = v.data<double>();
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t i = 0; i < q_seq; ++i)
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t g = h / group;
        std::vector<double> w(static_cast<size_t>(kv_seq), -INFINITY);
        double m = -INFINITY;
        for (int64_t j = 0; j < kv_seq; ++j) {
          bool visible = (mask.empty() || mask[static_cast<size_t>(b * kv_seq + j)] != 0) &&
                         (!causal || j <= i + (kv_seq - q_seq));
          if (!visible) continue;
          double s = 0;
          for (int64_t c = 0; c < d; ++c) s += qs[((b * q_seq + i) * heads + h) * d + c] * ks[((b * kv_seq + j) * kv_heads + g) * d + c];
          w[static_cast<size_t>(j)] = s * scale;
          m = std::max(m, s * scale);
        }
        if (m == -INFINITY) continue;  // zeros
        double total = 0;
        for (double& x : w) total += (x = x == -INFINITY ? 0 : std::exp(x - m));
        for (int64_t j = 0; j < kv_seq; ++j)
          for (int64_t c = 0; c < d; ++c)
            out.data<double>()[((b * q_seq + i) * heads + h) * d + c] +=
                w[static_cast<size_t>(j)] / total * vs[((b * kv_seq + j) * kv_heads + g) * d + c];
      }
  return out;
}

enum class MaskKind { kNone, kLeftPadding, kRightPadding, kHoles };

// [batch, kv_seq] of 0/1: padding of b (mod 3) * kv_seq / 3 + b positions (row 0 unpadded), or random holes.
std::vector<int> make_mask(MaskKind kind, int64_t batch, int64_t kv_seq, uint64_t seed) {
  if (kind == MaskKind::kNone) return {};
  std::vector<int> mask(static_cast<size_t>(batch * kv_seq), 1);
  std::mt19937_64 rng(seed);
  for (int64_t b = 0; b < batch; ++b) {
    int64_t pad = b == 0 ? 0 : std::min(kv_seq - 1, (b % 3) * kv_seq / 3 + b);
    for (int64_t j = 0; j < kv_seq; ++j) {
      bool masked = kind == MaskKind::kLeftPadding    ? j < pad
                    : kind == MaskKind::kRightPadding ? j >= kv_seq - pad
                                                      : rng() % 3 == 0;
      if (masked) mask[static_cast<size_t>(b * kv_seq + j)] = 0;
    }
  }
  return mask;
}

HostTensor mask_tensor(const std::vector<int>& mask, int64_t batch, int64_t kv_seq, DType dtype) {
  std::vector<double> values(mask.begin(), mask.end());
  for (size_t i = 0; i < values.size(); ++i) values[i] *= static_cast<double>(i % 5 + 1);  // any nonzero attends
  if (dtype == DType::kBool) std::transform(values.begin(), values.end(), values.begin(), [](double x) { return x != 0; });
  return cast_host(HostTensor::from_vector(values, {batch, kv_seq}), dtype);
}

void check_attention(const Device& device, double factor) {
  struct Case {
    int64_t batch, q_seq, kv_seq, heads, kv_heads, head_dim;
  };
  const std::vector<Case> cases = {
      {2, 1, 1, 2, 2, 8},     {3, 5, 5, 4, 2, 16},    {4, 7, 7, 8, 2, 64},  {2, 13, 13, 4, 1, 80},
      {1, 33, 33, 2, 2, 32},  {2, 1, 6, 4, 2, 16},    {3, 3, 7, 4, 4, 8},   // queries at the end of the keys (a cache)
      {1, 300, 300, 2, 1, 24},                                              // more than one chunk of keys on a GPU
      {1, 4, 4, 2, 2, 256},                                                 // the largest head on a GPU
  };
  const DType mask_dtypes[] = {DType::kI64, DType::kI32, DType::kBool, DType::kU8};
  uint64_t seed = 1400;
  int mask_turn = 0;
  for (DType dtype : kFloats) {
    for (const Case& c : cases) {
      HostTensor q = random_tensor({c.batch, c.q_seq, c.heads, c.head_dim}, dtype, seed++, -2, 2);
      HostTensor k = random_tensor({c.batch, c.kv_seq, c.kv_heads, c.head_dim}, dtype, seed++, -2, 2);
      HostTensor v = random_tensor({c.batch, c.kv_seq, c.kv_heads, c.head_dim}, dtype, seed++, -1, 1);
      HostTensor wq = f64(q), wk = f64(k), wv = f64(v);
      DeviceTensor dq = on(q, device), dk = on(k, device), dv = on(v, device);
      for (bool causal : {true, false}) {
        for (MaskKind kind : {MaskKind::kNone, MaskKind::kLeftPadding, MaskKind::kRightPadding, MaskKind::kHoles}) {
          std::vector<int> mask = make_mask(kind, c.batch, c.kv_seq, seed++);
          DType mask_dtype = mask_dtypes[mask_turn++ % 4];
          DeviceTensor dmask = mask.empty() ? DeviceTensor() : on(mask_tensor(mask, c.batch, c.kv_seq, mask_dtype), device);
          double scale = kind == MaskKind::kHoles ? 0.3 : 0;
          HostTensor want = cast_host(attention_reference(wq, wk, wv, mask, causal, scale), dtype);
          HostTensor got = to_host(attention(dq, dk, dv, dmask, causal, scale));
          Tolerance t = tolerance(dtype, static_cast<double>(c.head_dim + c.kv_seq) / 16);
          EXPECT_TRUE(all_close(got, want, factor * t.rtol, factor * t.atol))
              << "attention " << to_string(dtype) << " q" << q.shape() << " k" << k.shape() << (causal ? " causal" : "")
              << " mask kind " << static_cast<int>(kind) << " of " << to_string(mask_dtype) << " on " << device;
        }
      }
    }
  }
}

TEST(Attention, MatchesTheFloat64ReferenceWithMasksAndGroupedHeadsOnTheCpu) { check_attention(Device::cpu(), 1); }

TEST(CudaAttention, MatchesTheFloat64ReferenceWithMasksAndGroupedHeadsOnTheGpu) {
  MESHRT_REQUIRE_CUDA();
  check_attention(Device::cuda(0), 2);
}

// A query row that sees no key gives zeros, exactly: a batch row of padding
// only, and with left padding and a causal mask the padding rows of a sequence.
void check_fully_masked_rows(const Device& device) {
  for (DType dtype : kFloats) {
    HostTensor q = random_tensor({2, 4, 2, 8}, dtype, 1500, -2, 2);
    HostTensor k = random_tensor({2, 4, 1, 8}, dtype, 1501, -2, 2);
    HostTensor v = random_tensor({2, 4, 1, 8}, dtype, 1502, 1, 2);  // no zeros: a zero output is the rule's
    HostTensor mask = HostTensor::from_vector<uint8_t>({0, 0, 0, 0, 0, 0, 1, 1}, {2, 4});
    for (bool causal : {false, true}) {
      std::vector<double> got = testing::values(to_host(attention(on(q, device), on(k, device), on(v, device), on(mask, device), causal)));
      for (int64_t i = 0; i < 4; ++i) {       // query rows of batch row 0: no key at all
        for (int64_t e = 0; e < 16; ++e) EXPECT_EQ(got[static_cast<size_t>(i * 16 + e)], 0.0) << to_string(dtype);
      }
      for (int64_t i = 0; i < 4; ++i) {       // batch row 1: keys 2 and 3; causal hides them from rows 0 and 1
        bool empty = causal && i < 2;
        for (int64_t e = 0; e < 16; ++e) {
          double x = got[static_cast<size_t>(64 + i * 16 + e)];
          EXPECT_TRUE(empty ? x == 0.0 : x >= 0.99) << to_string(dtype) << " row " << i << " element " << e << ": " << x;
        }
      }
    }
  }
}

TEST(Attention, ARowWithNoKeyToSeeIsZerosOnTheCpu) { check_fully_masked_rows(Device::cpu()); }

TEST(CudaAttention, ARowWithNoKeyToSeeIsZerosOnTheGpu) {
  MESHRT_REQUIRE_CUDA();
  check_fully_masked_rows(Device::cuda(0));
}

TEST(Attention, ErrorsNameTheOpAndTheTensors) {
  auto shape = ErrorKind::kShape;
  auto arg = ErrorKind::kInvalidArgument;
  DeviceTensor q = on(random_tensor({2, 3, 4, 8}, DType::kF32, 1));
  DeviceTensor k = on(random_tensor({2, 3, 2, 8}, DType::kF32, 2));
  DeviceTensor mask = on(random_tensor({2, 3}, DType::kI64, 3, 0, 2));
  DeviceTensor none;
  EXPECT_TRUE(throws_error(shape, [&] { attention(q.reshape({6, 4, 8}), k, k, none); }, {"attention", "q must be", "f32[6, 4, 8]"}));
  EXPECT_TRUE(throws_error(shape, [&] { attention(on(random_tensor({2, 3, 4, 8}, DType::kI32, 1)), k, k, none); },
                           {"attention", "i32[2, 3, 4, 8]", "f32, f64, f16, bf16"}));
  EXPECT_TRUE(throws_error(shape, [&] { attention(q, on(random_tensor({2, 3, 2, 8}, DType::kBF16, 1)), k, none); },
                           {"attention", "k must be", "bf16[2, 3, 2, 8]"}));
  EXPECT_TRUE(throws_error(shape, [&] { attention(q, k, on(random_tensor({2, 3, 2, 4}, DType::kF32, 1)), none); },
                           {"attention", "v must match k", "f32[2, 3, 2, 4]"}));
  EXPECT_TRUE(throws_error(shape, [&] { attention(q, on(random_tensor({2, 3, 3, 8}, DType::kF32, 1)), on(random_tensor({2, 3, 3, 8}, DType::kF32, 1)), none); },
                           {"attention", "heads (4)", "multiple", "kv_heads (3)"}));
  EXPECT_TRUE(throws_error(shape, [&] { attention(q, on(random_tensor({2, 3, 2, 6}, DType::kF32, 1)), on(random_tensor({2, 3, 2, 6}, DType::kF32, 1)), none); },
                           {"attention", "head_dim", "f32[2, 3, 2, 6]"}));
  EXPECT_TRUE(throws_error(shape, [&] { attention(q, k.narrow(0, 1), k.narrow(0, 1), none); }, {"attention", "batch"}));
  EXPECT_TRUE(throws_error(shape, [&] { attention(q, k, k, on(random_tensor({2, 4}, DType::kI64, 1, 0, 2))); },
                           {"attention", "key_mask must be [batch, seq] = [2, 3]", "i64[2, 4]"}));
  EXPECT_TRUE(throws_error(shape, [&] { attention(q, k, k, on(random_tensor({2, 3}, DType::kF32, 1))); },
                           {"attention (key_mask)", "f32[2, 3]", "i64, i32, bool, u8"}));
  DeviceTensor k2 = on(random_tensor({2, 2, 2, 8}, DType::kF32, 2));
  EXPECT_TRUE(throws_error(shape, [&] { attention(q, k2, k2, none, true); }, {"attention", "causal", "q's seq (3)", "k's seq (2)"}));
  EXPECT_EQ(attention(q, k2, k2, none, false).shape(), q.shape());  // without the causal mask any lengths do
  EXPECT_TRUE(throws_error(arg, [&] { attention(q, k, k, mask, true, -1); }, {"attention", "scale", "-1"}));
  EXPECT_TRUE(throws_error(arg, [&] { attention(q, k, k, mask, true, NAN); }, {"attention", "scale"}));
  EXPECT_TRUE(throws_error(arg, [&] { attention(DeviceTensor(), k, k, mask); }, {"attention", "undefined"}));

  DeviceTensor x = on(random_tensor({3, 2, 8}, DType::kF32, 4));
  DeviceTensor positions = on(HostTensor::from_vector<int64_t>({0, 1, 2}, {3}));
  EXPECT_TRUE(throws_error(shape, [&] { rope(on(random_tensor({3, 2, 7}, DType::kF32, 1)), positions, 1e4); },
                           {"rope", "head_dim must be even", "f32[3, 2, 7]"}));
  EXPECT_TRUE(throws_error(shape, [&] { rope(x.reshape({3, 16}), positions, 1e4); }, {"rope", "[tokens, heads, head_dim]", "f32[3, 16]"}));
  EXPECT_TRUE(throws_error(shape, [&] { rope(on(random_tensor({3, 2, 8}, DType::kI64, 1)), positions, 1e4); },
                           {"rope", "i64[3, 2, 8]", "f32, f64, f16, bf16"}));
  EXPECT_TRUE(throws_error(shape, [&] { rope(x, on(HostTensor::from_vector<int32_t>({0, 1, 2}, {3})), 1e4); },
                           {"rope (positions)", "i32[3]", "i64"}));
  EXPECT_TRUE(throws_error(shape, [&] { rope(x, positions.narrow(0, 2), 1e4); }, {"rope", "positions must be i64[3]", "i64[2]"}));
  EXPECT_TRUE(throws_error(arg, [&] { rope(x, positions, 0); }, {"rope", "theta", "0"}));
  EXPECT_TRUE(throws_error(arg, [&] { rope(x, positions, 1e4, linear_scaling(0)); }, {"rope", "linear", "factor"}));
  EXPECT_TRUE(throws_error(arg, [&] { rope(x, positions, 1e4, llama3_scaling(8, 4, 1, 8192)); },
                           {"rope", "llama3", "low_freq_factor < high_freq_factor"}));
  EXPECT_TRUE(throws_error(arg, [&] { rope(x, positions, 1e4, llama3_scaling(8, 1, 4, 0)); },
                           {"rope", "original_max_position_embeddings"}));
}

TEST(CudaAttention, AHeadLargerThanTheKernelTakesIsAnError) {
  MESHRT_REQUIRE_CUDA();
  DeviceTensor q = DeviceTensor::zeros({1, 2, 1, 512}, DType::kF32, Device::cuda(0));
  EXPECT_TRUE(throws_error(ErrorKind::kShape, [&] { attention(q, q, q, DeviceTensor()); }, {"attention", "head_dim 512", "256"}));
}

// Both ops queue on the stream they are given, behind what is there.
TEST(CpuStreams, RopeAndAttentionRunInStreamOrder) {
  Stream side = Stream::create(Device::cpu());
  HostTensor hq = random_tensor({1, 5, 2, 8}, DType::kF32, 1600), hk = random_tensor({1, 5, 1, 8}, DType::kF32, 1601);
  HostTensor positions = HostTensor::from_vector<int64_t>({0, 1, 2, 3, 4}, {5});
  DeviceTensor q = on(hq), k = on(hk), p = on(positions);
  meshrt::testing::Gate gate;
  side.enqueue([&] { gate.wait(); });
  DeviceTensor rq = rope(q.reshape({5, 2, 8}), p, 1e4, {}, &side);
  DeviceTensor rk = rope(k.reshape({5, 1, 8}), p, 1e4, {}, &side);
  DeviceTensor out = attention(rq.reshape({1, 5, 2, 8}), rk.reshape({1, 5, 1, 8}), k, DeviceTensor(), true, 0, &side);
  EXPECT_FALSE(side.query());
  gate.release();
  std::vector<int64_t> pos = {0, 1, 2, 3, 4};
  HostTensor wq = rope_reference(f64(hq).reshape({5, 2, 8}), pos, 1e4, {}).reshape({1, 5, 2, 8});
  HostTensor wk = rope_reference(f64(hk).reshape({5, 1, 8}), pos, 1e4, {}).reshape({1, 5, 1, 8});
  HostTensor want = cast_host(attention_reference(wq, wk, f64(hk), {}, true, 0), DType::kF32);
  EXPECT_TRUE(all_close(to_host(out, &side), want, 1e-5, 1e-5));
}

}  // namespace
}  // namespace meshrt::kernels

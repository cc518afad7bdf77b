// The sharded data-movement, lookup and along-an-axis reduction ops
// (sharding/ops_data.cc): each against the one-rank kernel on the whole value,
// with every layout of its input (pending sums held as real parts on every
// rank), shapes that divide and shapes that do not (at 6 ranks some blocks are
// empty); the layout rules ops.h states, counted with a Trace; i32 and i64
// through the ops that move data; the vocabulary-parallel embedding with GPT-2's
// vocabulary; ties of topk and argmax across rank boundaries; and the errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <functional>

#include "comm/world.h"
#include "kernels/movement.h"
#include "kernels/reduction.h"
#include "sharding/ops.h"
#include "sharding/redistribute.h"
#include "sharding/trace.h"
#include "sharding_test_util.h"
#include "test_util.h"

namespace meshrt::sharding {
namespace {

using meshrt::testing::all_close;
using meshrt::testing::random_tensor;
using meshrt::testing::throws_error;
using Dims = std::vector<std::vector<std::string>>;
using testing::all_layouts;
using testing::meshes_for;
using testing::placeable;

// Small whole numbers: sums, maxes and means of parts are exact.
HostTensor integers(const Shape& shape, uint64_t seed, DType dtype = DType::kF32, double lo = -8, double hi = 8) {
  return cast_host(random_tensor(shape, DType::kI32, seed, lo, hi), dtype);
}

// The global value g placed with layout l, where a partial layout's ranks hold
// real parts (not the value at coordinate 0 and zeros): for pending sums parts
// that sum to g, for a pending avg parts g + d_p with the d_p summing to 0, for
// a pending max (min) parts at most (least) g with g held by one rank per
// element, a different one for different elements. Several partial axes must
// share one op.
DTensor place(const HostTensor& g, const Mesh& mesh, const Layout& l, const std::string& name, uint64_t seed = 99) {
  if (!l.is_partial()) return DTensor::from_global(g, mesh, l, name);
  ReduceOp op = l.partials().front().op;
  int p = 0, count = 1;
  for (const Partial& q : l.partials()) {
    EXPECT_EQ(q.op, op) << "place: one op for every partial axis";
    p = p * mesh.axis_size(q.axis) + mesh.coordinate(q.axis);
    count *= mesh.axis_size(q.axis);
  }
  HostTensor whole = cast_host(g, DType::kF64);
  auto noise = [&](int q) { return cast_host(random_tensor(g.shape(), DType::kI32, seed * 131 + static_cast<uint64_t>(q), -4, 4), DType::kF64); };
  HostTensor part = HostTensor::empty(g.shape(), DType::kF64);
  const double* w = whole.data<double>();
  double* out = part.data<double>();
  if (op == ReduceOp::kSum || op == ReduceOp::kAvg) {
    // d_p = noise_p for p > 0, d_0 = -sum of the others.
    std::vector<double> d(static_cast<size_t>(g.numel()), 0.0);
    for (int q = 1; q < count; ++q) {
      HostTensor n = noise(q);
      for (int64_t i = 0; i < g.numel(); ++i) {
        double v = n.data<double>()[i];
        if (q == p) d[static_cast<size_t>(i)] = v;
        if (p == 0) d[static_cast<size_t>(i)] -= v;
      }
    }
    for (int64_t i = 0; i < g.numel(); ++i) {
      double di = d[static_cast<size_t>(i)];
      out[i] = op == ReduceOp::kSum ? (p == 0 ? w[i] + di : di) : w[i] + di;
    }
  } else {
    HostTensor n = noise(p);
    for (int64_t i = 0; i < g.numel(); ++i) {
      double off = std::fabs(n.data<double>()[i]) + 1;
      bool holder = i % count == p;
      out[i] = holder ? w[i] : (op == ReduceOp::kMax ? w[i] - off : w[i] + off);
    }
  }
  DTensor whole_parts = DTensor::from_global(cast_host(part, g.dtype()), mesh, l.with_partials({}), name);
  return DTensor(whole_parts.local(), g.shape(), mesh, l, name);
}

DeviceTensor dev(const HostTensor& h) { return to_device(h, Device::cpu()); }
HostTensor host(const DeviceTensor& d) { return meshrt::to_host(d); }

// Equal shapes and elements (infinities included; NaN equals NaN), the dtype
// aside: the ops move or select elements, or reduce small whole numbers.
::testing::AssertionResult same(const HostTensor& actual, const HostTensor& expected) {
  if (actual.shape() != expected.shape()) {
    return ::testing::AssertionFailure() << "shapes differ: " << actual.description() << " vs " << expected.description();
  }
  std::vector<double> a = meshrt::testing::values(actual), e = meshrt::testing::values(expected);
  for (size_t i = 0; i < a.size(); ++i) {
    if (!(a[i] == e[i]) && !(std::isnan(a[i]) && std::isnan(e[i]))) {
      return ::testing::AssertionFailure() << "element " << i << ": " << a[i] << " vs expected " << e[i] << " in "
                                           << actual.description();
    }
  }
  return ::testing::AssertionSuccess();
}
#define EXPECT_SAME(got, expected, where) EXPECT_TRUE(same((got), (expected))) << where

// Runs f under a fresh Trace and returns the trace.
template <class F>
Trace traced(F&& f) {
  Trace trace;
  TraceScope scope(trace);
  f();
  return trace;
}

class ShardedOps : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    // The tests' environment says cpu; sharding_ops_cuda_np1 says cuda (the same tests on one GPU).
    const char* wanted = std::getenv("MESHRT_DEVICE");
    if (wanted && std::string(wanted).rfind("cuda", 0) == 0) MESHRT_REQUIRE_CUDA();
    auto all = meshes_for(World::get().size());
    if (GetParam() >= static_cast<int>(all.size())) {
      GTEST_SKIP() << "no mesh #" << GetParam() << " at " << World::get().size() << " ranks (2-D meshes need 4 or 6 ranks)";
    }
    mesh_ = Mesh(all[static_cast<size_t>(GetParam())], World::get().default_device());
    a_ = mesh_.axes()[0].name;
    n_ = mesh_.axes()[0].size;
  }
  // A few layouts (for a second operand): replicated, sharded on each dimension
  // over the first axis, and a pending sum over the last axis.
  std::vector<Layout> some_layouts(int ndim) const {
    std::vector<Layout> out = {Layout::replicated(ndim)};
    for (int d = 0; d < ndim; ++d) out.push_back(Layout::sharded(ndim, d, a_));
    out.push_back(Layout::replicated(ndim).with_partial({mesh_.axes().back().name}));
    return out;
  }
  Mesh mesh_;
  std::string a_;
  int n_ = 1;
};

// Even sizes, and sizes that divide by nothing.
const std::vector<Shape> kShapes = {{12, 12}, {7, 13}};

TEST_P(ShardedOps, PermuteAndTransposeMatchOneRankWithoutCommunication) {
  struct Case {
    Shape shape;
    std::vector<int> dims;
  };
  std::vector<Case> cases = {{{12, 12}, {1, 0}}, {{7, 13}, {1, 0}}, {{6, 4, 6}, {2, 0, 1}}, {{7, 6, 5}, {1, 2, 0}},
                             {{7, 6, 5}, {-1, 0, 1}}};
  for (const Case& c : cases) {
    HostTensor g = integers(c.shape, 1);
    HostTensor expected = host(kernels::permute(dev(g), c.dims));
    for (const Layout& l : all_layouts(mesh_, c.shape.ndim())) {
      if (!placeable(mesh_, l, c.shape)) continue;
      DTensor x = place(g, mesh_, l, "x");
      DTensor y;
      Trace trace = traced([&] { y = permute(x, c.dims); });
      std::string where = c.shape.to_string() + " " + l.to_string();
      EXPECT_EQ(trace.collectives(), 0) << where << "\n" << trace.to_string();
      std::vector<std::vector<std::string>> moved;
      for (int d : c.dims) moved.push_back(l.dim(d < 0 ? d + c.shape.ndim() : d));
      EXPECT_EQ(y.layout(), Layout(moved).with_partials(l.partials())) << where << " -> " << y.layout().to_string();
      EXPECT_SAME(y.gather(), expected, where);
    }
  }
  for (const Shape& shape : kShapes) {
    HostTensor g = integers(shape, 2);
    for (const Layout& l : all_layouts(mesh_, 2)) {
      if (!placeable(mesh_, l, shape)) continue;
      DTensor x = place(g, mesh_, l, "x");
      EXPECT_SAME(transpose(x, 0, 1).gather(), host(kernels::transpose(dev(g), 0, 1)), shape << " " << l.to_string());
      EXPECT_SAME(transpose(x, -1, 0).gather(), host(kernels::transpose(dev(g), 0, 1)), shape << " " << l.to_string());
    }
  }
}

TEST_P(ShardedOps, ReshapeMatchesOneRankForEveryLayout) {
  std::vector<std::pair<Shape, Shape>> cases = {
      {{12, 12}, {144}}, {{144}, {12, 12}},   {{12, 12}, {4, 3, 12}}, {{12, 12}, {3, 48}}, {{7, 13}, {91}},
      {{91}, {7, 13}},   {{7, 13}, {13, 7}},  {{6, 4, 6}, {24, 6}},   {{6, 4, 6}, {6, 24}}, {{12, 1, 12}, {12, 12}},
      {{12, 12}, {12, 1, 12}}, {{7, 13}, {7, 13, 1}},
      // Cut again into fewer rows than blocks (at 3 ranks and more).
      {{12, 12}, {2, 72}},     {{7, 13}, {1, 91}}};
  for (const auto& [in, out] : cases) {
    HostTensor g = integers(in, 3);
    HostTensor expected = g.clone().reshape(out);
    for (const Layout& l : all_layouts(mesh_, in.ndim())) {
      if (!placeable(mesh_, l, in)) continue;
      DTensor x = place(g, mesh_, l, "x");
      DTensor y = reshape(x, out);
      std::string where = in.to_string() + " -> " + out.to_string() + " from " + l.to_string();
      EXPECT_EQ(y.global_shape(), out) << where;
      EXPECT_EQ(y.layout().partials(), l.partials()) << where << " -> " << y.layout().to_string();
      EXPECT_SAME(y.gather(), expected, where << " -> " << y.layout().to_string());
    }
  }
}

// The rule's aligned cases keep the sharding and move nothing: a split [a*b] ->
// [a, b] whose blocks are whole b-rows, and a merge [a, b] -> [a*b] with a
// sharded and b whole; partials stay.
TEST_P(ShardedOps, AlignedReshapeKeepsTheShardingWithoutCommunication) {
  const int64_t a = 12, b = 5;  // 12 divides by 1, 2, 3, 4 and 6
  HostTensor flat = integers({a * b}, 4);
  std::vector<std::string> other;
  if (mesh_.ndim() > 1) other = {mesh_.axes().back().name};
  Layout split_from = Layout(Dims{{a_}}, other), split_to = Layout(Dims{{a_}, {}}, other);
  DTensor x = place(flat, mesh_, split_from, "x");
  DTensor y;
  Trace t1 = traced([&] { y = reshape(x, {a, b}); });
  EXPECT_EQ(t1.collectives(), 0) << t1.to_string();
  EXPECT_EQ(y.layout(), split_to) << y.layout().to_string();
  EXPECT_SAME(y.gather(), flat.clone().reshape({a, b}), "split");
  DTensor z;
  Trace t2 = traced([&] { z = reshape(y, {a * b}); });
  EXPECT_EQ(t2.collectives(), 0) << t2.to_string();
  EXPECT_EQ(z.layout(), split_from) << z.layout().to_string();
  EXPECT_SAME(z.gather(), flat, "merge");
  // [a, b, c] -> [a, b * c] and back: the group of b, c is whole.
  HostTensor g3 = integers({a, 3, 4}, 5);
  DTensor w = DTensor::from_global(g3, mesh_, Layout::sharded(3, 0, a_), "w");
  DTensor merged;
  Trace t3 = traced([&] { merged = reshape(w, {a, 12}); });
  EXPECT_EQ(t3.collectives(), 0) << t3.to_string();
  EXPECT_EQ(merged.layout(), Layout::sharded(2, 0, a_));
  EXPECT_SAME(merged.gather(), g3.clone().reshape({a, 12}), "[a, b, c] -> [a, b*c]");
  // Not aligned (7 rows of 13 over 2 or more ranks): gathered, cut again; right.
  if (n_ > 1) {
    HostTensor g = integers({7, 13}, 6);
    DTensor u = DTensor::from_global(g, mesh_, Layout::sharded(2, 0, a_), "u");
    DTensor v;
    Trace t4 = traced([&] { v = reshape(u, {91}); });
    EXPECT_GT(t4.count("all_gather"), 0) << t4.to_string();
    EXPECT_EQ(v.layout(), Layout(Dims{{a_}})) << v.layout().to_string();
    EXPECT_SAME(v.gather(), g.clone().reshape({91}), "unaligned merge");
  }
}

TEST_P(ShardedOps, ConcatMatchesOneRankAndTakesTheFirstsLayout) {
  struct Case {
    Shape first, second;
    int dim;
  };
  std::vector<Case> cases = {{{12, 12}, {12, 12}, 0}, {{7, 13}, {5, 13}, 0}, {{7, 13}, {7, 4}, 1}, {{7, 13}, {7, 6}, -1}};
  for (const Case& c : cases) {
    HostTensor g0 = integers(c.first, 7), g1 = integers(c.second, 8), g2 = integers(c.first, 9);
    HostTensor expected = host(kernels::concat({dev(g0), dev(g1), dev(g2)}, c.dim));
    std::vector<Layout> others = some_layouts(2);
    std::vector<Layout> firsts = all_layouts(mesh_, 2);
    for (size_t i = 0; i < firsts.size(); ++i) {
      const Layout& l = firsts[i];
      const Layout& l1 = others[i % others.size()];
      if (!placeable(mesh_, l, c.first) || !placeable(mesh_, l1, c.second)) continue;
      DTensor x0 = place(g0, mesh_, l, "x0"), x1 = place(g1, mesh_, l1, "x1"), x2 = place(g2, mesh_, l, "x2", 7);
      DTensor y = concat({x0, x1, x2}, c.dim);
      std::string where = c.first.to_string() + " " + l.to_string() + " ++ " + c.second.to_string() + " " + l1.to_string();
      EXPECT_EQ(y.layout(), l.with_dim(c.dim < 0 ? c.dim + 2 : c.dim, {})) << where << " -> " << y.layout().to_string();
      EXPECT_SAME(y.gather(), expected, where);
    }
  }
}

TEST_P(ShardedOps, NarrowMatchesOneRank) {
  for (const Shape& shape : kShapes) {
    HostTensor g = integers(shape, 10);
    for (const Layout& l : all_layouts(mesh_, 2)) {
      if (!placeable(mesh_, l, shape)) continue;
      DTensor x = place(g, mesh_, l, "x");
      for (int d : {0, 1}) {
        int64_t n = shape[d];
        for (auto [start, length] : std::vector<std::pair<int64_t, int64_t>>{{0, n}, {1, n - 2}, {n - 1, 1}, {2, 0}, {3, 4}}) {
          DTensor y = narrow(x, d, start, length);
          std::string where = shape.to_string() + " " + l.to_string() + " dim " + std::to_string(d) + " [" +
                              std::to_string(start) + ", +" + std::to_string(length) + ")";
          EXPECT_EQ(y.layout().partials(), l.partials()) << where;
          EXPECT_EQ(y.layout().dim(d), l.dim(d)) << where;  // cut again over the same axes
          EXPECT_SAME(y.gather(), host(kernels::narrow(dev(g), d, start, length)), where);
        }
      }
      // An unsharded dimension narrows locally.
      for (int d : {0, 1}) {
        if (!l.dim(d).empty()) continue;
        Trace t = traced([&] { narrow(x, d, 1, 2); });
        EXPECT_EQ(t.collectives(), 0) << l.to_string() << "\n" << t.to_string();
      }
    }
  }
}

// Ids (or indices) of dtype in [0, n) of shape, the first 0 and the last n - 1.
HostTensor ids_of(const Shape& shape, int64_t n, DType dtype, uint64_t seed) {
  HostTensor f = cast_host(random_tensor(shape, DType::kF64, seed, 0, static_cast<double>(n)), DType::kF64);
  double* v = f.data<double>();
  for (int64_t i = 0; i < f.numel(); ++i) v[i] = std::floor(v[i]);
  v[0] = 0;
  v[f.numel() - 1] = static_cast<double>(n - 1);
  return cast_host(f, dtype);
}

TEST_P(ShardedOps, IndexSelectMatchesOneRank) {
  for (const Shape& shape : kShapes) {
    HostTensor g = integers(shape, 11);
    std::vector<Layout> index_layouts = some_layouts(2);
    for (DType index_type : {DType::kI32, DType::kI64}) {
      for (int d : {0, 1}) {
        HostTensor index = ids_of({2, 3}, shape[d], index_type, 12 + static_cast<uint64_t>(d));
        HostTensor expected = host(kernels::index_select(dev(g), d, dev(index)));
        std::vector<Layout> layouts = all_layouts(mesh_, 2);
        for (size_t i = 0; i < layouts.size(); ++i) {
          const Layout& l = layouts[i];
          // Index layouts: each in turn (a pending sum of integer parts included).
          const Layout& li = index_layouts[i % index_layouts.size()];
          if (!placeable(mesh_, l, shape) || !placeable(mesh_, li, index.shape())) continue;
          DTensor x = place(g, mesh_, l, "x"), idx = place(index, mesh_, li, "index");
          DTensor y = index_select(x, d, idx);
          std::string where = shape.to_string() + " " + l.to_string() + " dim " + std::to_string(d) + " index " +
                              std::string(to_string(index_type)) + " " + li.to_string();
          Dims want;
          for (int k = 0; k < d; ++k) want.push_back(l.dim(k));
          want.push_back({});
          want.push_back({});
          for (int k = d + 1; k < 2; ++k) want.push_back(l.dim(k));
          EXPECT_EQ(y.layout(), Layout(want).with_partials(l.partials())) << where << " -> " << y.layout().to_string();
          EXPECT_SAME(y.gather(), expected, where);
        }
      }
    }
  }
}

// i32 and i64 tensors move through permute, reshape, concat, narrow,
// index_select and where (with values past f32's exact integers for i64).
TEST_P(ShardedOps, IntegerTensorsMoveThroughTheDataOps) {
  for (DType dtype : {DType::kI32, DType::kI64}) {
    for (const Shape& shape : kShapes) {
      HostTensor g = integers(shape, 13, dtype, -1000, 1000), h = integers(shape, 14, dtype, -1000, 1000);
      if (dtype == DType::kI64) {
        for (int64_t i = 0; i < g.numel(); ++i) g.data<int64_t>()[i] += (int64_t{1} << 40) * (i % 3);
      }
      HostTensor cond = random_tensor(shape, DType::kBool, 15);
      HostTensor index = ids_of({4}, shape[1], DType::kI64, 16);
      DTensor r = DTensor::from_global(h, mesh_, Layout::replicated(2), "h");
      for (const Layout& l : all_layouts(mesh_, 2)) {
        if (!placeable(mesh_, l, shape)) continue;
        std::string at = std::string(to_string(dtype)) + " " + shape.to_string() + " " + l.to_string();
        DTensor x = place(g, mesh_, l, "x");
        EXPECT_SAME(permute(x, {1, 0}).gather(), host(kernels::permute(dev(g), {1, 0})), at);
        EXPECT_SAME(reshape(x, {shape.numel()}).gather(), g.clone().reshape({shape.numel()}), at);
        EXPECT_SAME(concat({x, r}, 0).gather(), host(kernels::concat({dev(g), dev(h)}, 0)), at);
        EXPECT_SAME(narrow(x, 1, 2, 5).gather(), host(kernels::narrow(dev(g), 1, 2, 5)), at);
        EXPECT_SAME(index_select(x, 1, DTensor::from_global(index, mesh_, Layout::replicated(1), "i")).gather(),
                    host(kernels::index_select(dev(g), 1, dev(index))), at);
        EXPECT_SAME(where(DTensor::from_global(cond, mesh_, Layout::replicated(2), "c"), x, r).gather(),
                    host(kernels::where(dev(cond), dev(g), dev(h))), at);
      }
    }
  }
}

TEST_P(ShardedOps, EmbeddingMatchesOneRankForEveryLayout) {
  for (const Shape& table_shape : kShapes) {
    HostTensor table = integers(table_shape, 17);
    std::vector<Layout> id_layouts = some_layouts(2);
    for (DType id_type : {DType::kI32, DType::kI64}) {
      HostTensor ids = ids_of({3, 4}, table_shape[0], id_type, 18);
      HostTensor expected = host(kernels::embedding(dev(table), dev(ids)));
      std::vector<Layout> layouts = all_layouts(mesh_, 2);
      for (size_t i = 0; i < layouts.size(); ++i) {
        const Layout& l = layouts[i];
        const Layout& li = id_layouts[i % id_layouts.size()];
        if (!placeable(mesh_, l, table_shape) || !placeable(mesh_, li, ids.shape())) continue;
        DTensor t = place(table, mesh_, l, "table"), x = place(ids, mesh_, li, "ids");
        std::string where = table_shape.to_string() + " " + l.to_string() + " ids " + std::string(to_string(id_type)) + " " + li.to_string();
        DTensor y = embedding(t, x);
        EXPECT_FALSE(y.layout().is_partial()) << where << " -> " << y.layout().to_string();
        EXPECT_EQ(y.layout().dim(2), l.dim(1)) << where << " -> " << y.layout().to_string();
        EXPECT_SAME(y.gather(), expected, where);
        DTensor pending = embedding(t, x, /*reduce=*/false);
        EXPECT_EQ(pending.layout().partial(), l.dim(0)) << where << " -> " << pending.layout().to_string();
        EXPECT_SAME(pending.gather(), expected, where << " (reduce=false)");
      }
    }
  }
}

// GPT-2's vocabulary over the first axis: blocks of torch.chunk's sizes (25129,
// 25128 at 2 ranks; 16753, 16753, 16751 at 3); every rank's first and last id
// looked up; one all_reduce, none with reduce=false.
TEST_P(ShardedOps, VocabularyParallelEmbeddingOfGpt2) {
  const int64_t vocab = 50257, hidden = 4;
  HostTensor table = integers({vocab, hidden}, 19);
  std::vector<double> wanted = {0, vocab - 1, 1, 25128, 25129, 16752, 16753, 33505, 33506, 12345};
  for (int64_t c = 0; c < n_; ++c) {
    Extent e = chunk_extent(vocab, n_, c);
    if (e.size == 0) continue;
    wanted.push_back(static_cast<double>(e.offset));
    wanted.push_back(static_cast<double>(e.offset + e.size - 1));
  }
  if (n_ == 2) {
    EXPECT_EQ(chunk_extents(vocab, 2), (std::vector<int64_t>{25129, 25128}));
  }
  if (n_ == 3) {
    EXPECT_EQ(chunk_extents(vocab, 3), (std::vector<int64_t>{16753, 16753, 16751}));
  }
  for (DType id_type : {DType::kI32, DType::kI64}) {
    HostTensor ids = cast_host(HostTensor::from_vector(wanted, {static_cast<int64_t>(wanted.size())}), id_type);
    HostTensor expected = host(kernels::embedding(dev(table), dev(ids)));
    DTensor t = DTensor::from_global(table, mesh_, Layout::sharded(2, 0, a_), "wte");
    DTensor x = DTensor::from_global(ids, mesh_, Layout::replicated(1), "ids");
    DTensor y;
    Trace trace = traced([&] { y = embedding(t, x); });
    EXPECT_EQ(trace.collectives(), 1) << trace.to_string();
    EXPECT_EQ(trace.count("all_reduce"), 1) << trace.to_string();
    EXPECT_EQ(y.layout(), Layout::replicated(2));
    EXPECT_SAME(y.to_host(), expected, "gpt2 " << to_string(id_type));
    DTensor p;
    Trace none = traced([&] { p = embedding(t, x, false); });
    EXPECT_EQ(none.collectives(), 0) << none.to_string();
    EXPECT_EQ(p.layout(), Layout::replicated(2).with_partial({a_}));
    // This rank's part: its own ids' rows, zeros for the others.
    Extent mine = chunk_extent(vocab, n_, mesh_.coordinate(a_));
    HostTensor part = host(p.local());
    for (size_t i = 0; i < wanted.size(); ++i) {
      bool own = wanted[i] >= static_cast<double>(mine.offset) && wanted[i] < static_cast<double>(mine.offset + mine.size);
      for (int64_t h = 0; h < hidden; ++h) {
        float v = part.data<float>()[static_cast<int64_t>(i) * hidden + h];
        float e = own ? expected.data<float>()[static_cast<int64_t>(i) * hidden + h] : 0.0f;
        ASSERT_EQ(v, e) << "id " << wanted[i] << " on the block at " << mine.offset;
      }
    }
    EXPECT_SAME(p.gather(), expected, "gpt2 pending");
    // Ids sharded over the vocabulary's axis are replicated first; over another axis they stay.
    DTensor xs = DTensor::from_global(ids, mesh_, Layout::sharded(1, 0, mesh_.axes().back().name), "ids");
    DTensor ys = embedding(t, xs);
    if (mesh_.ndim() > 1) {
      EXPECT_EQ(ys.layout(), Layout::sharded(2, 0, mesh_.axes().back().name));
    }
    EXPECT_SAME(ys.gather(), expected, "gpt2, sharded ids");
  }
}

TEST_P(ShardedOps, MeanAmaxAminMatchOneRankForEveryLayout) {
  for (const Shape& shape : kShapes) {
    HostTensor g = integers(shape, 20);
    for (const Layout& l : all_layouts(mesh_, 2)) {
      if (!placeable(mesh_, l, shape)) continue;
      DTensor x = place(g, mesh_, l, "x");
      for (int d : {0, 1, -1}) {
        std::string where = shape.to_string() + " " + l.to_string() + " dim " + std::to_string(d);
        EXPECT_TRUE(all_close(mean(x, d).gather(), host(kernels::mean(dev(g), d)), 1e-6, 1e-6)) << where;
        EXPECT_SAME(amax(x, d).gather(), host(kernels::amax(dev(g), d)), where);
        EXPECT_SAME(amin(x, d).gather(), host(kernels::amin(dev(g), d)), where);
      }
    }
  }
  // Integers, whose identity fills an empty block (13 over 6 ranks: 3, 3, 3, 3, 1, 0).
  for (DType dtype : {DType::kI32, DType::kI64}) {
    HostTensor g = integers({7, 13}, 21, dtype, -50, 50);
    for (const Layout& l : all_layouts(mesh_, 2, false)) {
      DTensor x = DTensor::from_global(g, mesh_, l, "x");
      for (int d : {0, 1}) {
        std::string where = std::string(to_string(dtype)) + " " + l.to_string() + " dim " + std::to_string(d);
        EXPECT_SAME(amax(x, d).gather(), host(kernels::amax(dev(g), d)), where);
        EXPECT_SAME(amin(x, d).gather(), host(kernels::amin(dev(g), d)), where);
      }
    }
  }
}

// A sharded reduced dimension gives the pending layout without communication;
// mean keeps pending sums and avgs, amax pending maxes, amin pending mins, and
// each reduces the others first.
TEST_P(ShardedOps, ReductionsOverAShardedDimensionArePendingWithoutCommunication) {
  HostTensor g = integers({12, 7}, 22);
  DTensor x = DTensor::from_global(g, mesh_, Layout::sharded(2, 0, a_), "x");
  struct Case {
    const char* name;
    std::function<DTensor(const DTensor&, int)> op;
    std::function<DeviceTensor(const DeviceTensor&, int)> one;
    ReduceOp pending;
  };
  std::vector<Case> cases = {
      {"mean", [](const DTensor& t, int d) { return mean(t, d); }, [](const DeviceTensor& t, int d) { return kernels::mean(t, d); }, ReduceOp::kSum},
      {"amax", [](const DTensor& t, int d) { return amax(t, d); }, [](const DeviceTensor& t, int d) { return kernels::amax(t, d); }, ReduceOp::kMax},
      {"amin", [](const DTensor& t, int d) { return amin(t, d); }, [](const DeviceTensor& t, int d) { return kernels::amin(t, d); }, ReduceOp::kMin}};
  for (const Case& c : cases) {
    DTensor y;
    Trace trace = traced([&] { y = c.op(x, 0); });
    EXPECT_EQ(trace.collectives(), 0) << c.name << "\n" << trace.to_string();
    EXPECT_EQ(y.layout(), Layout::replicated(1).with_partials({{a_, c.pending}})) << c.name << " " << y.layout().to_string();
    EXPECT_TRUE(all_close(y.gather(), host(c.one(dev(g), 0)), 1e-6, 1e-6)) << c.name;
    // The pending reductions of the input: kept when the op commutes with them.
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMax, ReduceOp::kMin}) {
      Layout partial = Layout::replicated(2).with_partials({{a_, op}});
      DTensor p = place(g, mesh_, partial, "p");
      bool keeps = c.pending == ReduceOp::kSum ? (op == ReduceOp::kSum || op == ReduceOp::kAvg) : op == c.pending;
      DTensor z;
      Trace t = traced([&] { z = c.op(p, 1); });
      std::string where = std::string(c.name) + " of " + partial.to_string();
      if (keeps) {
        EXPECT_EQ(t.collectives(), 0) << where << "\n" << t.to_string();
        EXPECT_EQ(z.layout(), Layout::replicated(1).with_partials({{a_, op}})) << where << " -> " << z.layout().to_string();
      } else {
        EXPECT_FALSE(z.layout().is_partial()) << where << " -> " << z.layout().to_string();
        if (n_ > 1) {
          EXPECT_EQ(t.collectives(), 1) << where << "\n" << t.to_string();
        }
      }
      EXPECT_TRUE(all_close(z.gather(), host(c.one(dev(g), 1)), 1e-6, 1e-6)) << where;
    }
  }
}

TEST_P(ShardedOps, TopkAndArgmaxMatchOneRankForEveryLayout) {
  for (const Shape& shape : kShapes) {
    // Few distinct values: ties everywhere, across rank boundaries too.
    for (auto [lo, hi] : std::vector<std::pair<double, double>>{{-2, 2}, {-1000, 1000}}) {
      HostTensor g = integers(shape, 23, DType::kF32, lo, hi);
      for (const Layout& l : all_layouts(mesh_, 2)) {
        if (!placeable(mesh_, l, shape)) continue;
        DTensor x = place(g, mesh_, l, "x");
        for (int64_t k : {int64_t{1}, int64_t{3}, shape[1]}) {
          std::string where = shape.to_string() + " " + l.to_string() + " k " + std::to_string(k) + " values in [" +
                              std::to_string(lo) + ", " + std::to_string(hi) + ")";
          TopK t = topk(x, k);
          kernels::TopK e = kernels::topk(dev(g), k);
          EXPECT_SAME(t.values.gather(), host(e.values), where);
          EXPECT_EQ(t.indices.dtype(), DType::kI64);
          EXPECT_SAME(t.indices.gather(), host(e.indices), where);
          EXPECT_FALSE(t.values.layout().is_partial());
          EXPECT_EQ(t.values.layout().dim(0), l.dim(0)) << where;
        }
        for (int d : {0, 1, -1}) {
          EXPECT_SAME(argmax(x, d).gather(), host(kernels::argmax(dev(g), d)),
                      shape << " " << l.to_string() << " argmax dim " << d);
        }
      }
    }
  }
  // i32 and i64 rows, the last dimension sharded (the candidates' padding).
  for (DType dtype : {DType::kI32, DType::kI64}) {
    HostTensor g = integers({3, 13}, 24, dtype, -3, 3);
    for (const Layout& l : all_layouts(mesh_, 2, false)) {
      if (!placeable(mesh_, l, g.shape())) continue;
      DTensor x = DTensor::from_global(g, mesh_, l, "x");
      for (int64_t k : {1, 4, 13}) {
        TopK t = topk(x, k);
        kernels::TopK e = kernels::topk(dev(g), k);
        EXPECT_SAME(t.values.gather(), host(e.values), to_string(dtype) << " " << l.to_string() << " k " << k);
        EXPECT_SAME(t.indices.gather(), host(e.indices), to_string(dtype) << " " << l.to_string() << " k " << k);
      }
    }
  }
}

// Every element equal (the first k win), one maximum on the last rank's block,
// -inf among the values: the candidates' padding never wins.
TEST_P(ShardedOps, TopkTiesGoToTheLowerIndexAcrossRanks) {
  const int64_t n = 13;
  std::vector<HostTensor> rows;
  rows.push_back(HostTensor::full<float>({2, n}, 1.0f));
  HostTensor last = HostTensor::full<float>({2, n}, 0.0f);
  last.data<float>()[n - 1] = 5;
  last.data<float>()[n + n - 2] = 5;  // the last two of row 1 tie
  last.data<float>()[n + n - 1] = 5;
  rows.push_back(last);
  HostTensor inf = HostTensor::full<float>({2, n}, -INFINITY);
  inf.data<float>()[3] = 2;
  inf.data<float>()[n + 12] = 2;
  rows.push_back(inf);
  for (const HostTensor& g : rows) {
    for (const Layout& l : all_layouts(mesh_, 2, false)) {
      if (!placeable(mesh_, l, g.shape())) continue;
      DTensor x = DTensor::from_global(g, mesh_, l, "x");
      for (int64_t k : {int64_t{1}, int64_t{2}, int64_t{5}, n}) {
        TopK t = topk(x, k);
        kernels::TopK e = kernels::topk(dev(g), k);
        EXPECT_SAME(t.values.gather(), host(e.values), l.to_string() << " k " << k);
        EXPECT_SAME(t.indices.gather(), host(e.indices), l.to_string() << " k " << k);
      }
      EXPECT_SAME(argmax(x, 1).gather(), host(kernels::argmax(dev(g), 1)), l.to_string());
    }
  }
}

// A sharded last dimension is not gathered: one all_gather, of k candidates
// (values and indices) per row per rank.
TEST_P(ShardedOps, TopkOfAShardedLastDimensionGathersOnlyCandidates) {
  if (n_ == 1) GTEST_SKIP() << "one rank: nothing to gather";
  const int64_t rows = 3, cols = 600, k = 2;
  HostTensor g = integers({rows, cols}, 25, DType::kF32, -100000, 100000);
  DTensor x = DTensor::from_global(g, mesh_, Layout::sharded(2, 1, a_), "x");
  TopK t;
  Trace trace = traced([&] { t = topk(x, k); });
  EXPECT_EQ(trace.collectives(), 1) << trace.to_string();
  ASSERT_EQ(trace.count("all_gather"), 1) << trace.to_string();
  for (const TraceStep& s : trace.steps()) {
    if (s.operation == "all_gather") {
      EXPECT_EQ(s.bytes, rows * k * (4 + 8)) << trace.to_string();
    }
  }
  EXPECT_EQ(t.values.layout(), Layout::replicated(2));
  kernels::TopK e = kernels::topk(dev(g), k);
  EXPECT_SAME(t.values.to_host(), host(e.values), "values");
  EXPECT_SAME(t.indices.to_host(), host(e.indices), "indices");
  DTensor am;
  Trace argmax_trace = traced([&] { am = argmax(x, 1); });
  EXPECT_EQ(argmax_trace.collectives(), 1) << argmax_trace.to_string();
  EXPECT_SAME(am.to_host(), host(kernels::argmax(dev(g), 1)), "argmax");
}

TEST_P(ShardedOps, WhereAndMaskedFillMatchOneRankForEveryLayout) {
  for (const Shape& shape : kShapes) {
    HostTensor ga = integers(shape, 26), gb = integers(shape, 27);
    HostTensor cond = random_tensor(shape, DType::kBool, 28), mask = cast_host(random_tensor(shape, DType::kBool, 29), DType::kU8);
    HostTensor expected_where = host(kernels::where(dev(cond), dev(ga), dev(gb)));
    HostTensor expected_fill = host(kernels::masked_fill(dev(ga), dev(mask), -3.5));
    std::vector<Layout> layouts = all_layouts(mesh_, 2);
    for (size_t i = 0; i < layouts.size(); ++i) {
      const Layout& l = layouts[i];
      if (!placeable(mesh_, l, shape)) continue;
      const Layout& lb = layouts[(i * 7 + 3) % layouts.size()];
      const Layout& lc = layouts[(i * 5 + 1) % layouts.size()];
      std::string where_ = shape.to_string() + " a " + l.to_string() + " b " + lb.to_string() + " cond " + lc.with_partials({}).to_string();
      if (!placeable(mesh_, lb, shape) || !placeable(mesh_, lc, shape)) continue;
      DTensor a = place(ga, mesh_, l, "a"), b = place(gb, mesh_, lb, "b");
      DTensor c = DTensor::from_global(cond, mesh_, lc.with_partials({}), "cond");
      DTensor w = where(c, a, b);
      EXPECT_EQ(w.layout(), l) << where_ << " -> " << w.layout().to_string();
      EXPECT_SAME(w.gather(), expected_where, where_);
      DTensor m = DTensor::from_global(mask, mesh_, lc.with_partials({}), "mask");
      DTensor f = masked_fill(a, m, -3.5);
      EXPECT_FALSE(f.layout().is_partial()) << where_ << " (pending sums are reduced)";
      EXPECT_SAME(f.gather(), expected_fill, where_);
    }
  }
}

// masked_fill keeps a pending max, min or avg (the value written on every rank
// is their max, min and mean) and reduces a pending sum; where keeps every
// pending reduction, with no communication for a replicated b and cond.
TEST_P(ShardedOps, WhereAndMaskedFillPartialRules) {
  HostTensor ga = integers({6, 7}, 30), gb = integers({6, 7}, 31);
  HostTensor cond = random_tensor({6, 7}, DType::kBool, 32);
  DTensor c = DTensor::from_global(cond, mesh_, Layout::replicated(2), "cond");
  DTensor b = DTensor::from_global(gb, mesh_, Layout::replicated(2), "b");
  for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMax, ReduceOp::kMin}) {
    Layout partial = Layout::sharded(2, 1, mesh_.axes().back().name);
    partial = mesh_.ndim() > 1 ? partial.with_partials({{a_, op}}) : Layout::replicated(2).with_partials({{a_, op}});
    DTensor a = place(ga, mesh_, partial, "a");
    std::string where_ = partial.to_string();
    DTensor f;
    Trace tf = traced([&] { f = masked_fill(a, c, 4.5); });
    if (op == ReduceOp::kSum) {
      EXPECT_FALSE(f.layout().is_partial()) << where_;
      if (n_ > 1) {
        EXPECT_EQ(tf.count("all_reduce"), 1) << tf.to_string();
      }
    } else {
      EXPECT_EQ(f.layout(), partial) << where_ << " -> " << f.layout().to_string();
      EXPECT_EQ(tf.collectives(), 0) << tf.to_string();
    }
    EXPECT_SAME(f.gather(), host(kernels::masked_fill(dev(ga), dev(cond), 4.5)), "masked_fill " << where_);
    DTensor w;
    Trace tw = traced([&] { w = where(c, a, b); });
    EXPECT_EQ(w.layout(), partial) << where_ << " -> " << w.layout().to_string();
    EXPECT_EQ(tw.collectives(), 0) << tw.to_string();
    EXPECT_SAME(w.gather(), host(kernels::where(dev(cond), dev(ga), dev(gb))), "where " << where_);
    // Both operands partial with the same reduction.
    DTensor b2 = place(gb, mesh_, partial, "b2", 5);
    EXPECT_SAME(where(c, a, b2).gather(), host(kernels::where(dev(cond), dev(ga), dev(gb))), "where, both " << where_);
  }
}

TEST_P(ShardedOps, BadInputsAreErrorsThatNameTheOp) {
  DTensor x = DTensor::from_global(integers({6, 7}, 33), mesh_, Layout::sharded(2, 0, a_), "x");
  DTensor y = DTensor::from_global(integers({6, 5}, 34), mesh_, Layout::replicated(2), "y");
  DTensor m = DTensor::from_global(random_tensor({6, 5}, DType::kBool, 35), mesh_, Layout::replicated(2), "m");
  DTensor ids = DTensor::from_global(ids_of({3}, 6, DType::kI64, 36), mesh_, Layout::replicated(1), "ids");
  DTensor fids = DTensor::from_global(integers({3}, 37), mesh_, Layout::replicated(1), "fids");
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { permute(x, {0}); }, {"permute", "x"}));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { permute(x, {0, 2}); }, {"permute", "dimension 2"}));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { transpose(x, 0, 3); }, {"transpose"}));
  EXPECT_TRUE(throws_error(ErrorKind::kShape, [&] { reshape(x, {5, 7}); }, {"reshape", "42", "35"}));
  EXPECT_TRUE(throws_error(ErrorKind::kShape, [&] { concat({x, y}, 0); }, {"concat", "x", "y"}));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { concat({}, 0); }, {"concat"}));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { concat({x}, 2); }, {"concat"}));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { narrow(x, 0, 4, 3); }, {"narrow", "x"}));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { narrow(x, 2, 0, 1); }, {"narrow"}));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { index_select(x, 2, ids); }, {"index_select"}));
  EXPECT_TRUE(throws_error(ErrorKind::kShape, [&] { embedding(ids, ids); }, {"embedding", "[vocab, hidden]"}));
  EXPECT_TRUE(throws_error(ErrorKind::kShape, [&] { embedding(x, fids); }, {"embedding", "i32 or i64"}));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { mean(x, 2); }, {"mean"}));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { amax(x, -3); }, {"amax"}));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { amin(x, 5); }, {"amin"}));
  EXPECT_TRUE(throws_error(ErrorKind::kShape, [&] { mean(ids, 0); }, {"mean", "not a float"}));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { topk(x, 8); }, {"topk", "k = 8", "7"}));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { topk(x, 0); }, {"topk", "k = 0"}));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { argmax(x, 2); }, {"argmax"}));
  EXPECT_TRUE(throws_error(ErrorKind::kShape, [&] { where(m, x, y); }, {"where"}));
  EXPECT_TRUE(throws_error(ErrorKind::kShape, [&] { masked_fill(x, m, 1.0); }, {"masked_fill", "x"}));
  Mesh other({{"other", mesh_.size()}}, mesh_.device());
  DTensor z = DTensor::from_global(integers({6, 7}, 38), other, Layout::replicated(2), "z");
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { concat({x, z}, 0); }, {"concat", "different meshes"}));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { embedding(z, ids); }, {"embedding", "different meshes"}));
}

INSTANTIATE_TEST_SUITE_P(Meshes, ShardedOps, ::testing::Values(0, 1, 2),
                         [](const auto& info) { return "mesh" + std::to_string(info.param); });

}  // namespace
}  // namespace meshrt::sharding

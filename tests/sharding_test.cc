// sharding/: every redistribution and every sharded op checked against the same
// computation on one rank, on random data, on each mesh the world size allows
// (1-D always; 2x2 at 4 ranks; 2x3 and 3x2 at 6), plus the error messages.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <functional>

#include "comm/world.h"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"
#include "kernels/reduction.h"
#include "sharding/multihost.h"
#include "sharding/ops.h"
#include "sharding/partitioner.h"
#include "sharding/redistribute.h"
#include "models/tensor_parallel.h"
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

// Small whole numbers in f32: sums of partial values are exact.
HostTensor integers(const Shape& shape, uint64_t seed) {
  return cast_host(random_tensor(shape, DType::kI32, seed, -8, 8), DType::kF32);
}

// The meshes run on the device MESHRT_DEVICE names (the tests' environment says
// cpu; the sharding_cuda_np1 entry says cuda: the same tests on one GPU).
class Sharding : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    const char* wanted = std::getenv("MESHRT_DEVICE");
    if (wanted && std::string(wanted).rfind("cuda", 0) == 0) MESHRT_REQUIRE_CUDA();
    auto all = meshes_for(World::get().size());
    if (GetParam() >= static_cast<int>(all.size())) {
      GTEST_SKIP() << "no mesh #" << GetParam() << " at " << World::get().size() << " ranks (2-D meshes need 4 or 6 ranks)";
    }
    mesh_ = Mesh(all[static_cast<size_t>(GetParam())], World::get().default_device());
  }
  void elementwise_reductions_and_norms(const Shape& shape);
  void tensor_parallel_mlp(int64_t ffn);
  Mesh mesh_;
};

TEST(Layout, ParsePrintAndValidate) {
  Layout l = Layout::parse("[S(model), R] P(data)");
  EXPECT_EQ(l.dim(0), std::vector<std::string>{"model"});
  EXPECT_TRUE(l.dim(1).empty());
  EXPECT_EQ(l.partial(), std::vector<std::string>{"data"});
  EXPECT_EQ(l.to_string(), "[S(model), R] P(data)");
  EXPECT_EQ(Layout::parse("S(x,y),R").to_string(), "[S(x,y), R]");
  EXPECT_EQ(Layout::parse("R,R"), Layout::replicated(2));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [] { Layout::parse("[S(x), Q]"); }, {"layout '[S(x), Q]'"}));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [] { Layout::parse("S(x),S(x)"); }, {"'x' is used twice"}));
}

TEST(Layout, PartialCarriesItsReduction) {
  Layout l = Layout::parse("[R, S(y)] P(x:max)");
  EXPECT_EQ(l.partial(), std::vector<std::string>{"x"});
  EXPECT_EQ(l.partial_op("x"), ReduceOp::kMax);
  EXPECT_EQ(l.to_string(), "[R, S(y)] P(x:max)");
  Layout two = Layout::parse("[R] P(a, b:min)");
  EXPECT_EQ(two.partials(), (std::vector<Partial>{{"a", ReduceOp::kSum}, {"b", ReduceOp::kMin}}));
  EXPECT_EQ(two.to_string(), "[R] P(a,b:min)");
  EXPECT_EQ(Layout::parse("[R] P(a:sum)"), Layout::replicated(1).with_partial({"a"}));
  EXPECT_NE(Layout::parse("[R] P(a:max)"), Layout::replicated(1).with_partial({"a"}));
  EXPECT_EQ(Layout::parse("[R] P(a:avg)").partial_op("a"), ReduceOp::kAvg);
  EXPECT_EQ(Layout::parse("[R] P(a:avg)").to_string(), "[R] P(a:avg)");
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [] { Layout::parse("[R] P(a:prod)"); }, {"sum, avg, max or min"}));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument,
                           [] { Layout::replicated(1).with_partials({{"a", ReduceOp::kProd}}); }, {"pending product"}));
}

// DTensor's rule: torch.chunk's sizes (ceil(n / k) until the elements run out).
TEST(Layout, ChunkSizesAreTorchChunks) {
  EXPECT_EQ(chunk_extents(5, 4), (std::vector<int64_t>{2, 2, 1, 0}));
  EXPECT_EQ(chunk_extents(12, 4), (std::vector<int64_t>{3, 3, 3, 3}));
  EXPECT_EQ(chunk_extents(10, 4), (std::vector<int64_t>{3, 3, 3, 1}));
  EXPECT_EQ(chunk_extents(50257, 2), (std::vector<int64_t>{25129, 25128}));
  EXPECT_EQ(chunk_extents(50257, 3), (std::vector<int64_t>{16753, 16753, 16751}));
  EXPECT_EQ(chunk_extents(6, 4), (std::vector<int64_t>{2, 2, 2, 0}));
  EXPECT_EQ(chunk_extents(0, 3), (std::vector<int64_t>{0, 0, 0}));
  EXPECT_EQ(chunk_extent(5, 4, 2), (Extent{4, 1}));
  EXPECT_EQ(chunk_extent(5, 4, 3), (Extent{5, 0}));
  // torch.chunk's definition: chunks of ceil(n / k), as many as needed
  // (ceil(n / chunk)), the last one shorter; DTensor pads with empty shards.
  for (int64_t n = 0; n <= 40; ++n) {
    for (int64_t k = 1; k <= 8; ++k) {
      std::vector<int64_t> want(static_cast<size_t>(k), 0);
      int64_t chunk = (n + k - 1) / k;
      int64_t count = chunk == 0 ? 0 : (n + chunk - 1) / chunk;
      for (int64_t i = 0; i < count; ++i) want[static_cast<size_t>(i)] = i + 1 < count ? chunk : n - chunk * (count - 1);
      ASSERT_EQ(chunk_extents(n, k), want) << n << " over " << k;
    }
  }
}

// TensorFlow's partitioner split and torch.chunk are different rules: a layout
// takes a partition only where they agree.
TEST(Partitioners, TensorFlowsSplitIsNotTorchChunk) {
  EXPECT_EQ(shard_extents(10, 4), (std::vector<int64_t>{3, 3, 2, 2}));
  EXPECT_NE(shard_extents(10, 4), chunk_extents(10, 4));
  EXPECT_EQ(shard_extents(5, 2), chunk_extents(5, 2));  // 3, 2 both ways
  EXPECT_EQ(shard_extents(5, 4), (std::vector<int64_t>{2, 1, 1, 1}));
}

TEST(Partitioners, FixedAndMinSizeAsInTensorFlow) {
  // The seed example: an embedding of 8 x 16384 over two parameter servers.
  FixedShardsPartitioner two(2);
  Partition p = two(Shape{8, 16384}, DType::kF32);
  EXPECT_EQ(p, (Partition{2, 1}));
  std::vector<HostTensor> shards = split_variable(random_tensor({8, 16384}, DType::kF32, 1), p);
  ASSERT_EQ(shards.size(), 2u);
  EXPECT_EQ(shards[0].shape(), (Shape{4, 16384}));
  EXPECT_EQ(FixedShardsPartitioner(5)(Shape{3, 2}, DType::kF32), (Partition{3, 1}));  // no more shards than rows
  // MinSizePartitioner: shards of at least 256 KiB, at most max_shards.
  MinSizePartitioner min_size(256 << 10, 4);
  EXPECT_EQ(min_size(Shape{8, 16384}, DType::kF32), (Partition{2, 1}));    // 512 KiB -> 2
  EXPECT_EQ(min_size(Shape{64, 16384}, DType::kF32), (Partition{4, 1}));   // 4 MiB -> capped at 4
  EXPECT_EQ(min_size(Shape{10, 10}, DType::kF32), (Partition{1, 1}));      // small: one shard
  EXPECT_EQ(shard_extents(10, 4), (std::vector<int64_t>{3, 3, 2, 2}));      // uneven: first ones larger
  HostTensor v = random_tensor({10, 3}, DType::kF32, 2);
  std::vector<HostTensor> uneven = split_variable(v, Partition{4, 1});
  ASSERT_EQ(uneven.size(), 4u);
  EXPECT_EQ(uneven[3].shape(), (Shape{2, 3}));
  EXPECT_EQ(uneven[1].data<float>()[0], v.data<float>()[9]);  // rows 3..5
}

// MinSizePartitioner against TensorFlow's documented formula
// (tf.compat.v1.min_max_variable_partitioner, which MinSizePartitioner calls):
// max(1, min(shape[axis], max_shards, ceil(total_bytes / min_shard_bytes))).
TEST(Partitioners, MinSizeFollowsTensorFlowsFormula) {
  // The examples of TensorFlow's MinSizePartitioner docstring.
  EXPECT_EQ(MinSizePartitioner(4, 2)(Shape{6, 1}, DType::kF32), (Partition{2, 1}));
  EXPECT_EQ(MinSizePartitioner(4, 10)(Shape{6, 1}, DType::kF32), (Partition{6, 1}));
  for (int64_t rows : {1, 3, 7, 10, 64}) {
    for (int64_t cols : {1, 5, 33}) {
      for (int64_t min_bytes : {1, 4, 10, 100, 1000}) {
        for (int max_shards : {1, 3, 8, 100}) {
          for (DType dtype : {DType::kF32, DType::kF16, DType::kF64}) {
            for (int axis : {0, 1}) {
              Shape shape{rows, cols};
              double total = static_cast<double>(rows * cols) * static_cast<double>(size_of(dtype));
              int64_t expected = std::max<int64_t>(
                  1, std::min<int64_t>({shape[axis], max_shards, static_cast<int64_t>(std::ceil(total / min_bytes))}));
              Partition want(2, 1);
              want[static_cast<size_t>(axis)] = static_cast<int>(expected);
              ASSERT_EQ(MinSizePartitioner(min_bytes, max_shards, axis)(shape, dtype), want)
                  << shape << " " << to_string(dtype) << " min " << min_bytes << " max " << max_shards << " axis " << axis;
            }
          }
        }
      }
    }
  }
}

// MaxSizePartitioner against TensorFlow's documented examples and formula
// (variable_axis_size_partitioner, which MaxSizePartitioner calls): rows per
// shard = max(1, floor(max_shard_bytes / bytes of a row)), shards =
// ceil(rows / rows per shard), capped by max_shards.
TEST(Partitioners, MaxSizeFollowsTensorFlowsFormula) {
  // The examples of TensorFlow's MaxSizePartitioner docstring.
  EXPECT_EQ(MaxSizePartitioner(4)(Shape{6, 1}, DType::kF32), (Partition{6, 1}));
  EXPECT_EQ(MaxSizePartitioner(4, 2)(Shape{6, 1}, DType::kF32), (Partition{2, 1}));
  EXPECT_EQ(MaxSizePartitioner(1024)(Shape{6, 1}, DType::kF32), (Partition{1, 1}));
  // The seed's embedding (8 x 16384 f32, 64 KiB a row) in shards of at most 256 KiB: 4 rows each.
  EXPECT_EQ(MaxSizePartitioner(256 << 10)(Shape{8, 16384}, DType::kF32), (Partition{2, 1}));
  for (int64_t rows : {1, 3, 7, 10, 64}) {
    for (int64_t cols : {1, 5, 33}) {
      for (int64_t max_bytes : {1, 4, 10, 100, 1000}) {
        for (int max_shards : {0, 1, 3, 100}) {
          for (DType dtype : {DType::kF32, DType::kF16, DType::kF64}) {
            for (int axis : {0, 1}) {
              Shape shape{rows, cols};
              double row_bytes = static_cast<double>(rows * cols / shape[axis]) * static_cast<double>(size_of(dtype));
              double per_shard = std::max(1.0, std::floor(static_cast<double>(max_bytes) / row_bytes));
              auto expected = static_cast<int64_t>(std::ceil(static_cast<double>(shape[axis]) / per_shard));
              if (max_shards > 0) expected = std::min<int64_t>(expected, max_shards);
              Partition want(2, 1);
              want[static_cast<size_t>(axis)] = static_cast<int>(expected);
              ASSERT_EQ(MaxSizePartitioner(max_bytes, max_shards, axis)(shape, dtype), want)
                  << shape << " " << to_string(dtype) << " max " << max_bytes << " shards " << max_shards << " axis " << axis;
            }
          }
        }
      }
    }
  }
  EXPECT_THROW(MaxSizePartitioner(0), Error);
  EXPECT_THROW(MaxSizePartitioner(4, -1), Error);
}

TEST(Mesh, SizeMustMatchTheWorld) {
  int n = World::get().size();
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { Mesh({{"data", 2}, {"model", n}}, Device::cpu()); },
                           {"Mesh(data=2, model=" + std::to_string(n) + ") has " + std::to_string(2 * n) +
                                " devices but the world has " + std::to_string(n) + " ranks"}));
  EXPECT_EQ(Mesh::parse_axes("data=2,model=3")[1].name, "model");
  EXPECT_EQ(Mesh::parse_axes("2x3")[1].size, 3);
}

TEST_P(Sharding, CoordinatesAndAxisCommunicators) {
  std::vector<int> c = mesh_.coordinates(mesh_.rank());
  EXPECT_EQ(mesh_.rank_at(c), mesh_.rank());
  for (const MeshAxis& a : mesh_.axes()) {
    const Communicator& comm = mesh_.communicator(a.name);
    EXPECT_EQ(comm.size(), a.size);
    EXPECT_EQ(comm.rank(), mesh_.coordinate(a.name));
  }
  std::vector<std::string> every_axis;  // in reverse order: the group is still in mesh order
  for (const MeshAxis& a : mesh_.axes()) every_axis.insert(every_axis.begin(), a.name);
  const Communicator& all = mesh_.communicator(every_axis);
  EXPECT_EQ(all.size(), mesh_.size());
  EXPECT_EQ(all.rank(), mesh_.rank());
}

TEST_P(Sharding, TimeoutReachesEveryCommunicatorOfTheMesh) {
  mesh_.set_timeout(std::chrono::milliseconds(4321));
  EXPECT_EQ(mesh_.world_communicator().timeout(), std::chrono::milliseconds(4321));
  for (const MeshAxis& a : mesh_.axes()) EXPECT_EQ(mesh_.communicator(a.name).timeout(), std::chrono::milliseconds(4321));
  if (mesh_.ndim() > 1) {
    Mesh slice = mesh_.slice(mesh_.axes()[0].name);
    EXPECT_EQ(slice.world_communicator().timeout(), std::chrono::milliseconds(4321));
    std::vector<std::string> two = {mesh_.axes()[0].name, mesh_.axes()[1].name};  // made after set_timeout
    EXPECT_EQ(mesh_.communicator(two).timeout(), std::chrono::milliseconds(4321));
  }
}

// Sizes need not divide: blocks are torch.chunk's, nested over several axes.
TEST_P(Sharding, UnevenSizesFollowTorchChunkOverEachAxis) {
  const std::string axis = mesh_.axes().back().name;
  int size = mesh_.axes().back().size;
  int64_t extent = 2 * size + 1;
  HostTensor g = integers({extent, 3}, 1);
  DTensor x = DTensor::from_global(g, mesh_, Layout::sharded(2, 0, axis), "x");
  Extent mine = chunk_extent(extent, size, mesh_.coordinate(axis));
  EXPECT_EQ(x.local().shape(), (Shape{mine.size, 3}));
  EXPECT_TRUE(all_close(meshrt::to_host(x.local()), g.narrow(mine.offset, mine.size), 0, 0));
  EXPECT_TRUE(all_close(x.gather(), g, 0, 0));
  if (mesh_.ndim() >= 2) {
    // Over (a, b): cut over a, then each piece over b.
    const MeshAxis& a = mesh_.axes()[0];
    const MeshAxis& b = mesh_.axes()[1];
    int64_t n = 13;
    Layout l(Dims{{a.name, b.name}, {}});
    Extent outer = chunk_extent(n, a.size, mesh_.coordinate(a.name));
    Extent inner = chunk_extent(outer.size, b.size, mesh_.coordinate(b.name));
    std::vector<int> here = mesh_.coordinates(mesh_.rank());
    EXPECT_EQ(l.block(mesh_, 0, here, n), (Extent{outer.offset + inner.offset, inner.size}));
    HostTensor h = integers({n, 2}, 2);
    DTensor y = DTensor::from_global(h, mesh_, l, "y");
    EXPECT_TRUE(all_close(meshrt::to_host(y.local()), h.narrow(outer.offset + inner.offset, inner.size), 0, 0));
    EXPECT_TRUE(all_close(y.gather(), h, 0, 0));
  }
}

// JAX's error: a process's own part passed where the global value is expected
// (fewer elements than blocks) names the conversion.
TEST_P(Sharding, AHostLocalPartWhereAGlobalValueIsExpectedSuggestsTheConversion) {
  if (mesh_.size() == 1) GTEST_SKIP() << "one block: every part is the whole";
  std::vector<std::string> all;
  for (const MeshAxis& a : mesh_.axes()) all.push_back(a.name);
  Layout l(Dims{all, {}});
  int64_t parts = mesh_.size();
  EXPECT_TRUE(throws_error(ErrorKind::kShape,
                           [&] { DTensor::from_global(integers({parts - 1, 4}, 1), mesh_, l, "batch"); },
                           {"dimension 0 of batch (size " + std::to_string(parts - 1) + ") is sharded into " +
                                std::to_string(parts) + " blocks",
                            "host_local_to_global", "host_local_array_to_global_array"}));
}

TEST_P(Sharding, ImplicitHostReadIsAnErrorThatSaysHow) {
  HostTensor g = integers({12, 6}, 2);
  DTensor x = DTensor::from_global(g, mesh_, Layout::sharded(2, 0, mesh_.axes()[0].name), "x");
  if (mesh_.axes()[0].size > 1) {
    EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { x.to_host(); },
                             {"reading x: f32[12, 6] [S(x), R] on Mesh(", "x.gather()", "redistribute("}));
  }
  EXPECT_TRUE(all_close(x.gather(), g, 0, 0));
  EXPECT_TRUE(all_close(DTensor::from_global(g, mesh_, Layout::replicated(2), "r").to_host(), g, 0, 0));
}

// Even sizes, and sizes that divide by nothing (blocks of torch.chunk's sizes,
// some empty at 6 ranks).
const std::vector<Shape> kShapes = {{12, 12}, {7, 13}};

TEST_P(Sharding, EveryRedistributionPreservesTheValue) {
  for (const Shape& shape : kShapes) {
    HostTensor g = integers(shape, 3);
    std::vector<Layout> layouts = all_layouts(mesh_, 2);
    int pairs = 0;
    for (const Layout& from : layouts) {
      DTensor x = DTensor::from_global(g, mesh_, from, "x");
      for (const Layout& to : layouts) {
        DTensor y = redistribute(x, to);
        ASSERT_EQ(y.layout(), to);
        ASSERT_EQ(y.local().shape(), to.local_shape(mesh_, g.shape()));
        ASSERT_TRUE(all_close(y.gather(), g, 0, 0)) << shape << " " << from.to_string() << " -> " << to.to_string();
        ++pairs;
      }
    }
    EXPECT_EQ(pairs, static_cast<int>(layouts.size() * layouts.size()));
  }
}

TEST_P(Sharding, RedistributionUsesTheLeastCommunication) {
  const std::string a = mesh_.axes()[0].name;
  HostTensor g = integers({12, 12}, 4);
  struct Case {
    Layout from, to;
    std::string collective;  // the only collective expected ("" for none)
  };
  std::vector<Case> cases = {
      {Layout::sharded(2, 0, a), Layout::replicated(2), "all_gather"},
      {Layout::replicated(2).with_partial({a}), Layout::replicated(2), "all_reduce"},
      {Layout::replicated(2).with_partial({a}), Layout::sharded(2, 1, a), "reduce_scatter"},
      {Layout::sharded(2, 0, a), Layout::sharded(2, 1, a), "all_to_all"},
      {Layout::replicated(2), Layout::sharded(2, 1, a), ""},
      {Layout::replicated(2), Layout::replicated(2).with_partial({a}), ""},
  };
  for (const Case& c : cases) {
    DTensor x = DTensor::from_global(g, mesh_, c.from, "x");
    Trace trace;
    DTensor y;
    {
      TraceScope scope(trace);
      y = redistribute(x, c.to);
    }
    EXPECT_EQ(trace.collectives(), c.collective.empty() ? 0 : 1) << c.from.to_string() << " -> " << c.to.to_string()
                                                                  << "\n" << trace.to_string();
    if (!c.collective.empty()) {
      EXPECT_EQ(trace.count(c.collective), 1) << trace.to_string();
    }
    EXPECT_TRUE(all_close(y.gather(), g, 0, 0));
  }
}

HostTensor one_rank_matmul(const HostTensor& a, const HostTensor& b) {
  return meshrt::to_host(kernels::matmul(to_device(a, Device::cpu()), to_device(b, Device::cpu())));
}

TEST_P(Sharding, MatmulEveryOperandLayoutCombination) {
  for (const auto& [sa, sb] : std::vector<std::pair<Shape, Shape>>{{{12, 12}, {12, 6}}, {{7, 13}, {13, 9}}}) {
    HostTensor ga = integers(sa, 5), gb = integers(sb, 6);
    HostTensor expected = one_rank_matmul(ga, gb);
    std::vector<Layout> layouts = all_layouts(mesh_, 2);
    for (const Layout& la : layouts) {
      DTensor a = DTensor::from_global(ga, mesh_, la, "a");
      for (const Layout& lb : layouts) {
        if (!placeable(mesh_, lb, gb.shape())) continue;
        DTensor b = DTensor::from_global(gb, mesh_, lb, "b");
        DTensor c = matmul(a, b);
        ASSERT_TRUE(all_close(c.gather(), expected, 0, 0)) << sa << " @ " << sb << ": " << la.to_string() << " @ "
                                                            << lb.to_string() << " -> " << c.layout().to_string();
      }
    }
  }
}

TEST_P(Sharding, MatmulLayoutRulesNeedNoCommunicationWhenAligned) {
  const std::string a = mesh_.axes()[0].name;
  HostTensor ga = integers({12, 12}, 7), gb = integers({12, 12}, 8);
  HostTensor expected = one_rank_matmul(ga, gb);
  struct Case {
    Layout la, lb, result;
  };
  std::vector<Case> cases = {
      // contracted dimension sharded on both: local GEMMs, partial result
      {Layout(Dims{{}, {a}}), Layout(Dims{{a}, {}}), Layout(Dims{{}, {}}, {a})},
      // output (row) sharding: none
      {Layout(Dims{{a}, {}}), Layout::replicated(2), Layout(Dims{{a}, {}})},
      // output (column) sharding of b: none
      {Layout::replicated(2), Layout(Dims{{}, {a}}), Layout(Dims{{}, {a}})},
      // partial a times replicated b stays partial
      {Layout::replicated(2).with_partial({a}), Layout::replicated(2), Layout::replicated(2).with_partial({a})},
  };
  for (const Case& c : cases) {
    DTensor x = DTensor::from_global(ga, mesh_, c.la, "a"), y = DTensor::from_global(gb, mesh_, c.lb, "b");
    Trace trace;
    DTensor z;
    {
      TraceScope scope(trace);
      z = matmul(x, y);
    }
    EXPECT_EQ(trace.collectives(), 0) << trace.to_string();
    EXPECT_EQ(z.layout(), c.result) << z.layout().to_string();
    EXPECT_TRUE(all_close(z.gather(), expected, 0, 0));
  }
  // Batched: batch sharding needs no communication either.
  HostTensor g3 = integers({6, 4, 12}, 9), gw = integers({12, 6}, 10);
  if (6 % mesh_.axes()[0].size == 0) {
    DTensor x = DTensor::from_global(g3, mesh_, Layout(Dims{{a}, {}, {}}), "x");
    DTensor w = DTensor::from_global(gw, mesh_, Layout::replicated(2), "w");
    Trace trace;
    DTensor z;
    {
      TraceScope scope(trace);
      z = matmul(x, w);
    }
    EXPECT_EQ(trace.collectives(), 0);
    HostTensor expected3 = meshrt::to_host(kernels::matmul(to_device(g3, Device::cpu()), to_device(gw, Device::cpu())));
    EXPECT_TRUE(all_close(z.gather(), expected3, 0, 0));
  }
}

HostTensor one_rank(const std::function<DeviceTensor(const DeviceTensor&)>& f, const HostTensor& x) {
  return meshrt::to_host(f(to_device(x, Device::cpu())));
}

TEST_P(Sharding, ElementwiseReductionsAndNormsMatchOneRank) {
  for (const Shape& shape : kShapes) {
    elementwise_reductions_and_norms(shape);
  }
}

void Sharding::elementwise_reductions_and_norms(const Shape& shape) {
  HostTensor gx = random_tensor(shape, DType::kF32, 11), gy = random_tensor(shape, DType::kF32, 12);
  HostTensor gbias = random_tensor({shape[1]}, DType::kF32, 13), ggamma = random_tensor({shape[1]}, DType::kF32, 14, 0.5, 1.5);
  auto dx = to_device(gx, Device::cpu()), dy = to_device(gy, Device::cpu());
  auto dbias = to_device(gbias, Device::cpu()), dgamma = to_device(ggamma, Device::cpu());
  const double tol = 1e-5;
  for (const Layout& l : all_layouts(mesh_, 2)) {
    DTensor x = DTensor::from_global(gx, mesh_, l, "x");
    DTensor y = DTensor::from_global(gy, mesh_, Layout::replicated(2), "y");
    DTensor bias = DTensor::from_global(gbias, mesh_, Layout::replicated(1), "bias");
    DTensor gamma = DTensor::from_global(ggamma, mesh_, Layout::replicated(1), "gamma");
    std::string where = shape.to_string() + " " + l.to_string();
    EXPECT_TRUE(all_close(neg(x).gather(), one_rank([](auto& t) { return kernels::neg(t); }, gx), 0, 0)) << where;
    EXPECT_TRUE(all_close(scale(x, 3).gather(), one_rank([](auto& t) { return kernels::scale(t, 3); }, gx), tol, tol)) << where;
    EXPECT_TRUE(all_close(gelu(x).gather(), one_rank([](auto& t) { return kernels::gelu(t); }, gx), tol, tol)) << where;
    EXPECT_TRUE(all_close(relu(x).gather(), one_rank([](auto& t) { return kernels::relu(t); }, gx), tol, tol)) << where;
    EXPECT_TRUE(all_close(silu(x).gather(), one_rank([](auto& t) { return kernels::silu(t); }, gx), tol, tol)) << where;
    EXPECT_TRUE(all_close(add(x, y).gather(), meshrt::to_host(kernels::add(dx, dy)), tol, tol)) << where;
    EXPECT_TRUE(all_close(add(y, x).gather(), meshrt::to_host(kernels::add(dy, dx)), tol, tol)) << where;
    EXPECT_TRUE(all_close(mul(x, y).gather(), meshrt::to_host(kernels::mul(dx, dy)), tol, tol)) << where;
    EXPECT_TRUE(all_close(bias_add(x, bias).gather(), meshrt::to_host(kernels::bias_add(dx, dbias)), tol, tol)) << where;
    for (int d : {0, 1}) {
      EXPECT_TRUE(all_close(sum(x, d).gather(), meshrt::to_host(kernels::sum(dx, d)), tol, tol)) << where << " sum " << d;
    }
    EXPECT_TRUE(all_close(softmax(x).gather(), meshrt::to_host(kernels::softmax(dx)), tol, tol)) << where;
    EXPECT_TRUE(all_close(rmsnorm(x, gamma).gather(), meshrt::to_host(kernels::rmsnorm(dx, dgamma)), tol, tol)) << where;
    EXPECT_TRUE(all_close(layernorm(x, gamma, bias).gather(), meshrt::to_host(kernels::layernorm(dx, dgamma, dbias)),
                          tol, tol)) << where;
  }
}

// Every op of the elementwise table, sharded with every layout (pending sums
// included), against the same op on one rank; an op whose row commutes with a
// pending sum keeps it without communication.
TEST_P(Sharding, EveryElementwiseTableOpMatchesOneRank) {
  for (const Shape& shape : kShapes) {
  HostTensor gx = random_tensor(shape, DType::kF32, 16, -3, 3), gy = random_tensor(shape, DType::kF32, 17, -3, 3);
  auto dx = to_device(gx, Device::cpu()), dy = to_device(gy, Device::cpu());
  for (const Layout& l : all_layouts(mesh_, 2)) {
    DTensor x = DTensor::from_global(gx, mesh_, l, "x");
    DTensor y = DTensor::from_global(gy, mesh_, Layout::replicated(2), "y");
    for (kernels::UnaryOp op : kernels::unary_ops()) {
      DeviceTensor expected = DeviceTensor::empty(dx.shape(), dx.dtype());
      kernels::unary(op, dx, expected, 0.75);
      Trace trace;
      DTensor got;
      {
        TraceScope scope(trace);
        got = unary(op, x, 0.75);
      }
      bool keeps_sums = (kernels::info(op).partial_rule[0] & kernels::kThroughSum) != 0;
      if (keeps_sums) {
        EXPECT_EQ(trace.collectives(), 0) << kernels::to_string(op) << " " << l.to_string();
      }
      EXPECT_TRUE(all_close(got.gather(), meshrt::to_host(expected), 1e-5, 1e-5)) << kernels::to_string(op) << " " << l.to_string();
    }
    for (kernels::BinaryOp op : kernels::binary_ops()) {
      DeviceTensor expected = DeviceTensor::empty(dx.shape(), dx.dtype());
      kernels::binary(op, dx, dy, expected);
      EXPECT_TRUE(all_close(binary(op, x, y).gather(), meshrt::to_host(expected), 1e-5, 1e-5))
          << kernels::to_string(op) << " " << l.to_string();
    }
  }
  }
}

TEST_P(Sharding, SumOfAShardedDimensionIsAPartialWithoutCommunication) {
  const std::string a = mesh_.axes()[0].name;
  DTensor x = DTensor::from_global(integers({12, 6}, 15), mesh_, Layout::sharded(2, 0, a), "x");
  Trace trace;
  DTensor s;
  {
    TraceScope scope(trace);
    s = sum(x, 0);
  }
  EXPECT_EQ(trace.collectives(), 0);
  EXPECT_EQ(s.layout(), Layout::replicated(1).with_partial({a}));
}

// Ops follow the elementwise table's rule for pending max and min: relu keeps
// them (it is monotone), neg, add and matmul reduce them first; redistribution
// reduces them with their own op.
TEST_P(Sharding, PendingMaxAndMinFollowTheOpTable) {
  const std::string a = mesh_.axes()[0].name;
  int n = mesh_.axes()[0].size;
  Shape shape{6 * n, 4};
  HostTensor w = integers({4, 3}, 40);
  for (ReduceOp op : {ReduceOp::kMax, ReduceOp::kMin}) {
    // Rank at coordinate c of a contributes integers(seed 41 + c); the value is their max (min).
    HostTensor expected = integers(shape, 41);
    for (int c = 1; c < n; ++c) {
      HostTensor part = integers(shape, 41 + static_cast<uint64_t>(c));
      for (int64_t i = 0; i < shape.numel(); ++i) {
        float& e = expected.data<float>()[i];
        float v = part.data<float>()[i];
        e = op == ReduceOp::kMax ? std::max(e, v) : std::min(e, v);
      }
    }
    Layout partial = Layout::replicated(2).with_partials({{a, op}});
    DTensor x(to_device(integers(shape, 41 + static_cast<uint64_t>(mesh_.coordinate(a))), mesh_.device()), shape,
              mesh_, partial, "x");
    std::string where = partial.to_string();
    EXPECT_TRUE(all_close(x.gather(), expected, 0, 0)) << where;

    Trace trace;
    DTensor r;
    {
      TraceScope scope(trace);
      r = relu(x);
    }
    EXPECT_EQ(trace.collectives(), 0) << where << "\n" << trace.to_string();
    EXPECT_EQ(r.layout(), partial);
    EXPECT_TRUE(all_close(r.gather(), one_rank([](auto& t) { return kernels::relu(t); }, expected), 0, 0)) << where;

    DTensor m = neg(x);
    EXPECT_FALSE(m.layout().is_partial()) << where;
    EXPECT_TRUE(all_close(m.gather(), one_rank([](auto& t) { return kernels::neg(t); }, expected), 0, 0)) << where;
    DTensor y = DTensor::from_global(integers(shape, 42), mesh_, Layout::replicated(2), "y");
    EXPECT_TRUE(all_close(add(x, y).gather(),
                          meshrt::to_host(kernels::add(to_device(expected, Device::cpu()), to_device(y.gather(), Device::cpu()))),
                          0, 0)) << where;
    DTensor wd = DTensor::from_global(w, mesh_, Layout::replicated(2), "w");
    EXPECT_TRUE(all_close(matmul(x, wd).gather(), one_rank_matmul(expected, w), 0, 0)) << where;

    // Into a pending sum, a shard (reduce_scatter with the op) and back from a whole value.
    EXPECT_TRUE(all_close(redistribute(x, Layout::replicated(2).with_partial({a})).gather(), expected, 0, 0)) << where;
    Trace scatter;
    DTensor s;
    {
      TraceScope scope(scatter);
      s = redistribute(x, Layout::sharded(2, 0, a));
    }
    EXPECT_EQ(scatter.count("reduce_scatter"), 1) << scatter.to_string();
    EXPECT_TRUE(all_close(s.gather(), expected, 0, 0)) << where;
    DTensor placed = DTensor::from_global(expected, mesh_, partial, "placed");
    EXPECT_TRUE(all_close(meshrt::to_host(placed.local()), expected, 0, 0)) << "every rank holds a pending max's value";
    EXPECT_TRUE(all_close(placed.gather(), expected, 0, 0)) << where;
  }
}

// Also with an inner width that divides by no rank count (torch.chunk blocks).
TEST_P(Sharding, TensorParallelMlpUsesOneAllReduce) {
  for (int64_t ffn : {24, 7}) {
    tensor_parallel_mlp(ffn);
  }
}

void Sharding::tensor_parallel_mlp(int64_t ffn) {
  const std::string model = mesh_.axes().back().name;
  HostTensor w1 = random_tensor({12, ffn}, DType::kF32, 20), b1 = random_tensor({ffn}, DType::kF32, 21);
  HostTensor w2 = random_tensor({ffn, 12}, DType::kF32, 22), b2 = random_tensor({12}, DType::kF32, 23);
  HostTensor gx = random_tensor({6, 12}, DType::kF32, 24);
  auto d = [](const HostTensor& h) { return to_device(h, Device::cpu()); };
  HostTensor expected = meshrt::to_host(kernels::bias_add(
      kernels::matmul(kernels::gelu(kernels::bias_add(kernels::matmul(d(gx), d(w1)), d(b1))), d(w2)), d(b2)));
  models::ParallelMLP mlp(mesh_, model, w1, b1, w2, b2);
  // Data-parallel over the other axis when the mesh has one.
  Layout input = mesh_.ndim() == 2 && 6 % mesh_.axes()[0].size == 0 ? Layout::sharded(2, 0, mesh_.axes()[0].name)
                                                                    : Layout::replicated(2);
  DTensor x = DTensor::from_global(gx, mesh_, input, "x");
  Trace trace;
  DTensor y;
  {
    TraceScope scope(trace);
    y = mlp.forward(x);
  }
  int expected_reductions = mesh_.axis_size(model) > 1 ? 1 : 1;  // the all_reduce runs (trivially at size 1)
  EXPECT_EQ(trace.collectives(), expected_reductions) << trace.to_string();
  EXPECT_EQ(trace.count("all_reduce"), expected_reductions) << trace.to_string();
  EXPECT_EQ(y.layout().dim(1), std::vector<std::string>{});
  EXPECT_TRUE(all_close(y.gather(), expected, 1e-5, 1e-5)) << "inner width " << ffn;
}

TEST_P(Sharding, PartitionedVariablesPlaceOneShardPerRank) {
  const MeshAxis& a = mesh_.axes()[0];
  Shape shape{static_cast<int64_t>(a.size) * 4, 6};
  Partition p = FixedShardsPartitioner(a.size)(shape, DType::kF32);
  Layout l = layout_for_partition(p, shape, mesh_, a.name);
  HostTensor g = integers(shape, 30);
  DTensor v = DTensor::from_global(g, mesh_, l, "v");
  std::vector<HostTensor> shards = split_variable(g, p);
  EXPECT_TRUE(all_close(meshrt::to_host(v.local()), shards[static_cast<size_t>(mesh_.coordinate(a.name))], 0, 0));
  if (a.size > 1) {
    EXPECT_TRUE(throws_error(ErrorKind::kShape, [&] { layout_for_partition(Partition{a.size + 1, 1}, shape, mesh_, a.name); },
                             {"into " + std::to_string(a.size + 1) + " shards but mesh axis '" + a.name + "'"}));
  }
}

TEST_P(Sharding, FromLocalShardsDerivesAndChecksTheGlobalShape) {
  const std::string a = mesh_.axes()[0].name;
  int n = mesh_.axes()[0].size;
  HostTensor block = HostTensor::full<float>({2, 3}, static_cast<float>(mesh_.coordinate(a)));
  DTensor x = DTensor::from_local_shards(block, mesh_, Layout::sharded(2, 0, a), "x");
  EXPECT_EQ(x.global_shape(), (Shape{2 * n, 3}));
  HostTensor g = x.gather();
  for (int64_t r = 0; r < 2 * n; ++r) EXPECT_EQ(g.data<float>()[r * 3], static_cast<float>(r / 2));
  if (mesh_.size() > 1) {
    // Blocks that are not torch.chunk's for any global size.
    HostTensor odd = HostTensor::full<float>({mesh_.rank() == 0 ? 1 : 2, 3}, 0.0f);
    EXPECT_TRUE(throws_error(ErrorKind::kShape, [&] { DTensor::from_local_shards(odd, mesh_, Layout::sharded(2, 0, a), "y"); },
                             {"from_local_shards of y", "rank 0 holds [1, 3] where the rule gives [2, 3]"}));
    HostTensor wide = HostTensor::full<float>({2, mesh_.rank() == 1 ? 4 : 3}, 0.0f);
    EXPECT_TRUE(throws_error(ErrorKind::kShape, [&] { DTensor::from_local_shards(wide, mesh_, Layout::sharded(2, 0, a), "z"); },
                             {"from_local_shards of z", "rank 1 holds [2, 4]"}));
  }
}

// Uneven blocks (torch.chunk's) add up to the global shape; JAX's names for it.
TEST_P(Sharding, HostLocalPartsBecomeAGlobalArrayAndBack) {
  const std::string a = mesh_.axes()[0].name;
  int n = mesh_.axes()[0].size;
  int64_t rows = 2 * n + 1;
  HostTensor whole = integers({rows, 3}, 50);
  Extent mine = chunk_extent(rows, n, mesh_.coordinate(a));
  HostTensor part = whole.narrow(mine.offset, mine.size).clone();
  DTensor x = host_local_array_to_global_array(part, mesh_, Layout::sharded(2, 0, a), "batch");
  EXPECT_EQ(x.global_shape(), (Shape{rows, 3}));
  EXPECT_TRUE(all_close(x.gather(), whole, 0, 0));
  EXPECT_TRUE(all_close(global_array_to_host_local_array(x), part, 0, 0));
  EXPECT_TRUE(all_close(global_array_to_host_local_array(relu(x)), meshrt::to_host(kernels::relu(to_device(part, Device::cpu()))), 0, 0));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument,
                           [&] { global_array_to_host_local_array(sum(x, 0)); }, {"pending reduction", "redistribute("}));
}

// Replicas that disagree are found, on every rank, naming the ranks.
TEST_P(Sharding, CheckReplicasFindsReplicasThatDisagree) {
  const std::string last = mesh_.axes().back().name;
  HostTensor g = integers({6, 4}, 51);
  DTensor same = DTensor::from_global(g, mesh_, Layout::replicated(2), "w");
  check_replicas(same);
  check_replicas(DTensor::from_global(g, mesh_, Layout::sharded(2, 0, last), "s"));
  if (mesh_.size() == 1) return;
  HostTensor mine = g.clone();
  if (mesh_.rank() == mesh_.size() - 1) mine.data<float>()[5] += 1;
  DTensor drifted(to_device(mine, mesh_.device()), g.shape(), mesh_, Layout::replicated(2), "w");
  EXPECT_TRUE(throws_error(ErrorKind::kShape, [&] { check_replicas(drifted); },
                           {"check_replicas: the replicas of w", "disagree", std::to_string(mesh_.size() - 1)}));
}

// A pending avg (the mean over an axis's ranks): reduced by a sum and a division,
// kept through linear ops (the elementwise table's avg bits), from a whole value
// every rank holds it.
TEST_P(Sharding, PendingAvgIsTheMeanOverTheAxis) {
  const std::string a = mesh_.axes()[0].name;
  int n = mesh_.axes()[0].size;
  Shape shape{2 * n + 1, 3};
  Layout avg = Layout::replicated(2).with_partials({{a, ReduceOp::kAvg}});
  // Coordinate c holds integers * (c + 1): the mean is integers * (n + 1) / 2.
  HostTensor base = integers(shape, 52);
  HostTensor expected = meshrt::to_host(kernels::scale(to_device(base, Device::cpu()), (n + 1) / 2.0));
  DTensor x(kernels::scale(to_device(base, mesh_.device()), mesh_.coordinate(a) + 1.0), shape, mesh_, avg, "x");
  EXPECT_TRUE(all_close(x.gather(), expected, 1e-6, 1e-6));
  EXPECT_TRUE(all_close(redistribute(x, Layout::sharded(2, 0, a)).gather(), expected, 1e-6, 1e-6));
  Trace trace;
  DTensor y;
  {
    TraceScope scope(trace);
    y = neg(scale(x, 2));
  }
  EXPECT_EQ(trace.collectives(), 0) << trace.to_string();
  EXPECT_EQ(y.layout(), avg);
  EXPECT_TRUE(all_close(y.gather(), meshrt::to_host(kernels::scale(to_device(expected, Device::cpu()), -2)), 1e-5, 1e-5));
  // avg(x_i) + r = avg(x_i + r): a replicated operand counts on every rank.
  DTensor r = DTensor::from_global(base, mesh_, Layout::replicated(2), "r");
  DTensor z = add(x, r);
  EXPECT_EQ(z.layout(), avg);
  EXPECT_TRUE(all_close(z.gather(), meshrt::to_host(kernels::add(to_device(expected, Device::cpu()), to_device(base, Device::cpu()))),
                        1e-5, 1e-5));
  EXPECT_FALSE(relu(x).layout().is_partial());  // relu does not commute with a mean
  DTensor placed = DTensor::from_global(expected, mesh_, avg, "placed");
  EXPECT_TRUE(all_close(meshrt::to_host(placed.local()), expected, 0, 0)) << "every rank holds a pending avg's value";
}

// The vocabulary of GPT-2 (50257) over 2 and 3 ranks: the blocks are torch.chunk's.
TEST_P(Sharding, Gpt2VocabularyShardsOverAnyNumberOfRanks) {
  const std::string a = mesh_.axes()[0].name;
  int n = mesh_.axes()[0].size;
  const int64_t vocab = 50257;
  HostTensor table = integers({vocab, 4}, 53);
  DTensor t = DTensor::from_global(table, mesh_, Layout::sharded(2, 0, a), "wte");
  Extent mine = chunk_extent(vocab, n, mesh_.coordinate(a));
  EXPECT_EQ(t.local().shape(), (Shape{mine.size, 4}));
  if (n == 2) {
    EXPECT_EQ(mine.size, mesh_.coordinate(a) == 0 ? 25129 : 25128);
  }
  if (n == 3) {
    EXPECT_EQ(mine.size, mesh_.coordinate(a) < 2 ? 16753 : 16751);
  }
  EXPECT_TRUE(all_close(t.gather(), table, 0, 0));
  EXPECT_TRUE(all_close(redistribute(t, Layout::sharded(2, 1, a)).gather(), table, 0, 0));
}

// Ops return before their work is done (JAX's asynchronous dispatch): with
// every cpu task made to take 300 ms, a sharded matmul and the redistribution
// of its pending sum are queued and return at once; reading waits and is right.
TEST_P(Sharding, DispatchIsAsynchronous) {
  if (mesh_.device().is_cuda()) GTEST_SKIP() << "the delay hook is the cpu streams'";
  const std::string a = mesh_.axes()[0].name;
  HostTensor ga = integers({6, 8}, 54), gb = integers({8, 5}, 55);
  DTensor x = DTensor::from_global(ga, mesh_, Layout(Dims{{}, {a}}), "a");
  DTensor w = DTensor::from_global(gb, mesh_, Layout(Dims{{a}, {}}), "b");
  set_cpu_work_delay_for_testing(std::chrono::milliseconds(300));
  auto began = std::chrono::steady_clock::now();
  DTensor c = redistribute(matmul(x, w), Layout::replicated(2));
  double dispatch = std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
  bool done_at_return = Stream::default_for(mesh_.device()).query();
  set_cpu_work_delay_for_testing(std::chrono::microseconds(0));
  EXPECT_FALSE(done_at_return) << "the matmul ran before the op returned (" << dispatch << " s)";
  EXPECT_LT(dispatch, 0.3) << "dispatch waited for a kernel";
  EXPECT_EQ(c.layout(), Layout::replicated(2));
  EXPECT_EQ(c.pending().size(), 1u);  // the all_reduce of the pending sum, in flight
  EXPECT_TRUE(all_close(c.to_host(), one_rank_matmul(ga, gb), 0, 0));
  c.block_until_ready();
}

// An error of a collective that nobody waited on surfaces where the value is
// read, naming the operation.
TEST_P(Sharding, AFailedCollectiveSurfacesAtTheWaitNamingIt) {
  const std::string a = mesh_.axes()[0].name;
  if (mesh_.axis_size(a) == 1) GTEST_SKIP() << "no collective over an axis of one rank";
  Mesh mesh(mesh_.axes(), mesh_.device());  // aborted below: not the fixture's
  DTensor x = DTensor::from_global(integers({4, 4}, 56), mesh, Layout::replicated(2).with_partial({a}), "x");
  mesh.abort("test: the communicator is gone");
  EXPECT_TRUE(throws_error(ErrorKind::kUnavailable, [&] { redistribute(x, Layout::replicated(2)).block_until_ready(); },
                           {"all_reduce", "aborted"}));
}

INSTANTIATE_TEST_SUITE_P(Meshes, Sharding, ::testing::Values(0, 1, 2),
                         [](const auto& info) { return "mesh" + std::to_string(info.param); });

}  // namespace
}  // namespace meshrt::sharding

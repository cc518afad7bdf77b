// comm/: the World and every collective, run under mpiexec at 1, 2, 3 and 4
// ranks (3 because non-powers of two break collective algorithms). Each test
// computes the expected result from every rank's (reproducible) input, so every
// rank checks the full answer. Runs on the cpu device (MPI backend) and, in the
// cuda-labelled run, on cuda:N (NCCL backend), skipping with the reason otherwise.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <thread>

#include <mpi.h>
#include <signal.h>
#include <unistd.h>

#include "comm/backend.h"
#include "comm/communicator.h"
#include "comm/world.h"
#include "kernels/elementwise.h"
#include "kernels/gemm.h"
#include "test_util.h"

namespace meshrt {
namespace {

using testing::all_close;
using testing::random_tensor;
using testing::throws_error;

const std::vector<int64_t> kCounts = {1, 7, 1023, 65537};  // odd counts on purpose

// Relative error bound of a reduction over `ranks` values, each rounded to dtype
// (MPI reduces f16/bf16 pairwise, rounding every partial result).
double tol_for(DType dtype, int ranks) {
  switch (dtype) {
    case DType::kF32: return 1e-6 * ranks;
    case DType::kF64: return 1e-14 * ranks;
    case DType::kF16: return 1e-3 * ranks;
    case DType::kBF16: return 8e-3 * ranks;
    default: return 0;
  }
}
// Inputs are at most 20 in magnitude: partial sums cancel, so bound absolute error by it.
constexpr double kMagnitude = 20;

// Rank r's input: values chosen so every reduction is exact or well-conditioned
// (products near 1, integers small, bools 0/1).
HostTensor input_of(int rank, int64_t count, DType dtype, ReduceOp op, uint64_t salt = 0) {
  uint64_t seed = 1000 * static_cast<uint64_t>(rank) + static_cast<uint64_t>(count) + salt;
  if (op == ReduceOp::kProd) {
    return is_floating(dtype) ? random_tensor({count}, dtype, seed, 0.5, 1.5)
                              : random_tensor({count}, dtype, seed, 1, 3);
  }
  if (dtype == DType::kU8) return random_tensor({count}, dtype, seed, 0, 60);
  return random_tensor({count}, dtype, seed, -20, 20);
}

HostTensor reduce_reference(const std::vector<HostTensor>& inputs, ReduceOp op, DType dtype) {
  HostTensor acc = cast_host(inputs[0], DType::kF64);
  for (size_t r = 1; r < inputs.size(); ++r) {
    std::vector<double> v = testing::values(inputs[r]);
    double* a = acc.data<double>();
    for (size_t i = 0; i < v.size(); ++i) {
      bool boolean = dtype == DType::kBool;
      switch (op) {
        case ReduceOp::kSum: a[i] = boolean ? std::max(a[i], v[i]) : a[i] + v[i]; break;
        case ReduceOp::kProd: a[i] = boolean ? std::min(a[i], v[i]) : a[i] * v[i]; break;
        case ReduceOp::kMax: a[i] = std::max(a[i], v[i]); break;
        case ReduceOp::kMin: a[i] = std::min(a[i], v[i]); break;
        case ReduceOp::kAvg: ADD_FAILURE() << "communicators refuse avg"; break;
      }
    }
  }
  return cast_host(acc, dtype);
}

class Collectives : public ::testing::TestWithParam<DeviceKind> {
 protected:
  void SetUp() override {
    World& world = World::get();
    if (GetParam() == DeviceKind::kCuda) {
      MESHRT_REQUIRE_CUDA();
      if (world.local_size() > cuda_device_count()) {
        GTEST_SKIP() << "NCCL needs one GPU per rank: " << world.local_size() << " ranks on this node, "
                     << cuda_device_count() << " GPU(s)";
      }
      device_ = Device::cuda(world.local_rank());
    }
    comm_ = Communicator::world(device_, "test");
    comm_.set_timeout(std::chrono::seconds(60));
  }
  DeviceTensor on_device(const HostTensor& h) const { return to_device(h, device_); }

  Device device_ = Device::cpu();
  Communicator comm_;
};

TEST(World, DescribesTheJob) {
  World& w = World::get();
  EXPECT_GE(w.rank(), 0);
  EXPECT_LT(w.rank(), w.size());
  EXPECT_LT(w.local_rank(), w.local_size());
  EXPECT_LT(w.node_index(), w.node_count());
  EXPECT_LE(w.node_count(), w.size());
  EXPECT_FALSE(w.host_name().empty());
  EXPECT_STREQ(w.thread_level(), "MPI_THREAD_MULTIPLE");
  EXPECT_EQ(error_rank(), w.rank());
}

TEST_P(Collectives, AllReduceEveryDtypeOpAndOddCount) {
  int n = comm_.size();
  for (DType dtype : kAllDTypes) {
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin, ReduceOp::kProd}) {
      for (int64_t count : kCounts) {
        std::vector<HostTensor> inputs;
        for (int r = 0; r < n; ++r) inputs.push_back(input_of(r, count, dtype, op));
        HostTensor expected = reduce_reference(inputs, op, dtype);
        double tol = tol_for(dtype, n);
        DeviceTensor in = on_device(inputs[static_cast<size_t>(comm_.rank())]);
        DeviceTensor out = DeviceTensor::empty(in.shape(), dtype, device_);
        comm_.all_reduce(in, out, op).wait();
        ASSERT_TRUE(all_close(to_host(out), expected, tol, tol * kMagnitude))
            << "out of place, " << to_string(dtype) << " " << to_string(op) << " count " << count;
        comm_.all_reduce(in, op).wait();  // in place
        ASSERT_TRUE(all_close(to_host(in), expected, tol, tol * kMagnitude))
            << "in place, " << to_string(dtype) << " " << to_string(op) << " count " << count;
      }
    }
  }
}

TEST_P(Collectives, AllGatherInAndOutOfPlace) {
  int n = comm_.size(), me = comm_.rank();
  for (DType dtype : kAllDTypes) {
    for (int64_t count : {int64_t{1}, int64_t{7}, int64_t{1001}}) {
      HostTensor expected = HostTensor::empty({n * count}, dtype);
      for (int r = 0; r < n; ++r) {
        HostTensor part = input_of(r, count, dtype, ReduceOp::kSum);
        std::memcpy(static_cast<char*>(expected.raw_data()) + r * part.nbytes(), part.raw_data(), part.nbytes());
      }
      DeviceTensor in = on_device(input_of(me, count, dtype, ReduceOp::kSum));
      DeviceTensor out = DeviceTensor::zeros({n * count}, dtype, device_);
      comm_.all_gather(in, out).wait();
      ASSERT_TRUE(all_close(to_host(out), expected, 0, 0)) << to_string(dtype) << " " << count;
      // In place: the input is this rank's chunk of the output.
      DeviceTensor buffer = DeviceTensor::zeros({n * count}, dtype, device_);
      DeviceTensor mine = buffer.narrow(me * count, count);
      copy(in, mine);
      comm_.all_gather(mine, buffer).wait();
      ASSERT_TRUE(all_close(to_host(buffer), expected, 0, 0)) << "in place " << to_string(dtype);
    }
  }
}

TEST_P(Collectives, ReduceScatterInAndOutOfPlace) {
  int n = comm_.size(), me = comm_.rank();
  for (DType dtype : kAllDTypes) {
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kProd}) {
      for (int64_t count : {int64_t{1}, int64_t{7}, int64_t{1001}}) {
        std::vector<HostTensor> inputs;
        for (int r = 0; r < n; ++r) inputs.push_back(input_of(r, n * count, dtype, op, 7));
        HostTensor expected = reduce_reference(inputs, op, dtype).narrow(me * count, count).clone();
        double tol = tol_for(dtype, n);
        DeviceTensor in = on_device(inputs[static_cast<size_t>(me)]);
        DeviceTensor out = DeviceTensor::empty({count}, dtype, device_);
        comm_.reduce_scatter(in, out, op).wait();
        ASSERT_TRUE(all_close(to_host(out), expected, tol, tol * kMagnitude)) << to_string(dtype) << " " << to_string(op);
        DeviceTensor chunk = in.narrow(me * count, count);  // in place: out is this rank's chunk
        comm_.reduce_scatter(in, chunk, op).wait();
        ASSERT_TRUE(all_close(to_host(chunk), expected, tol, tol * kMagnitude)) << "in place " << to_string(dtype);
      }
    }
  }
}

TEST_P(Collectives, BroadcastFromEveryRoot) {
  int n = comm_.size(), me = comm_.rank();
  for (DType dtype : kAllDTypes) {
    for (int root = 0; root < n; ++root) {
      HostTensor expected = input_of(root, 1001, dtype, ReduceOp::kSum, 3);
      DeviceTensor t = me == root ? on_device(expected) : DeviceTensor::zeros({1001}, dtype, device_);
      comm_.broadcast(t, root).wait();
      ASSERT_TRUE(all_close(to_host(t), expected, 0, 0)) << to_string(dtype) << " root " << root;
    }
  }
}

TEST_P(Collectives, SendRecvAroundARing) {
  int n = comm_.size(), me = comm_.rank();
  if (n < 2) GTEST_SKIP() << "needs at least 2 ranks";
  int next = (me + 1) % n, prev = (me + n - 1) % n;
  for (DType dtype : kAllDTypes) {
    for (int64_t count : {int64_t{1}, int64_t{4097}}) {
      DeviceTensor mine = on_device(input_of(me, count, dtype, ReduceOp::kSum, 5));
      DeviceTensor got = DeviceTensor::zeros({count}, dtype, device_);
      // Even ranks send first, odd ranks receive first: no cycle of blocked sends.
      if (me % 2 == 0) {
        comm_.send(mine, next).wait();
        comm_.recv(got, prev).wait();
      } else {
        comm_.recv(got, prev).wait();
        comm_.send(mine, next).wait();
      }
      ASSERT_TRUE(all_close(to_host(got), input_of(prev, count, dtype, ReduceOp::kSum, 5), 0, 0))
          << to_string(dtype) << " " << count;
    }
  }
}

TEST_P(Collectives, AllToAllInAndOutOfPlace) {
  int n = comm_.size(), me = comm_.rank();
  for (DType dtype : kAllDTypes) {
    int64_t chunk = 9;
    std::vector<HostTensor> inputs;
    for (int r = 0; r < n; ++r) inputs.push_back(input_of(r, n * chunk, dtype, ReduceOp::kSum, 11));
    HostTensor expected = HostTensor::empty({n * chunk}, dtype);
    size_t bytes = static_cast<size_t>(chunk) * size_of(dtype);
    for (int r = 0; r < n; ++r) {  // chunk me of rank r lands at position r
      std::memcpy(static_cast<char*>(expected.raw_data()) + r * bytes,
                  static_cast<const char*>(inputs[static_cast<size_t>(r)].raw_data()) + me * bytes, bytes);
    }
    DeviceTensor in = on_device(inputs[static_cast<size_t>(me)]);
    DeviceTensor out = DeviceTensor::empty({n * chunk}, dtype, device_);
    comm_.all_to_all(in, out).wait();
    ASSERT_TRUE(all_close(to_host(out), expected, 0, 0)) << to_string(dtype);
    comm_.all_to_all(in, in).wait();
    ASSERT_TRUE(all_close(to_host(in), expected, 0, 0)) << "in place " << to_string(dtype);
  }
}

// Unequal pieces (the counts overloads). torch.chunk's shard sizes of length
// over n ranks: pieces of ceil(length / n) until the elements run out (5 over
// 4: 2, 2, 1, 0).
std::vector<int64_t> chunk_sizes(int64_t length, int n) {
  int64_t chunk = (length + n - 1) / n;
  std::vector<int64_t> sizes;
  for (int r = 0; r < n; ++r) sizes.push_back(std::clamp<int64_t>(length - r * chunk, 0, chunk));
  return sizes;
}

std::vector<int64_t> offsets_of(const std::vector<int64_t>& counts) {
  std::vector<int64_t> offsets(counts.size(), 0);
  for (size_t r = 1; r < counts.size(); ++r) offsets[r] = offsets[r - 1] + counts[r - 1];
  return offsets;
}

int64_t total_of(const std::vector<int64_t>& counts) {
  int64_t total = 0;
  for (int64_t c : counts) total += c;
  return total;
}

std::string text_of(const std::vector<int64_t>& counts) {
  std::string text = "[";
  for (size_t i = 0; i < counts.size(); ++i) text += detail::cat(i ? ", " : "", counts[i]);
  return text + "]";
}

// The same on every rank: torch.chunk sizes (5 over n, and 7 over n), rank 0
// and every other rank empty, irregular small ones with zeros, large ones (past
// 64 KiB in all: the communicator's stream instead of the calling thread), and
// equal ones (the equal-chunk path).
std::vector<std::vector<int64_t>> piece_counts(int n) {
  std::vector<std::vector<int64_t>> sets = {chunk_sizes(5, n), chunk_sizes(7, n)};
  std::vector<int64_t> alternate, irregular, large, equal(static_cast<size_t>(n), 4);
  for (int r = 0; r < n; ++r) {
    alternate.push_back(r % 2 == 0 ? 0 : 3 + r);
    irregular.push_back((r * 7 + 3) % 5 * 3);  // 9, 0, 6, 12, ...
    large.push_back(9000 + 1000 * r);
  }
  sets.push_back(alternate);
  sets.push_back(irregular);
  sets.push_back(large);
  sets.push_back(equal);
  return sets;
}

const DType kPieceDTypes[] = {DType::kF32, DType::kBF16, DType::kI64};

TEST_P(Collectives, AllGatherUnequalPieces) {
  int n = comm_.size(), me = comm_.rank();
  auto m = static_cast<size_t>(me);
  for (bool abortable : {false, true}) {
    comm_.set_abortable_collectives(abortable);
    for (const std::vector<int64_t>& counts : piece_counts(n)) {
      std::vector<int64_t> offsets = offsets_of(counts);
      int64_t total = total_of(counts);
      std::string what = detail::cat(text_of(counts), abortable ? " abortable" : "");
      for (DType dtype : kPieceDTypes) {
        HostTensor expected = HostTensor::empty({total}, dtype);
        for (int r = 0; r < n; ++r) {
          HostTensor part = input_of(r, counts[static_cast<size_t>(r)], dtype, ReduceOp::kSum, 21);
          std::memcpy(static_cast<char*>(expected.raw_data()) + offsets[static_cast<size_t>(r)] * size_of(dtype),
                      part.raw_data(), part.nbytes());
        }
        DeviceTensor in = on_device(input_of(me, counts[m], dtype, ReduceOp::kSum, 21));
        DeviceTensor out = DeviceTensor::empty({total}, dtype, device_);
        Work w = comm_.all_gather(in, out, counts);
        bool equal = std::all_of(counts.begin(), counts.end(), [&](int64_t c) { return c == counts[0]; });
        if (!equal) {
          EXPECT_NE(w.description().find("all_gather(" + in.description() + ", counts " + text_of(counts) + ")"),
                    std::string::npos) << w.description();
        }
        w.wait();
        ASSERT_TRUE(all_close(to_host(out), expected, 0, 0)) << to_string(dtype) << " " << what;
        // In place: the input is this rank's piece of the output.
        DeviceTensor buffer = DeviceTensor::zeros({total}, dtype, device_);
        DeviceTensor mine = buffer.narrow(offsets[m], counts[m]);
        copy(in, mine);
        comm_.all_gather(mine, buffer, counts).wait();
        ASSERT_TRUE(all_close(to_host(buffer), expected, 0, 0)) << "in place " << to_string(dtype) << " " << what;
        if (equal) {  // the same as the equal-chunk call
          DeviceTensor old = DeviceTensor::zeros({total}, dtype, device_);
          comm_.all_gather(in, old).wait();
          ASSERT_TRUE(all_close(to_host(old), to_host(out), 0, 0)) << to_string(dtype) << " " << what;
        }
      }
    }
  }
  comm_.barrier();
}

TEST_P(Collectives, ReduceScatterUnequalPieces) {
  int n = comm_.size(), me = comm_.rank();
  auto m = static_cast<size_t>(me);
  for (bool abortable : {false, true}) {
    comm_.set_abortable_collectives(abortable);
    for (const std::vector<int64_t>& counts : piece_counts(n)) {
      std::vector<int64_t> offsets = offsets_of(counts);
      int64_t total = total_of(counts);
      std::string what = detail::cat(text_of(counts), abortable ? " abortable" : "");
      bool equal = std::all_of(counts.begin(), counts.end(), [&](int64_t c) { return c == counts[0]; });
      for (DType dtype : kPieceDTypes) {
        for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax}) {
          std::vector<HostTensor> inputs;
          for (int r = 0; r < n; ++r) inputs.push_back(input_of(r, total, dtype, op, 23));
          HostTensor expected = reduce_reference(inputs, op, dtype).narrow(offsets[m], counts[m]).clone();
          double tol = tol_for(dtype, n);
          std::string how = detail::cat(to_string(dtype), " ", to_string(op), " ", what);
          DeviceTensor in = on_device(inputs[m]);
          DeviceTensor out = DeviceTensor::empty({counts[m]}, dtype, device_);
          Work w = comm_.reduce_scatter(in, out, counts, op);
          if (!equal) {
            EXPECT_NE(w.description().find(detail::cat("reduce_scatter(", in.description(), ", counts ",
                                                       text_of(counts), ", ", to_string(op), ")")),
                      std::string::npos) << w.description();
          }
          w.wait();
          ASSERT_TRUE(all_close(to_host(out), expected, tol, tol * kMagnitude)) << how;
          DeviceTensor piece = in.narrow(offsets[m], counts[m]);  // in place: out is this rank's piece
          comm_.reduce_scatter(in, piece, counts, op).wait();
          ASSERT_TRUE(all_close(to_host(piece), expected, tol, tol * kMagnitude)) << "in place " << how;
          if (equal) {
            DeviceTensor again = on_device(inputs[m]);
            DeviceTensor old = DeviceTensor::empty({counts[m]}, dtype, device_);
            comm_.reduce_scatter(again, old, op).wait();
            ASSERT_TRUE(all_close(to_host(old), to_host(out), 0, 0)) << how;
          }
        }
      }
    }
  }
  comm_.barrier();
}

// Rank r sends pattern(r, q) elements to rank q.
std::vector<std::function<int64_t(int, int)>> all_to_all_patterns(int n) {
  std::vector<int64_t> chunked = chunk_sizes(5, n);
  return {
      [chunked, n](int r, int q) { return chunked[static_cast<size_t>((r + q) % n)]; },  // symmetric
      [](int r, int q) -> int64_t { return (r + 2 * q) % 4; },                             // zeros, asymmetric
      [](int r, int q) -> int64_t { return r == 0 ? 0 : q + 1; },                         // rank 0 sends nothing
      [](int r, int q) -> int64_t { return 5000 + 100 * r + 10 * q; },                    // large
      [](int, int) -> int64_t { return 3; },                                              // equal
  };
}

TEST_P(Collectives, AllToAllUnequalPieces) {
  int n = comm_.size(), me = comm_.rank();
  for (bool abortable : {false, true}) {
    comm_.set_abortable_collectives(abortable);
    for (const auto& pattern : all_to_all_patterns(n)) {
      std::vector<std::vector<int64_t>> sends(static_cast<size_t>(n));  // every rank's send_counts
      for (int r = 0; r < n; ++r) {
        for (int q = 0; q < n; ++q) sends[static_cast<size_t>(r)].push_back(pattern(r, q));
      }
      std::vector<int64_t> send_counts = sends[static_cast<size_t>(me)], recv_counts;
      for (int q = 0; q < n; ++q) recv_counts.push_back(pattern(q, me));
      int64_t recv_total = total_of(recv_counts);
      std::string what = detail::cat("send ", text_of(send_counts), " recv ", text_of(recv_counts),
                                     abortable ? " abortable" : "");
      for (DType dtype : kPieceDTypes) {
        size_t element = size_of(dtype);
        std::vector<HostTensor> inputs;
        for (int r = 0; r < n; ++r) {
          inputs.push_back(input_of(r, total_of(sends[static_cast<size_t>(r)]), dtype, ReduceOp::kSum, 29));
        }
        HostTensor expected = HostTensor::empty({recv_total}, dtype);
        int64_t at = 0;
        for (int q = 0; q < n; ++q) {  // rank q's piece for me, from its input at its offset for me
          auto qs = static_cast<size_t>(q);
          int64_t from = offsets_of(sends[qs])[static_cast<size_t>(me)];
          std::memcpy(static_cast<char*>(expected.raw_data()) + at * element,
                      static_cast<const char*>(inputs[qs].raw_data()) + from * element,
                      static_cast<size_t>(recv_counts[qs]) * element);
          at += recv_counts[qs];
        }
        DeviceTensor in = on_device(inputs[static_cast<size_t>(me)]);
        DeviceTensor out = DeviceTensor::empty({recv_total}, dtype, device_);
        Work w = comm_.all_to_all(in, out, send_counts, recv_counts);
        EXPECT_NE(w.description().find(detail::cat("all_to_all(", in.description(), ", send ", text_of(send_counts),
                                                    ", recv ", text_of(recv_counts), ")")),
                  std::string::npos) << w.description();
        w.wait();
        ASSERT_TRUE(all_close(to_host(out), expected, 0, 0)) << to_string(dtype) << " " << what;
        // In place (the same tensor) where every rank sends as much as it
        // receives: whether that holds is the same on every rank here.
        bool balanced = true;
        for (int r = 0; r < n; ++r) {
          int64_t sent = 0, received = 0;
          for (int q = 0; q < n; ++q) {
            sent += pattern(r, q);
            received += pattern(q, r);
          }
          balanced = balanced && sent == received;
        }
        if (balanced) {
          comm_.all_to_all(in, in, send_counts, recv_counts).wait();
          ASSERT_TRUE(all_close(to_host(in), expected, 0, 0)) << "in place " << to_string(dtype) << " " << what;
        }
        bool equal = send_counts == recv_counts && std::all_of(send_counts.begin(), send_counts.end(),
                                                               [&](int64_t c) { return c == send_counts[0]; });
        if (equal) {  // the same as the equal-chunk call (every rank's counts are equal here)
          DeviceTensor again = on_device(inputs[static_cast<size_t>(me)]);
          DeviceTensor old = DeviceTensor::empty({recv_total}, dtype, device_);
          comm_.all_to_all(again, old).wait();
          ASSERT_TRUE(all_close(to_host(old), to_host(out), 0, 0)) << to_string(dtype) << " " << what;
        }
      }
    }
  }
  comm_.barrier();
}

TEST_P(Collectives, UnequalPiecesRefuseBadCounts) {
  int n = comm_.size(), me = comm_.rank();
  auto m = static_cast<size_t>(me);
  std::vector<int64_t> counts = chunk_sizes(5, n);
  DeviceTensor piece = DeviceTensor::zeros({counts[m]}, DType::kF32, device_);
  DeviceTensor whole = DeviceTensor::zeros({5}, DType::kF32, device_);
  std::vector<int64_t> extra = counts;
  extra.push_back(0);
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { comm_.all_gather(piece, whole, extra); },
                           {"all_gather: counts " + text_of(extra), "has " + std::to_string(n + 1) + " entries",
                            std::to_string(n) + " ranks"}));
  std::vector<int64_t> negative = counts;
  negative[0] = -1;
  negative[m] = counts[m];
  if (me != 0) {
    EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { comm_.reduce_scatter(whole, piece, negative); },
                             {"reduce_scatter: counts " + text_of(negative), "rank 0 is negative"}));
  }
  DeviceTensor six = DeviceTensor::zeros({6}, DType::kF32, device_);
  EXPECT_TRUE(throws_error(ErrorKind::kShape, [&] { comm_.all_gather(piece, six, counts); },
                           {"all_gather with counts " + text_of(counts), piece.description(),
                            six.description() + " sum(counts) = 5"}));
  EXPECT_TRUE(throws_error(ErrorKind::kShape, [&] { comm_.reduce_scatter(whole, six, counts); },
                           {"reduce_scatter with counts " + text_of(counts), six.description()}));
  DeviceTensor i64_piece = DeviceTensor::zeros({counts[m]}, DType::kI64, device_);
  EXPECT_TRUE(throws_error(ErrorKind::kShape, [&] { comm_.all_gather(i64_piece, whole, counts); },
                           {"elements of i64"}));
  std::vector<int64_t> ones(static_cast<size_t>(n), 1);
  DeviceTensor n_elements = DeviceTensor::zeros({n}, DType::kF32, device_);
  EXPECT_TRUE(throws_error(ErrorKind::kShape, [&] { comm_.all_to_all(n_elements, six, ones, ones); },
                           {"all_to_all with send_counts " + text_of(ones), six.description(),
                            "sum(recv_counts) = " + std::to_string(n)}));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { comm_.all_to_all(n_elements, n_elements, ones, extra); },
                           {"all_to_all: recv_counts " + text_of(extra), "entries"}));
  comm_.barrier();  // nothing was issued: the communicator still works
}

TEST_P(Collectives, AsynchronousWorkKeepsBuffersAlive) {
  int n = comm_.size();
  std::vector<Work> works;
  std::vector<HostTensor> expected;
  std::vector<DeviceTensor> outs;
  for (int i = 0; i < 8; ++i) {
    DeviceTensor in = on_device(HostTensor::full<float>({513}, static_cast<float>(i + comm_.rank())));
    outs.push_back(DeviceTensor::empty({513}, DType::kF32, device_));
    works.push_back(comm_.all_reduce(in, outs.back()));
    // `in` goes out of scope here: the Work holds its memory until done.
    expected.push_back(HostTensor::full<float>({513}, static_cast<float>(n * i + n * (n - 1) / 2)));
  }
  for (size_t i = 0; i < works.size(); ++i) {
    works[i].wait();
    EXPECT_TRUE(works[i].is_completed());
    EXPECT_TRUE(all_close(to_host(outs[i]), expected[i], 0, 0)) << i;
  }
  EXPECT_NE(works[0].description().find("all_reduce(f32[513] on "), std::string::npos) << works[0].description();
  comm_.barrier();
}

// Collectives are ordered with kernels on the device's default stream as on a
// GPU: an operation reads what the kernels queued before it wrote, and kernels
// queued after it read its result, with no host wait in between. (On the cpu in
// the delayed mode the kernels are held back, so an operation that did not wait
// for its inputs would reduce unwritten memory.)
TEST_P(Collectives, OperationsAreOrderedWithKernelsOnTheStream) {
  int n = comm_.size();
  for (int round = 0; round < 3; ++round) {
    DeviceTensor x = on_device(HostTensor::full<float>({4099}, static_cast<float>(comm_.rank() + 1)));
    DeviceTensor y = kernels::scale(x, 2.0 + round);  // queued
    DeviceTensor sum = DeviceTensor::empty({4099}, DType::kF32, device_);
    Work w = comm_.all_reduce(y, sum);  // waits for scale on the stream, not on the host
    DeviceTensor z = kernels::neg(sum);  // queued after the all_reduce
    DeviceTensor gathered = DeviceTensor::empty({4099 * static_cast<int64_t>(n)}, DType::kF32, device_);
    Work g = comm_.all_gather(z, gathered);
    HostTensor result = to_host(gathered);  // waits for all of it
    float expected = -static_cast<float>((2.0 + round) * n * (n + 1) / 2);
    EXPECT_TRUE(all_close(result, HostTensor::full<float>({4099 * static_cast<int64_t>(n)}, expected), 0, 0))
        << "round " << round;
    w.wait();
    g.wait();
  }
  comm_.barrier();
}

// On the cpu a small operation (up to 64 KiB) runs at once on the calling
// thread when nothing is ahead of it, a large one on the communicator's
// stream. Interleaved from one thread they still run in issue order: the
// products below differ from the sums when two swap (n > 1), and the gather
// sees its input before the in-place reduction after it changes it.
TEST_P(Collectives, SmallAndLargeOperationsRunInIssueOrder) {
  int n = comm_.size(), me = comm_.rank();
  const int64_t large = 48 * 1024;  // 192 KiB of f32: queued
  double sum = n * (n + 1) / 2.0, factorial = 1;
  for (int r = 1; r <= n; ++r) factorial *= r;
  for (int round = 0; round < 4; ++round) {
    if (round % 2 == 1) comm_.barrier();  // nothing ahead: the first small operation runs at once
    DeviceTensor big = on_device(HostTensor::full<float>({large}, static_cast<float>(me + 1)));
    DeviceTensor head = big.narrow(0, 5);
    DeviceTensor little = on_device(HostTensor::full<float>({3}, static_cast<float>(me + 1)));
    DeviceTensor gathered = DeviceTensor::zeros({3 * static_cast<int64_t>(n)}, DType::kF32, device_);
    DeviceTensor early = on_device(HostTensor::full<float>({2}, static_cast<float>(me + 1)));
    std::vector<Work> works;
    works.push_back(comm_.all_reduce(early, ReduceOp::kMax));          // small: n
    works.push_back(comm_.all_reduce(big));                             // large: sum everywhere
    works.push_back(comm_.all_reduce(head, ReduceOp::kProd));          // small, reads the large one's result: sum^n
    works.push_back(comm_.all_gather(little, gathered));               // small: every rank's me + 1
    works.push_back(comm_.all_reduce(little, ReduceOp::kProd));        // small, in place after the gather: n!
    works.push_back(comm_.all_reduce(big, ReduceOp::kMax));            // large: unchanged
    works.push_back(comm_.all_reduce(early));                           // small, after the large: n * n
    for (const Work& w : works) w.wait();
    std::vector<float> expected_big(static_cast<size_t>(large), static_cast<float>(sum));
    for (size_t i = 0; i < 5; ++i) expected_big[i] = static_cast<float>(std::pow(sum, n));
    EXPECT_EQ(to_host(big).to_vector<float>(), expected_big) << "round " << round;
    std::vector<float> expected_gathered;
    for (int r = 0; r < n; ++r) expected_gathered.insert(expected_gathered.end(), 3, static_cast<float>(r + 1));
    EXPECT_EQ(to_host(gathered).to_vector<float>(), expected_gathered) << "round " << round;
    EXPECT_EQ(to_host(little).to_vector<float>(), std::vector<float>(3, static_cast<float>(factorial)));
    EXPECT_EQ(to_host(early).to_vector<float>(), std::vector<float>(2, static_cast<float>(n * n)));
  }
  comm_.barrier();
}

// A small operation whose input a kernel still queued on the compute stream
// produces does not run at once: it waits for that kernel (held here behind a
// gate until after the operation was issued).
TEST_P(Collectives, ASmallOperationWaitsForTheKernelThatMakesItsInput) {
  if (!device_.is_cpu()) GTEST_SKIP() << "holds the compute stream with a host task (cpu streams only)";
  int n = comm_.size(), me = comm_.rank();
  for (int64_t count : {int64_t{4}, int64_t{1000}}) {
    DeviceTensor x = on_device(HostTensor::full<float>({count}, static_cast<float>(me + 1)));
    testing::Gate gate;
    Stream::default_for(device_).enqueue([&gate] { gate.wait(); });
    DeviceTensor y = kernels::scale(x, 3.0);  // queued behind the gate
    Work w = comm_.all_reduce(y);
    gate.release();
    w.wait();
    EXPECT_EQ(to_host(y).to_vector<float>(), std::vector<float>(static_cast<size_t>(count), 1.5f * n * (n + 1)))
        << count;
  }
  comm_.barrier();
}

// Work::description() names the operation, its tensor, reduction and
// root or peer, and the communicator, even after the communicator is gone.
TEST_P(Collectives, WorkDescriptionsNameTheOperation) {
  int n = comm_.size(), me = comm_.rank();
  std::string on = detail::cat(" on ", comm_.backend_name(), " communicator 'test' (rank ", me, " of ", n, ")");
  DeviceTensor m = DeviceTensor::zeros({2, 3}, DType::kI64, device_);
  Work w = comm_.all_reduce(m, ReduceOp::kMax);
  EXPECT_EQ(w.description(), "all_reduce(" + m.description() + ", max)" + on);
  w.wait();
  EXPECT_EQ(w.description(), "all_reduce(" + m.description() + ", max)" + on);  // done: the same
  w = comm_.broadcast(m, n - 1);
  EXPECT_EQ(w.description(), detail::cat("broadcast(", m.description(), ", root ", n - 1, ")", on));
  w.wait();
  DeviceTensor part = DeviceTensor::zeros({4}, DType::kF32, device_);
  DeviceTensor whole = DeviceTensor::zeros({4 * static_cast<int64_t>(n)}, DType::kF32, device_);
  w = comm_.all_gather(part, whole);
  EXPECT_EQ(w.description(), "all_gather(" + part.description() + ")" + on);
  w.wait();
  w = comm_.reduce_scatter(whole, part);
  EXPECT_EQ(w.description(), "reduce_scatter(" + whole.description() + ", sum)" + on);
  w.wait();
  w = comm_.all_to_all(whole, whole);
  EXPECT_EQ(w.description(), "all_to_all(" + whole.description() + ")" + on);
  w.wait();
  DeviceTensor nine = DeviceTensor::zeros({1, 1, 1, 1, 1, 1, 1, 2, 3}, DType::kF32, device_);  // more axes than kept inline
  w = comm_.all_reduce(nine, ReduceOp::kMin);
  EXPECT_EQ(w.description(), "all_reduce(" + nine.description() + ", min)" + on);
  w.wait();
  if (n >= 2 && me < 2) {
    w = me == 0 ? comm_.send(part, 1) : comm_.recv(part, 0);
    EXPECT_EQ(w.description(), (me == 0 ? "send(" : "recv(") + part.description() + ", peer " +
                                   std::to_string(1 - me) + ")" + on);
    w.wait();
  }
  {
    Communicator sub = comm_.split(0, me, "gone");
    w = sub.all_reduce(m);
    w.wait();
  }
  EXPECT_EQ(w.description(), detail::cat("all_reduce(", m.description(), ", sum) on ", comm_.backend_name(),
                                         " communicator 'gone' (rank ", me, " of ", n, ")"));
  EXPECT_EQ(Work().description(), "completed work");
  comm_.barrier();
}

TEST_P(Collectives, SplitIntoSubCommunicators) {
  int n = comm_.size(), me = comm_.rank();
  Communicator parity = comm_.split(me % 2, -me);  // reversed order by key
  int members = (n + 1 - me % 2) / 2;
  ASSERT_TRUE(parity.valid());
  EXPECT_EQ(parity.size(), members);
  EXPECT_EQ(parity.rank(), members - 1 - me / 2);
  DeviceTensor t = on_device(HostTensor::full<int64_t>({5}, me));
  parity.all_reduce(t).wait();
  int64_t expected = 0;
  for (int r = me % 2; r < n; r += 2) expected += r;
  EXPECT_EQ(to_host(t).to_vector<int64_t>(), std::vector<int64_t>(5, expected));
  Communicator only_zero = comm_.split(me == 0 ? 0 : Communicator::kNoColor, 0);
  EXPECT_EQ(only_zero.valid(), me == 0);
  if (me != 0) {
    EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { only_zero.barrier(); }, {"not a member"}));
  }
}

TEST_P(Collectives, ValidationErrorsNameWhatWasExpected) {
  int n = comm_.size();
  DeviceTensor a = DeviceTensor::zeros({5}, DType::kF32, device_);
  DeviceTensor b = DeviceTensor::zeros({5 * n + 1}, DType::kF32, device_);
  EXPECT_TRUE(throws_error(ErrorKind::kShape, [&] { comm_.all_gather(a, b); },
                           {"all_gather over", "must hold", "f32[5]"}));
  EXPECT_TRUE(throws_error(ErrorKind::kShape, [&] { comm_.reduce_scatter(b, a); }, {"reduce_scatter over"}));
  EXPECT_TRUE(throws_error(ErrorKind::kShape,
                           [&] { comm_.all_reduce(a, DeviceTensor::zeros({5}, DType::kF64, device_)); },
                           {"same dtype and element count"}));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { comm_.broadcast(a, n); }, {"root"}));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { comm_.send(a, comm_.rank()); }, {"another rank"}));
  if (device_.is_cuda()) {
    EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument,
                             [&] { comm_.all_reduce(DeviceTensor::zeros({4}, DType::kF32)); },
                             {"f32[4] on cpu", "runs on cuda"}));
  }
}

TEST_P(Collectives, AbortFailsLaterOperationsAtOnce) {
  Communicator sub = comm_.split(0, comm_.rank());
  sub.abort("the test aborted it");
  EXPECT_TRUE(sub.aborted());
  DeviceTensor t = DeviceTensor::zeros({3}, DType::kF32, device_);
  EXPECT_TRUE(throws_error(ErrorKind::kUnavailable, [&] { sub.all_reduce(t).wait(); },
                           {"aborted", "the test aborted it"}));
  comm_.barrier();  // the parent is unaffected
}

// On a GPU: an operation still queued (behind long GEMMs on the compute stream)
// when its communicator is aborted fails, though its event completes once the
// aborted kernels exit; and its failure stays when polled again. Later
// compute on the default stream is not held up by the aborted operation's
// deadline: to_host of an unrelated tensor returns.
TEST_P(Collectives, AbortedPendingWorkFailsAndStaysFailed) {
  if (!device_.is_cuda()) GTEST_SKIP() << "the MPI backend runs an operation at once on its thread";
  Communicator sub = comm_.split(0, comm_.rank());
  HostTensor big = testing::random_tensor({4096, 4096}, DType::kBF16, 1);
  DeviceTensor a = on_device(big);
  for (int i = 0; i < 20; ++i) kernels::matmul(a, a);  // ~ms of work queued ahead
  DeviceTensor t = DeviceTensor::zeros({1 << 20}, DType::kF32, device_);
  Work pending = sub.all_reduce(t);
  sub.abort("aborted while pending");
  EXPECT_TRUE(throws_error(ErrorKind::kUnavailable, [&] { pending.wait(std::chrono::seconds(30)); },
                           {"aborted while pending"}));
  EXPECT_TRUE(throws_error(ErrorKind::kUnavailable, [&] { pending.is_completed(); }, {"aborted"}));
  HostTensor small = to_host(on_device(HostTensor::full<float>({4}, 2.0f)));
  EXPECT_EQ(small.data<float>()[0], 2.0f);
  comm_.barrier();
}

INSTANTIATE_TEST_SUITE_P(Devices, Collectives, ::testing::Values(DeviceKind::kCpu, DeviceKind::kCuda),
                         [](const auto& info) { return info.param == DeviceKind::kCpu ? "cpu" : "cuda"; });

// A receive that never matches ends in a clear error at its deadline, not a hang,
// and leaves the communicator aborted. (MPI backend: the receive is cancelled.)
TEST(Deadlines, UnmatchedReceiveTimesOut) {
  Communicator world = Communicator::world(Device::cpu(), "deadline");
  if (world.size() < 2) GTEST_SKIP() << "needs at least 2 ranks";
  if (world.rank() == 0) {
    DeviceTensor t = DeviceTensor::zeros({8}, DType::kF32);
    Work w = world.recv(t, 1);
    auto start = std::chrono::steady_clock::now();
    EXPECT_TRUE(throws_error(ErrorKind::kDeadlineExceeded, [&] { w.wait(std::chrono::milliseconds(300)); },
                             {"recv(f32[8] on cpu, peer 1)", "did not complete within 300 ms", "aborted"}));
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
    EXPECT_TRUE(world.aborted());
    EXPECT_TRUE(throws_error(ErrorKind::kUnavailable, [&] { world.barrier(); }, {"aborted"}));
  }
  Communicator::world(Device::cpu(), "after").barrier();
}

// World rank `to` waits until world rank `from` says it is done with a step,
// instead of sleeping for a fixed time: a byte on MPI_COMM_WORLD (none of
// meshrt's communicators use it for messages), looked for every 5 ms as the
// progress service does. The waiting rank stays as quiet as a sleeping one (no
// thread of it polls a communicator; its service thread must answer the other's
// deadline query meanwhile), and no longer than needed.
constexpr int kStepDoneTag = 7171;
void tell_rank(int to) {
  char done = 1;
  EXPECT_EQ(MPI_Send(&done, 1, MPI_CHAR, to, kStepDoneTag, MPI_COMM_WORLD), MPI_SUCCESS);
}
void wait_for_rank(int from) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  int flag = 0;
  while (!flag && std::chrono::steady_clock::now() < deadline) {
    ASSERT_EQ(MPI_Iprobe(from, kStepDoneTag, MPI_COMM_WORLD, &flag, MPI_STATUS_IGNORE), MPI_SUCCESS);
    if (!flag) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_TRUE(flag) << "world rank " << from << " did not say it was done within 60 s";
  char done = 0;
  EXPECT_EQ(MPI_Recv(&done, 1, MPI_CHAR, from, kStepDoneTag, MPI_COMM_WORLD, MPI_STATUS_IGNORE), MPI_SUCCESS);
}

// A deadline names the late rank in world numbering with its host, not only the
// rank that waited; the late rank itself says it fell behind. Ranks 0 and 1 of a
// pair (split off the world, so world ranks 2 and 3 stay out): #1 is an
// all_reduce both run, #2 a receive on rank 0 that rank 1 only reaches after
// rank 0 gave up, then rank 1's own receive #2 finds rank 0 gone. Once with
// small messages (run on the calling thread, then left to the stream), once
// with large ones (queued on the communicator's stream).
TEST(Deadlines, TheLateRankIsNamed) {
  Communicator world = Communicator::world(Device::cpu(), "late");
  if (world.size() < 2) GTEST_SKIP() << "needs at least 2 ranks";
  World& w = World::get();
  for (int64_t count : {int64_t{4}, int64_t{40000}}) {
    std::string name = count < 100 ? "pair" : "large pair";
    Communicator pair = world.split(world.rank() < 2 ? 0 : Communicator::kNoColor, world.rank(), name);
    if (pair.valid()) {
      DeviceTensor t = DeviceTensor::zeros({count}, DType::kF32);
      pair.all_reduce(t).wait();  // #1
      DeviceTensor r = DeviceTensor::zeros({count}, DType::kF32);
      if (pair.rank() == 0) {
        Work late = pair.recv(r, 1);  // #2: rank 1 is behind
        EXPECT_TRUE(throws_error(ErrorKind::kDeadlineExceeded, [&] { late.wait(std::chrono::milliseconds(500)); },
                                 {"recv #2 on '" + name + "' did not complete within 500 ms: ",
                                  w.describe_rank(1) + " is behind: it has started #1 and completed #1"}));
        tell_rank(1);
      } else {
        wait_for_rank(0);  // until rank 0 has given up
        Work behind = pair.recv(r, 0);  // #2 here too, but rank 0 aborted its communicator
        EXPECT_TRUE(throws_error(ErrorKind::kDeadlineExceeded, [&] { behind.wait(std::chrono::milliseconds(500)); },
                                 {"recv #2 on '" + name + "' did not complete within 500 ms: this rank (" +
                                      w.describe_rank(1) + ") fell behind: world rank(s) 0 gave up"}));
      }
    }
    world.barrier();
  }
}

// With abortable collectives, a collective whose peer never comes ends at its
// deadline and leaves no thread inside MPI (so the process can finalise); the
// results are the same as with the blocking calls.
// On a communicator of two ranks (world ranks 0 and 1) whose last operation was
// #(n - 1): rank 0 starts all_reduce #n alone; its deadline names rank 1 as
// behind, and after the abort no thread is left inside MPI. Rank 1 stays away
// meanwhile (until rank 0 is done).
void alone_all_reduce_is_named(const Communicator& pair, const DeviceTensor& t, int n, const std::string& name) {
  if (pair.rank() != 0) {
    wait_for_rank(0);
    return;
  }
  Work alone = pair.all_reduce(t);  // rank 1 never comes
  EXPECT_TRUE(throws_error(ErrorKind::kDeadlineExceeded, [&] { alone.wait(std::chrono::milliseconds(500)); },
                           {"all_reduce #" + std::to_string(n) + " on '" + name + "' did not complete within 500 ms: ",
                            World::get().describe_rank(1) + " is behind: it has started #" + std::to_string(n - 1)}));
  pair.abort("test over");
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (World::blocking_calls() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(World::blocking_calls(), 0) << "a thread is still inside MPI";
  tell_rank(1);
}

TEST(Deadlines, AnAbortableCollectiveLeavesNothingInsideMpi) {
  Communicator world = Communicator::world(Device::cpu(), "abortable");
  if (world.size() < 2) GTEST_SKIP() << "needs at least 2 ranks";
  world.set_abortable_collectives(true);
  Communicator pair = world.split(world.rank() < 2 ? 0 : Communicator::kNoColor, world.rank(), "abortable pair");
  if (pair.valid()) {
    DeviceTensor t = to_device(HostTensor::from_vector(std::vector<float>{1, 2, 3}, {3}), Device::cpu());
    pair.all_reduce(t).wait();  // #1, inherited from the world: non-blocking
    std::vector<float> sum = to_host(t).to_vector<float>();
    EXPECT_EQ(sum, (std::vector<float>{2, 4, 6}));
    DeviceTensor g = DeviceTensor::zeros({6}, DType::kF32);
    pair.all_gather(t, g).wait();  // #2
    EXPECT_EQ(to_host(g).to_vector<float>(), (std::vector<float>{2, 4, 6, 2, 4, 6}));
    float base = 10.0f * static_cast<float>(pair.rank());
    DeviceTensor six = to_device(HostTensor::from_vector(std::vector<float>{base + 1, base + 2, base + 3, base + 4,
                                                                            base + 5, base + 6}, {6}), Device::cpu());
    DeviceTensor half = DeviceTensor::zeros({3}, DType::kF32);
    pair.reduce_scatter(six, half).wait();  // #3: sums [12 .. 22], half each
    EXPECT_EQ(to_host(half).to_vector<float>(),
              pair.rank() == 0 ? (std::vector<float>{12, 14, 16}) : (std::vector<float>{18, 20, 22}));
    alone_all_reduce_is_named(pair, t, 4, "abortable pair");
  }
  world.barrier();
  // The same with a message too large to run on the calling thread (queued on
  // the communicator's stream).
  Communicator large = world.split(world.rank() < 2 ? 0 : Communicator::kNoColor, world.rank(), "abortable large");
  if (large.valid()) {
    DeviceTensor t = to_device(HostTensor::full<float>({40000}, 1.0f), Device::cpu());
    large.all_reduce(t).wait();  // #1
    EXPECT_EQ(to_host(t).to_vector<float>(), std::vector<float>(40000, 2.0f));
    alone_all_reduce_is_named(large, t, 2, "abortable large");
  }
  world.barrier();
}

// A small operation that a late peer holds up is left to the communicator's
// stream (the calling thread polls it only for a moment): it completes when
// the peer comes, later kernels read its result, and later operations run
// after it. Abortable collectives and receives take that path; blocking
// collectives wait on the calling thread.
TEST(SmallOperations, ALatePeerLeavesThemToTheStream) {
  Communicator world = Communicator::world(Device::cpu(), "late peer");
  if (world.size() < 2) GTEST_SKIP() << "needs at least 2 ranks";
  int n = world.size(), me = world.rank();
  for (bool abortable : {false, true}) {
    world.set_abortable_collectives(abortable);
    if (me == 1) std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the others wait for it
    DeviceTensor x = to_device(HostTensor::full<float>({4}, static_cast<float>(me + 1)), Device::cpu());
    Work a = world.all_reduce(x);
    DeviceTensor y = kernels::neg(x);  // reads a's result
    DeviceTensor big = to_device(HostTensor::full<float>({40000}, static_cast<float>(me + 1)), Device::cpu());
    Work b = world.all_reduce(big, ReduceOp::kMax);  // large: after a
    EXPECT_EQ(to_host(y).to_vector<float>(), std::vector<float>(4, -n * (n + 1) / 2.0f)) << abortable;
    b.wait();
    a.wait();
    EXPECT_EQ(to_host(big).to_vector<float>(), std::vector<float>(40000, static_cast<float>(n))) << abortable;
    if (me < 2) {
      DeviceTensor r = DeviceTensor::zeros({4}, DType::kF32);
      if (me == 1) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));  // rank 0's receive waits for it
        world.send(to_device(HostTensor::full<float>({4}, 7.0f), Device::cpu()), 0).wait();
      } else {
        Work received = world.recv(r, 1);
        DeviceTensor z = kernels::scale(r, 2.0);  // reads what was received
        EXPECT_EQ(to_host(z).to_vector<float>(), std::vector<float>(4, 14.0f)) << abortable;
        received.wait();
      }
    }
    world.barrier();
  }
}

// A stopped rank (SIGSTOP) cannot answer: the waiting rank names it, with the
// last operation it is known to have completed. Rank 1 stops itself; rank 0
// wakes it once its receive has failed. Needs both on one host.
TEST(Deadlines, AStoppedRankIsNamedAsNotAnswering) {
  Communicator world = Communicator::world(Device::cpu(), "stopped");
  if (world.size() < 2) GTEST_SKIP() << "needs at least 2 ranks";
  World& w = World::get();
  if (w.host_of(0) != w.host_of(1)) GTEST_SKIP() << "ranks 0 and 1 run on different hosts";
  DeviceTensor pid = DeviceTensor::zeros({1}, DType::kI64);
  if (world.rank() == 1) pid = to_device(HostTensor::from_vector(std::vector<int64_t>{::getpid()}, {1}), Device::cpu());
  world.broadcast(pid, 1).wait();  // #1
  if (world.rank() == 1) {
    ::raise(SIGSTOP);  // until rank 0 sends SIGCONT
  } else if (world.rank() == 0) {
    DeviceTensor r = DeviceTensor::zeros({4}, DType::kF32);
    Work w2 = world.recv(r, 1);  // #2
    // Rank 1 may take a moment to stop: a short deadline could still see it answer.
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    EXPECT_TRUE(throws_error(ErrorKind::kDeadlineExceeded, [&] { w2.wait(std::chrono::milliseconds(500)); },
                             {"recv #2 on 'stopped' did not complete within 500 ms: ",
                              w.describe_rank(1) + " did not answer (last seen at #1)"}));
    ::kill(static_cast<pid_t>(to_host(pid).data<int64_t>()[0]), SIGCONT);
  }
  Communicator::world(Device::cpu(), "after stop").barrier();
}

TEST(Deadlines, ShortMessageIsCheckedAgainstTheReceiveSize) {
  Communicator world = Communicator::world(Device::cpu(), "sizes");
  if (world.size() < 2) GTEST_SKIP() << "needs at least 2 ranks";
  if (world.rank() == 0) world.send(DeviceTensor::zeros({5}, DType::kF32), 1).wait();
  if (world.rank() == 1) {
    DeviceTensor t = DeviceTensor::zeros({10}, DType::kF32);
    EXPECT_TRUE(throws_error(ErrorKind::kShape, [&] { world.recv(t, 0).wait(); },
                             {"expected 10 elements of f32 from rank 0, got 5"}));
  }
  world.barrier();
}

// A Work that failed (past its deadline) stays failed, whether its operation
// finishes later (an NCCL event completes once the communicator is aborted) or
// its backend thread reports success afterwards.
TEST(WorkState, AFailureStaysAFailure) {
  std::atomic<bool> finished{false};
  auto polled = std::make_shared<detail::WorkState>("polled op", std::weak_ptr<detail::CommBackend>());
  polled->set_poller([&] { return finished.load(); });
  Work w(polled);
  EXPECT_TRUE(throws_error(ErrorKind::kDeadlineExceeded, [&] { w.wait(std::chrono::milliseconds(20)); },
                           {"polled op did not complete within 20 ms"}));
  finished = true;
  EXPECT_TRUE(throws_error(ErrorKind::kDeadlineExceeded, [&] { w.is_completed(); }, {"polled op"}));
  EXPECT_TRUE(throws_error(ErrorKind::kDeadlineExceeded, [&] { w.wait(std::chrono::seconds(5)); }, {"polled op"}));

  auto pushed = std::make_shared<detail::WorkState>("pushed op", std::weak_ptr<detail::CommBackend>());
  Work v(pushed);
  EXPECT_TRUE(throws_error(ErrorKind::kDeadlineExceeded, [&] { v.wait(std::chrono::milliseconds(20)); }, {"pushed op"}));
  pushed->complete();  // the backend's thread, late
  EXPECT_TRUE(throws_error(ErrorKind::kDeadlineExceeded, [&] { v.is_completed(); }, {"pushed op"}));
}

// The device a rank takes: one GPU per local rank, or a clear error naming both
// counts; the cpu when asked or when there is no GPU.
TEST(World, ChoosesOneGpuPerLocalRankOrSaysWhyNot) {
  EXPECT_EQ(choose_device("", 0, 4, 0, "no GPU here"), Device::cpu());
  EXPECT_EQ(choose_device("", 2, 4, 4, ""), Device::cuda(2));
  EXPECT_EQ(choose_device("cuda", 1, 2, 8, ""), Device::cuda(1));
  EXPECT_EQ(choose_device("cpu", 3, 4, 1, ""), Device::cpu());
  EXPECT_EQ(choose_device("cuda:5", 0, 4, 8, ""), Device::cuda(5));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [] { choose_device("", 0, 4, 1, ""); },
                           {"4 ranks run on this node but it has 1 GPU(s)", "--device cpu", "MESHRT_DEVICE=cpu"}));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [] { choose_device("cuda", 1, 3, 2, ""); },
                           {"3 ranks run on this node but it has 2 GPU(s)"}));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [] { choose_device("cuda", 0, 1, 0, "driver missing"); },
                           {"no GPU", "driver missing"}));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [] { choose_device("cuda:3", 0, 1, 2, ""); },
                           {"cuda:3", "has 2 GPU(s)"}));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [] { choose_device("tpu", 0, 1, 2, ""); }, {"unknown device 'tpu'"}));
}

// MPI counts and displacements are ints: an unequal piece, or a piece's
// offset, beyond 2^31 - 1 elements fails the Work with a clear error before
// anything is sent (the counts are the same on every rank, so all fail alike).
TEST(Backends, MpiRefusesPiecesBeyondIntCounts) {
  std::shared_ptr<detail::CommBackend> backend = detail::make_mpi_world("limits");
  int n = backend->size();
  constexpr int64_t kMax = std::numeric_limits<int>::max();
  auto run = [&](detail::Collective kind, std::vector<int64_t> counts) {
    auto pieces = std::make_shared<detail::Pieces>();
    std::vector<int64_t> offsets(counts.size(), 0);
    for (size_t r = 1; r < counts.size(); ++r) offsets[r] = offsets[r - 1] + counts[r - 1];
    int64_t total = offsets.back() + counts.back();
    pieces->send = pieces->recv = counts;
    pieces->send_offsets = pieces->recv_offsets = offsets;
    pieces->send_total = pieces->recv_total = total;
    detail::CommOp op;
    op.kind = kind;
    op.dtype = DType::kU8;
    op.pieces = pieces;
    auto state = std::make_shared<detail::WorkState>("a huge operation", backend);
    backend->start(op, state);
    return state;
  };
  std::vector<int64_t> huge(static_cast<size_t>(n), 0);
  huge[0] = kMax + 1;
  auto state = run(detail::Collective::kAllToAll, huge);
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { state->wait(std::chrono::seconds(60)); },
                           {"all_to_all: the piece of rank 0 (2147483648 elements) exceeds the MPI count limit"}));
  if (n >= 3) {
    std::vector<int64_t> far(static_cast<size_t>(n), 1);
    far[0] = kMax;  // rank 2's piece starts at 2^31
    state = run(detail::Collective::kAllToAll, far);
    EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { state->wait(std::chrono::seconds(60)); },
                             {"all_to_all: the piece of rank 2 starts at element 2147483648, beyond MPI's int"}));
  }
}

// An operation a backend lacks is an error of the Work, never a Work that
// completes having done nothing (c10d's "Backend X does not support ...").
TEST(Backends, AnOperationTheBackendLacksFailsLoudly) {
  std::shared_ptr<detail::CommBackend> backend = detail::make_mpi_world("lacking");
  auto state = std::make_shared<detail::WorkState>("an unknown operation", backend);
  detail::CommOp op;
  op.kind = static_cast<detail::Collective>(99);
  backend->start(op, state);
  EXPECT_TRUE(throws_error(ErrorKind::kInternal, [&] { state->wait(std::chrono::seconds(60)); },
                           {"mpi communicator 'lacking'", "does not support", "operation 99"}));
}

// avg is a pending reduction of the sharding layer (it sums and divides):
// communicators refuse it by name rather than reduce with something else.
TEST(Backends, CommunicatorsRefuseAvg) {
  Communicator world = Communicator::world(Device::cpu(), "avg");
  DeviceTensor t = DeviceTensor::zeros({4 * world.size()}, DType::kF32);
  DeviceTensor part = DeviceTensor::zeros({4}, DType::kF32);
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { world.all_reduce(t, ReduceOp::kAvg); },
                           {"all_reduce on mpi communicator 'avg'", "avg is a pending reduction"}));
  EXPECT_TRUE(throws_error(ErrorKind::kInvalidArgument, [&] { world.reduce_scatter(t, part, ReduceOp::kAvg); },
                           {"reduce_scatter on mpi communicator 'avg'", "avg"}));
  EXPECT_EQ(parse_reduce_op("avg"), ReduceOp::kAvg);
  EXPECT_STREQ(to_string(ReduceOp::kAvg), "avg");
}

}  // namespace
}  // namespace meshrt

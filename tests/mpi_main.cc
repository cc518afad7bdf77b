// GoogleTest main for every meshrt test binary, one rank or many:
// - starts the World (MPI) before the tests and finalises it after;
// - only rank 0 prints the usual output; other ranks print their failures only,
//   prefixed with their rank;
// - after each test, ranks agree on the result: rank 0 names the ranks where it
//   failed, and the exit code is non-zero on every rank if any rank failed;
// - when every test that ran was skipped on every rank (a CUDA suite without a
//   GPU), the exit code is kAllSkipped (77), which CTest reports as Skipped
//   (SKIP_RETURN_CODE): a failure is never reported as a skip.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdio>
#include <string>

#include "comm/world.h"
#include "device/error.h"

namespace {

class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& result) override {
    if (!result.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_,
                 result.file_name() ? result.file_name() : "?", result.line_number(),
                 result.summary());
  }

 private:
  int rank_;
};

// Combines each test's outcome across ranks.
class RankAgreement : public ::testing::EmptyTestEventListener {
 public:
  RankAgreement(MPI_Comm comm, int rank, int size) : comm_(comm), rank_(rank), size_(size) {}
  void OnTestEnd(const ::testing::TestInfo& info) override {
    int failed = info.result()->Failed() ? 1 : 0;
    std::vector<int> all(static_cast<size_t>(size_));
    MPI_Gather(&failed, 1, MPI_INT, all.data(), 1, MPI_INT, 0, comm_);
    if (rank_ != 0) return;
    std::string ranks;
    for (int r = 0; r < size_; ++r) {
      if (all[static_cast<size_t>(r)]) ranks += (ranks.empty() ? "" : ", ") + std::to_string(r);
    }
    if (!ranks.empty() && size_ > 1) {
      std::printf("[  RANKS   ] %s.%s failed on rank(s) %s of %d\n", info.test_suite_name(),
                  info.name(), ranks.c_str(), size_);
    }
  }

 private:
  MPI_Comm comm_;
  int rank_, size_;
};

}  // namespace

int main(int argc, char** argv) {
  meshrt::World& world = meshrt::World::init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  MPI_Comm comm = MPI_COMM_NULL;
  MPI_Comm_dup(MPI_COMM_WORLD, &comm);
  auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
  if (world.rank() != 0) {
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailurePrinter(world.rank()));
  }
  listeners.Append(new RankAgreement(comm, world.rank(), world.size()));
  if (world.rank() == 0) {
    std::string device;
    try {
      device = world.default_device().to_string();
    } catch (const meshrt::Error& e) {
      device = std::string("none (") + e.message() + ")";
    }
    std::printf("[  WORLD   ] %d rank(s) on %d node(s), %s, default device %s\n", world.size(),
                world.node_count(), world.thread_level(), device.c_str());
  }
  int local = RUN_ALL_TESTS();
  int global = 0;
  MPI_Allreduce(&local, &global, 1, MPI_INT, MPI_MAX, comm);
  if (world.rank() == 0 && global != 0 && local == 0) {
    std::printf("[  RANKS   ] a test failed on another rank (see the [rank N] lines above)\n");
  }
  const ::testing::UnitTest& unit = *::testing::UnitTest::GetInstance();
  int all_skipped = unit.test_to_run_count() > 0 && unit.skipped_test_count() == unit.test_to_run_count() ? 1 : 0;
  int everywhere = 0;
  MPI_Allreduce(&all_skipped, &everywhere, 1, MPI_INT, MPI_MIN, comm);
  MPI_Comm_free(&comm);
  meshrt::World::finalize();
  constexpr int kAllSkipped = 77;
  return global != 0 ? global : everywhere ? kAllSkipped : 0;
}

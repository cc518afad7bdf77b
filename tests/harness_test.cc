// Tests of the test harness (tests/mpi_main.cc, test_util.h), run by the
// harness_* CTest entries through tests/expect_exit.cmake: only under those
// entries (MESHRT_RUN_FAILING_HARNESS_TEST=1) does Harness.Fails fail.
#include <gtest/gtest.h>

#include <cstdlib>

#include "test_util.h"

namespace {

TEST(Harness, Skips) { GTEST_SKIP() << "skipped on purpose"; }

TEST(Harness, Fails) {
  if (std::getenv("MESHRT_RUN_FAILING_HARNESS_TEST")) ADD_FAILURE() << "failed on purpose";
}

TEST(Harness, RequiresCuda) { MESHRT_REQUIRE_CUDA(); }

}  // namespace

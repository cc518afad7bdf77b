// Helpers shared by the test suites.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <random>
#include <string>

#include "device/tensor.h"

namespace meshrt::testing {

// Skips the current test unless a CUDA device is usable. With
// MESHRT_REQUIRE_CUDA=1 in the environment (a GPU machine's check run), a test
// that cannot run fails instead: there a skip would hide a broken driver.
#define MESHRT_REQUIRE_CUDA()                                                                      \
  do {                                                                                             \
    if (::meshrt::cuda_device_count() == 0) {                                                      \
      if (::meshrt::testing::cuda_required()) {                                                    \
        GTEST_FAIL() << "MESHRT_REQUIRE_CUDA=1 but no CUDA device is usable: "                     \
                     << ::meshrt::cuda_unavailable_reason();                                       \
      }                                                                                            \
      GTEST_SKIP() << "needs a CUDA device: " << ::meshrt::cuda_unavailable_reason();              \
    }                                                                                              \
  } while (0)

// Whether MESHRT_REQUIRE_CUDA=1 is set.
inline bool cuda_required() {
  const char* v = std::getenv("MESHRT_REQUIRE_CUDA");
  return v && std::string(v) == "1";
}

// Random values in [lo, hi) of dtype (integers: whole numbers; bool: 0/1), reproducible by seed.
inline HostTensor random_tensor(const Shape& shape, DType dtype, uint64_t seed, double lo = -1.0,
                                double hi = 1.0) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  HostTensor f = HostTensor::empty(shape, DType::kF64);
  double* d = f.data<double>();
  for (int64_t i = 0; i < f.numel(); ++i) {
    double v = dist(rng);
    if (!is_floating(dtype)) v = std::floor(v);
    if (dtype == DType::kBool || dtype == DType::kU8) v = std::fabs(v);
    d[i] = dtype == DType::kBool ? static_cast<double>(static_cast<int64_t>(v) % 2) : v;
  }
  return cast_host(f, dtype);
}

// Values of a host tensor as doubles.
inline std::vector<double> values(const HostTensor& t) {
  return cast_host(t, DType::kF64).to_vector<double>();
}

// Largest |a - b| / (atol + rtol |b|) over the elements; <= 1 means within tolerance.
inline ::testing::AssertionResult all_close(const HostTensor& actual, const HostTensor& expected,
                                            double rtol, double atol) {
  if (actual.shape() != expected.shape()) {
    return ::testing::AssertionFailure()
           << "shapes differ: " << actual.description() << " vs " << expected.description();
  }
  std::vector<double> a = values(actual), e = values(expected);
  for (size_t i = 0; i < a.size(); ++i) {
    bool both_nan = std::isnan(a[i]) && std::isnan(e[i]);
    if (!both_nan && !(std::fabs(a[i] - e[i]) <= atol + rtol * std::fabs(e[i]))) {
      return ::testing::AssertionFailure()
             << "element " << i << ": " << a[i] << " vs expected " << e[i] << " (rtol " << rtol
             << ", atol " << atol << ") in " << actual.description();
    }
  }
  return ::testing::AssertionSuccess();
}

// Expects fn to throw meshrt::Error of kind whose message contains every fragment.
inline ::testing::AssertionResult throws_error(ErrorKind kind, const std::function<void()>& fn,
                                               std::initializer_list<std::string> fragments) {
  try {
    fn();
  } catch (const Error& e) {
    if (e.kind() != kind) {
      return ::testing::AssertionFailure() << "threw kind '" << to_string(e.kind())
                                           << "' instead of '" << to_string(kind) << "': " << e.what();
    }
    for (const auto& f : fragments) {
      if (std::string(e.what()).find(f) == std::string::npos) {
        return ::testing::AssertionFailure() << "message lacks \"" << f << "\": " << e.what();
      }
    }
    return ::testing::AssertionSuccess();
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "threw a non-meshrt exception: " << e.what();
  }
  return ::testing::AssertionFailure() << "did not throw";
}

// A task that holds its stream until opened: gate.wait() inside a task,
// gate.release() from the test (waits at most 60 s, so a test never hangs).
struct Gate {
  std::mutex mutex;
  std::condition_variable cv;
  bool open = false;
  void wait() {
    std::unique_lock<std::mutex> lock(mutex);
    cv.wait_for(lock, std::chrono::seconds(60), [&] { return open; });
  }
  void release() {
    {
      std::lock_guard<std::mutex> lock(mutex);
      open = true;
    }
    cv.notify_all();
  }
};

}  // namespace meshrt::testing

// Helpers shared by the apps: the main of an MPI app, sizes with K/M/G
// suffixes, timing, random tensors.
#pragma once

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>

#include "comm/world.h"
#include "device/error.h"
#include "device/tensor.h"

namespace meshrt::apps {

// The main of an app every rank runs under mpirun: the World is started, the
// options are parsed on every rank (only rank 0 prints help and option errors),
// body runs and its return value is the exit code. An Error of kind invalid
// argument or shape comes from the options, which every rank sees alike: rank 0
// prints it and every rank exits with 2. Any other Error is printed by the rank
// that hit it and ends the whole job (MPI_Abort), so no rank waits forever.
template <class Body>
int run_mpi_app(const char* name, CLI::App& app, int argc, char** argv, Body body) {
  World& world = World::get();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = world.rank() == 0 ? app.exit(e) : (e.get_exit_code() == 0 ? 0 : 2);
    World::finalize();
    return code;
  }
  int code = 2;
  try {
    code = body();
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::kInvalidArgument && e.kind() != ErrorKind::kShape) {
      std::fprintf(stderr, "%s: rank %d: %s\n", name, world.rank(), e.what());
      World::abort(2, std::string(name) + " failed");
    }
    if (world.rank() == 0) std::fprintf(stderr, "%s: %s\n", name, e.message().c_str());
  }
  World::finalize();
  return code;
}

// "8", "64K", "1M", "2G" (binary multiples); throws Error(kInvalidArgument) otherwise.
inline int64_t parse_size(const std::string& text) {
  if (text.empty()) throw Error(ErrorKind::kInvalidArgument, "empty size");
  size_t used = 0;
  long long value = 0;
  try {
    value = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  MESHRT_CHECK_ARG(used > 0 && value >= 0, "size '", text, "' is not a number with an optional K, M or G");
  std::string suffix = text.substr(used);
  int64_t scale = 1;
  if (suffix == "K" || suffix == "k") scale = int64_t{1} << 10;
  else if (suffix == "M" || suffix == "m") scale = int64_t{1} << 20;
  else if (suffix == "G" || suffix == "g") scale = int64_t{1} << 30;
  else MESHRT_CHECK_ARG(suffix.empty(), "size '", text, "': unknown suffix '", suffix, "' (use K, M or G)");
  return value * scale;
}

inline double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Uniform values in [-1, 1) of dtype, reproducible by seed.
inline HostTensor random_host(const Shape& shape, DType dtype, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  HostTensor f = HostTensor::empty(shape, DType::kF32);
  for (float& v : f.span<float>()) v = dist(rng);
  return cast_host(f, dtype);
}

}  // namespace meshrt::apps

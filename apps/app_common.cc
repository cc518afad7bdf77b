#include "apps/app_common.h"

#include <sys/resource.h>

#include <cstdio>
#include <algorithm>
#include <random>

namespace meshrt::apps {

std::optional<std::string> run_command(const std::string& command, std::string* why) {
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  if (!pipe) {
    *why = "cannot start: " + command;
    return std::nullopt;
  }
  std::string out;
  char buffer[4096];
  while (size_t n = std::fread(buffer, 1, sizeof buffer, pipe)) out.append(buffer, n);
  if (::pclose(pipe) == 0) return out;
  *why = "it failed: " + out.substr(0, 200);
  return std::nullopt;
}

int run_mpi_app(const char* name, CommandLine& command_line, int argc, char** argv,
                const std::function<int()>& body) {
  World& world = World::get();
  if (std::optional<int> exit_code = command_line.parse(argc, argv, world.rank() != 0)) {
    World::finalize();
    return *exit_code;
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

void raise_open_file_limit() {
  rlimit files{};
  if (::getrlimit(RLIMIT_NOFILE, &files) != 0) return;
  rlim_t wanted = std::min<rlim_t>(files.rlim_max, 65536);
  if (files.rlim_cur < wanted) {
    files.rlim_cur = wanted;
    ::setrlimit(RLIMIT_NOFILE, &files);  // best effort: a lower limit only caps the connections
  }
}

int64_t parse_size(const std::string& text) {
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

HostTensor random_host(const Shape& shape, DType dtype, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  HostTensor f = HostTensor::empty(shape, DType::kF32);
  for (float& v : f.span<float>()) v = dist(rng);
  return cast_host(f, dtype);
}

DeviceTensor random_device(const Shape& shape, DType dtype, uint64_t seed, const Device& device) {
  int64_t block = std::min<int64_t>(shape.numel(), int64_t{1} << 20);
  if (device.is_cpu() || block == shape.numel()) return to_device(random_host(shape, dtype, seed), device);
  DeviceTensor out = DeviceTensor::empty(shape, dtype, device);
  DeviceTensor first = to_device(random_host({block}, dtype, seed), device);
  size_t element = size_of(dtype), total = static_cast<size_t>(shape.numel()) * element;
  size_t filled = static_cast<size_t>(block) * element;
  char* base = static_cast<char*>(out.raw_data());
  copy_rows(device, base, filled, first.raw_data(), filled, filled, 1);
  while (filled < total) {  // double what is filled
    size_t bytes = std::min(filled, total - filled);
    copy_rows(device, base + filled, bytes, base, bytes, bytes, 1);
    filled += bytes;
  }
  return out;
}

void ReferenceOptions::add_to(CommandLine& command_line) {
  command_line.add("--python", python, "the python3 that runs the reference").show_default();
  command_line.add("--reference", script, "the reference script").show_default();
  command_line.flag("--no-reference", skip, "do not run the reference");
}

std::optional<std::string> ReferenceOptions::run(const std::string& arguments, std::string* why) const {
  std::optional<std::string> out =
      run_command("OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 " + python + " " + script + " " + arguments, why);
  if (!out) *why = "the reference did not run (" + script + "): " + *why;
  return out;
}

}  // namespace meshrt::apps

// Helpers shared by the apps: the main of an MPI app, sizes with K/M/G
// suffixes, timing, random tensors.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "apps/cli.h"
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
int run_mpi_app(const char* name, CommandLine& command_line, int argc, char** argv,
                const std::function<int()>& body);

// Raises the soft limit of open files to the hard limit (at most 65536): a
// server holds a descriptor per connection, and the usual soft limit is 1024.
void raise_open_file_limit();

// Runs a shell command (stderr joined to stdout) and returns its output, or
// nullopt with why (it could not start, or exited non-zero: the output's start)
// in *why. The benchmarks run their Python references so.
std::optional<std::string> run_command(const std::string& command, std::string* why);

// The Python reference a benchmark runs beside itself (tests/hf_reference.py
// by default), and its --python, --reference and --no-reference options.
struct ReferenceOptions {
  std::string python = "/usr/bin/python3", script = "tests/hf_reference.py";
  bool skip = false;
  void add_to(CommandLine& command_line);
  // Runs the script with arguments (one BLAS thread): its output, or nullopt
  // with why in *why (naming the script).
  std::optional<std::string> run(const std::string& arguments, std::string* why) const;
};

// "8", "64K", "1M", "2G" (binary multiples); throws Error(kInvalidArgument) otherwise.
int64_t parse_size(const std::string& text);

inline double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Uniform values in [-1, 1) of dtype, reproducible by seed.
HostTensor random_host(const Shape& shape, DType dtype, uint64_t seed);
// The same kind of values on device. On a GPU only a block of up to 2^20
// values is drawn on the host; the rest of the tensor is that block repeated by
// device-to-device copies (filling 8192^2 values on the host took ~15 s).
DeviceTensor random_device(const Shape& shape, DType dtype, uint64_t seed, const Device& device);

}  // namespace meshrt::apps

#include "serving/system_metrics.h"

#include <dirent.h>
#include <dlfcn.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <mutex>
#include <optional>
#include <sstream>
#include <vector>

namespace meshrt::serving {

std::string metric_number(double v) {
  char text[64];
  std::snprintf(text, sizeof text, "%.10g", v);
  return text;
}

namespace {

std::string number(double v) { return metric_number(v); }

void family(std::string& out, const char* name, const char* type, const char* help) {
  out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
}

std::string read_text(const char* path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// The fields of /proc/self/stat after the command name (which may hold spaces
// and parentheses: it ends at the last ')'). fields[0] is field 3 of proc(5), state.
std::vector<std::string> stat_fields() {
  std::string stat = read_text("/proc/self/stat");
  size_t close = stat.rfind(')');
  if (close == std::string::npos) return {};
  std::istringstream in(stat.substr(close + 1));
  return {std::istream_iterator<std::string>(in), std::istream_iterator<std::string>()};
}

// Field `number` of proc(5)'s /proc/[pid]/stat (1-based, as the manual counts).
std::optional<double> stat_field(const std::vector<std::string>& fields, size_t number) {
  if (number < 3 || number - 3 >= fields.size()) return std::nullopt;
  try {
    return std::stod(fields[number - 3]);
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

std::optional<double> boot_time_seconds() {
  std::ifstream in("/proc/stat");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("btime ", 0) == 0) {
      try {
        return std::stod(line.substr(6));
      } catch (const std::exception&) {
        return std::nullopt;
      }
    }
  }
  return std::nullopt;
}

std::optional<long> open_fds() {
  DIR* dir = ::opendir("/proc/self/fd");
  if (!dir) return std::nullopt;
  std::string own = std::to_string(::dirfd(dir));  // the listing's own descriptor is not the process's
  long n = 0;
  while (dirent* entry = ::readdir(dir)) {
    std::string name = entry->d_name;
    if (name != "." && name != ".." && name != own) ++n;
  }
  ::closedir(dir);
  return n;
}

// ---- NVML, loaded at run time --------------------------------------------
// The few declarations of nvml.h that are used (its ABI: these _v2 entry
// points and structs have been stable since CUDA 6).
using nvmlReturn_t = int;  // NVML_SUCCESS = 0
struct nvmlDevice_st;
using nvmlDevice_t = nvmlDevice_st*;
struct nvmlUtilization_t {
  unsigned int gpu;     // percent of time a kernel ran, over the last sample period
  unsigned int memory;  // percent of time memory was read or written
};
struct nvmlMemory_t {
  unsigned long long total, free, used;  // bytes
};

struct Nvml {
  nvmlReturn_t (*device_get_count)(unsigned int*) = nullptr;
  nvmlReturn_t (*device_get_handle_by_index)(unsigned int, nvmlDevice_t*) = nullptr;
  nvmlReturn_t (*device_get_utilization_rates)(nvmlDevice_t, nvmlUtilization_t*) = nullptr;
  nvmlReturn_t (*device_get_memory_info)(nvmlDevice_t, nvmlMemory_t*) = nullptr;
};

// NVML initialised, or null without the library, a symbol or a driver. Loaded
// once and kept (nvmlShutdown is never called: the process's own).
const Nvml* nvml() {
  static std::once_flag once;
  static std::optional<Nvml> loaded;
  std::call_once(once, [] {
    void* library = ::dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!library) return;
    auto init = reinterpret_cast<nvmlReturn_t (*)()>(::dlsym(library, "nvmlInit_v2"));
    Nvml n;
    n.device_get_count = reinterpret_cast<decltype(n.device_get_count)>(::dlsym(library, "nvmlDeviceGetCount_v2"));
    n.device_get_handle_by_index =
        reinterpret_cast<decltype(n.device_get_handle_by_index)>(::dlsym(library, "nvmlDeviceGetHandleByIndex_v2"));
    n.device_get_utilization_rates =
        reinterpret_cast<decltype(n.device_get_utilization_rates)>(::dlsym(library, "nvmlDeviceGetUtilizationRates"));
    n.device_get_memory_info =
        reinterpret_cast<decltype(n.device_get_memory_info)>(::dlsym(library, "nvmlDeviceGetMemoryInfo"));
    if (!init || !n.device_get_count || !n.device_get_handle_by_index || !n.device_get_utilization_rates ||
        !n.device_get_memory_info || init() != 0) {
      ::dlclose(library);
      return;
    }
    loaded = n;
  });
  return loaded ? &*loaded : nullptr;
}

}  // namespace

void render_process_metrics(std::string& out) {
  std::vector<std::string> fields = stat_fields();
  double ticks = static_cast<double>(::sysconf(_SC_CLK_TCK));
  auto utime = stat_field(fields, 14), stime = stat_field(fields, 15);
  if (utime && stime && ticks > 0) {
    family(out, "process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.");
    out += "process_cpu_seconds_total " + number((*utime + *stime) / ticks) + "\n";
  }
  if (auto rss = stat_field(fields, 24)) {
    family(out, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
    out += "process_resident_memory_bytes " + number(*rss * static_cast<double>(::sysconf(_SC_PAGESIZE))) + "\n";
  }
  if (auto vsize = stat_field(fields, 23)) {
    family(out, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.");
    out += "process_virtual_memory_bytes " + number(*vsize) + "\n";
  }
  auto start = stat_field(fields, 22);
  auto boot = boot_time_seconds();
  if (start && boot && ticks > 0) {
    family(out, "process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.");
    out += "process_start_time_seconds " + number(*boot + *start / ticks) + "\n";
  }
  if (auto fds = open_fds()) {
    family(out, "process_open_fds", "gauge", "Number of open file descriptors.");
    out += "process_open_fds " + std::to_string(*fds) + "\n";
  }
  rlimit files{};
  if (::getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur != RLIM_INFINITY) {
    family(out, "process_max_fds", "gauge", "Maximum number of open file descriptors.");
    out += "process_max_fds " + std::to_string(files.rlim_cur) + "\n";
  }
}

void render_gpu_metrics(std::string& out) {
  const Nvml* n = nvml();
  if (!n) return;
  unsigned int count = 0;
  if (n->device_get_count(&count) != 0 || count == 0) return;
  std::string utilization, used, total;
  for (unsigned int i = 0; i < count; ++i) {
    nvmlDevice_t device = nullptr;
    if (n->device_get_handle_by_index(i, &device) != 0) continue;
    std::string label = "{gpu=\"" + std::to_string(i) + "\"} ";
    nvmlUtilization_t rates{};
    // Not supported on some devices (a MIG instance): that line is left out.
    if (n->device_get_utilization_rates(device, &rates) == 0) {
      utilization += "meshrt_gpu_utilization_ratio" + label + number(rates.gpu / 100.0) + "\n";
    }
    nvmlMemory_t memory{};
    if (n->device_get_memory_info(device, &memory) == 0) {
      used += "meshrt_gpu_memory_used_bytes" + label + std::to_string(memory.used) + "\n";
      total += "meshrt_gpu_memory_total_bytes" + label + std::to_string(memory.total) + "\n";
    }
  }
  if (!utilization.empty()) {
    family(out, "meshrt_gpu_utilization_ratio", "gauge",
           "Fraction of the last sample period (NVML's, 1/6 s to 1 s) in which a kernel ran on the GPU.");
    out += utilization;
  }
  if (!used.empty()) {
    family(out, "meshrt_gpu_memory_used_bytes", "gauge", "GPU memory in use (all processes), in bytes.");
    out += used;
    family(out, "meshrt_gpu_memory_total_bytes", "gauge", "GPU memory in all, in bytes.");
    out += total;
  }
}

}  // namespace meshrt::serving

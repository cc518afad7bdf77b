// Metrics of the process and of the machine's GPUs, read when /metrics is
// rendered (serving/metrics.h lists them).
//
// The process: Prometheus' standard process collector's names and sources
// (/proc/self/stat for CPU time, memory and start time, /proc/stat for the boot
// time, /proc/self/fd, the open-files limit). The GPUs: NVML, loaded at run
// time (dlopen of libnvidia-ml.so.1, the driver's library), so that meshrt
// needs neither the driver nor its headers to build or run: without it there
// are no GPU lines, and no error. NVML numbers every GPU of the machine (it
// ignores CUDA_VISIBLE_DEVICES); the lines are rank 0's machine's.
#pragma once

#include <string>

namespace meshrt::serving {

// A sample value in the text format ("%.10g").
std::string metric_number(double v);

// Appends the process_* families (text format, with HELP and TYPE); a value
// that cannot be read is left out.
void render_process_metrics(std::string& out);

// Appends meshrt_gpu_utilization_ratio, meshrt_gpu_memory_used_bytes and
// meshrt_gpu_memory_total_bytes by GPU index; nothing without NVML or GPUs.
void render_gpu_metrics(std::string& out);

}  // namespace meshrt::serving

#include "sharding/trace.h"

#include <cstdio>

namespace meshrt::sharding {

namespace {
thread_local Trace* g_current = nullptr;
}

TraceScope::TraceScope(Trace& trace) : previous_(g_current) { g_current = &trace; }
TraceScope::~TraceScope() { g_current = previous_; }
Trace* TraceScope::current() { return g_current; }

int Trace::count(const std::string& operation) const {
  int n = 0;
  for (const auto& s : steps_) n += s.operation == operation;
  return n;
}

int Trace::collectives() const {
  int n = 0;
  for (const auto& s : steps_) n += s.communicates();
  return n;
}

double Trace::communication_seconds() const {
  double t = 0;
  for (const auto& s : steps_) {
    if (s.communicates()) t += s.seconds;
  }
  return t;
}

std::string Trace::to_string() const {
  std::string out;
  for (const auto& s : steps_) {
    char size[32];
    if (s.bytes >= (1 << 20)) {
      std::snprintf(size, sizeof size, "%.1f MiB", s.bytes / 1048576.0);
    } else if (s.bytes >= 1024) {
      std::snprintf(size, sizeof size, "%.1f KiB", s.bytes / 1024.0);
    } else {
      std::snprintf(size, sizeof size, "%lld B", s.bytes);
    }
    char line[512];
    std::snprintf(line, sizeof line, "%-14s over '%s' of %s: %s -> %s (%s, %.3f ms)\n", s.operation.c_str(),
                  s.axis.c_str(), s.tensor.c_str(), s.from.c_str(), s.to.c_str(), size, s.seconds * 1e3);
    out += line;
  }
  return out.empty() ? "(no communication)\n" : out;
}

}  // namespace meshrt::sharding

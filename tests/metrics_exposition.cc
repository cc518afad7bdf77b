// Prints the Prometheus exposition of a Metrics holding models whose names and
// versions need escaping (quotes, backslashes, line feeds), after some traffic,
// with the process's metrics (and the GPUs', where NVML is).
// tests/check_prometheus.py parses it with a strict parser.
#include <cstdio>

#include "serving/metrics.h"

int main() {
  meshrt::serving::Metrics metrics;
  const std::pair<const char*, const char*> models[] = {
      {"plain", "1"}, {"quote\"d", "v\"1\\x"}, {"line\nfeed", "back\\slash\\"}};
  for (const auto& [model, version] : models) {
    metrics.add_model(model, version);
    metrics.request(model, version, 200);
    metrics.request(model, version, 503);
    metrics.request_duration(model, version, 0.004);
    metrics.request_duration(model, version, 0.2);
    metrics.batch(model, version, 4, 2, {0.001, 0.002}, 0.01);
    metrics.queue_size(model, version, 3);
  }
  metrics.http_request(200);
  metrics.ready(true);
  std::fputs(metrics.render().c_str(), stdout);
  return 0;
}

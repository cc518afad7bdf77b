"""Parses the exposition that tests/metrics_exposition prints with the Prometheus
text-format parser of python3-prometheus-client (Debian), which refuses a
malformed line, and checks that the label values come back as given.

    check_prometheus.py PATH_TO_metrics_exposition
"""
import subprocess
import sys

from prometheus_client.parser import text_string_to_metric_families

text = subprocess.run([sys.argv[1]], check=True, capture_output=True, text=True).stdout
families = list(text_string_to_metric_families(text))
labels = {(s.labels.get("model"), s.labels.get("version")) for f in families for s in f.samples if "model" in s.labels}
expected = {("plain", "1"), ('quote"d', 'v"1\\x'), ("line\nfeed", "back\\slash\\")}
if labels != expected:
    sys.exit(f"label values did not round-trip: {sorted(labels)} != {sorted(expected)}")
names = {f.name for f in families}
for wanted in ["meshrt_inference_requests", "meshrt_batch_size", "meshrt_queue_requests", "meshrt_ready",
               "meshrt_request_duration_seconds", "process_cpu_seconds", "process_resident_memory_bytes",
               "process_start_time_seconds", "process_open_fds"]:
    if wanted not in names:
        sys.exit(f"family {wanted} is missing: {sorted(names)}")
durations = [s for f in families if f.name == "meshrt_request_duration_seconds" for s in f.samples
             if s.name.endswith("_count")]
if not durations or any(s.value != 2 for s in durations):
    sys.exit(f"meshrt_request_duration_seconds_count is not 2 per model: {durations}")
print(f"prometheus exposition parses: {len(families)} families, {sum(len(f.samples) for f in families)} samples")

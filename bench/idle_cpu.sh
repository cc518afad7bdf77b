#!/usr/bin/env bash
# Idle CPU of a served model: starts meshrt-serve (matmul_neg on 4 ranks, cpu
# backend), lets it settle, and sums the CPU time (user + system) its ranks use
# over 5 s with no requests. Issue 12's target: under 5% of one core.
#   bench/idle_cpu.sh              (from the repository root, after ./run.sh build)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${MESHRT_BUILD_DIR:-build}
seconds=${MESHRT_IDLE_SECONDS:-5}
if [ "$(id -u)" -eq 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
export OMPI_MCA_rmaps_base_oversubscribe=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mpirun -np 4 "$build/apps/meshrt-serve" --model-repository examples/models --model matmul_neg --device cpu \
  --http-port 0 --grpc-port 0 --metrics-port 0 --port-file "$work/port" --pid-file "$work/pid" > "$work/log" 2>&1 &
job=$!
for _ in $(seq 1 1200); do [ -f "$work/pid.3" ] && [ -f "$work/port" ] && break; sleep 0.1; done
[ -f "$work/port" ] || { cat "$work/log" >&2; echo "idle_cpu.sh: the server did not start" >&2; exit 1; }
sleep 2
ticks() {
  local total=0 r fields
  for r in 0 1 2 3; do
    read -r -a fields < <(cut -d' ' -f14,15 "/proc/$(cat "$work/pid.$r")/stat")
    total=$((total + fields[0] + fields[1]))
  done
  echo "$total"
}
before=$(ticks)
sleep "$seconds"
after=$(ticks)
hz=$(getconf CLK_TCK)
ms=$(( (after - before) * 1000 / hz ))
echo "idle 4-rank meshrt-serve (matmul_neg): ${ms} ms of CPU in $((seconds * 1000)) ms summed over the ranks =" \
     "$(awk -v ms="$ms" -v s="$seconds" 'BEGIN { printf "%.1f", ms / (s * 10) }')% of one core (target: under 5%)"
kill -TERM "$(cat "$work/pid")"
wait "$job" || true

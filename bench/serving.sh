#!/usr/bin/env bash
# Serving benchmark: starts meshrt-serve (the examples, 4 ranks) with dynamic
# batching on and then off, and runs meshrt-loadgen against each: requests per
# second and p50/p90/p99 latency at concurrency 1, 8 and 64, HTTP with JSON and
# binary tensors and gRPC with raw contents (each against HTTP binary's req/s),
# 1 row per request; then 1024 rows per request (the three formats), batching off, from a
# copy of the example whose max_batch_size is 1024 (the example's is 256). The loadgen also prints the server's median
# engine and forward time per batch and the raw batched compute in rows/s.
#   bench/serving.sh [loadgen args...]      (from the repository root, after ./run.sh build)
# MESHRT_BENCH_REQUESTS (default 1000) and MESHRT_BENCH_REQUESTS_LARGE (300): requests per
# level of the 1-row and of the 1024-row runs (the smoke test, bench_serving_smoke, takes few).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${MESHRT_BUILD_DIR:-build}
requests=${MESHRT_BENCH_REQUESTS:-1000}
requests_large=${MESHRT_BENCH_REQUESTS_LARGE:-300}
if [ "$(id -u)" -eq 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
export OMPI_MCA_rmaps_base_oversubscribe=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/large/matmul_neg"
sed 's/"max_batch_size": 256/"max_batch_size": 1024/' examples/models/matmul_neg/config.json > "$work/large/matmul_neg/config.json"
ln -s "$(pwd)/examples/models/matmul_neg/weights.safetensors" "$work/large/matmul_neg/weights.safetensors"
for run in "on 1" "off 1" "off 1024"; do
  read -r batching rows <<< "$run"
  rm -f "$work/port" "$work/pid" "$work/grpc_port"
  repository=examples/models
  [ "$rows" = 1 ] || repository="$work/large"
  mpirun -np 4 "$build/apps/meshrt-serve" --model-repository "$repository" --model matmul_neg --batching "$batching" \
    --http-port 0 --metrics-port 0 --port-file "$work/port" --pid-file "$work/pid" --grpc-port 0 --grpc-port-file "$work/grpc_port" \
    > "$work/server.log" 2>&1 &
  job=$!
  for _ in $(seq 1 3000); do [ -f "$work/port" ] && [ -f "$work/pid" ] && [ -f "$work/grpc_port" ] && break; sleep 0.1; done
  if [ ! -f "$work/port" ]; then
    cat "$work/server.log" >&2
    echo "serving.sh: the server did not start within 300 s" >&2
    exit 1
  fi
  echo "## dynamic batching $batching, $rows row(s) per request (matmul_neg: 4 ranks = 2 stages x 2-way tensor parallel, cpu backend)"
  if [ "$rows" = 1 ]; then
    "$build/apps/meshrt-loadgen" --url "127.0.0.1:$(cat "$work/port")" --grpc-url "127.0.0.1:$(cat "$work/grpc_port")" \
      --model matmul_neg --concurrency 1,8,64 --requests "$requests" --rows 1 --format all --expect -48 "$@"
  else
    "$build/apps/meshrt-loadgen" --url "127.0.0.1:$(cat "$work/port")" --grpc-url "127.0.0.1:$(cat "$work/grpc_port")" \
      --model matmul_neg --concurrency 1,8 \
      --requests "$requests_large" --rows "$rows" --format all --expect -48 "$@"
  fi
  kill -TERM "$(cat "$work/pid")"
  wait "$job"
done

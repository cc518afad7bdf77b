#!/usr/bin/env bash
# Parameter-server training benchmark (seed 003's avenger model: an 8 x 16384
# embedding read and updated by rows, a 16384-wide dense layer): steps/s and
# samples/s with 1, 2 and 4 workers and 1 and 2 parameter servers
# (meshrt-ps-train --local-cluster, every task a process on loopback), and the
# update throughput (MB of gradients the workers sent to the servers per
# second, as the chief counts them; duplicates of retried steps included);
# beside it, from the same run, the synchronous data-parallel loop on as many
# ranks (meshrt-bench-train, a global batch of 32 per step as one worker's).
# The figures of the last of --epochs epochs (the first ones warm up).
# Figures only: on a machine with fewer cores than tasks there is no scaling.
#   bench/ps.sh            (from the repository root, after ./run.sh build)
# MESHRT_BENCH_PS_STEPS (default 40): steps per epoch; MESHRT_BENCH_PS_WORKERS (1 2 4).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${MESHRT_BUILD_DIR:-build}
steps=${MESHRT_BENCH_PS_STEPS:-40}
workers_list=${MESHRT_BENCH_PS_WORKERS:-1 2 4}
if [ "$(id -u)" -eq 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
export OMPI_MCA_rmaps_base_oversubscribe=1
echo "# meshrt parameter-server training: avenger (Embedding(8, 16384) -> mean -> Dense(1)), RMSprop, batches of 32 per worker, $steps steps per epoch, the 3rd epoch"
printf "%-8s %-4s %12s %12s %14s %16s %8s\n" workers ps steps/s samples/s "update MB/s" "sync DP steps/s" "PS/DP"
for w in $workers_list; do
  dp=$(mpirun -np "$w" "$build/apps/meshrt-bench-train" --device cpu --models avenger --steps "$steps" --warmup 5 \
       | awk '$1 == "avenger" { print $4 }')
  for p in 1 2; do
    out=$("$build/apps/meshrt-ps-train" --local-cluster --workers "$w" --ps "$p" --program avenger --epochs 3 \
          --steps-per-epoch "$steps" 2>/dev/null)
    line=$(echo "$out" | grep '^epoch 3/3')
    rate=$(echo "$line" | sed -n 's/.*(\([0-9.]*\) steps\/s.*/\1/p')
    mbs=$(echo "$line" | sed -n 's/.* \([0-9.]*\) MB\/s to the servers.*/\1/p')
    [ -n "$rate" ] || { echo "bench/ps.sh: no figures from $w worker(s), $p ps:"; echo "$out"; exit 1; }
    awk -v w="$w" -v p="$p" -v r="$rate" -v m="$mbs" -v d="$dp" 'BEGIN {
      printf "%-8s %-4s %12.1f %12.1f %14.1f %16.1f %7.2fx\n", w, p, r, r * 32, m, d, (d > 0 ? r / d : 0) }'
  done
done

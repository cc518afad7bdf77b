#!/usr/bin/env bash
# Runs a benchmark command and records its output with what produced it:
#   bench/record.sh NAME command args...   ->   bench/results/NAME.txt
# The file starts with the date, host, CPU, GPU (model, driver, CUDA) when
# nvidia-smi is there, the git commit, and the exact command.
set -euo pipefail
name=$1
shift
cd "$(dirname "$0")/.."
out="bench/results/$name.txt"
mkdir -p bench/results
{
  echo "# date:    $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "# host:    $(hostname), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
  echo "# cpu:     $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    echo "# gpu:     $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)"
    echo "# cuda:    $(nvidia-smi | sed -n 's/.*CUDA Version: \([0-9.]*\).*/\1/p' | head -1) (driver), $(nvcc --version 2>/dev/null | tail -1 || echo 'nvcc not here')"
  else
    echo "# gpu:     none"
  fi
  echo "# commit:  $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "# command: $*"
  echo "#"
  "$@" 2>&1
} | tee "$out"
echo "recorded in $out" >&2

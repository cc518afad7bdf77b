#!/usr/bin/env bash
# The runtime image's default command: serves the example repository (its
# models take 4 ranks) on 4 GPUs when the container sees at least 4, else on
# the cpu device (meshrt needs one GPU per rank). Stop it with SIGUSR1 to drain.
set -euo pipefail
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
device=cpu
if [ "${gpus:-0}" -ge 4 ]; then
  device=cuda
else
  echo "serve-examples: ${gpus:-0} GPU(s) visible, the example models need 4 ranks: serving them on the cpu device" >&2
fi
exec mpirun -np 4 meshrt-serve --model-repository /opt/meshrt/models --http-port 8000 --device "$device" "$@"

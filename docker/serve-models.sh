#!/usr/bin/env bash
# The runtime image's default command: serves the model repository mounted at
# /models under mpirun, with as many ranks as its models' rank_size (every model
# a job serves runs on all its ranks, so they must agree), one GPU per rank when
# the container sees at least that many GPUs, else on the cpu device.
#
#   serve-models [meshrt-serve options...]     e.g. serve-models --model llama-tiny
#
# Its arguments go to meshrt-serve as they are; it reads three of them:
# --model-repository (default $MESHRT_MODEL_REPOSITORY, else /models), --model
# (only those models' rank_size counts; one --model per name) and --device (given:
# no GPU count is made). MESHRT_RANKS sets the rank count, MESHRT_MPIRUN_ARGS adds
# mpirun options. Ports are meshrt-serve's defaults (HTTP 8000, gRPC 8001, metrics
# 8002). Stop it with SIGUSR1 to mpirun (the image's STOPSIGNAL: `docker stop`):
# mpirun forwards it to every rank and the server drains.
set -euo pipefail

say() { echo "serve-models: $*" >&2; }

repo=${MESHRT_MODEL_REPOSITORY:-/models}
repo_given=0 device_given=0
models=()
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --model-repository) repo=${args[i + 1]:-}; repo_given=1 ;;
    --model-repository=*) repo=${args[i]#*=}; repo_given=1 ;;
    --model) models+=("${args[i + 1]:-}") ;;
    --model=*) models+=("${args[i]#*=}") ;;
    --device | --device=*) device_given=1 ;;
  esac
done

# Every model folder, as meshrt-serve finds them (a folder with meshrt.json or config.json).
if [ ${#models[@]} -eq 0 ]; then
  for dir in "$repo"/*/; do
    [ -f "$dir/meshrt.json" ] || [ -f "$dir/config.json" ] || continue
    models+=("$(basename "$dir")")
  done
fi

# A model's rank_size: from meshrt.json (a Hugging Face folder) or config.json.
rank_size_of() {
  local file="$repo/$1/meshrt.json"
  [ -f "$file" ] || file="$repo/$1/config.json"
  [ -f "$file" ] || return 0
  grep -o '"rank_size"[[:space:]]*:[[:space:]]*[0-9]*' "$file" | grep -o '[0-9]*$' | head -n 1
}

ranks=${MESHRT_RANKS:-}
if [ -z "$ranks" ]; then
  sizes=$(for m in "${models[@]}"; do rank_size_of "$m"; done | sort -un | tr '\n' ' ')
  read -r -a distinct <<< "$sizes"
  if [ ${#distinct[@]} -gt 1 ]; then
    say "the models in $repo need different rank counts (rank_size ${sizes% }): serve one group with --model NAME, or set MESHRT_RANKS"
    exit 2
  fi
  # No model found: one rank, and meshrt-serve says what is wrong with the repository.
  ranks=${distinct[0]:-1}
fi

# The GPUs this container sees: nvidia-smi lists those given to it (docker run
# --gpus); /proc/driver/nvidia/gpus lists the host's, when nvidia-smi is absent.
gpu_count() {
  local n=0
  if command -v nvidia-smi > /dev/null 2>&1; then
    n=$(nvidia-smi -L 2> /dev/null | grep -c '^GPU ' || true)
  elif [ -d /proc/driver/nvidia/gpus ]; then
    n=$(find /proc/driver/nvidia/gpus -mindepth 1 -maxdepth 1 | wc -l)
  fi
  # CUDA_VISIBLE_DEVICES narrows them further (set and empty: none).
  if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then
    local visible=0
    [ -n "$CUDA_VISIBLE_DEVICES" ] && visible=$(tr ',' '\n' <<< "$CUDA_VISIBLE_DEVICES" | grep -c . || true)
    [ "$visible" -lt "$n" ] && n=$visible
  fi
  echo "${n:-0}"
}

device=()
if [ "$device_given" -eq 0 ]; then
  gpus=$(gpu_count)
  if [ "$gpus" -ge "$ranks" ]; then
    device=(--device cuda)  # rank r on cuda:<local rank r>
    say "$ranks rank(s) on $gpus visible GPU(s), one GPU per rank"
  else
    device=(--device cpu)
    say "$gpus GPU(s) visible, the models need $ranks rank(s) with a GPU each: serving on the cpu device"
    # Share the cores out between the ranks (oneDNN's OpenMP threads, OpenBLAS's).
    per_rank=$(( $(nproc) / ranks ))
    [ "$per_rank" -ge 1 ] || per_rank=1
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$per_rank} OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-$per_rank}
  fi
fi

repo_args=()
[ "$repo_given" -eq 1 ] || repo_args=(--model-repository "$repo")
# shellcheck disable=SC2086  # MESHRT_MPIRUN_ARGS is a list of options
exec mpirun -np "$ranks" ${MESHRT_MPIRUN_ARGS:-} meshrt-serve "${repo_args[@]}" "${device[@]}" "$@"

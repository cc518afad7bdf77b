#!/usr/bin/env bash
# meshrt's one entry point. Each command installs what is missing (Debian
# packages), configures and builds (CUDA too when nvcc is found), then runs.
#
#   ./run.sh demo          the main job: the MatMul+Neg servable, then a Llama checkpoint, each
#                          served on 4 ranks of this machine (cpu backend), requests over
#                          HTTP and over gRPC, then a clean stop
#   ./run.sh demo-sharding [args]  the sharded MatMul+Neg program (args: meshrt-matmul-neg's)
#   ./run.sh demo-train    seed 003's two models trained data-parallel on 4 ranks (cpu backend):
#                          a dense regression (SGD, MSE), then the "avenger" classifier (RMSprop, BCE)
#   ./run.sh demo-ps       the same two models with parameter-server training: 3 workers and 2 parameter
#                          servers as processes on this machine, checkpoints and a sidecar evaluator
#   ./run.sh test [args]   the whole test suite with CTest (args go to ctest, e.g. -L unit)
#   ./run.sh build         install dependencies, configure and build only
#   ./run.sh bench         the collectives, GEMM, sharding (and its overlap), transformer prefill, generation, pipeline, training and serving benchmarks and a server's
#                          idle CPU, each against its baseline; recorded in bench/results/
#
# Environment: MESHRT_BUILD_DIR (default build), MESHRT_RANKS (demo ranks, default 4),
# MESHRT_CMAKE_ARGS (extra configure arguments, e.g. -DMESHRT_ENABLE_CUDA=OFF),
# MESHRT_BENCH_PREFIX (bench result names, default cpu-<cores>core).
set -euo pipefail
cd "$(dirname "$0")"
root=$(pwd)
build_dir=${MESHRT_BUILD_DIR:-build}
ranks=${MESHRT_RANKS:-4}

# clang, its libFuzzer runtime (libclang-rt-dev) and llvm (llvm-symbolizer): the
# coverage-guided fuzz tests (libfuzzer_*, tests/fuzz/README.md). libdnnl-dev:
# oneDNN, the cpu GEMM of bf16 and f16; its CMake package also needs OpenCL's
# headers and loader (ocl-icd-opencl-dev, only a recommendation of libdnnl-dev,
# which --no-install-recommends skips). python3-numpy: the float64 reference of
# the transformer tests (tests/hf_reference.py). libpcre2-dev: the tokenizer's
# pre-tokenizer patterns (models/tokenizer.cc); python3-regex: the tokenizer
# tests' independent reference (tests/tokenizer_reference.py). gRPC and protobuf
# (libgrpc++-dev, libprotobuf-dev; protoc and its gRPC plugins in
# protobuf-compiler and protobuf-compiler-grpc): the rpc/ room, KServe v2 over
# gRPC; python3-grpcio and python3-protobuf: the Python gRPC client tests.
# libspdlog-dev: logging; zlib1g-dev: gzip/deflate HTTP bodies.
packages=(cmake g++ ninja-build pkg-config libopenmpi-dev openmpi-bin libopenblas-dev libgtest-dev
          libcli11-dev nlohmann-json3-dev libboost-dev python3 python3-prometheus-client
          clang libclang-rt-dev llvm libdnnl-dev ocl-icd-opencl-dev python3-numpy
          libpcre2-dev python3-regex libgrpc++-dev libprotobuf-dev protobuf-compiler
          protobuf-compiler-grpc python3-grpcio python3-protobuf libspdlog-dev zlib1g-dev)

say() { echo "run.sh: $*" >&2; }

install_dependencies() {
  local missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing ${missing[*]}"
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { say "need root (or sudo) to install: ${missing[*]}"; exit 1; }
    sudo="sudo"
  fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

configure_and_build() {
  if [ ! -f "$build_dir/build.ninja" ]; then
    mkdir -p "$build_dir"
    # shellcheck disable=SC2086
    if ! cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release ${MESHRT_CMAKE_ARGS:-} \
        > "$build_dir/configure.log" 2>&1; then
      cat "$build_dir/configure.log" >&2
      say "configure failed"
      exit 1
    fi
    grep -E "^-- meshrt:" "$build_dir/configure.log" | sed 's/^-- /run.sh: /' >&2 || true
  fi
  # ninja shows each file it compiles (the CUDA sources too), and nothing when up to date.
  cmake --build "$build_dir" | sed -u '/^ninja: no work to do/d'
}

# OpenMPI refuses root and more ranks than cores unless told; these only apply to OpenMPI.
mpi_environment() {
  if [ "$(id -u)" -eq 0 ]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  fi
  export OMPI_MCA_rmaps_base_oversubscribe=1
}

# serve_and_ask TITLE REPOSITORY MODEL "INFER_ARGS" ["INFER_ARGS"...]: starts meshrt-serve on
# $ranks ranks with one model of the repository, sends it one request per INFER_ARGS with
# meshrt-infer (over HTTP, or over gRPC when INFER_ARGS starts with --grpc), prints the
# answers and stops the server with SIGTERM (it drains, exits 0).
serve_and_ask() {
  local title=$1 repository=$2 model=$3
  shift 3
  local work port grpc_port job rc
  work=$(mktemp -d)
  echo "== meshrt demo: $title =="
  echo "\$ mpirun -np $ranks $build_dir/apps/meshrt-serve --model-repository $repository --model $model --device cpu --http-port 0 --grpc-port 0 --metrics-port 0"
  mpirun -np "$ranks" "$build_dir/apps/meshrt-serve" --model-repository "$repository" --model "$model" \
    --device cpu --http-port 0 --grpc-port 0 --metrics-port 0 --port-file "$work/port" --grpc-port-file "$work/grpc_port" \
    --pid-file "$work/pid" > "$work/server.log" 2>&1 &
  job=$!
  for _ in $(seq 1 1200); do
    [ -f "$work/port" ] && [ -f "$work/pid" ] && [ -f "$work/grpc_port" ] && break
    if ! kill -0 "$job" 2>/dev/null; then
      cat "$work/server.log" >&2
      say "the server did not start"
      rm -rf "$work"
      return 1
    fi
    sleep 0.1
  done
  port=$(cat "$work/port")
  grpc_port=$(cat "$work/grpc_port")
  sed 's/^/  server: /' "$work/server.log"
  rc=0
  local ask url
  for ask in "$@"; do
    url="127.0.0.1:$port"
    [[ $ask == --grpc* ]] && url="127.0.0.1:$grpc_port"
    echo "\$ $build_dir/apps/meshrt-infer --url $url --model $model $ask"
    # shellcheck disable=SC2086
    "$build_dir/apps/meshrt-infer" --url "$url" --model "$model" $ask || rc=$?
  done
  echo "\$ kill -TERM <rank 0>   (drain and stop)"
  kill -TERM "$(cat "$work/pid")"
  local server_rc=0
  wait "$job" || server_rc=$?
  tail -n 2 "$work/server.log" | sed 's/^/  server: /'
  echo "server exited with status $server_rc"
  rm -rf "$work"
  [ "$rc" -eq 0 ] && [ "$server_rc" -eq 0 ]
}

# The MatMul+Neg servable (examples/models/matmul_neg: rank_size 4, 2 pipeline
# stages x 2-way tensor parallel) with a 128x96 request of ones (-48 everywhere),
# then a Llama-architecture Hugging Face checkpoint (examples/hf/llama-tiny, the
# same split): token ids in and logits out, then 8 tokens generated and streamed;
# each over HTTP and then over gRPC (KServe v2 gRPC, streaming with ModelStreamInfer).
serving_demo() {
  serve_and_ask "the MatMul+Neg servable on $ranks ranks (2 stages x 2-way tensor parallel, cpu backend), over HTTP and gRPC" \
    examples/models matmul_neg "--rows 128 --value 1" "--grpc --rows 128 --value 1"
  serve_and_ask "a Llama checkpoint (Hugging Face layout) on $ranks ranks (2 stages x 2-way tensor parallel): logits, then generated tokens streamed, over HTTP and gRPC" \
    examples/hf llama-tiny "--rows 2 --extent 5 --value 42" "--generate 8 --prompt 60,193,243" \
    "--grpc --generate 8 --prompt 60,193,243"
}

command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
  demo)
    install_dependencies
    configure_and_build
    mpi_environment
    serving_demo
    ;;
  demo-sharding)
    install_dependencies
    configure_and_build
    mpi_environment
    echo "== meshrt demo: sharded MatMul+Neg on $ranks ranks of this machine (cpu backend) =="
    echo "\$ mpirun -np $ranks $build_dir/apps/meshrt-matmul-neg --device cpu $*"
    exec mpirun -np "$ranks" "$build_dir/apps/meshrt-matmul-neg" --device cpu "$@"
    ;;
  demo-train)
    install_dependencies
    configure_and_build
    mpi_environment
    echo "== meshrt demo: seed 003's dense regression, trained data-parallel on $ranks ranks (cpu backend) =="
    echo "\$ mpirun -np $ranks $build_dir/apps/meshrt-train --model regression --expect-falling-loss --device cpu"
    mpirun -np "$ranks" "$build_dir/apps/meshrt-train" --model regression --expect-falling-loss --device cpu
    echo "== meshrt demo: seed 003's embedding + mean + dense(sigmoid) classifier on the avenger data =="
    echo "\$ mpirun -np $ranks $build_dir/apps/meshrt-train --model avenger --min-accuracy 0.95 --device cpu"
    exec mpirun -np "$ranks" "$build_dir/apps/meshrt-train" --model avenger --min-accuracy 0.95 --device cpu
    ;;
  demo-ps)
    install_dependencies
    configure_and_build
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    echo "== meshrt demo: seed 003's dense regression, parameter-server training: 3 workers, 2 parameter servers =="
    echo "\$ $build_dir/apps/meshrt-ps-train --local-cluster --workers 3 --ps 2 --program regression --expect-falling-loss"
    "$build_dir/apps/meshrt-ps-train" --local-cluster --workers 3 --ps 2 --program regression --expect-falling-loss
    echo "== meshrt demo: the avenger classifier, with checkpoints, inline evaluation and a sidecar evaluator =="
    echo "\$ $build_dir/apps/meshrt-ps-train --local-cluster --workers 3 --ps 2 --program avenger --checkpoint-dir <tmp> --inline-eval --sidecar-evaluator --min-eval-accuracy 0.95"
    "$build_dir/apps/meshrt-ps-train" --local-cluster --workers 3 --ps 2 --program avenger --checkpoint-dir "$work/checkpoints" \
      --inline-eval --sidecar-evaluator --min-eval-accuracy 0.95
    ;;
  test)
    install_dependencies
    configure_and_build
    mpi_environment
    cd "$build_dir"
    exec ctest --output-on-failure -j "$(nproc)" "$@"
    ;;
  build)
    install_dependencies
    configure_and_build
    ;;
  bench)
    bench_prefix=${MESHRT_BENCH_PREFIX:-cpu-$(nproc)core}
    install_dependencies
    configure_and_build
    mpi_environment
    # Each figure is printed and recorded with its command, the commit and the
    # machine in bench/results/<machine>-<name>.txt (bench/record.sh).
    export MESHRT_BUILD_DIR="$build_dir"
    record() { local name=$1; shift; bench/record.sh "$bench_prefix-$name" "$@"; }
    record collectives-np2 mpirun -np 2 "$build_dir/apps/meshrt-bench-collectives" --device cpu -b 1K -e 64M -f 8
    record collectives-abortable mpirun -np 2 "$build_dir/apps/meshrt-bench-collectives" --device cpu -b 1K -e 16M -f 4 --abortable
    record reduce-scatter mpirun -np 2 "$build_dir/apps/meshrt-bench-collectives" --device cpu -C reduce_scatter -b 1K -e 16M -f 4
    record gemm "$build_dir/apps/meshrt-bench-gemm" --device cpu --sizes 512,1024,2048
    # bf16 and f16 (oneDNN) against the raw oneDNN call, and PyTorch's matmul at the same shapes
    # (bench/torch_gemm.py says so and skips when python3-torch is not installed)
    record gemm-bf16 "$build_dir/apps/meshrt-bench-gemm" --device cpu --sizes 512,1024,2048 --dtype bf16
    record gemm-f16 "$build_dir/apps/meshrt-bench-gemm" --device cpu --sizes 512,1024,2048 --dtype f16
    record gemm-torch /usr/bin/python3 bench/torch_gemm.py --sizes 512,1024,2048 --dtypes bf16,f16,f32
    for n in 1 2 4; do record "sharding-np$n" mpirun -np "$n" "$build_dir/apps/meshrt-bench-sharding" --device cpu; done
    # Communication overlapping compute under asynchronous dispatch, 4 micro-batches per step (2 MiB
    # all_reduces): each GEMM a 1 ms wait on the device stream (a GPU kernel's stand-in, taking no
    # CPU), then real GEMMs with a narrow ffn so that communication is not a rounding error
    record sharding-overlap-wait-np2 mpirun -np 2 "$build_dir/apps/meshrt-bench-sharding" --device cpu --overlap --compute wait:1000 --batch 256 --hidden 2048 --ffn 2048 -n 20
    record sharding-overlap-gemm-np2 mpirun -np 2 "$build_dir/apps/meshrt-bench-sharding" --device cpu --overlap --compute gemm --batch 256 --hidden 2048 --ffn 64 -n 20
    # The same with non-blocking, polled collectives (as meshrt-serve runs them): a blocking MPI call
    # spins on a core while it waits, which on 2 cores keeps the compute stream's thread waiting
    record sharding-overlap-wait-abortable-np2 mpirun -np 2 "$build_dir/apps/meshrt-bench-sharding" --device cpu --overlap --abortable --compute wait:1000 --batch 256 --hidden 2048 --ffn 2048 -n 20
    record sharding-overlap-gemm-abortable-np2 mpirun -np 2 "$build_dir/apps/meshrt-bench-sharding" --device cpu --overlap --abortable --compute gemm --batch 256 --hidden 2048 --ffn 64 -n 20
    # Prefill of the example Hugging Face checkpoints, tensor parallel at 1 and 2 ranks, beside the float64
    # numpy reference (tests/hf_reference.py) timed in the same run
    for m in llama-tiny gpt2-tiny; do
      for n in 1 2; do record "transformer-prefill-$m-np$n" mpirun -np "$n" "$build_dir/apps/meshrt-bench-transformer" --model "examples/hf/$m" --batch 4 --seq 64; done
    done
    # Generation (KV cache, iteration-level batching) at concurrency 1, 8 and 32, TP 1 and 2, beside the
    # reference's batched full-recompute generation in the same run
    for n in 1 2; do record "generate-llama-tiny-np$n" mpirun -np "$n" "$build_dir/apps/meshrt-bench-generate" --device cpu --model examples/hf/llama-tiny --concurrency 1,8,32; done
    for p in 2 4; do record "pipeline-np$p" mpirun -np "$p" "$build_dir/apps/meshrt-bench-pipeline" --device cpu --stage-ms 20; done
    # Models on disjoint ranks of one job: 2 models of 2 stages, 4 of 1, one after another and at once (same run)
    for k in 2 4; do record "placement-models$k-np4" mpirun -np 4 "$build_dir/apps/meshrt-bench-pipeline" --device cpu --models "$k" --micro-batches 2 --stage-ms 20; done
    # Synchronous data-parallel training steps/s at 1, 2 and 4 ranks, beside one process on the whole batch
    for n in 1 2 4; do record "train-np$n" mpirun -np "$n" "$build_dir/apps/meshrt-bench-train" --device cpu; done
    # Parameter-server training: 1, 2, 4 workers x 1, 2 servers, update MB/s, beside the data-parallel loop
    record ps-training bench/ps.sh
    record serving-matmul_neg bench/serving.sh
    record idle-cpu bench/idle_cpu.sh
    ;;
  *)
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
    [ -z "$command" ] || [ "$command" = "-h" ] || [ "$command" = "--help" ] || { say "unknown command '$command'"; exit 2; }
    ;;
esac

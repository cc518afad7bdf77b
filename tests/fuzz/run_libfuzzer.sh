#!/usr/bin/env bash
# Coverage-guided fuzzing of meshrt's fuzz targets with libFuzzer, under
# AddressSanitizer (with leak detection) and UBSan: a nested build with clang
# (MESHRT_FUZZ=ON, MESHRT_SANITIZE=address,undefined, static libraries, no CUDA,
# no apps; kernels, comm and sharding, which no target executes, plain: see
# README.md), then each target fuzzed for a bounded time from its seed corpus.
#
#   run_libfuzzer.sh build SOURCE_DIR WORK_DIR
#   run_libfuzzer.sh run   SOURCE_DIR WORK_DIR TARGET SECONDS [libFuzzer flags...]
#   run_libfuzzer.sh all   SOURCE_DIR WORK_DIR SECONDS        (build, then every target)
#
# TARGET: safetensors, protocol, model_config or http (tests/fuzz/fuzz_TARGET.cc).
# The seeds (SOURCE_DIR/tests/fuzz/corpus/TARGET) are only read; what libFuzzer
# finds goes to WORK_DIR/corpus/TARGET (kept between runs), a crashing input to
# WORK_DIR/artifacts/TARGET/, the log to WORK_DIR/TARGET.log. Any crash, leak,
# sanitizer report or timeout fails with the reproducer's path and the report.
# Environment: CLANGXX (default: clang++, else clang++-NN on PATH), JOBS (build
# jobs, default 2).
set -euo pipefail
mode=${1:-} source_dir=${2:-} work_dir=${3:-}
targets=(safetensors protocol model_config http)
usage() { sed -n '7,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ -n "$mode" ] && [ -n "$source_dir" ] && [ -n "$work_dir" ] || usage
source_dir=$(cd "$source_dir" && pwd)
mkdir -p "$work_dir"
work_dir=$(cd "$work_dir" && pwd)
build_dir=$work_dir/build

find_clang() {
  if [ -n "${CLANGXX:-}" ]; then echo "$CLANGXX"; return; fi
  command -v clang++ && return
  local c
  for c in $(compgen -c clang++- | sort -t- -k2 -n -r | uniq); do
    [[ $c =~ ^clang\+\+-[0-9]+$ ]] && command -v "$c" && return
  done
  return 1
}

build() {
  local cxx
  if ! cxx=$(find_clang); then
    echo "run_libfuzzer.sh: clang++ not found: the libFuzzer targets need clang with its libFuzzer runtime" >&2
    echo "  (Debian: apt-get install clang libclang-rt-dev llvm; ./run.sh installs them), or set CLANGXX" >&2
    exit 1
  fi
  local probe=$work_dir/probe
  mkdir -p "$probe"
  printf '%s\n' '#include <cstdint>' '#include <cstddef>' \
    'extern "C" int LLVMFuzzerTestOneInput(const uint8_t*, size_t) { return 0; }' > "$probe/probe.cc"
  if ! "$cxx" -fsanitize=fuzzer,address,undefined "$probe/probe.cc" -o "$probe/probe" > "$probe/log" 2>&1; then
    cat "$probe/log" >&2
    echo "run_libfuzzer.sh: $cxx cannot link a libFuzzer target: its libFuzzer runtime is missing" >&2
    echo "  (Debian: apt-get install libclang-rt-dev; ./run.sh installs it)" >&2
    exit 1
  fi
  local generator=()
  command -v ninja > /dev/null && generator=(-G Ninja)
  if [ ! -f "$build_dir/build.ninja" ] && [ ! -f "$build_dir/Makefile" ]; then
    mkdir -p "$build_dir"
    cmake -S "$source_dir" -B "$build_dir" "${generator[@]}" -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -gline-tables-only" -DMESHRT_FUZZ=ON -DMESHRT_SANITIZE=address,undefined \
      -DBUILD_SHARED_LIBS=OFF -DMESHRT_ENABLE_CUDA=OFF -DMESHRT_BUILD_APPS=OFF \
      "-DMESHRT_FUZZ_UNINSTRUMENTED=kernels;comm;sharding" \
      > "$work_dir/configure.log" 2>&1 || { cat "$work_dir/configure.log"; exit 1; }
  fi
  echo "building the libFuzzer targets with $cxx (address and undefined-behaviour sanitizers) in $build_dir"
  local start=$SECONDS
  cmake --build "$build_dir" -j "${JOBS:-2}" --target "${targets[@]/#/fuzz_}" > "$work_dir/build.log" 2>&1 ||
    { tail -50 "$work_dir/build.log"; exit 1; }
  echo "libfuzzer targets built in $((SECONDS - start)) s"
}

run() {
  local target=$1 seconds=$2
  shift 2
  local binary=$build_dir/tests/fuzz_$target seeds=$source_dir/tests/fuzz/corpus/$target
  [ -x "$binary" ] || { echo "run_libfuzzer.sh: $binary is not built (run_libfuzzer.sh build first)" >&2; exit 1; }
  [ -d "$seeds" ] || { echo "run_libfuzzer.sh: no seed corpus $seeds" >&2; exit 1; }
  local corpus=$work_dir/corpus/$target artifacts=$work_dir/artifacts/$target log=$work_dir/$target.log
  rm -rf "$artifacts"
  mkdir -p "$corpus" "$artifacts"
  local flags=(-max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 -max_len=4096 -print_final_stats=1
               -artifact_prefix="$artifacts/")
  [ -f "$source_dir/tests/fuzz/$target.dict" ] && flags+=(-dict="$source_dir/tests/fuzz/$target.dict")
  local symbolizer
  symbolizer=$(command -v llvm-symbolizer || ls /usr/lib/llvm-*/bin/llvm-symbolizer 2> /dev/null | tail -1 || true)
  echo "fuzzing $target for $seconds s: $binary ${flags[*]} $* $corpus $seeds"
  local rc=0
  (cd "$work_dir" &&
    env ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:symbolize=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
      ${symbolizer:+ASAN_SYMBOLIZER_PATH=$symbolizer} "$binary" "${flags[@]}" "$@" "$corpus" "$seeds") > "$log" 2>&1 ||
    rc=$?
  local found
  found=$(ls "$artifacts" 2> /dev/null | head -1)
  if [ "$rc" -ne 0 ] || [ -n "$found" ]; then
    echo "libfuzzer $target: FAILED (exit status $rc)"
    [ -n "$found" ] && echo "reproducer: $artifacts/$found  (replay: $binary $artifacts/$found)"
    local first
    first=$(grep -n -m1 -E "ERROR: |runtime error:|deadly signal|^fuzz_[a-z_]+: |==[0-9]+==" "$log" | cut -d: -f1 || true)
    echo "---- the report (all of it in $log) ----"
    if [ -n "$first" ]; then
      sed -n "$((first > 5 ? first - 5 : 1)),$((first + 80))p" "$log"
    else
      tail -40 "$log"
    fi
    exit 1
  fi
  grep -E "^(stat::|Done |#[0-9]+[[:space:]]+DONE)" "$log" | sed 's/^/  /' || true
  echo "  corpus: $(ls "$corpus" | wc -l) new inputs in $corpus (seeds: $(ls "$seeds" | wc -l))"
  echo "libfuzzer $target: no crash"
}

case "$mode" in
  build) build ;;
  run)
    [ $# -ge 5 ] || usage
    run "${@:4}"
    ;;
  all)
    [ $# -ge 4 ] || usage
    build
    for t in "${targets[@]}"; do run "$t" "$4"; done
    ;;
  *) usage ;;
esac

#!/usr/bin/env bash
# Builds the fuzz targets in a nested build with MESHRT_SANITIZE=address,undefined
# (every meshrt library they use compiled with the sanitizers; no CUDA, no apps)
# and runs each for a bounded time.
#
#   run_sanitized_fuzz.sh SOURCE_DIR WORK_DIR CXX_COMPILER
set -euo pipefail
source_dir=$1 build_dir=$2 cxx=$3
mkdir -p "$build_dir"
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
if [ ! -f "$build_dir/CMakeCache.txt" ]; then
  cmake -S "$source_dir" -B "$build_dir" "${generator[@]}" -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_BUILD_TYPE= \
    "-DCMAKE_CXX_FLAGS=-O1 -g1" -DMESHRT_SANITIZE=address,undefined -DMESHRT_ENABLE_CUDA=OFF -DMESHRT_BUILD_APPS=OFF \
    > "$build_dir/configure.log" 2>&1 || { cat "$build_dir/configure.log"; exit 1; }
fi
echo "building the fuzz targets with address and undefined-behaviour sanitizers in $build_dir"
cmake --build "$build_dir" -j 2 --target fuzz_safetensors fuzz_protocol > "$build_dir/build.log" 2>&1 ||
  { tail -50 "$build_dir/build.log"; exit 1; }
"$build_dir/tests/fuzz_safetensors" 10 1
"$build_dir/tests/fuzz_protocol" 10 1
echo "sanitized fuzzing: no crash"

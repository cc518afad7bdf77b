#!/usr/bin/env bash
# Installs meshrt into a temporary prefix, then configures, builds and runs
# tests/install as a separate project with find_package(meshrt).
#
#   run_install_test.sh BUILD_DIR
#       installs the build in BUILD_DIR (the shared libraries of the main build)
#   run_install_test.sh --static SOURCE_DIR WORK_DIR [CMAKE_ARGS...]
#       first configures and builds the libraries of SOURCE_DIR in WORK_DIR with
#       BUILD_SHARED_LIBS=OFF (no tests, no apps), then installs that
#
# The consumer links meshrt::serving (on top of every other library), so the
# link interface of each installed library is resolved and linked. With BUILD_DIR
# it also builds examples/plugin (a servable library) against the installed
# package, which the consumer loads and runs, and compiles every installed
# header on its own, so a header that needs one that is not installed fails here; the static package installs the same headers
# (the same files with the same usage requirements), so --static does not compile
# them a second time.
set -euo pipefail
source_dir=$(cd "$(dirname "$0")" && pwd)
static=0
if [ "${1:-}" = "--static" ]; then
  static=1
  meshrt_source=$2 build_dir=$3
  shift 3
  mkdir -p "$build_dir"
  generator=()
  command -v ninja >/dev/null && generator=(-G Ninja)
  echo "configuring a static build of meshrt in $build_dir"
  cmake -S "$meshrt_source" -B "$build_dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DMESHRT_BUILD_TESTS=OFF -DMESHRT_BUILD_APPS=OFF "$@" > "$build_dir/configure.log" 2>&1 ||
    { cat "$build_dir/configure.log"; exit 1; }
  echo "building it"
  cmake --build "$build_dir" -j 2 > "$build_dir/build.log" 2>&1 || { tail -50 "$build_dir/build.log"; exit 1; }
else
  build_dir=$1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cmake --install "$build_dir" --prefix "$work/prefix" > "$work/install.log"
test -f "$work/prefix/include/meshrt/device/tensor.h"
if [ "$static" = 1 ]; then
  ls "$work/prefix"/lib*/libmeshrt_device.a > /dev/null
else
  ls "$work/prefix"/lib*/libmeshrt_device.so > /dev/null
  test -x "$work/prefix/bin/meshrt-bench-collectives"
fi
consumer_args=()
if [ "$static" = 0 ]; then
  # One translation unit per installed header, each including only that header.
  headers=()
  while IFS= read -r h; do headers+=("${h#"$work/prefix/include/meshrt/"}"); done \
    < <(find "$work/prefix/include/meshrt" -name '*.h' ! -name 'cuda_check.h' | sort)
  mkdir -p "$work/headers"
  for h in "${headers[@]}"; do
    printf '#include "%s"\n' "$h" > "$work/headers/$(echo "$h" | tr '/.' '__').cc"
  done
  echo "${#headers[@]} installed headers"
  consumer_args=(-DHEADER_SOURCES_DIR="$work/headers")
fi
cmake -S "$source_dir" -B "$work/build" -DCMAKE_PREFIX_PATH="$work/prefix" "${consumer_args[@]}" \
  > "$work/configure.log" 2>&1 || { cat "$work/configure.log"; exit 1; }
cmake --build "$work/build" -j 2 > "$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
if [ "$static" = 1 ]; then
  "$work/build/consumer"
else
  # A servable library built as docs/USER_GUIDE.md says (examples/plugin/CMakeLists.txt),
  # loaded and run by the consumer through the installed meshrt::serving.
  cmake -S "$source_dir/../../examples/plugin" -B "$work/plugin" -DCMAKE_PREFIX_PATH="$work/prefix" \
    > "$work/plugin-configure.log" 2>&1 || { cat "$work/plugin-configure.log"; exit 1; }
  cmake --build "$work/plugin" -j 2 > "$work/plugin-build.log" 2>&1 || { cat "$work/plugin-build.log"; exit 1; }
  "$work/build/consumer" "$work/plugin/libscale_servable.so"
fi

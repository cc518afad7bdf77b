#!/usr/bin/env bash
# Installs meshrt from build dir $1 into a temporary prefix, then configures,
# builds and runs tests/install as a separate project with find_package(meshrt).
set -euo pipefail
build_dir=$1
source_dir=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cmake --install "$build_dir" --prefix "$work/prefix" > "$work/install.log"
test -f "$work/prefix/include/meshrt/device/tensor.h"
test -x "$work/prefix/bin/meshrt-bench-collectives"
cmake -S "$source_dir" -B "$work/build" -DCMAKE_PREFIX_PATH="$work/prefix" > "$work/configure.log"
cmake --build "$work/build" > "$work/build.log"
"$work/build/consumer"

#!/usr/bin/env bash
# Builds meshrt here (with CUDA) and packs what a GPU node without a package
# registry needs to run it into one archive (under 64 MiB):
#
#   bin/, lib/            meshrt's apps and libraries (cmake --install)
#   tests/                the test executables that tools/gpu-check.sh runs
#   deps/                 the shared libraries they need that a bare node may lack
#                         (OpenBLAS, hwloc, libevent, PMIx, ...), copied from here
#   ompi/                 Debian's OpenMPI relocated: mpirun (orterun), orted, its
#                         components and help files; tools/gpu-check.sh points
#                         OPAL_PREFIX and the OPAL_*/PMIX_* directories at it
#   gpu-check.sh, examples/, BUILD_INFO (commit, nvcc, CUDA runtime, cuBLAS and
#                         NCCL versions meshrt was built with)
#
# Not carried: the CUDA runtime, cuBLAS and NCCL (the node's own, found by
# gpu-check.sh in its CUDA installation or python3's site-packages), glibc, and
# the C++ runtime (libstdc++, libgcc_s: every Linux image has a newer one).
#
#   tools/gpu-bundle.sh [ARCHIVE]      (default dist/meshrt-gpu.tar.xz)
#   MESHRT_BUILD_DIR=build-gpu tools/gpu-bundle.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
build_dir=${MESHRT_BUILD_DIR:-build}
archive=${1:-dist/meshrt-gpu.tar.xz}
say() { echo "gpu-bundle: $*" >&2; }

./run.sh build
grep -q "MESHRT_WITH_CUDA=1" "$build_dir/build.ninja" ||
  { say "$build_dir was configured without CUDA: a GPU bundle needs nvcc at configure time"; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
stage=$work/meshrt-gpu
mkdir -p "$stage/tests" "$stage/deps" "$(dirname "$archive")"
cmake --install "$build_dir" --prefix "$stage" > "$work/install.log"
rm -rf "$stage/include" "$stage/lib/cmake"  # a consumer's files, not the node's
for t in device_test kernels_test comm_test channel_test sharding_test sharding_ops_test layers_test serving_engine_test harness_test \
         transformer_test; do
  cp "$build_dir/tests/$t" "$stage/tests/"
done
cp tools/gpu-check.sh "$stage/"
cp tests/hf_reference.py "$stage/tests/"  # the transformer test's float64 reference (python3 with numpy)
cp -r examples "$stage/examples"

# OpenMPI as Debian lays it out, under ompi/: the launcher and daemon, the
# libraries' components (without the transports for fabrics a single node does
# not use, which would need libraries of their own: UCX, OFI, PSM, verbs, and
# OpenSHMEM's), help texts, PMIx's components and help texts.
ompi=$stage/ompi
multiarch=$(gcc -print-multiarch)
libdir=/usr/lib/$multiarch
mkdir -p "$ompi/bin" "$ompi/lib/openmpi" "$ompi/share" "$ompi/pmix/lib" "$ompi/pmix/share" "$ompi/etc"
cp "$(readlink -f /usr/bin/orterun)" "$ompi/bin/orterun"
cp "$(readlink -f /usr/bin/orted)" "$ompi/bin/orted"
ln -s orterun "$ompi/bin/mpirun"
ln -s orterun "$ompi/bin/mpiexec"
mkdir -p "$ompi/lib/openmpi/openmpi3"
for component in "$libdir"/openmpi/lib/openmpi3/*.so; do
  case $(basename "$component") in
    *ucx*|*ofi*|*openib*|*psm*|mca_atomic_*|mca_memheap_*|mca_scoll_*|mca_spml_*|mca_sshmem_*|mca_reachable_netlink*) ;;
    *) cp "$component" "$ompi/lib/openmpi/openmpi3/" ;;
  esac
done
cp -r /usr/share/openmpi "$ompi/share/openmpi"
cp /etc/openmpi/openmpi-mca-params.conf "$ompi/etc/" 2>/dev/null || touch "$ompi/etc/openmpi-mca-params.conf"
cp -r "$libdir/pmix2/lib/pmix" "$ompi/pmix/lib/pmix"
cp -r "$libdir/pmix2/share/pmix" "$ompi/pmix/share/pmix"

# Every shared library the ELF files need, but those the node brings.
is_provided() {
  case $1 in
    linux-vdso.so*|ld-linux*|libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|libresolv.so*|libutil.so*) return 0 ;;
    libstdc++.so*|libgcc_s.so*) return 0 ;;
    libcuda.so*|libcudart.so*|libcublas.so*|libcublasLt.so*|libnccl.so*|libnvidia-*) return 0 ;;
    libmeshrt_*) return 0 ;;  # lib/
  esac
  return 1
}
elves=$(find "$stage/bin" "$stage/lib" "$stage/tests" "$ompi" -type f \( -perm -u+x -o -name '*.so*' \) | sort)
for f in $elves; do
  file -b "$f" | grep -q ELF || continue
  LD_LIBRARY_PATH="$stage/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ldd "$f" 2>/dev/null |
    awk '/=>/ && $3 ~ /^\// {print $1, $3}' | while read -r name path; do
      is_provided "$name" && continue
      [ -e "$stage/deps/$name" ] || cp -L "$path" "$stage/deps/$name"
    done
done
# Libraries they pull in, once more (dependencies of the copied dependencies).
for f in "$stage"/deps/*; do
  ldd "$f" 2>/dev/null | awk '/=>/ && $3 ~ /^\// {print $1, $3}' | while read -r name path; do
    is_provided "$name" && continue
    [ -e "$stage/deps/$name" ] || cp -L "$path" "$stage/deps/$name"
  done
done

{
  echo "commit:   $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with uncommitted changes)')"
  echo "built:    $(date -u '+%Y-%m-%d %H:%M UTC') on $(hostname), $(. /etc/os-release && echo "$PRETTY_NAME")"
  echo "nvcc:     $(/usr/local/cuda/bin/nvcc --version | tail -1)"
  cuda_h=$(dirname "$(readlink -f /usr/local/cuda/bin/nvcc)")/../include
  echo "cudart:   $(awk '/#define CUDART_VERSION/ {print $3}' "$cuda_h/cuda_runtime_api.h")"
  echo "cublas:   $(awk '/#define CUBLAS_VER_(MAJOR|MINOR|PATCH) / {printf "%s.", $3}' "$cuda_h/cublas_api.h" | sed 's/\.$//')"
  nccl_h=$(grep -h "NCCL_INCLUDE_DIR:PATH=" "$build_dir/CMakeCache.txt" | cut -d= -f2)
  echo "nccl:     $(awk '/#define NCCL_(MAJOR|MINOR|PATCH) / {printf "%s.", $3}' "$nccl_h/nccl.h" | sed 's/\.$//')"
  echo "archs:    $(sed -n 's/.*archs \([^,]*\),.*/\1/p' "$build_dir/configure.log" | head -1)"
  echo "openmpi:  $(dpkg-query -W -f='${Version}' openmpi-bin)"
  echo "openblas: $(dpkg-query -W -f='${Version}' libopenblas0-pthread)"
} > "$stage/BUILD_INFO"

tar -C "$work" -cJf "$archive" meshrt-gpu
bytes=$(stat -c %s "$archive")
say "wrote $archive: $((bytes / 1048576)) MiB ($(ls "$stage/deps" | wc -l) carried libraries)"
if [ "$bytes" -ge $((64 << 20)) ]; then
  say "the archive is over 64 MiB: too large for the device tool"
  exit 1
fi

#!/usr/bin/env bash
# Proves that the archive of tools/gpu-bundle.sh is self-contained, by hand
# (root, a few minutes, Debian's package registry reachable): unpacks it in a
# minimal Debian root made with debootstrap (no -dev packages, no OpenMPI, no
# OpenBLAS), with this machine's CUDA libraries bind-mounted where a GPU node has
# its own, checks that every binary's ldd resolves and runs the cpu part of
# tools/gpu-check.sh there.
#
#   tools/gpu-bundle-selftest.sh [ARCHIVE]     (default dist/meshrt-gpu.tar.xz)
set -euo pipefail
cd "$(dirname "$0")/.."
archive=$(readlink -f "${1:-dist/meshrt-gpu.tar.xz}")
say() { echo "gpu-bundle-selftest: $*" >&2; }
[ -f "$archive" ] || { say "no $archive: run tools/gpu-bundle.sh first"; exit 1; }
[ "$(id -u)" -eq 0 ] || { say "needs root (debootstrap, chroot, mounts)"; exit 1; }
command -v debootstrap > /dev/null ||
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap > /dev/null

cache=${MESHRT_SELFTEST_CACHE:-/var/tmp/meshrt-minbase.tar}
rootfs=$(mktemp -d /var/tmp/meshrt-selftest.XXXXXX)
mounts=()
cleanup() {
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -l "${mounts[$i]}" 2>/dev/null || true; done
  rm -rf "$rootfs"
}
trap cleanup EXIT
if [ -f "$cache" ]; then
  tar -C "$rootfs" -xf "$cache"
else
  say "debootstrap --variant=minbase bookworm (cached in $cache for the next run)"
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  debootstrap --variant=minbase bookworm "$rootfs" "${mirror:-http://deb.debian.org/debian}" > "$rootfs.log" 2>&1 ||
    { tail -20 "$rootfs.log"; exit 1; }
  tar -C "$rootfs" -cf "$cache" .
fi
for pkg in libopenmpi3 openmpi-bin libopenblas0-pthread libhwloc15 libevent-core-2.1-7 libpmix2; do
  if chroot "$rootfs" dpkg-query -W "$pkg" > /dev/null 2>&1; then say "the minimal root has $pkg: not a fair test"; exit 1; fi
done

mkdir -p "$rootfs/opt" "$rootfs/usr/local/cuda/lib" "$rootfs/proc" "$rootfs/dev/shm"
tar -C "$rootfs/opt" -xJf "$archive"
cuda_lib=$(readlink -f /usr/local/cuda/lib)
mount --bind "$cuda_lib" "$rootfs/usr/local/cuda/lib" && mounts+=("$rootfs/usr/local/cuda/lib")
mount -o remount,bind,ro "$rootfs/usr/local/cuda/lib" 2>/dev/null || true
mount -t proc proc "$rootfs/proc" && mounts+=("$rootfs/proc")
mount -t tmpfs tmpfs "$rootfs/dev/shm" && mounts+=("$rootfs/dev/shm")
[ -e "$rootfs/dev/null" ] || mknod -m 666 "$rootfs/dev/null" c 1 3

say "running gpu-check.sh --cpu-only in the minimal root"
code=0
CUDA_HOME=/usr/local/cuda chroot "$rootfs" /opt/meshrt-gpu/gpu-check.sh --cpu-only /opt/results || code=$?
cp -r "$rootfs/opt/results" "${MESHRT_SELFTEST_RESULTS:-/tmp/meshrt-selftest-results}" 2>/dev/null || true
if [ $code -eq 0 ]; then
  say "the archive runs in a minimal root: self-contained (results in ${MESHRT_SELFTEST_RESULTS:-/tmp/meshrt-selftest-results})"
else
  say "the check failed in the minimal root (exit $code)"
fi
exit $code

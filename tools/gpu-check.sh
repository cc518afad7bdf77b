#!/usr/bin/env bash
# meshrt's GPU check, run on a GPU node from the archive tools/gpu-bundle.sh
# made (it sits at the archive's top), in one command of a few minutes:
#
#   tar xJf meshrt-gpu.tar.xz && meshrt-gpu/gpu-check.sh [RESULTS_DIR]
#   meshrt-gpu/gpu-check.sh --cpu-only [RESULTS_DIR]   (what runs without a GPU)
#
# 1. Finds the CUDA runtime, cuBLAS and NCCL on the node (its CUDA installation,
#    ldconfig's cache, or python3's site-packages nvidia/*/lib) and prints their
#    versions beside those meshrt was built with (BUILD_INFO), the device and the driver.
# 2. Runs every CUDA test at one rank with MESHRT_REQUIRE_CUDA=1 (a CUDA test
#    that cannot run fails there), and the cpu tests of the same binaries (the
#    transformer test's reference needs python3 with numpy on the node).
# 3. compute-sanitizer: memcheck on the kernel and device tests, racecheck and
#    synccheck on the reductions, top-k and attention. When the sanitizer
#    refuses the device the line says "not run", never "pass".
# 4. Benchmarks, one results file each with the command that made it: GEMM
#    against raw cuBLAS (bf16 and f16 at 4096^3 and 8192^3, tf32 and f32 at
#    4096^3), kernel bandwidth against a device copy, collectives at one rank.
#
# Results (RESULTS_DIR, default $OUT when set, else ./gpu-results): check.log,
# gpu-gemm-*.txt, gpu-kernels.txt, gpu-collectives-np1.txt. The exit code is
# non-zero when a test or a sanitizer run failed.
set -uo pipefail
cpu_only=0
if [ "${1:-}" = "--cpu-only" ]; then
  cpu_only=1
  shift
fi
here=$(cd "$(dirname "$0")" && pwd)
results=${1:-${OUT:-$PWD/gpu-results}}
mkdir -p "$results"
log=$results/check.log
: > "$log"
say() { echo "$*" | tee -a "$log"; }
failures=0
fail() {
  say "FAIL: $*"
  failures=$((failures + 1))
}
start_time=$(date +%s)

# ---- libraries: meshrt's, the carried ones, OpenMPI relocated, then CUDA's ----
cuda_dirs=()
find_cuda_library() {  # name pattern -> first directory holding it
  local pattern=$1 d
  for d in "${CUDA_HOME:-/usr/local/cuda}/lib64" "${CUDA_HOME:-/usr/local/cuda}/lib" \
           "${CUDA_HOME:-/usr/local/cuda}/targets/x86_64-linux/lib" /usr/lib/x86_64-linux-gnu /usr/local/nvidia/lib64; do
    compgen -G "$d/$pattern" > /dev/null && { echo "$d"; return 0; }
  done
  d=$(ldconfig -p 2>/dev/null | awk -v p="$pattern" '$1 ~ p {print $NF; exit}')
  [ -n "$d" ] && { dirname "$d"; return 0; }
  local site
  for site in $(python3 -c 'import site, sys; print(" ".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null); do
    for d in "$site"/nvidia/*/lib; do
      compgen -G "$d/$pattern" > /dev/null && { echo "$d"; return 0; }
    done
  done
  return 1
}
for pattern in 'libcudart.so.*' 'libcublas.so.*' 'libcublasLt.so.*' 'libnccl.so.*'; do
  if dir=$(find_cuda_library "$pattern"); then
    [[ " ${cuda_dirs[*]} " == *" $dir "* ]] || cuda_dirs+=("$dir")
  elif [ "$cpu_only" = 0 ]; then
    fail "no $pattern on this node (CUDA_HOME, ldconfig, python3's nvidia packages)"
  fi
done
cuda_path=$(printf '%s:' "${cuda_dirs[@]}" | sed 's/:$//')
export LD_LIBRARY_PATH="$here/lib:$here/deps${cuda_path:+:$cuda_path}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export OPAL_PREFIX=$here/ompi OPAL_BINDIR=$here/ompi/bin OPAL_LIBDIR=$here/deps OPAL_PKGLIBDIR=$here/ompi/lib/openmpi/openmpi3 \
       OPAL_DATADIR=$here/ompi/share OPAL_PKGDATADIR=$here/ompi/share/openmpi OPAL_SYSCONFDIR=$here/ompi/etc \
       PMIX_PREFIX=$here/ompi/pmix PMIX_PKGLIBDIR=$here/ompi/pmix/lib/pmix PMIX_PKGDATADIR=$here/ompi/pmix/share/pmix
export PATH="$here/ompi/bin:$here/bin:$PATH"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_MCA_btl=self,vader OMPI_MCA_pml=ob1 OMPI_MCA_btl_vader_single_copy_mechanism=none
# One node: no remote launch, but OpenMPI's rsh launcher refuses to load (and
# with it every launch, a program's own MPI_Init too) where there is no ssh.
command -v ssh > /dev/null || export OMPI_MCA_plm_rsh_agent=false
export MESHRT_COMM_TIMEOUT=120 OPENBLAS_NUM_THREADS=1

say "== meshrt GPU check: $(date -u '+%Y-%m-%d %H:%M UTC') on $(hostname)"
sed 's/^/built with /' "$here/BUILD_INFO" | tee -a "$log"
if command -v nvidia-smi > /dev/null; then
  say "device: $(nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader 2>&1 | head -1)"
  say "driver: CUDA $(nvidia-smi | sed -n 's/.*CUDA Version: \([0-9.]*\).*/\1/p' | head -1)"
else
  say "device: no nvidia-smi here"
fi
for d in "${cuda_dirs[@]}"; do
  say "found:  $(cd "$d" && ls libcudart.so.* libcublas.so.* libcublasLt.so.* libnccl.so.* 2>/dev/null | sort -u | tr '\n' ' ') in $d"
done
missing=$(for f in "$here"/bin/* "$here"/tests/* "$here"/lib/*.so*; do ldd "$f" 2>/dev/null | grep "not found"; done | sort -u)
if [ -n "$missing" ]; then
  fail "unresolved libraries: $(echo "$missing" | awk '{print $1}' | tr '\n' ' ')"
else
  say "ldd: every binary and library of the archive resolves"
fi

# ---- tests ----
run_test() {  # name, command...: its output in the log, PASS/FAIL/SKIP on one line
  local name=$1 out code
  shift
  out=$("$@" 2>&1)
  code=$?
  echo "$out" >> "$log"
  if [ $code -eq 0 ]; then
    say "PASS: $name"
  elif [ $code -eq 77 ]; then
    if [ "$cpu_only" = 1 ]; then say "SKIP: $name (no GPU)"; else fail "$name was skipped (exit 77) on a GPU node"; fi
  else
    fail "$name (exit $code): $(echo "$out" | grep -E 'Failure|FAILED|error' | head -3 | tr '\n' ' ')"
  fi
}
one=(mpirun -np 1)
if [ "$cpu_only" = 0 ]; then
  export MESHRT_REQUIRE_CUDA=1
  run_test "device_test (CUDA)" "$here/tests/device_test" --gtest_filter='Cuda*'
  run_test "kernels_test (CUDA)" "$here/tests/kernels_test" --gtest_filter='Cuda*'
  run_test "comm_test (CUDA, 1 rank)" "${one[@]}" "$here/tests/comm_test" --gtest_filter='*/cuda'
  run_test "sharding_test (CUDA mesh, 1 rank)" env MESHRT_DEVICE=cuda "${one[@]}" "$here/tests/sharding_test" --gtest_filter='Meshes/*'
  run_test "sharding_ops_test (CUDA mesh, 1 rank)" env MESHRT_DEVICE=cuda "${one[@]}" "$here/tests/sharding_ops_test" --gtest_filter='Meshes/*'
  # GPT-2 and Llama (examples/hf) against tests/hf_reference.py: needs python3 with numpy on the node.
  run_test "transformer_test (CUDA, 1 rank)" env MESHRT_SOURCE_DIR="$here" "${one[@]}" "$here/tests/transformer_test" --gtest_filter='Cuda*'
  unset MESHRT_REQUIRE_CUDA
fi
export MESHRT_DEVICE=cpu
run_test "device_test (cpu)" "$here/tests/device_test" --gtest_filter='-Cuda*'
run_test "kernels_test (cpu)" "$here/tests/kernels_test" --gtest_filter='-Cuda*'
run_test "comm_test (cpu, 2 ranks)" mpirun -np 2 "$here/tests/comm_test" --gtest_filter='-*/cuda'
run_test "sharding_test (cpu, 2 ranks)" mpirun -np 2 "$here/tests/sharding_test"
run_test "sharding_ops_test (cpu, 2 ranks)" mpirun -np 2 "$here/tests/sharding_ops_test"
run_test "layers_test (cpu, 2 ranks)" mpirun -np 2 "$here/tests/layers_test"
run_test "transformer_test (cpu, 2 ranks)" env MESHRT_SOURCE_DIR="$here" mpirun -np 2 "$here/tests/transformer_test" --gtest_filter='-Cuda*'
unset MESHRT_DEVICE

# ---- compute-sanitizer ----
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
sanitize() {  # tool, name, command...
  local tool=$1 name=$2 out code
  shift 2
  if [ -z "$sanitizer" ]; then
    say "not run: compute-sanitizer $tool on $name (no compute-sanitizer here)"
    return
  fi
  out=$(MESHRT_REQUIRE_CUDA=1 "$sanitizer" --tool "$tool" --error-exitcode 99 "$@" 2>&1)
  code=$?
  echo "$out" >> "$log"
  if echo "$out" | grep -qiE "device not supported|not supported on this|error 999|unable to initialize"; then
    say "not run: compute-sanitizer $tool on $name (the sanitizer refused the device)"
  elif [ $code -eq 0 ] && echo "$out" | grep -q "ERROR SUMMARY: 0 errors"; then
    say "PASS: compute-sanitizer $tool on $name"
  else
    fail "compute-sanitizer $tool on $name (exit $code): $(echo "$out" | grep -E 'ERROR SUMMARY|Invalid|race|Failure' | head -3 | tr '\n' ' ')"
  fi
}
if [ "$cpu_only" = 0 ]; then
  # The >2^31-element and >2 GiB-pitch tests are left out under the sanitizers (minutes each there).
  sanitize memcheck "kernels_test" "$here/tests/kernels_test" --gtest_filter='Cuda*:-*TwoToThe31*'
  sanitize memcheck "device_test" "$here/tests/device_test" --gtest_filter='Cuda*:-*OverTwoGiB*'
  export MESHRT_OP_CASES=sum,softmax,layernorm,rmsnorm
  sanitize racecheck "the reductions" "$here/tests/kernels_test" --gtest_filter='CudaOps.EveryCase*'
  sanitize synccheck "the reductions" "$here/tests/kernels_test" --gtest_filter='CudaOps.EveryCase*'
  unset MESHRT_OP_CASES
  # top-k (a block per row, shared memory) and the axis reductions
  sanitize racecheck "top-k and the axis reductions" "$here/tests/kernels_test" --gtest_filter='CudaTopK.*:CudaAxisReduction.*'
  sanitize synccheck "top-k and the axis reductions" "$here/tests/kernels_test" --gtest_filter='CudaTopK.*:CudaAxisReduction.*'
  # attention (a block per query row and head: the query and a chunk of scores in shared memory)
  sanitize racecheck "attention" "$here/tests/kernels_test" --gtest_filter='CudaAttention.*'
  sanitize synccheck "attention" "$here/tests/kernels_test" --gtest_filter='CudaAttention.*'
fi

# ---- benchmarks ----
bench() {  # file, command...
  local file=$results/$1
  shift
  {
    echo "# date:    $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "# device:  $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)"
    echo "# cuda:    $(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: \([0-9.]*\).*/\1/p' | head -1) (driver); built with $(grep nvcc "$here/BUILD_INFO" | sed 's/nvcc: *//')"
    echo "# meshrt:  $(grep commit "$here/BUILD_INFO" | sed 's/commit: *//')"
    echo "# command: $*"
    echo "#"
    "$@" 2>&1
  } > "$file"
  local code=$?
  [ $code -eq 0 ] || fail "benchmark $* (exit $code)"
  say "wrote $file"
}
if [ "$cpu_only" = 0 ]; then
  device=(--device cuda:0)
  bench gpu-gemm-bf16.txt meshrt-bench-gemm "${device[@]}" --dtype bf16 --sizes 4096,8192 --iters 10 --warmup 3
  bench gpu-gemm-f16.txt meshrt-bench-gemm "${device[@]}" --dtype f16 --sizes 4096,8192 --iters 10 --warmup 3
  bench gpu-gemm-tf32.txt meshrt-bench-gemm "${device[@]}" --dtype tf32 --sizes 4096 --iters 10 --warmup 3
  bench gpu-gemm-f32.txt meshrt-bench-gemm "${device[@]}" --dtype f32 --sizes 4096 --iters 10 --warmup 3
  bench gpu-kernels.txt meshrt-bench-kernels "${device[@]}" --elements 64M --dtype f32,bf16 --iters 50
  bench gpu-collectives-np1.txt mpirun -np 1 meshrt-bench-collectives "${device[@]}" -b 8 -e 256M -f 4 -C all
else
  bench cpu-kernels.txt meshrt-bench-kernels --device cpu --elements 1M --dtype f32 --iters 5
  bench cpu-collectives-np2.txt mpirun -np 2 meshrt-bench-collectives --device cpu -b 1K -e 1M -f 8
fi

say "== $(( $(date +%s) - start_time )) s, $failures failure(s)"
[ "$failures" -eq 0 ]

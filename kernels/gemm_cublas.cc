// CUDA GEMM with cuBLAS: one cublasGemmStridedBatchedEx call for every dtype and
// batch count. Row-major C = op(A) op(B) is computed as the column-major
// C^T = op(B)^T op(A)^T, so no data is transposed.
#include <cuda_runtime.h>

#include <limits>
#include <map>

#include "device/cuda_check.h"
#include "kernels/backend.h"
#include "kernels/cublas_check.h"

namespace meshrt::kernels::cuda {

namespace {
// cuBLAS's recommended workspace on Hopper (sm_90): 32 MiB (4 MiB sufficed before).
constexpr size_t kWorkspaceBytes = size_t{32} << 20;

// One handle per device per thread (cublasSetStream on a shared handle would
// race), and a workspace of its own for each stream it runs on:
// cublasSetStream resets a handle's workspace to cuBLAS's default pool, so two
// streams of one thread would share it while their GEMMs overlap. The handle
// keeps the stream and workspace of its last call. Destroyed when the thread
// ends (cudaFree waits for the device).
struct Handles {
  struct Handle {
    cublasHandle_t handle = nullptr;
    void* stream = nullptr;  // of the last call
    bool bound = false;
  };
  std::map<int, Handle> by_device;
  std::map<std::pair<int, void*>, void*> workspaces;  // (device, stream) -> memory
  ~Handles() {
    for (auto& [device, h] : by_device) {
      cudaSetDevice(device);
      cublasDestroy(h.handle);
    }
    for (auto& [key, memory] : workspaces) {
      cudaSetDevice(key.first);
      cudaFree(memory);
    }
  }
};

// The handle of device, bound to stream and to that stream's workspace.
cublasHandle_t handle_for(int device, void* stream) {
  thread_local Handles handles;
  Handles::Handle& h = handles.by_device[device];
  if (!h.handle) MESHRT_CUBLAS_CHECK(cublasCreate(&h.handle));
  if (h.bound && h.stream == stream) return h.handle;
  MESHRT_CUBLAS_CHECK(cublasSetStream(h.handle, static_cast<cudaStream_t>(stream)));
  void*& workspace = handles.workspaces[{device, stream}];
  if (!workspace) MESHRT_CUDA_CHECK(cudaMalloc(&workspace, kWorkspaceBytes));
  MESHRT_CUBLAS_CHECK(cublasSetWorkspace(h.handle, workspace, kWorkspaceBytes));
  h.stream = stream;
  h.bound = true;
  return h.handle;
}

int as_int(int64_t v, const char* what) {
  MESHRT_CHECK_SHAPE(v <= std::numeric_limits<int>::max(), "cuBLAS gemm: ", what, " = ", v,
                     " exceeds the 32-bit range cuBLAS accepts");
  return static_cast<int>(v);
}
}  // namespace

void gemm(const GemmArgs& g, int device, void* stream) {
  MESHRT_CUDA_CHECK(cudaSetDevice(device));
  cublasHandle_t handle = handle_for(device, stream);

  cudaDataType type = CUDA_R_32F;
  cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  float alpha_f = static_cast<float>(g.alpha), beta_f = static_cast<float>(g.beta);
  double alpha_d = g.alpha, beta_d = g.beta;
  const void* alpha = &alpha_f;
  const void* beta = &beta_f;
  switch (g.dtype) {
    case DType::kF32:
      type = CUDA_R_32F;
      compute = g.tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
      break;
    case DType::kF64:
      type = CUDA_R_64F;
      compute = CUBLAS_COMPUTE_64F;
      alpha = &alpha_d;
      beta = &beta_d;
      break;
    case DType::kF16: type = CUDA_R_16F; break;    // f32 accumulation
    case DType::kBF16: type = CUDA_R_16BF; break;  // f32 accumulation
    default: throw Error(ErrorKind::kInternal, "cuBLAS gemm reached with an unsupported dtype");
  }
  cublasOperation_t op_a = g.transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  cublasOperation_t op_b = g.transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  MESHRT_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
      handle, op_b, op_a, as_int(g.n, "n"), as_int(g.m, "m"), as_int(g.k, "k"), alpha, g.b, type,
      as_int(g.ldb, "ldb"), g.stride_b, g.a, type, as_int(g.lda, "lda"), g.stride_a, beta, g.c,
      type, as_int(g.ldc, "ldc"), g.stride_c, as_int(g.batch, "batch"), compute,
      CUBLAS_GEMM_DEFAULT));
}

}  // namespace meshrt::kernels::cuda

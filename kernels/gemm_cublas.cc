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
// One handle per device per thread: cublasSetStream on a shared handle would
// race. Destroyed when the thread ends (with its workspace).
struct Handles {
  std::map<int, cublasHandle_t> by_device;
  ~Handles() {
    for (auto& [device, handle] : by_device) {
      cudaSetDevice(device);
      cublasDestroy(handle);
    }
  }
};

cublasHandle_t handle_for(int device) {
  thread_local Handles handles;
  auto it = handles.by_device.find(device);
  if (it != handles.by_device.end()) return it->second;
  cublasHandle_t handle = nullptr;
  MESHRT_CUBLAS_CHECK(cublasCreate(&handle));
  handles.by_device.emplace(device, handle);
  return handle;
}

int as_int(int64_t v, const char* what) {
  MESHRT_CHECK_SHAPE(v <= std::numeric_limits<int>::max(), "cuBLAS gemm: ", what, " = ", v,
                     " exceeds the 32-bit range cuBLAS accepts");
  return static_cast<int>(v);
}
}  // namespace

void gemm(const GemmArgs& g, int device, void* stream) {
  MESHRT_CUDA_CHECK(cudaSetDevice(device));
  cublasHandle_t handle = handle_for(device);
  MESHRT_CUBLAS_CHECK(cublasSetStream(handle, static_cast<cudaStream_t>(stream)));

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

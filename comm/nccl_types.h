// Internal to meshrt (comm and apps, CUDA builds): how dtypes and reductions map
// to NCCL. bool travels as uint8 and reduces with max (or) / min (and).
#pragma once

#include <nccl.h>

#include "comm/communicator.h"

namespace meshrt::detail {
ncclDataType_t nccl_datatype(DType dtype);
ncclRedOp_t nccl_reduce_op(DType dtype, ReduceOp op);
}  // namespace meshrt::detail

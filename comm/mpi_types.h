// Internal to meshrt (comm and apps): how dtypes and reductions map to MPI.
// f16 and bf16 travel as 16-bit integers and reduce with meshrt's own MPI_Op
// (computed in float); bool travels as bytes and reduces with max (or) / min (and).
#pragma once

#include <mpi.h>

#include "comm/communicator.h"

namespace meshrt::detail {
MPI_Datatype mpi_datatype(DType dtype);
// Needs MPI initialised (creates the f16/bf16 operations on first use).
MPI_Op mpi_reduce_op(DType dtype, ReduceOp op);
}  // namespace meshrt::detail

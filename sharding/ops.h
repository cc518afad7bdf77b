// Sharded ops on DTensors. Each op states its layout rule; when operands do not
// fit the rule they are redistributed (with the least communication, see
// redistribute.cc) to layouts that do, and never gathered whole onto one rank.
// Every collective used is recorded in the current TraceScope.
#pragma once

#include "kernels/elementwise.h"
#include "kernels/gemm.h"
#include "sharding/dtensor.h"

namespace meshrt::sharding {

// c = a @ b, a: [m, k] or [batch, m, k], b: [k, n] or (when a is batched) [batch, k, n].
//
// Layout rule, in order of precedence ("a's layout wins"):
//   M  = the axes sharding a's output dimensions (batch and m) keep their place;
//   K  = the contracted dimension takes a's k axes, or b's when a's k is replicated
//        (axes already in M are dropped);
//   N  = b's n axes that are in neither M nor K;
//   a partial axis of one operand that the other operand also uses is reduced
//   first (b's when both are partial over it).
// a is redistributed to [M.., K] and b to [(batch), K, N]; each rank multiplies its
// blocks. The result is [M.., N], partial over K and the operands' remaining
// partial axes: a sharded contracted dimension gives local GEMMs and a partial
// sum, batch and output sharding need no communication at all.
DTensor matmul(const DTensor& a, const DTensor& b, const std::string& name = "",
               kernels::MathMode math = kernels::MathMode::kDefault);

// Elementwise ops, one per row of the table in kernels/elementwise_ops.h: the
// result keeps the layout of the (first) operand, except for the pending
// reductions the op does not commute with, which are reduced first (the row
// says which: neg and scale keep a pending sum, relu a pending max or min, gelu
// and silu none). A binary op keeps a's pending reductions that it commutes
// with for both operands, and b is redistributed to that layout (for add, a
// replicated b then counts once: at coordinate 0 of a pending sum's axis);
// otherwise both are reduced and b follows a's sharding.
DTensor unary(kernels::UnaryOp op, const DTensor& x, double alpha = 1.0);
DTensor binary(kernels::BinaryOp op, const DTensor& a, const DTensor& b);

#define MESHRT_DECLARE_UNARY(name, ...) DTensor name(const DTensor& x);
#define MESHRT_DECLARE_SCALAR_UNARY(name, ...) DTensor name(const DTensor& x, double alpha);
#define MESHRT_DECLARE_BINARY(name, ...) DTensor name(const DTensor& a, const DTensor& b);
MESHRT_UNARY_OPS(MESHRT_DECLARE_UNARY)
MESHRT_SCALAR_UNARY_OPS(MESHRT_DECLARE_SCALAR_UNARY)
MESHRT_BINARY_OPS(MESHRT_DECLARE_BINARY)
#undef MESHRT_DECLARE_UNARY
#undef MESHRT_DECLARE_SCALAR_UNARY
#undef MESHRT_DECLARE_BINARY

// x with the pending reductions whose ReduceOp is not in `keep` (PartialRule
// bits) reduced; no communication when there are none.
DTensor reduce_partials_except(const DTensor& x, unsigned keep);
// x [..., n] + bias [n]: bias takes x's layout of the last dimension and x's
// pending sums (so a partial sum x needs no reduction).
DTensor bias_add(const DTensor& x, const DTensor& bias);

// Sum over dimension dim. A sharded summed dimension needs no communication:
// each rank sums its block and the result is a pending sum over that
// dimension's axes.
DTensor sum(const DTensor& x, int dim);
// Softmax / norms over the last dimension: it must be whole on every rank, so a
// sharded last dimension is gathered (all_gather over its axes) and partial axes
// reduced; the other dimensions keep their sharding. gamma and beta: [n],
// replicated (redistributed if not).
DTensor softmax(const DTensor& x);
DTensor layernorm(const DTensor& x, const DTensor& gamma, const DTensor& beta, double eps = 1e-5);
DTensor rmsnorm(const DTensor& x, const DTensor& gamma, double eps = 1e-6);

}  // namespace meshrt::sharding

// Sharded ops on DTensors. Each op states its layout rule; when operands do not
// fit the rule they are redistributed (with the least communication, see
// redistribute.cc) to layouts that do, and never gathered whole onto one rank.
// Every collective used is recorded in the current TraceScope.
#pragma once

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

// Elementwise ops: the result keeps the layout of the (first) operand.
// Linear ops keep partial values partial; nonlinear ones reduce first.
DTensor neg(const DTensor& x);                  // linear
DTensor scale(const DTensor& x, double alpha);  // linear
DTensor relu(const DTensor& x);                 // nonlinear: reduces partial axes first
DTensor gelu(const DTensor& x);
DTensor silu(const DTensor& x);
// b is redistributed to a's layout (partial axes included: a replicated b is
// then kept at coordinate 0 only, so the sum stays a + b).
DTensor add(const DTensor& a, const DTensor& b);
// Both operands are reduced of partial axes, then b follows a's layout.
DTensor mul(const DTensor& a, const DTensor& b);
// x [..., n] + bias [n]: bias takes x's layout of the last dimension and x's
// partial axes (so a partial x needs no reduction).
DTensor bias_add(const DTensor& x, const DTensor& bias);

// Sum over a dimension. A sharded summed dimension needs no communication: each
// rank sums its block and the result is partial over that dimension's axes.
DTensor sum(const DTensor& x, int dim);
// Softmax / norms over the last dimension: it must be whole on every rank, so a
// sharded last dimension is gathered (all_gather over its axes) and partial axes
// reduced; the other dimensions keep their sharding. gamma and beta: [n],
// replicated (redistributed if not).
DTensor softmax(const DTensor& x);
DTensor layernorm(const DTensor& x, const DTensor& gamma, const DTensor& beta, double eps = 1e-5);
DTensor rmsnorm(const DTensor& x, const DTensor& gamma, double eps = 1e-6);

}  // namespace meshrt::sharding

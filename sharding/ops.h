// Sharded ops on DTensors. Each op states its layout rule; when operands do not
// fit the rule they are redistributed (with the least communication, see
// redistribute.cc) to layouts that do, and never gathered whole onto one rank.
// Every collective used is recorded in the current TraceScope.
#pragma once

#include <vector>

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
// says which: neg and scale keep a pending sum, relu a pending max or min, gelu,
// gelu_tanh and silu none). A binary op keeps a's pending reductions that it commutes
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

// ---- Data movement, lookups and reductions along an axis (ops_data.cc) ----
// Each states its layout rule. "Partials" are the pending reductions the op
// keeps (it commutes with them); any other is reduced first. Data-movement ops
// take every dtype (i32 and i64 ids included).

// permute: dims[i] of x becomes dimension i; the layout's dimensions move with
// them. Partials: all. No communication.
DTensor permute(const DTensor& x, const std::vector<int>& dims);
DTensor transpose(const DTensor& x, int dim0, int dim1);

// reshape to shape (same number of elements). Dimensions are matched in groups
// (consecutive input dimensions whose product equals that of consecutive
// output dimensions). A group keeps its sharding when only its first input
// dimension is sharded and every block lands on whole rows of its first output
// dimension (split: [a*b] -> [a, b] with blocks of whole b-rows; merge:
// [a, b] -> [a*b] with a sharded, b whole); the sharding then moves to the
// group's first output dimension. Otherwise the group is gathered (all_gather
// over its axes), reshaped, and its first output dimension cut again over the
// same axes (a local slice). Partials: all.
DTensor reshape(const DTensor& x, const Shape& shape);

// concat along dim: every input is redistributed to the first's layout with
// dim's axes dropped (dim must be whole), so the result is that layout.
// Partials: the first input's, all of them (a replicated input redistributed
// into a pending sum counts once).
DTensor concat(const std::vector<DTensor>& xs, int dim);

// narrow: elements [start, start + length) of dim. Unsharded dim: local, the
// layout kept. Sharded dim: gathered, narrowed, cut again over the same axes.
// Partials: all.
DTensor narrow(const DTensor& x, int dim, int64_t start, int64_t length);

// index_select: x's slices along dim picked by index (i32 or i64, replicated:
// redistributed if not). Output: x.shape[:dim] + index.shape + x.shape[dim+1:];
// x's other dimensions keep their axes, the index dimensions are replicated.
// A sharded dim is gathered first (embedding() is the lookup that does not).
// Partials: all.
DTensor index_select(const DTensor& x, int dim, const DTensor& index);

// The embedding lookup: table [vocab, hidden], ids of any shape (i32 or i64)
// -> ids.shape + [hidden]. The output's leading dimensions take ids' layout,
// its last the table's hidden axes. A vocabulary-parallel table (dimension 0
// sharded, Megatron's VocabParallelEmbedding) needs no gather: each rank looks
// up the ids in its block of the vocabulary, gives zero rows for the others,
// and the result is a pending sum over the vocabulary axes, all-reduced unless
// reduce is false. Ids sharded over an axis the table's vocabulary also uses
// are replicated over it first.
DTensor embedding(const DTensor& table, const DTensor& ids, bool reduce = true);

// Reductions along dim (the result drops it). A sharded dim needs no
// communication: each rank reduces its block and the result is pending over
// that dim's axes (mean: a pending sum of block sums / the global extent; amax:
// a pending max; amin: a pending min). Partials: mean keeps sums and avgs,
// amax keeps maxes, amin keeps mins.
DTensor mean(const DTensor& x, int dim);
DTensor amax(const DTensor& x, int dim);
DTensor amin(const DTensor& x, int dim);

// Top k along the last dimension (values sorted descending, ties by lower
// index; indices i64, global). A sharded last dimension is not gathered: each
// rank takes the top k of its block, the k candidates of every rank are
// all-gathered over the dimension's axes, and the top k of those are the
// answer (k x ranks elements move instead of the dimension; the candidates are
// put in global index order first, so ties still go to the lower index).
// Results are replicated over those axes; other dimensions keep their
// sharding. Partials: none (reduced first).
struct TopK {
  DTensor values, indices;
};
TopK topk(const DTensor& x, int64_t k);
// The index of the largest element along dim (i64; the first one on ties).
// Along the last dimension: topk with k = 1 (no gather of a sharded dimension);
// along another sharded dimension, that dimension is gathered first.
DTensor argmax(const DTensor& x, int dim);

// where(cond, a, b) = cond ? a : b elementwise (cond bool or u8). b is
// redistributed to a's layout and cond to that layout without partials.
// Partials: all (selection is linear in a and b together).
DTensor where(const DTensor& cond, const DTensor& a, const DTensor& b);
// masked_fill(x, mask, value) = mask ? value : x. Partials: avg, max, min (a
// value written on every rank is their mean, max and min, not their sum).
DTensor masked_fill(const DTensor& x, const DTensor& mask, double value);

}  // namespace meshrt::sharding

// Redistribution between layouts, one mesh axis per step.
//
// Transition table (per mesh axis a; S(d) = a shards tensor dimension d as its
// innermost axis, R = a unused, P = a partial):
//
//   from   to      collective over a      local work
//   P      R       all_reduce             -
//   P      S(d)    reduce_scatter         pack the blocks of d first
//   S(d)   R       all_gather             put the gathered blocks side by side along d
//   S(d)   S(e)    all_to_all             pack blocks of e, then join the received along d
//   R      S(d)    -                      keep this rank's block of d (slice)
//   R      P       -                      sum: keep the value at coordinate 0, zeros
//                                         elsewhere; max, min: keep it everywhere
//   S(d)   P       all_gather, then R->P
//   P      P       nothing for the same reduction; another: all_reduce, then R->P
//   R R, S(d) S(d) (same position): nothing
//
// The collectives of a pending reduction use its op (P(x:max): all_reduce max).
//
// Order: partial axes are resolved first (reduce_scatter when the target shards
// that axis innermost on a dimension whose other axes already match, otherwise
// all_reduce); then axes that shard a dimension beyond the prefix it shares
// with the target are removed innermost first (all_to_all when the target puts
// that axis innermost on another dimension whose other axes match, otherwise
// all_gather); then target axes are added by slicing; new partial axes last.
// Every collective moves only the data of one shard over one mesh axis.
#include "sharding/redistribute.h"

#include <algorithm>
#include <chrono>

#include "kernels/elementwise.h"
#include "sharding/blocks.h"
#include "sharding/trace.h"

namespace meshrt::sharding {

const char* to_string(RedistributionStep::Kind kind) {
  switch (kind) {
    case RedistributionStep::Kind::kAllReduce: return "all_reduce";
    case RedistributionStep::Kind::kReduceScatter: return "reduce_scatter";
    case RedistributionStep::Kind::kAllGather: return "all_gather";
    case RedistributionStep::Kind::kAllToAll: return "all_to_all";
    case RedistributionStep::Kind::kSlice: return "slice";
    case RedistributionStep::Kind::kZero: return "zero";
  }
  return "?";
}

namespace {
using Kind = RedistributionStep::Kind;
using Axes = std::vector<std::string>;

bool starts_with(const Axes& longer, const Axes& prefix) {
  return prefix.size() <= longer.size() && std::equal(prefix.begin(), prefix.end(), longer.begin());
}

Axes plus(Axes axes, const std::string& a) {
  axes.push_back(a);
  return axes;
}

size_t common_prefix(const Axes& a, const Axes& b) {
  size_t n = 0;
  while (n < a.size() && n < b.size() && a[n] == b[n]) ++n;
  return n;
}

bool used_in_dims(const Layout& l, const std::string& axis) { return l.dim_of(axis) >= 0; }
}  // namespace

std::vector<RedistributionStep> plan_redistribution(const Layout& from, const Layout& to) {
  MESHRT_CHECK_SHAPE(from.ndim() == to.ndim(), "redistribution from ", from.to_string(), " to ", to.to_string(),
                     ": the layouts have different numbers of dimensions");
  std::vector<RedistributionStep> steps;
  Layout cur = from;
  auto step = [&](Kind kind, const std::string& axis, int dim, int to_dim, Layout next) {
    steps.push_back({kind, axis, dim, to_dim, cur, next});
    cur = std::move(next);
  };

  // 1. Partial axes the target does not keep partial with the same reduction.
  for (const Partial& p : from.partials()) {
    const std::string& a = p.axis;
    if (to.is_partial_over(a) && to.partial_op(a) == p.op) continue;
    int d = to.dim_of(a);
    if (d >= 0 && to.dim(d) == plus(cur.dim(d), a)) {
      Layout next = cur.without_axis(a).with_dim(d, to.dim(d));
      step(Kind::kReduceScatter, a, d, -1, next);
    } else {
      step(Kind::kAllReduce, a, -1, -1, cur.without_axis(a));
    }
  }

  // 2./3. Remove extra shard axes (all_to_all or all_gather), then slice new ones.
  for (;;) {
    bool progressed = false;
    // all_to_all: the innermost extra axis of d goes innermost on e.
    for (int d = 0; d < cur.ndim() && !progressed; ++d) {
      const Axes& axes = cur.dim(d);
      if (axes.size() <= common_prefix(axes, to.dim(d))) continue;
      const std::string a = axes.back();
      int e = to.dim_of(a);
      if (e >= 0 && e != d && to.dim(e) == plus(cur.dim(e), a)) {
        Axes shorter(axes.begin(), axes.end() - 1);
        step(Kind::kAllToAll, a, d, e, cur.with_dim(d, shorter).with_dim(e, to.dim(e)));
        progressed = true;
      }
    }
    // all_gather: the innermost extra axis of a dimension.
    for (int d = 0; d < cur.ndim() && !progressed; ++d) {
      const Axes& axes = cur.dim(d);
      if (axes.size() <= common_prefix(axes, to.dim(d))) continue;
      Axes shorter(axes.begin(), axes.end() - 1);
      step(Kind::kAllGather, axes.back(), d, -1, cur.with_dim(d, shorter));
      progressed = true;
    }
    if (progressed) continue;
    // slice: the next target axis of a dimension, once that axis is free.
    for (int d = 0; d < cur.ndim() && !progressed; ++d) {
      const Axes& axes = cur.dim(d);
      const Axes& target = to.dim(d);
      if (axes.size() >= target.size() || !starts_with(target, axes)) continue;
      const std::string& b = target[axes.size()];
      if (used_in_dims(cur, b) || cur.is_partial_over(b)) continue;
      step(Kind::kSlice, b, d, -1, cur.with_dim(d, plus(axes, b)));
      progressed = true;
    }
    if (!progressed) break;
  }
  MESHRT_CHECK(cur.dims() == to.dims(), ErrorKind::kInternal, "redistribution planner stuck at ",
               cur.to_string(), " on the way from ", from.to_string(), " to ", to.to_string());

  // 4. New partial axes.
  for (const Partial& p : to.partials()) {
    if (cur.is_partial_over(p.axis)) continue;
    std::vector<Partial> partials = cur.partials();
    partials.push_back(p);
    step(Kind::kZero, p.axis, -1, -1, cur.with_partials(std::move(partials)));
  }
  return steps;
}

namespace {
bool all_equal(const std::vector<int64_t>& v) {
  return std::all_of(v.begin(), v.end(), [&](int64_t x) { return x == v.front(); });
}

// A pending avg is summed by the collective, then divided by the axis's size.
ReduceOp collective_op(ReduceOp pending) { return pending == ReduceOp::kAvg ? ReduceOp::kSum : pending; }

// After the collective whose Work is last in works: the division reads its
// result, so the default stream waits for it first.
DeviceTensor finish_avg(const DeviceTensor& t, ReduceOp pending, int n, const std::vector<Work>& works) {
  if (pending != ReduceOp::kAvg || n == 1) return t;
  works.back().block(Stream::default_for(t.device()));
  kernels::unary(kernels::UnaryOp::kScale, t, t, 1.0 / n);
  return t;
}

// One step on this rank's block, queued: the collective goes on the axis
// communicator's stream (after the work on the device's stream that made its
// input; later work there waits for it) and its Work into works, nothing waits.
// Blocks follow torch.chunk's sizes (layout.h), so the pieces a collective
// moves may differ in size (the calls with counts).
DeviceTensor run_step(const RedistributionStep& s, const DTensor& t, const DeviceTensor& local, std::vector<Work>& works) {
  const Mesh& mesh = t.mesh();
  const Communicator& comm = mesh.communicator(s.axis);
  int n = mesh.axis_size(s.axis);
  int c = mesh.coordinate(s.axis);
  switch (s.kind) {
    case Kind::kAllReduce: {
      ReduceOp pending = s.before.partial_op(s.axis);
      DeviceTensor out = DeviceTensor::empty(local.shape(), local.dtype(), local.device());
      // Deferred: the default stream waits for it only where something reads
      // the result (DTensor::local()), so later independent work overlaps it.
      works.push_back(comm.deferred().all_reduce(local, out, collective_op(pending)));
      return finish_avg(out, pending, n, works);
    }
    case Kind::kReduceScatter: {
      ReduceOp pending = s.before.partial_op(s.axis);
      std::vector<int64_t> extents = chunk_extents(local.dim(s.dim), n);
      DeviceTensor packed = blocks::pack_pieces(local, s.dim, extents);
      DeviceTensor out = DeviceTensor::empty(local.shape().with(s.dim, extents[static_cast<size_t>(c)]),
                                             local.dtype(), local.device());
      // Deferred, as all_reduce (equal counts take the equal-chunk call: communicator.h).
      works.push_back(
          comm.deferred().reduce_scatter(packed, out, blocks::piece_counts(local.shape(), s.dim, extents), collective_op(pending)));
      return finish_avg(out, pending, n, works);
    }
    case Kind::kAllGather: {
      // The pieces of the block this axis cut: that block's extent under the layout after the step.
      int64_t whole = s.after.block(mesh, s.dim, mesh.coordinates(mesh.rank()), t.global_shape()[s.dim]).size;
      std::vector<int64_t> extents = chunk_extents(whole, n);
      Shape base = local.shape();
      std::vector<int64_t> counts = blocks::piece_counts(base, s.dim, extents);
      DeviceTensor gathered = DeviceTensor::empty({blocks::total(counts)}, local.dtype(), local.device());
      // (Equal counts take the equal-chunk call: communicator.h.) The pieces
      // are joined at once, so the default stream waits for it.
      works.push_back(comm.all_gather(local, gathered, counts));
      return blocks::join_pieces(gathered, base, s.dim, extents);
    }
    case Kind::kAllToAll: {
      // s.dim loses the axis (its pieces come from the other ranks), s.to_dim gains it.
      int64_t whole = s.after.block(mesh, s.dim, mesh.coordinates(mesh.rank()), t.global_shape()[s.dim]).size;
      std::vector<int64_t> gathered = chunk_extents(whole, n);
      std::vector<int64_t> split = chunk_extents(local.dim(s.to_dim), n);
      DeviceTensor packed = blocks::pack_pieces(local, s.to_dim, split);
      Shape base = local.shape().with(s.to_dim, split[static_cast<size_t>(c)]);
      std::vector<int64_t> recv_counts = blocks::piece_counts(base, s.dim, gathered);
      DeviceTensor received = DeviceTensor::empty({blocks::total(recv_counts)}, local.dtype(), local.device());
      // Every rank of the axis knows the counts are all equal (they depend on
      // the layout only): then the equal-chunk call, MPI_Alltoall, not -v.
      if (all_equal(gathered) && all_equal(split)) {
        works.push_back(comm.all_to_all(packed, received));
      } else {
        works.push_back(comm.all_to_all(packed, received, blocks::piece_counts(local.shape(), s.to_dim, split), recv_counts));
      }
      return blocks::join_pieces(received, base, s.dim, gathered);
    }
    case Kind::kSlice:
      return blocks::take_block(local, s.dim, chunk_extent(local.dim(s.dim), n, c));
    case Kind::kZero:  // an avg, max or min over copies of the value is the value
      return c == 0 || s.after.partial_op(s.axis) != ReduceOp::kSum
                 ? local
                 : DeviceTensor::zeros(local.shape(), local.dtype(), local.device());
  }
  return local;
}
}  // namespace

DTensor redistribute(const DTensor& t, const Layout& layout) {
  MESHRT_CHECK_ARG(t.defined(), "redistribute of an undefined DTensor");
  if (t.layout() == layout) return t;  // ops ask for this all the time
  layout.check(t.mesh(), t.global_shape(), t.name());
  DeviceTensor local = t.local();  // (orders the default stream after t's own collectives)
  std::vector<Work> works;
  Trace* trace = TraceScope::current();
  for (const RedistributionStep& s : plan_redistribution(t.layout(), layout)) {
    auto start = std::chrono::steady_clock::now();
    long long bytes = static_cast<long long>(local.nbytes());
    // The step reads the last one's result: order the default stream after it
    // (its collective may be deferred); only the final result stays deferred.
    if (!works.empty()) works.back().block(Stream::default_for(local.device()));
    local = run_step(s, t, local, works);
    if (trace) {
      // Timed: the step's work is waited for (a traced run is not asynchronous).
      for (const Work& w : works) w.wait();
      Stream::default_for(local.device()).synchronize();
      trace->add({to_string(s.kind), s.axis, t.name(), s.before.to_string(), s.after.to_string(), bytes,
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()});
    }
  }
  return DTensor(local, t.global_shape(), t.mesh(), layout, t.name()).after(t).after(works);
}

}  // namespace meshrt::sharding

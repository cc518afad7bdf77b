// A record of the communication sharded code did: every redistribution step
// (collective or local) appends one entry to the Trace of the innermost live
// TraceScope on the calling thread. The demo prints it; tests count collectives
// in it to check that an op used the least communication.
#pragma once

#include <string>
#include <vector>

namespace meshrt::sharding {

struct TraceStep {
  std::string operation;  // all_reduce, reduce_scatter, all_gather, all_to_all, slice, zero
  std::string axis;       // the mesh axis it ran over
  std::string tensor;     // name of the tensor
  std::string from, to;   // layouts before and after
  long long bytes = 0;    // bytes of this rank's shard going in
  double seconds = 0;     // wall time on this rank
  bool communicates() const { return operation != "slice" && operation != "zero"; }
};

class Trace {
 public:
  void add(TraceStep step) { steps_.push_back(std::move(step)); }
  const std::vector<TraceStep>& steps() const { return steps_; }
  // Steps with this operation name.
  int count(const std::string& operation) const;
  // Steps that communicate (all but slice and zero).
  int collectives() const;
  double communication_seconds() const;
  void clear() { steps_.clear(); }
  // One line per step: "all_gather over 'model' of x: [S(model), R] -> [R, R] (1.5 KiB, 0.02 ms)".
  std::string to_string() const;

 private:
  std::vector<TraceStep> steps_;
};

class TraceScope {
 public:
  explicit TraceScope(Trace& trace);
  ~TraceScope();
  TraceScope(const TraceScope&) = delete;
  TraceScope& operator=(const TraceScope&) = delete;
  // The trace of the innermost live scope on this thread, or null.
  static Trace* current();

 private:
  Trace* previous_;
};

}  // namespace meshrt::sharding

// Tensor-parallel layers (as in Megatron-LM) over one mesh axis.
//
//   ColumnParallelLinear: W [in, out] sharded [R, S(axis)], bias [out] S(axis).
//     y = x W + b for x whose last dimension is whole; y's last dimension comes
//     out sharded over axis. No communication.
//   RowParallelLinear: W [in, out] sharded [S(axis), R], bias [out] replicated.
//     For x whose last dimension is sharded over axis (as a column-parallel layer
//     leaves it) each rank multiplies its block: a partial sum, reduced by one
//     all_reduce after the bias is added (once, at coordinate 0 of axis).
//   ParallelMLP: column-parallel, gelu, row-parallel: one all_reduce in all.
#pragma once

#include <string>

#include "sharding/dtensor.h"

namespace meshrt::models {

using sharding::DTensor;
using sharding::Layout;
using sharding::Mesh;

class ColumnParallelLinear {
 public:
  ColumnParallelLinear() = default;
  // weight [in, out] and bias [out] (may be undefined: no bias) given whole on
  // every rank; each rank keeps its block.
  ColumnParallelLinear(const Mesh& mesh, const std::string& axis, const HostTensor& weight,
                       const HostTensor& bias, const std::string& name = "column");
  // From DTensors already placed (e.g. loaded from a checkpoint); redistributed
  // to the layer's layouts if needed.
  ColumnParallelLinear(const std::string& axis, DTensor weight, DTensor bias);
  DTensor forward(const DTensor& x) const;
  const DTensor& weight() const { return weight_; }
  const DTensor& bias() const { return bias_; }

 private:
  std::string axis_;
  DTensor weight_, bias_;
};

class RowParallelLinear {
 public:
  RowParallelLinear() = default;
  RowParallelLinear(const Mesh& mesh, const std::string& axis, const HostTensor& weight,
                    const HostTensor& bias, const std::string& name = "row");
  RowParallelLinear(const std::string& axis, DTensor weight, DTensor bias);
  // The result's last dimension is whole (replicated over axis); x's other
  // dimensions keep their sharding.
  DTensor forward(const DTensor& x) const;
  const DTensor& weight() const { return weight_; }
  const DTensor& bias() const { return bias_; }

 private:
  std::string axis_;
  DTensor weight_, bias_;
};

class ParallelMLP {
 public:
  ParallelMLP() = default;
  // w1 [in, hidden], b1 [hidden], w2 [hidden, out], b2 [out].
  ParallelMLP(const Mesh& mesh, const std::string& axis, const HostTensor& w1, const HostTensor& b1,
              const HostTensor& w2, const HostTensor& b2);
  DTensor forward(const DTensor& x) const;
  const ColumnParallelLinear& up() const { return up_; }
  const RowParallelLinear& down() const { return down_; }

 private:
  ColumnParallelLinear up_;
  RowParallelLinear down_;
};

}  // namespace meshrt::models

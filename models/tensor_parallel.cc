#include "models/tensor_parallel.h"

#include "sharding/ops.h"
#include "sharding/redistribute.h"

namespace meshrt::models {

namespace {
using Dims = std::vector<std::vector<std::string>>;
Layout column_weight(const std::string& axis) { return Layout(Dims{{}, {axis}}); }
Layout row_weight(const std::string& axis) { return Layout(Dims{{axis}, {}}); }
Layout sharded_vector(const std::string& axis) { return Layout(Dims{{axis}}); }

void check_linear(const char* layer, const DTensor& w, const DTensor& b) {
  MESHRT_CHECK_SHAPE(w.defined() && w.ndim() == 2, layer, ": the weight must be a 2-D [in, out] tensor");
  MESHRT_CHECK_SHAPE(!b.defined() || (b.ndim() == 1 && b.global_shape()[0] == w.global_shape()[1]), layer,
                     ": the bias must be [", w.global_shape()[1], "] for weight ", w.description(), ", got ",
                     b.description());
}

DTensor place(const Mesh& mesh, const HostTensor& t, const Layout& layout, const std::string& name) {
  return t.defined() ? DTensor::from_global(t, mesh, layout, name) : DTensor();
}
}  // namespace

ColumnParallelLinear::ColumnParallelLinear(const Mesh& mesh, const std::string& axis, const HostTensor& weight,
                                           const HostTensor& bias, const std::string& name)
    : ColumnParallelLinear(axis, place(mesh, weight, column_weight(axis), name + ".weight"),
                           place(mesh, bias, sharded_vector(axis), name + ".bias")) {}

ColumnParallelLinear::ColumnParallelLinear(const std::string& axis, DTensor weight, DTensor bias)
    : axis_(axis) {
  check_linear("ColumnParallelLinear", weight, bias);
  weight_ = redistribute(weight, column_weight(axis));
  if (bias.defined()) bias_ = redistribute(bias, sharded_vector(axis));
}

DTensor ColumnParallelLinear::forward(const DTensor& x) const {
  // The contracted (last) dimension of x must be whole and x not use axis.
  Layout want = x.layout().with_dim(x.ndim() - 1, {}).without_axis(axis_);
  DTensor y = matmul(redistribute(x, want), weight_, weight_.name() + "(" + x.name() + ")");
  return bias_.defined() ? bias_add(y, bias_) : y;
}

RowParallelLinear::RowParallelLinear(const Mesh& mesh, const std::string& axis, const HostTensor& weight,
                                     const HostTensor& bias, const std::string& name)
    : RowParallelLinear(axis, place(mesh, weight, row_weight(axis), name + ".weight"),
                        place(mesh, bias, Layout::replicated(1), name + ".bias")) {}

RowParallelLinear::RowParallelLinear(const std::string& axis, DTensor weight, DTensor bias) : axis_(axis) {
  check_linear("RowParallelLinear", weight, bias);
  weight_ = redistribute(weight, row_weight(axis));
  if (bias.defined()) bias_ = redistribute(bias, Layout::replicated(1));
}

DTensor RowParallelLinear::forward(const DTensor& x) const {
  // x's last dimension sharded over axis, as the weight's rows are.
  Layout want = x.layout();
  if (want.dim(x.ndim() - 1) != std::vector<std::string>{axis_}) {
    want = want.without_axis(axis_).with_dim(x.ndim() - 1, {axis_});
  }
  DTensor y = matmul(redistribute(x, want), weight_, weight_.name() + "(" + x.name() + ")");  // partial over axis
  if (bias_.defined()) y = bias_add(y, bias_);
  return redistribute(y, y.layout().with_partial({}));  // the one all_reduce
}

ParallelMLP::ParallelMLP(const Mesh& mesh, const std::string& axis, const HostTensor& w1, const HostTensor& b1,
                         const HostTensor& w2, const HostTensor& b2)
    : up_(mesh, axis, w1, b1, "mlp.up"), down_(mesh, axis, w2, b2, "mlp.down") {}

DTensor ParallelMLP::forward(const DTensor& x) const { return down_.forward(gelu(up_.forward(x))); }

}  // namespace meshrt::models

#include "training/parameter.h"

#include <map>
#include <utility>

#include "device/error.h"
#include "kernels/elementwise.h"
#include "kernels/movement.h"
#include "training/tensor_ops.h"

namespace meshrt::training {

Parameter::Parameter(std::string name, DeviceTensor value) : name_(std::move(name)) {
  set_value(std::move(value));
}

void Parameter::set_value(DeviceTensor value) {
  detail::check_float(value, "Parameter", name_.c_str());
  if (value_.defined()) detail::check_same(value_, value, "Parameter::set_value");
  value_ = std::move(value);
}

void Parameter::accumulate(const DeviceTensor& g) {
  detail::check_same(value_, g, "Parameter::accumulate");
  grad_ = grad_.defined() ? kernels::add(grad_, g) : g.clone();
}

void Parameter::accumulate_sparse(SparseGrad g) {
  MESHRT_CHECK_SHAPE(g.ids.dtype() == DType::kI64 && g.ids.ndim() == 1, "Parameter ", name_,
                     ": sparse ids must be i64 [count], got ", g.ids.description());
  MESHRT_CHECK_SHAPE(g.rows.dtype() == value_.dtype() && g.rows.ndim() == value_.ndim() &&
                         g.rows.shape()[0] == g.ids.numel() &&
                         g.rows.shape().inner(0) == value_.shape().inner(0),
                     "Parameter ", name_, ": sparse rows ", g.rows.description(), " do not fit ",
                     g.ids.numel(), " rows of ", value_.description());
  sparse_grads_.push_back(std::move(g));
}

void Parameter::zero_grad() {
  grad_ = DeviceTensor();
  sparse_grads_.clear();
}

void Parameter::set_grad(DeviceTensor grad) {
  if (grad.defined()) detail::check_same(value_, grad, "Parameter::set_grad");
  grad_ = std::move(grad);
}

void Parameter::set_sparse_grads(std::vector<SparseGrad> grads) {
  sparse_grads_.clear();
  for (SparseGrad& g : grads) accumulate_sparse(std::move(g));
}

DeviceTensor Parameter::dense_grad() const {
  DeviceTensor total = grad_.defined() ? grad_.clone()
                                       : DeviceTensor::zeros(value_.shape(), value_.dtype(), value_.device());
  for (const SparseGrad& g : sparse_grads_) total = kernels::add(total, densify(g, value_.shape()));
  return total;
}

// The rows are added by index_add (repeated ids add up). The ids are checked
// on the host first: index_add on CUDA skips an id out of range unreported,
// and the ids are small next to the rows.
DeviceTensor densify(const SparseGrad& g, const Shape& table_shape) {
  MESHRT_CHECK_SHAPE(g.ids.dtype() == DType::kI64, "densify: ids must be i64, got ", g.ids.description());
  const int64_t rows = table_shape[0];
  const int64_t width = table_shape.inner(0);
  const int64_t count = g.ids.numel();
  MESHRT_CHECK_SHAPE(g.rows.numel() == count * width, "densify: rows ", g.rows.description(),
                     " do not fit ", count, " rows of ", to_string(table_shape));
  for (int64_t id : to_host(g.ids).to_vector<int64_t>()) {
    MESHRT_CHECK_ARG(id >= 0 && id < rows, "densify: id ", id, " outside [0, ", rows, ")");
  }
  DeviceTensor out = DeviceTensor::zeros(table_shape, g.rows.dtype(), g.rows.device());
  kernels::index_add(out, 0, g.ids.reshape(Shape{count}), g.rows.reshape(table_shape.with(0, count)));
  return out;
}

SparseGrad merge_sparse(const std::vector<SparseGrad>& parts, const Shape& table_shape, const std::string& name) {
  MESHRT_CHECK_ARG(!parts.empty(), "merge_sparse: parameter ", name, " has no sparse gradient");
  std::vector<std::vector<int64_t>> part_ids;
  std::map<int64_t, int64_t> position;  // id -> its place among the distinct ids, ids ascending
  for (const SparseGrad& g : parts) {
    part_ids.push_back(to_host(g.ids).to_vector<int64_t>());
    for (int64_t id : part_ids.back()) {
      MESHRT_CHECK_ARG(id >= 0 && id < table_shape[0], "parameter ", name, ": id ", id, " outside [0, ",
                       table_shape[0], ")");
      position[id] = 0;
    }
  }
  std::vector<int64_t> ids;
  for (auto& [id, place] : position) {
    place = static_cast<int64_t>(ids.size());
    ids.push_back(id);
  }
  const int64_t count = static_cast<int64_t>(ids.size());
  const Device& device = parts.front().rows.device();
  SparseGrad out;
  out.ids = to_device(HostTensor::from_vector(ids, Shape{count}), device);
  out.rows = DeviceTensor::zeros(table_shape.with(0, count), parts.front().rows.dtype(), device);
  for (size_t b = 0; b < parts.size(); ++b) {
    std::vector<int64_t> places;
    for (int64_t id : part_ids[b]) places.push_back(position[id]);
    const int64_t n = static_cast<int64_t>(places.size());
    kernels::index_add(out.rows, 0, to_device(HostTensor::from_vector(places, Shape{n}), device),
                       parts[b].rows.reshape(table_shape.with(0, n)));
  }
  return out;
}

}  // namespace meshrt::training

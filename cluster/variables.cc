#include "cluster/variables.h"

#include <algorithm>
#include <map>
#include <set>

#include "device/error.h"
#include "kernels/movement.h"

namespace meshrt::cluster {

VariablePlacer::VariablePlacer(int num_ps, Partitioner partitioner)
    : num_ps_(num_ps), partitioner_(std::move(partitioner)) {
  MESHRT_CHECK_ARG(num_ps > 0, "VariablePlacer: the cluster has no parameter server");
}

RemoteVariable VariablePlacer::place(const std::string& name, const Shape& shape, DType dtype, bool sparse) {
  RemoteVariable v;
  v.name = name;
  v.shape = shape;
  v.dtype = dtype;
  v.sparse = sparse;
  int shards = 1;
  if (partitioner_ && shape.ndim() >= 1) {
    sharding::Partition p = partitioner_(shape, dtype);
    MESHRT_CHECK_ARG(static_cast<int>(p.size()) == shape.ndim(), "variable ", name, ": the partitioner gave ",
                     p.size(), " entries for ", shape.ndim(), " axes");
    for (size_t i = 1; i < p.size(); ++i) {
      MESHRT_CHECK_ARG(p[i] == 1, "variable ", name, ": the partitioner splits axis ", i,
                       "; parameter servers hold shards of the first axis only");
    }
    shards = std::max(1, p[0]);
  }
  MESHRT_CHECK_ARG(!sparse || shape.ndim() >= 1, "variable ", name, ": a sparse (row) variable needs rows");
  std::vector<int64_t> extents =
      shape.ndim() >= 1 ? sharding::shard_extents(shape[0], shards) : std::vector<int64_t>{1};
  int64_t begin = 0;
  for (int k = 0; k < shards; ++k) {
    VariableShard s;
    s.name = shards > 1 ? name + "/part_" + std::to_string(k) : name;
    s.ps = next_++ % num_ps_;
    s.row_begin = begin;
    s.rows = extents[static_cast<size_t>(k)];
    s.shape = shape.ndim() >= 1 ? shape.with(0, s.rows) : shape;
    begin += s.rows;
    v.shards.push_back(s);
  }
  return v;
}

namespace {

HostTensor rows_of(const HostTensor& t, int64_t begin, int64_t count) {
  return t.ndim() == 0 ? t : t.narrow(begin, count);
}

PsClient& server(std::vector<PsClient>& ps, int index, const std::string& what) {
  MESHRT_CHECK_ARG(index >= 0 && index < static_cast<int>(ps.size()), what, " is placed on ps ", index,
                   " but there are ", ps.size(), " parameter servers");
  return ps[static_cast<size_t>(index)];
}

}  // namespace

int create_variable(std::vector<PsClient>& ps, const RemoteVariable& variable, const HostTensor& initial,
                    const OptimizerConfig& optimizer) {
  MESHRT_CHECK_SHAPE(initial.shape() == variable.shape && initial.dtype() == variable.dtype, "variable ",
                     variable.name, ": the initial value ", initial.description(), " is not ",
                     to_string(variable.dtype), " ", variable.shape);
  int created = 0;
  for (const VariableShard& s : variable.shards) {
    if (server(ps, s.ps, s.name).create_variable(s.name, rows_of(initial, s.row_begin, s.rows), optimizer)) {
      ++created;
    }
  }
  return created;
}

HostTensor read_variable(std::vector<PsClient>& ps, const RemoteVariable& variable) {
  std::vector<HostTensor> parts;
  for (const VariableShard& s : variable.shards) parts.push_back(server(ps, s.ps, s.name).read({s.name}).at(0));
  return parts.size() == 1 ? parts[0] : concat_rows(parts);
}

RemoteModel::RemoteModel(std::unique_ptr<training::Sequential> model, std::vector<RemoteVariable> variables,
                         Device device)
    : model_(std::move(model)), variables_(std::move(variables)), device_(device) {
  MESHRT_CHECK_ARG(model_ != nullptr, "RemoteModel: no model");
  std::vector<training::Parameter*> params = model_->parameters();
  MESHRT_CHECK_ARG(params.size() == variables_.size(), "RemoteModel: the model has ", params.size(),
                   " parameters and ", variables_.size(), " variables were placed");
  for (size_t i = 0; i < params.size(); ++i) {
    MESHRT_CHECK_SHAPE(params[i]->value().shape() == variables_[i].shape &&
                           params[i]->value().dtype() == variables_[i].dtype,
                       "RemoteModel: parameter ", params[i]->name(), " ", params[i]->value().description(),
                       " is not variable ", variables_[i].name, " (", to_string(variables_[i].dtype), " ",
                       variables_[i].shape, ")");
  }
}

void RemoteModel::pull(std::vector<PsClient>& ps, const HostTensor& ids) {
  std::vector<training::Parameter*> params = model_->parameters();
  // Dense variables: one Read per server for all its shards.
  std::map<int, std::vector<std::string>> names;
  for (const RemoteVariable& v : variables_) {
    if (v.sparse) continue;
    for (const VariableShard& s : v.shards) names[s.ps].push_back(s.name);
  }
  std::map<std::string, HostTensor> values;
  for (auto& [index, list] : names) {
    std::vector<HostTensor> read = server(ps, index, list.front()).read(list);
    for (size_t i = 0; i < list.size(); ++i) values.emplace(list[i], std::move(read[i]));
  }
  std::vector<int64_t> unique;
  bool have_ids = false;
  for (size_t i = 0; i < variables_.size(); ++i) {
    const RemoteVariable& v = variables_[i];
    if (!v.sparse) {
      std::vector<HostTensor> parts;
      for (const VariableShard& s : v.shards) parts.push_back(values.at(s.name));
      params[i]->set_value(to_device(parts.size() == 1 ? parts[0] : concat_rows(parts), device_));
      continue;
    }
    if (!have_ids) {
      MESHRT_CHECK_SHAPE(ids.defined() && (ids.dtype() == DType::kI64 || ids.dtype() == DType::kI32),
                         "RemoteModel::pull: a sparse variable needs the step's ids (i32 or i64), got ",
                         ids.description());
      HostTensor as64 = cast_host(ids, DType::kI64);
      std::set<int64_t> set(as64.data<int64_t>(), as64.data<int64_t>() + as64.numel());
      unique.assign(set.begin(), set.end());
      have_ids = true;
    }
    // The rows each shard holds of the ids, read and written into the local table.
    std::vector<int64_t> global;
    std::vector<HostTensor> rows;
    for (const VariableShard& s : v.shards) {
      std::vector<int64_t> local;
      for (int64_t id : unique) {
        if (id >= s.row_begin && id < s.row_begin + s.rows) {
          local.push_back(id - s.row_begin);
          global.push_back(id);
        }
      }
      if (!local.empty()) rows.push_back(server(ps, s.ps, s.name).read_rows(s.name, local));
    }
    MESHRT_CHECK_ARG(global.size() == unique.size(), "RemoteModel::pull: ids outside variable ", v.name, " (",
                     v.shape[0], " rows)");
    if (global.empty()) continue;
    DeviceTensor index = to_device(HostTensor::from_vector(global, Shape{static_cast<int64_t>(global.size())}), device_);
    kernels::index_copy(params[i]->value(), 0, index, to_device(concat_rows(rows), device_));
  }
}

int64_t RemoteModel::push(std::vector<PsClient>& ps, int64_t step_id, int64_t done_below) {
  std::vector<training::Parameter*> params = model_->parameters();
  // The gradients are this step's only, sent or not: a failed push must not
  // leave them to be added into the next step's.
  struct ClearGradients {
    std::vector<training::Parameter*>& params;
    ~ClearGradients() {
      for (training::Parameter* p : params) p->zero_grad();
    }
  } clear{params};
  std::map<int, std::vector<GradientUpdate>> updates;
  int64_t bytes = 0;
  for (size_t i = 0; i < variables_.size(); ++i) {
    const RemoteVariable& v = variables_[i];
    training::Parameter& p = *params[i];
    bool has_sparse = !p.sparse_grads().empty(), has_dense = p.grad().defined();
    if (!has_sparse && !has_dense) continue;
    if (v.sparse && !has_dense) {
      // Every part's rows, repeated ids summed first (on the device: a batch
      // looks a row up many times, and only the distinct rows need to
      // travel), then cut by shard.
      training::SparseGrad merged = training::merge_sparse(p.sparse_grads(), v.shape, v.name);
      std::vector<int64_t> distinct = to_host(merged.ids).to_vector<int64_t>();
      HostTensor rows = to_host(merged.rows);
      for (const VariableShard& s : v.shards) {
        GradientUpdate u;
        u.name = s.name;
        std::vector<size_t> picked;
        for (size_t j = 0; j < distinct.size(); ++j) {
          if (distinct[j] >= s.row_begin && distinct[j] < s.row_begin + s.rows) {
            picked.push_back(j);
            u.ids.push_back(distinct[j] - s.row_begin);
          }
        }
        if (picked.empty()) continue;
        // The distinct ids are ascending, so a shard's rows are consecutive.
        u.rows = rows.narrow(static_cast<int64_t>(picked.front()), static_cast<int64_t>(picked.size())).clone();
        bytes += static_cast<int64_t>(u.rows.nbytes() + u.ids.size() * sizeof(int64_t));
        updates[s.ps].push_back(std::move(u));
      }
      continue;
    }
    HostTensor grad = to_host(p.dense_grad());
    for (const VariableShard& s : v.shards) {
      GradientUpdate u;
      u.name = s.name;
      u.dense = rows_of(grad, s.row_begin, s.rows).clone();
      bytes += static_cast<int64_t>(u.dense.nbytes());
      updates[s.ps].push_back(std::move(u));
    }
  }
  for (auto& [index, list] : updates) server(ps, index, list.front().name).apply(step_id, list, done_below);
  return bytes;
}

}  // namespace meshrt::cluster

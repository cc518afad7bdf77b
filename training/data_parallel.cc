#include "training/data_parallel.h"

#include <algorithm>
#include <exception>
#include <map>
#include <string>
#include <utility>

#include "device/error.h"
#include "kernels/elementwise.h"
#include "kernels/movement.h"

namespace meshrt::training {
namespace {

DeviceTensor host_to(const std::vector<double>& values, const Device& device) {
  return to_device(HostTensor::from_vector(values, Shape{static_cast<int64_t>(values.size())}), device);
}

std::vector<double> gather_doubles(const Communicator& comm, const std::vector<double>& mine) {
  DeviceTensor in = host_to(mine, comm.device());
  DeviceTensor out = DeviceTensor::empty(Shape{static_cast<int64_t>(mine.size()) * comm.size()}, DType::kF64,
                                         comm.device());
  comm.all_gather(in, out).wait();
  return to_host(out).to_vector<double>();
}

// In place: t *= alpha.
void scale_in_place(const DeviceTensor& t, double alpha) {
  if (alpha != 1.0 && t.numel() > 0) kernels::unary(kernels::UnaryOp::kScale, t, t, alpha);
}

}  // namespace

RowShard shard_rows(int64_t rows, int rank, int size) {
  MESHRT_CHECK_ARG(rows >= 0 && size > 0 && rank >= 0 && rank < size, "shard_rows: rank ", rank, " of ", size,
                   " ranks, ", rows, " rows");
  int64_t base = rows / size, extra = rows % size;
  RowShard s;
  s.count = base + (rank < extra ? 1 : 0);
  s.begin = rank * base + std::min<int64_t>(rank, extra);
  return s;
}

DeviceTensor shard_batch(const DeviceTensor& batch, const Communicator& comm) {
  MESHRT_CHECK_SHAPE(batch.defined() && batch.ndim() >= 1, "shard_batch: a batch needs a row axis, got ",
                     batch.description());
  RowShard s = shard_rows(batch.dim(0), comm.rank(), comm.size());
  return batch.narrow(s.begin, s.count);
}

DataParallel::DataParallel(Communicator comm, Layer& model, Optimizer& optimizer, LossFunction loss,
                           DataParallelOptions options)
    : comm_(std::move(comm)), model_(model), optimizer_(optimizer), loss_(std::move(loss)), options_(options) {
  MESHRT_CHECK_ARG(comm_.valid(), "DataParallel: an invalid communicator");
  MESHRT_CHECK_ARG(loss_ != nullptr, "DataParallel: no loss function");
  MESHRT_CHECK_ARG(options_.bucket_bytes > 0, "DataParallel: bucket_bytes must be > 0, got ",
                   options_.bucket_bytes);
  parameters_ = model_.parameters();
  // A parameter on another device is this rank's error, but every rank must
  // learn of it in the same exchange (check_same_model), or the others would
  // wait in a collective this rank never joins.
  std::string misplaced;
  for (Parameter* p : parameters_) {
    if (misplaced.empty() && p->value().device() != comm_.device()) {
      misplaced = "DataParallel: parameter " + p->name() + " is on " + p->value().device().to_string() +
                  ", the communicator on " + comm_.device().to_string();
    }
  }
  check_same_model(misplaced);
  broadcast_parameters(0);
}

// Every rank gathers every rank's signature of the model (the count of
// parameters, then a hash of each one's dtype, rank and extents) and whether
// its parameters are on the communicator's device, and compares, so every
// rank throws alike before a collective could mismatch.
void DataParallel::check_same_model(const std::string& misplaced) const {
  std::vector<double> mine{static_cast<double>(parameters_.size())};
  std::vector<double> shapes;
  for (Parameter* p : parameters_) {
    shapes.push_back(static_cast<double>(static_cast<int>(p->value().dtype())));
    shapes.push_back(p->value().ndim());
    for (int i = 0; i < p->value().ndim(); ++i) shapes.push_back(static_cast<double>(p->value().dim(i)));
  }
  // The count first (equal sizes for the all_gather), then the signature's
  // length and its FNV-1a hash in two exact 32-bit halves: the same on every
  // rank unless the models differ; last, whether this rank's are placed right.
  uint64_t hash = 1469598103934665603ull;
  for (double v : shapes) {
    hash ^= static_cast<uint64_t>(static_cast<int64_t>(v));
    hash *= 1099511628211ull;
  }
  mine.push_back(static_cast<double>(shapes.size()));
  mine.push_back(static_cast<double>(hash >> 32));
  mine.push_back(static_cast<double>(hash & 0xffffffffull));
  mine.push_back(misplaced.empty() ? 1.0 : 0.0);
  const size_t width = mine.size();
  std::vector<double> all = gather_doubles(comm_, mine);
  MESHRT_CHECK_ARG(misplaced.empty(), misplaced);
  for (int r = 0; r < comm_.size(); ++r) {
    MESHRT_CHECK_ARG(all[r * width + width - 1] == 1.0, "DataParallel: rank ", r, " of ", comm_.name(),
                     " has a parameter on another device than its communicator's");
    for (size_t i = 0; i + 1 < width; ++i) {
      MESHRT_CHECK_ARG(all[r * width + i] == mine[i], "DataParallel: rank ", r, " of ", comm_.name(),
                       " has a different model (", static_cast<int64_t>(all[r * width]),
                       " parameters there, ", parameters_.size(),
                       " here, or different shapes): every rank must build the same model");
    }
  }
}

void DataParallel::broadcast_parameters(int root) const {
  if (comm_.size() == 1) return;
  std::vector<Work> works;
  for (Parameter* p : parameters_) works.push_back(comm_.broadcast(p->value(), root));
  for (Work& w : works) w.wait();
}

StepResult DataParallel::step(const DeviceTensor& inputs, const DeviceTensor& targets) {
  // This rank's part may fail (a bad shard, an id outside a table): the
  // failure is carried into the exchange, so that every rank ends the step
  // with an error instead of waiting for this one in a collective.
  int64_t rows = 0;
  DeviceTensor prediction;
  double local_loss = 0;
  std::exception_ptr failure;
  try {
    MESHRT_CHECK_SHAPE(inputs.defined() && targets.defined() && inputs.ndim() >= 1 && targets.ndim() >= 1 &&
                           inputs.dim(0) == targets.dim(0),
                       "DataParallel::step: inputs ", inputs.description(), " and targets ",
                       targets.description(), " must have the same rows");
    rows = inputs.dim(0);
    if (rows > 0) {
      prediction = model_.forward(inputs);
      Loss loss = loss_(prediction, targets);
      local_loss = loss.value;
      model_.backward(loss.grad);
    }
  } catch (...) {
    failure = std::current_exception();
    rows = 0;
  }
  StepResult result = exchange(rows, local_loss, failure);
  optimizer_.step(parameters_);
  for (Parameter* p : parameters_) p->zero_grad();
  result.prediction = prediction;
  return result;
}

StepResult DataParallel::synchronize(int64_t local_rows, double local_loss) {
  std::exception_ptr failure;
  if (local_rows < 0) {
    failure = std::make_exception_ptr(
        Error(ErrorKind::kInvalidArgument, "DataParallel::synchronize: " + std::to_string(local_rows) + " rows"));
  }
  return exchange(std::max<int64_t>(local_rows, 0), local_loss, failure);
}

StepResult DataParallel::exchange(int64_t local_rows, double local_loss, std::exception_ptr failure) {
  const size_t n = parameters_.size();
  const int size = comm_.size();
  stats_ = SyncStats{};

  // A rank's repeated ids are summed before they travel (an embedding row
  // looked up many times in a batch is sent once).
  if (!failure && size > 1) {
    try {
      for (Parameter* p : parameters_) {
        if (!p->sparse_grads().empty()) {
          p->set_sparse_grads({merge_sparse(p->sparse_grads(), p->value().shape(), p->name())});
        }
      }
    } catch (...) {
      failure = std::current_exception();
    }
  }

  // Who has what: [ok, rows, rows * loss, dense?[n], sparse rows[n]] from every rank.
  const size_t width = 3 + 2 * n;
  std::vector<double> mine(width, 0.0);
  mine[0] = failure ? 0.0 : 1.0;
  mine[1] = static_cast<double>(local_rows);
  mine[2] = static_cast<double>(local_rows) * local_loss;
  for (size_t i = 0; i < n; ++i) {
    mine[3 + i] = parameters_[i]->grad().defined() ? 1.0 : 0.0;
    int64_t count = 0;
    for (const SparseGrad& g : parameters_[i]->sparse_grads()) count += g.ids.numel();
    mine[3 + n + i] = static_cast<double>(count);
  }
  std::vector<double> all = size == 1 ? mine : gather_doubles(comm_, mine);
  for (int r = 0; r < size; ++r) {
    if (all[r * width] == 1.0) continue;
    for (Parameter* p : parameters_) p->zero_grad();
    if (failure) std::rethrow_exception(failure);
    throw Error(ErrorKind::kInvalidArgument, "DataParallel: rank " + std::to_string(r) + " of " + comm_.name() +
                                                 " failed this step (its error is on that rank); the step is "
                                                 "dropped on every rank");
  }
  StepResult result;
  double weighted_loss = 0;
  for (int r = 0; r < size; ++r) {
    result.rows += static_cast<int64_t>(all[r * width + 1]);
    weighted_loss += all[r * width + 2];
  }
  MESHRT_CHECK_ARG(result.rows > 0, "DataParallel: the batch has no rows on any of the ", size, " ranks");
  result.loss = weighted_loss / static_cast<double>(result.rows);
  // Rank r's gradient is a mean over its rows: times rows_r / B, the sum over
  // the ranks is the mean over the batch.
  const double weight = static_cast<double>(local_rows) / static_cast<double>(result.rows);
  if (size == 1) return result;  // the gradients are the batch's already

  // Dense gradients: flat buckets per dtype, in parameter order.
  struct Slot {
    Parameter* parameter;
    int64_t offset;
  };
  struct Bucket {
    DType dtype = DType::kF32;
    int64_t numel = 0;
    std::vector<Slot> slots;
    DeviceTensor flat;
  };
  std::vector<Bucket> buckets;
  std::map<DType, size_t> open;  // dtype -> the bucket being filled
  for (size_t i = 0; i < n; ++i) {
    bool any = false;
    for (int r = 0; r < size; ++r) any = any || all[r * width + 3 + i] != 0;
    if (!any) continue;
    Parameter* p = parameters_[i];
    DType dtype = p->value().dtype();
    int64_t bytes = p->value().numel() * static_cast<int64_t>(size_of(dtype));
    auto it = open.find(dtype);
    if (it == open.end() ||
        (buckets[it->second].numel * static_cast<int64_t>(size_of(dtype)) + bytes > options_.bucket_bytes &&
         !buckets[it->second].slots.empty())) {
      Bucket bucket;
      bucket.dtype = dtype;
      buckets.push_back(std::move(bucket));
      it = open.insert_or_assign(dtype, buckets.size() - 1).first;
    }
    Bucket& b = buckets[it->second];
    b.slots.push_back(Slot{p, b.numel});
    b.numel += p->value().numel();
  }
  std::vector<Work> works;
  for (Bucket& b : buckets) {
    b.flat = DeviceTensor::empty(Shape{b.numel}, b.dtype, comm_.device());
    for (const Slot& s : b.slots) {
      DeviceTensor view = b.flat.narrow(s.offset, s.parameter->value().numel());
      const DeviceTensor& g = s.parameter->grad();
      if (g.defined()) {
        copy(g.reshape(Shape{g.numel()}), view);
      } else {
        fill_zero(view);
      }
    }
    scale_in_place(b.flat, weight);
    works.push_back(comm_.all_reduce(b.flat));
    stats_.dense_bytes += static_cast<int64_t>(b.flat.nbytes());
  }
  stats_.buckets = static_cast<int>(buckets.size());

  // Sparse gradients: every rank's ids and rows, in rank order.
  struct Gathered {
    Parameter* parameter;
    DeviceTensor ids, rows;
  };
  std::vector<Gathered> gathered;
  for (size_t i = 0; i < n; ++i) {
    std::vector<int64_t> counts(size);
    int64_t total = 0;
    for (int r = 0; r < size; ++r) total += counts[r] = static_cast<int64_t>(all[r * width + 3 + n + i]);
    if (total == 0) continue;
    Parameter* p = parameters_[i];
    const Shape& table = p->value().shape();
    int64_t inner = table.inner(0);
    std::vector<DeviceTensor> ids, rows;
    for (const SparseGrad& g : p->sparse_grads()) {
      ids.push_back(g.ids);
      rows.push_back(g.rows.reshape(Shape{g.ids.numel() * inner}));
    }
    DeviceTensor local_ids = ids.empty() ? DeviceTensor::empty(Shape{0}, DType::kI64, comm_.device())
                             : ids.size() == 1 ? ids[0]
                                               : kernels::concat(ids, 0);
    DeviceTensor my_rows = rows.empty() ? DeviceTensor::empty(Shape{0}, p->value().dtype(), comm_.device())
                           : rows.size() == 1 ? rows[0].clone()
                                              : kernels::concat(rows, 0);
    scale_in_place(my_rows, weight);
    std::vector<int64_t> row_counts(counts);
    for (int64_t& c : row_counts) c *= inner;
    Gathered out{p, DeviceTensor::empty(Shape{total}, DType::kI64, comm_.device()),
                 DeviceTensor::empty(Shape{total * inner}, p->value().dtype(), comm_.device())};
    works.push_back(comm_.all_gather(local_ids, out.ids, counts));
    works.push_back(comm_.all_gather(my_rows, out.rows, row_counts));
    stats_.sparse_bytes += static_cast<int64_t>(out.ids.nbytes() + out.rows.nbytes());
    gathered.push_back(std::move(out));
  }
  stats_.sparse_parameters = static_cast<int>(gathered.size());

  for (Work& w : works) w.wait();
  for (Bucket& b : buckets) {
    for (const Slot& s : b.slots) {
      const DeviceTensor& value = s.parameter->value();
      s.parameter->set_grad(b.flat.narrow(s.offset, value.numel()).reshape(value.shape()));
    }
  }
  for (Gathered& g : gathered) {
    Shape row_shape = g.parameter->value().shape();
    row_shape = row_shape.with(0, g.ids.numel());
    g.parameter->set_sparse_grads({SparseGrad{g.ids, g.rows.reshape(row_shape)}});
  }
  return result;
}

bool DataParallel::parameters_agree() const {
  uint64_t hash = 1469598103934665603ull;
  for (Parameter* p : parameters_) {
    HostTensor host = to_host(p->value());
    const auto* bytes = static_cast<const unsigned char*>(host.raw_data());
    for (size_t i = 0; i < host.nbytes(); ++i) {
      hash ^= bytes[i];
      hash *= 1099511628211ull;
    }
  }
  std::vector<double> mine{static_cast<double>(hash >> 32), static_cast<double>(hash & 0xffffffffull)};
  std::vector<double> all = comm_.size() == 1 ? mine : gather_doubles(comm_, mine);
  for (int r = 0; r < comm_.size(); ++r) {
    if (all[2 * r] != mine[0] || all[2 * r + 1] != mine[1]) return false;
  }
  return true;
}

void DataParallel::all_reduce(metrics::Mean& metric) const {
  std::vector<double> mine{metric.total(), metric.count()};
  std::vector<double> all = comm_.size() == 1 ? mine : gather_doubles(comm_, mine);
  double total = 0, count = 0;
  for (int r = 0; r < comm_.size(); ++r) {
    total += all[2 * r];
    count += all[2 * r + 1];
  }
  metric.reset_state();
  metric.merge_state(total, count);
}

}  // namespace meshrt::training

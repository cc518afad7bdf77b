// Synchronous data-parallel training over a Communicator (MPI on the cpu,
// NCCL on GPUs), as PyTorch's DistributedDataParallel and TensorFlow's
// MultiWorkerMirroredStrategy: every rank holds the whole model, takes its
// shard of each batch's rows, computes its gradients, and the gradients are
// reduced so that every rank applies the same update to the same weights.
//
// The update equals one process's on the whole batch, up to rounding (the
// sums run in another order): a loss is a mean over rows, so rank r's
// gradient over its n_r rows is scaled by n_r / B before the sum (B the
// batch's rows on all ranks, any split, ranks with no rows included). Dense
// gradients are summed with all_reduce in flat buckets
// (DataParallelOptions::bucket_bytes, one collective per bucket, as DDP's
// buckets, but reduced after the whole backward pass: no overlap with it
// yet); sparse ones, each rank's repeated ids summed first, (an embedding's looked-up rows) are
// all-gathered, ids and rows, in rank order, so the optimizer's lazy sparse
// update sees every rank's rows, as one process would have seen them in
// batch order. Before the gradients, one small all_gather carries each
// rank's row count, loss and which parameters have which kind of gradient,
// so a rank with no rows, or a parameter that got a gradient on some ranks
// only, still takes part in the same collectives; a rank whose own part of a
// step failed (a bad shard, an id outside a table) says so in it, and every
// rank throws (that rank its own error), none waits.
//
// The reduction keeps gradients on the device: nothing leaves a rank except
// through the communicator (the small exchange above is copied to the host
// to be read).
//
// Contracts: every rank passes a fresh optimizer of the same kind and
// settings (values are broadcast from rank 0 at construction, optimizer
// state is not: it stays equal because every rank applies the same
// updates); the parameters are those of the model at construction (layers
// added later are neither reduced nor updated).
#pragma once

#include <cstdint>
#include <exception>
#include <functional>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "training/layers.h"
#include "training/losses.h"
#include "training/metrics.h"
#include "training/optimizers.h"

namespace meshrt::training {

// Rows [begin, begin + count) of a batch of rows that rank takes among size
// ranks: numpy's array_split (the first rows % size ranks take one row more;
// a rank may take none when rows < size).
struct RowShard {
  int64_t begin = 0, count = 0;
};
RowShard shard_rows(int64_t rows, int rank, int size);
// This rank's rows of batch (axis 0) over comm: a view (Tensor::narrow).
DeviceTensor shard_batch(const DeviceTensor& batch, const Communicator& comm);

using LossFunction = std::function<Loss(const DeviceTensor& prediction, const DeviceTensor& target)>;

struct DataParallelOptions {
  // Dense gradients travel in flat buckets of up to this many bytes (a
  // parameter larger than that has a bucket of its own): PyTorch DDP's 25 MiB.
  int64_t bucket_bytes = int64_t{25} << 20;
};

struct StepResult {
  double loss = 0;        // the loss over the whole batch (every rank's rows)
  int64_t rows = 0;       // the batch's rows over every rank
  DeviceTensor prediction;  // this rank's prediction of its rows (undefined with no rows)
};

// What the last synchronisation moved, per rank.
struct SyncStats {
  int buckets = 0;                 // dense all_reduce calls
  int sparse_parameters = 0;       // parameters whose rows were all-gathered
  int64_t dense_bytes = 0;         // bytes all-reduced
  int64_t sparse_bytes = 0;        // bytes all-gathered (ids and rows, every rank's)
};

class DataParallel {
 public:
  // Collective: every rank of comm constructs it with the same model (the
  // same parameters in the same order, same shapes and dtypes: checked, a
  // mismatch throws Error(kInvalidArgument) on every rank), and the values of
  // rank 0 are broadcast to the others so that every rank starts alike (as
  // DDP does). model and optimizer must outlive this object.
  DataParallel(Communicator comm, Layer& model, Optimizer& optimizer, LossFunction loss,
               DataParallelOptions options = {});

  // One synchronous step on this rank's rows of the batch (inputs and
  // targets with the same count of rows, possibly 0): forward, loss,
  // backward, gradients reduced over the ranks, the optimizer's update, the
  // gradients cleared. Collective: every rank calls it once per step.
  StepResult step(const DeviceTensor& inputs, const DeviceTensor& targets);

  // The reduction alone, for a loop that runs its own forward and backward:
  // the parameters' gradients, computed from a loss that was the mean over
  // this rank's local_rows rows (local_loss its value), become the
  // gradients of the mean over every rank's rows. Returns the loss and rows
  // over every rank. Collective.
  StepResult synchronize(int64_t local_rows, double local_loss);

  // Replaces a metric's total and count with their sums over the ranks
  // (collective), so that result() is the metric over every rank's batches.
  // Call it once per aggregation: a second call would sum the sums.
  void all_reduce(metrics::Mean& metric) const;

  // Collective: whether every rank holds bit-identical parameter values
  // (a hash of their bytes is compared), as synchronous training keeps them.
  bool parameters_agree() const;

  const Communicator& communicator() const { return comm_; }
  const SyncStats& last_sync() const { return stats_; }

 private:
  void check_same_model(const std::string& misplaced) const;
  StepResult exchange(int64_t local_rows, double local_loss, std::exception_ptr failure);
  void broadcast_parameters(int root) const;

  Communicator comm_;
  Layer& model_;
  Optimizer& optimizer_;
  LossFunction loss_;
  DataParallelOptions options_;
  std::vector<Parameter*> parameters_;
  SyncStats stats_;
};

}  // namespace meshrt::training

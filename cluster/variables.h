// Variables on parameter servers (seed 003's ParameterServerStrategy scope):
// where each variable lives, and a worker's copy of a model whose parameters
// live there.
//
// Placement: variables (or, when a partitioner splits one, each of its
// shards) go to the parameter servers round-robin, in creation order, as the
// seed describes. A partitioner (sharding/partitioner.h: FixedShards,
// MinSize, MaxSize) may split a variable along its first axis only, with
// TensorFlow's split (the first extent % n shards one row longer); shard k
// is named "<name>/part_<k>" (TensorFlow's names). The seed's check: an
// embedding of 8 rows in 2 shards has shards of shape (4, 16384) on ps 0
// and ps 1.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "cluster/ps_client.h"
#include "device/tensor.h"
#include "sharding/partitioner.h"
#include "training/model.h"

namespace meshrt::cluster {

struct VariableShard {
  std::string name;    // on its server
  int ps = 0;          // the server's task index
  int64_t row_begin = 0, rows = 0;
  Shape shape;
};

struct RemoteVariable {
  std::string name;
  Shape shape;
  DType dtype = DType::kF32;
  // Read by rows (an embedding's table): a step reads only the rows it looks
  // up and sends back only theirs (sparse gradients).
  bool sparse = false;
  std::vector<VariableShard> shards;
};

using Partitioner = std::function<sharding::Partition(const Shape&, DType)>;

class VariablePlacer {
 public:
  // partitioner: none (one shard per variable) or one of sharding/partitioner.h's.
  explicit VariablePlacer(int num_ps, Partitioner partitioner = nullptr);
  // Places the next variable. Throws Error(kInvalidArgument) when the
  // partitioner splits an axis other than the first.
  RemoteVariable place(const std::string& name, const Shape& shape, DType dtype, bool sparse = false);

 private:
  int num_ps_;
  Partitioner partitioner_;
  int next_ = 0;
};

// Creates a variable's shards on their servers with the initial value cut
// by rows; returns how many were created (0 when every shard existed, e.g.
// after a restore).
int create_variable(std::vector<PsClient>& ps, const RemoteVariable& variable, const HostTensor& initial,
                    const OptimizerConfig& optimizer);
// The whole value, its shards read and stacked.
HostTensor read_variable(std::vector<PsClient>& ps, const RemoteVariable& variable);

// A worker's copy of a model whose parameters live on parameter servers:
// pull() fills the parameters from the servers before a step, push() sends
// their gradients after it, each shard's part in one Apply per server.
class RemoteModel {
 public:
  // variables: one per parameter of model, in model->parameters()' order,
  // of the same shapes.
  RemoteModel(std::unique_ptr<training::Sequential> model, std::vector<RemoteVariable> variables, Device device);
  training::Sequential& model() { return *model_; }
  const std::vector<RemoteVariable>& variables() const { return variables_; }

  // Reads every dense variable whole and, of every sparse one, the rows of
  // ids (the i64 ids the step will look up; other rows of the local copy
  // are stale and not read). One Read per server for the dense ones.
  void pull(std::vector<PsClient>& ps, const HostTensor& ids);
  // Sends the gradients (to the host first) for step_id: dense ones cut by
  // shard rows, sparse ones with repeated ids summed (on the device) and cut
  // by shard; then clears them (also when a server fails).
  // Returns the gradient bytes sent.
  int64_t push(std::vector<PsClient>& ps, int64_t step_id, int64_t done_below = 0);

 private:
  std::unique_ptr<training::Sequential> model_;
  std::vector<RemoteVariable> variables_;
  Device device_;
};

}  // namespace meshrt::cluster

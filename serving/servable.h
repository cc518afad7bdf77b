// Servables: models as pipeline stages, each stage tensor-parallel on its slice
// of the mesh {stage: stage_size, model: rank_size / stage_size}.
//
// A servable comes from a config (servable_from_config) or is written in C++:
// fill a ServableDefinition with StageDefinitions whose build() makes a
// StageModule on the stage's mesh. The activation entering a stage is
// [rows, width] and replicated on the stage's ranks; what a stage returns is
// replicated before it leaves for the next stage.
//
// Hooks run in this order for each batch:
//   distributed_preprocessing  rank 0, on the stacked batch before it leaves (host tensors)
//   client_preprocessing       first stage, on the batch once it arrived (device)
//   the stages
//   client_postprocessing      last stage (device)
//   distributed_postprocessing last stage, before the result goes to rank 0:
//                              device -> host. The default gathers and copies to
//                              the host; a replacement must return a HostTensor
//                              too, so the move to host cannot be forgotten.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "serving/model_config.h"
#include "serving/signature.h"
#include "sharding/dtensor.h"

namespace meshrt::serving {

using sharding::DTensor;
using sharding::Mesh;

class StageModule {
 public:
  virtual ~StageModule() = default;
  // x: [rows, input width], replicated on the stage's mesh.
  virtual DTensor forward(const DTensor& x) = 0;
};

struct StageDefinition {
  int64_t output_width = 0;  // width of the activation leaving the stage
  // Builds the stage on its mesh (the mesh's one axis is "model"); collective
  // over the stage's ranks (it may load weights with sharding's collectives).
  std::function<std::unique_ptr<StageModule>(const Mesh& stage_mesh)> build;
};

struct Hooks {
  std::function<HostTensor(const HostTensor&)> distributed_preprocessing;
  std::function<DTensor(const DTensor&)> client_preprocessing;
  std::function<DTensor(const DTensor&)> client_postprocessing;
  std::function<HostTensor(const DTensor&)> distributed_postprocessing;
};

struct ServableDefinition {
  std::string name, version = "1";
  TensorSpec input, output;
  int rank_size = 1, stage_size = 1;
  std::vector<StageDefinition> stages;  // stage_size of them
  Hooks hooks;
  BatchingConfig batching;
};

// Checks a definition (stage count, widths chaining from the input to the
// output, batching) and fills unset hooks with the defaults. Throws
// Error(kInvalidArgument) naming the servable and what is wrong.
void complete_servable(ServableDefinition& servable);

// What the wire sees of a servable: its input and output, version, and as
// metadata parameters rank_size, stage_size, max_batch_size and dynamic_batching.
ModelSignature signature_of(const ServableDefinition& servable);

// The servable a model config describes. Reads the weights' headers and checks
// every layer against them (tensor names, dtypes, shapes, divisibility by the
// tensor-parallel width); errors name the config file, the field and the
// weights file. Weights are read when a stage is built, each rank reading only
// the bytes of its shard.
ServableDefinition servable_from_config(const ModelConfig& config);

}  // namespace meshrt::serving

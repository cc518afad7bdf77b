// What Triton's model configuration and statistics extensions report of a
// model, built once for both protocols: the HTTP routes render them as
// Triton's JSON (GET /v2/models/{m}/config, GET /v2/models[/{m}[/versions/{v}]]/stats),
// the gRPC front end as Triton's ModelConfig and ModelStatistics messages.
//
// A meshrt model's config, in Triton's terms: platform and backend "meshrt";
// max_batch_size the batcher's (0 when batching is off: then dims are the
// whole shape, batch axis -1 included; else dims leave the batch axis out);
// inputs and outputs with TYPE_* data types; dynamic_batching when batching
// is on (preferred sizes, max queue delay); one instance group (KIND_GPU or
// KIND_CPU) and parameters rank_size and stage_size; the config's version policy.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "device/device.h"
#include "serving/metrics.h"
#include "serving/servable.h"
#include "serving/signature.h"

namespace meshrt::serving {

// "TYPE_FP32", ... and Triton's DataType enum values (model_config.proto).
const char* triton_data_type(DType dtype);
int triton_data_type_number(DType dtype);

struct TritonTensorConfig {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> dims;
  bool optional = false;
};

struct TritonModelConfig {
  std::string name, platform = "meshrt", backend = "meshrt";
  int64_t max_batch_size = 0;
  std::vector<TritonTensorConfig> inputs, outputs;
  bool dynamic_batching = false;
  std::vector<int64_t> preferred_batch_sizes;
  int64_t max_queue_delay_us = 0;
  bool gpu = false;  // the instance group's kind
  int64_t rank_size = 1, stage_size = 1;
  VersionPolicy version_policy;
};

TritonModelConfig triton_model_config(const ServableDefinition& servable, const ModelSignature& signature,
                                      const Device& device);
// A model of the repository index (Triton's model repository extension): a
// loaded version, "READY" or "UNAVAILABLE" with why, or a model not loaded
// (no version, "UNAVAILABLE", why).
struct RepositoryEntry {
  std::string name, version, state, reason;
};
// Triton's index JSON: [{"name", "version", "state", "reason"?}, ...].
std::string repository_index_json(const std::vector<RepositoryEntry>& entries);
// The "ready" flag of an index request body ({} or {"ready": true}); throws
// Error(kInvalidArgument) for a body that is not such an object.
bool parse_repository_index_request(const std::string& body);
// The body of a load or unload request: empty, or a JSON object without
// "parameters" (or with an empty one). Throws Error(kInvalidArgument) saying
// why otherwise: Triton's load parameters (a config or files to use) are
// refused rather than ignored.
void check_repository_load_request(const std::string& body);

// Triton's ModelConfig JSON.
std::string model_config_json(const TritonModelConfig& config);
// Triton's $stats_model_response: {"model_stats": [...]}.
std::string statistics_json(const std::vector<ModelStatistics>& stats);

}  // namespace meshrt::serving

#include "serving/model_reports.h"

#include <nlohmann/json.hpp>

#include "device/error.h"
#include "io/json_limits.h"

namespace meshrt::serving {

namespace {

using nlohmann::json;

json duration(const DurationStat& d) { return {{"count", d.count}, {"ns", d.ns}}; }

json version_policy_json(const VersionPolicy& p) {
  switch (p.kind) {
    case VersionPolicy::Kind::kAll: return {{"all", json::object()}};
    case VersionPolicy::Kind::kSpecific: return {{"specific", {{"versions", p.versions}}}};
    case VersionPolicy::Kind::kLatest: break;
  }
  return {{"latest", {{"num_versions", p.num_versions}}}};
}

json tensors(const std::vector<TritonTensorConfig>& list, bool input) {
  json out = json::array();
  for (const TritonTensorConfig& t : list) {
    json j = {{"name", t.name}, {"data_type", triton_data_type(t.dtype)}, {"dims", t.dims}};
    if (input) {
      j["format"] = "FORMAT_NONE";
      j["optional"] = t.optional;
    }
    out.push_back(std::move(j));
  }
  return out;
}

}  // namespace

const char* triton_data_type(DType dtype) {
  switch (dtype) {
    case DType::kBool: return "TYPE_BOOL";
    case DType::kU8: return "TYPE_UINT8";
    case DType::kI32: return "TYPE_INT32";
    case DType::kI64: return "TYPE_INT64";
    case DType::kF16: return "TYPE_FP16";
    case DType::kF32: return "TYPE_FP32";
    case DType::kF64: return "TYPE_FP64";
    case DType::kBF16: return "TYPE_BF16";
  }
  return "TYPE_INVALID";
}

int triton_data_type_number(DType dtype) {
  switch (dtype) {
    case DType::kBool: return 1;
    case DType::kU8: return 2;
    case DType::kI32: return 8;
    case DType::kI64: return 9;
    case DType::kF16: return 10;
    case DType::kF32: return 11;
    case DType::kF64: return 12;
    case DType::kBF16: return 14;
  }
  return 0;
}

TritonModelConfig triton_model_config(const ServableDefinition& servable, const ModelSignature& signature,
                                      const Device& device) {
  TritonModelConfig c;
  c.name = signature.name;
  const BatchingConfig& b = servable.batching;
  c.max_batch_size = b.enabled ? b.max_batch_size : 0;
  auto convert = [&](const TensorSpec& spec) {
    TritonTensorConfig t;
    t.name = spec.name;
    t.dtype = spec.dtype;
    t.optional = spec.optional;
    // With batching the batch axis (the first, -1) is not part of dims.
    t.dims = spec.shape;
    if (c.max_batch_size > 0 && !t.dims.empty()) t.dims.erase(t.dims.begin());
    return t;
  };
  for (const TensorSpec& s : signature.inputs) c.inputs.push_back(convert(s));
  for (const TensorSpec& s : signature.outputs) c.outputs.push_back(convert(s));
  c.dynamic_batching = b.enabled;
  c.preferred_batch_sizes = b.preferred_batch_sizes;
  c.max_queue_delay_us = b.max_queue_delay_us;
  c.gpu = device.is_cuda();
  c.rank_size = servable.rank_size;
  c.stage_size = servable.stage_size;
  c.version_policy = servable.version_policy;
  return c;
}

std::string model_config_json(const TritonModelConfig& c) {
  json j = {{"name", c.name},
            {"platform", c.platform},
            {"backend", c.backend},
            {"version_policy", version_policy_json(c.version_policy)},
            {"max_batch_size", c.max_batch_size},
            {"input", tensors(c.inputs, true)},
            {"output", tensors(c.outputs, false)},
            {"instance_group",
             json::array({{{"name", c.name}, {"kind", c.gpu ? "KIND_GPU" : "KIND_CPU"}, {"count", 1}}})},
            {"parameters",
             {{"rank_size", {{"string_value", std::to_string(c.rank_size)}}},
              {"stage_size", {{"string_value", std::to_string(c.stage_size)}}}}}};
  if (c.dynamic_batching) {
    j["dynamic_batching"] = {{"preferred_batch_size", c.preferred_batch_sizes},
                             {"max_queue_delay_microseconds", c.max_queue_delay_us}};
  }
  return j.dump();
}

std::string repository_index_json(const std::vector<RepositoryEntry>& entries) {
  json out = json::array();
  for (const RepositoryEntry& e : entries) {
    json j = {{"name", e.name}, {"version", e.version}, {"state", e.state}};
    if (!e.reason.empty()) j["reason"] = e.reason;
    out.push_back(std::move(j));
  }
  return out.dump();
}

namespace {
// A repository request's body: a JSON object (Error(kInvalidArgument) naming
// `what` and the `expected` form otherwise).
json parse_request_object(const std::string& body, const std::string& what, const std::string& expected) {
  json j;
  try {
    j = io::json_limits::parse(body);
  } catch (const std::exception& e) {
    throw Error(ErrorKind::kInvalidArgument, what + " is not JSON: " + e.what());
  }
  MESHRT_CHECK_ARG(j.is_object(), what, " must be a JSON object (", expected, ")");
  return j;
}
}  // namespace

bool parse_repository_index_request(const std::string& body) {
  if (body.empty()) return false;
  json j = parse_request_object(body, "the index request", "{} or {\"ready\": true}");
  for (auto it = j.begin(); it != j.end(); ++it) {
    MESHRT_CHECK_ARG(it.key() == "ready", "the index request has an unknown field \"", it.key(), "\" (it takes \"ready\")");
    MESHRT_CHECK_ARG(it->is_boolean(), "the index request's \"ready\" must be true or false");
  }
  return j.value("ready", false);
}

void check_repository_load_request(const std::string& body) {
  if (body.find_first_not_of(" \t\r\n") == std::string::npos) return;
  json j = parse_request_object(body, "the request body", "{} or {\"parameters\": {}}");
  for (auto it = j.begin(); it != j.end(); ++it) {
    MESHRT_CHECK_ARG(it.key() == "parameters", "unknown field \"", it.key(), "\" (the body takes \"parameters\")");
    MESHRT_CHECK_ARG(it->is_object(), "\"parameters\" must be an object");
    MESHRT_CHECK_ARG(it->empty(), "load parameters (\"", it->begin().key(),
                     "\") are not supported: meshrt loads the model's config and files from the repository");
  }
}

std::string statistics_json(const std::vector<ModelStatistics>& stats) {
  json models = json::array();
  for (const ModelStatistics& s : stats) {
    json batches = json::array();
    for (const auto& [size, b] : s.batches) {
      batches.push_back({{"batch_size", size},
                         {"compute_input", duration(b.compute_input)},
                         {"compute_infer", duration(b.compute_infer)},
                         {"compute_output", duration(b.compute_output)}});
    }
    models.push_back({{"name", s.name},
                      {"version", s.version},
                      {"last_inference", s.last_inference_ms},
                      {"inference_count", s.inference_count},
                      {"execution_count", s.execution_count},
                      {"inference_stats",
                       {{"success", duration(s.success)},
                        {"fail", duration(s.fail)},
                        {"queue", duration(s.queue)},
                        {"compute_input", duration(s.compute_input)},
                        {"compute_infer", duration(s.compute_infer)},
                        {"compute_output", duration(s.compute_output)},
                        {"cache_hit", duration(s.cache_hit)},
                        {"cache_miss", duration(s.cache_miss)}}},
                      {"batch_stats", std::move(batches)}});
  }
  return json{{"model_stats", std::move(models)}}.dump();
}

}  // namespace meshrt::serving

#include "serving/grpc_frontend.h"

#include <atomic>
#include <cmath>
#include <cstring>
#include <deque>
#include <limits>
#include <mutex>
#include <variant>

#include <grpcpp/server_context.h>
#include <grpcpp/support/server_callback.h>

#include "device/log.h"
#include "models/tokenizer.h"
#include "rpc/proto/grpc_service.grpc.pb.h"
#include "rpc/status.h"
#include "serving/grpc_wire.h"

namespace meshrt::serving {

namespace {

using inference::InferParameter;
using inference::InferTensorContents;
using inference::ModelInferRequest;
using inference::ModelInferResponse;
using inference::ModelStreamInferResponse;

[[noreturn]] void bad(const std::string& message) { throw RequestError(400, message); }

// One input as it came: typed contents, or the bytes of raw_input_contents.
struct WireInput {
  const ModelInferRequest::InferInputTensor& tensor;
  const std::string* raw = nullptr;  // set when the request uses raw_input_contents
};

std::vector<WireInput> wire_inputs(const ModelInferRequest& r) {
  if (r.raw_input_contents_size() > 0 && r.raw_input_contents_size() != r.inputs_size()) {
    bad("raw_input_contents has " + std::to_string(r.raw_input_contents_size()) + " entries for " +
        std::to_string(r.inputs_size()) + " inputs: give every input's data there, in input order, or none");
  }
  std::vector<WireInput> inputs;
  for (int i = 0; i < r.inputs_size(); ++i) {
    inputs.push_back({r.inputs(i), r.raw_input_contents_size() > 0 ? &r.raw_input_contents(i) : nullptr});
  }
  return inputs;
}

size_t typed_count(const InferTensorContents& c) {
  return static_cast<size_t>(c.bool_contents_size() + c.int_contents_size() + c.int64_contents_size() +
                             c.uint_contents_size() + c.uint64_contents_size() + c.fp32_contents_size() +
                             c.fp64_contents_size() + c.bytes_contents_size());
}

// The elements of shape, or -1 when negative or past 2^62.
int64_t element_count(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return -1;
    if (d > 0 && n > (int64_t{1} << 62) / d) return -1;
    n *= d;
  }
  return n;
}

// The typed field a datatype uses, as the protocol assigns them; copies its
// elements into out (numel of them). False when the datatype has no typed field.
template <class T>
bool copy_typed(const InferTensorContents& c, DType dtype, T* out, size_t numel, const std::string& name, size_t& given) {
  auto copy = [&](const auto& field) {
    given = static_cast<size_t>(field.size());
    if (given != numel) return;
    for (size_t i = 0; i < numel; ++i) {
      auto v = field.Get(static_cast<int>(i));
      // uint_contents carries UINT8 as 32 bits: a value past 255 is refused (as HTTP refuses it).
      if constexpr (std::is_same_v<T, uint8_t> && !std::is_same_v<decltype(v), bool>) {
        if (v > 255) bad("input '" + name + "': element " + std::to_string(i) + " = " + std::to_string(v) + " is out of range for UINT8");
      }
      out[i] = static_cast<T>(v);
    }
  };
  switch (dtype) {
    case DType::kBool: copy(c.bool_contents()); return true;
    case DType::kI32: copy(c.int_contents()); return true;
    case DType::kI64: copy(c.int64_contents()); return true;
    case DType::kU8: copy(c.uint_contents()); return true;
    case DType::kF32: copy(c.fp32_contents()); return true;
    case DType::kF64: copy(c.fp64_contents()); return true;
    default: return false;
  }
}

const char* typed_field_name(DType dtype) {
  switch (dtype) {
    case DType::kBool: return "bool_contents";
    case DType::kI32: return "int_contents";
    case DType::kI64: return "int64_contents";
    case DType::kU8: return "uint_contents";
    case DType::kF32: return "fp32_contents";
    case DType::kF64: return "fp64_contents";
    default: return nullptr;
  }
}

std::vector<int64_t> shape_of(const ModelInferRequest::InferInputTensor& t) {
  return {t.shape().begin(), t.shape().end()};
}

// Checks that the data given for an input fills `shape` of `dtype`, before
// anything is allocated for it (the counts compared, not multiplied out).
void check_data_size(const WireInput& in, DType dtype, const std::vector<int64_t>& shape) {
  const std::string& name = in.tensor.name();
  int64_t numel = element_count(shape);
  if (numel < 0) bad("input '" + name + "': shape " + shape_text(shape) + " is too large");
  size_t elements = static_cast<size_t>(numel);
  if (in.raw) {
    if (typed_count(in.tensor.contents()) > 0) bad("input '" + name + "' has both contents and raw_input_contents");
    size_t size = size_of(dtype);
    if (in.raw->size() % size != 0 || in.raw->size() / size != elements) {
      bad("input '" + name + "': raw_input_contents holds " + std::to_string(in.raw->size()) + " bytes but " +
          kserve_datatype(dtype) + shape_text(shape) +
          (elements <= (size_t{1} << 40) ? " needs " + std::to_string(elements * size) : std::string(" needs far more")));
    }
    return;
  }
  const char* field = typed_field_name(dtype);
  if (!field) bad("input '" + name + "': " + kserve_datatype(dtype) + " has no typed contents: send it in raw_input_contents");
  if (typed_count(in.tensor.contents()) != elements) {
    bad("input '" + name + "': shape " + shape_text(shape) + " needs " + std::to_string(numel) + " values in " + field +
        ", got " + std::to_string(typed_count(in.tensor.contents())) + " values");
  }
}

void fill(HostTensor& t, const WireInput& in) {
  if (in.raw) {
    std::memcpy(t.raw_data(), in.raw->data(), in.raw->size());
    return;
  }
  size_t given = 0;
  visit_dtype(t.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same_v<T, bool> || std::is_integral_v<T> || std::is_floating_point_v<T>) {
      copy_typed<T>(in.tensor.contents(), t.dtype(), t.data<T>(), static_cast<size_t>(t.numel()), in.tensor.name(), given);
    }
  });
  if (given != static_cast<size_t>(t.numel())) {
    bad("input '" + in.tensor.name() + "': expected " + std::to_string(t.numel()) + " values in " +
        typed_field_name(t.dtype()) + ", got " + std::to_string(given) + " (values of another datatype's field?)");
  }
}

// The request's inputs, checked as HTTP checks them, in the model's order.
std::vector<HostTensor> infer_inputs(const ModelInferRequest& r, const ModelSignature& model, int64_t max_rows) {
  InferInputs checked(model, max_rows, 0);  // check_data_size bounds each input by what the message carries
  for (const WireInput& in : wire_inputs(r)) {
    std::vector<int64_t> shape = shape_of(in.tensor);
    const TensorSpec& spec = checked.check(in.tensor.name(), in.tensor.datatype(), shape);
    check_data_size(in, spec.dtype, shape);
    fill(checked.add(in.tensor.name(), in.tensor.datatype(), shape), in);
  }
  std::vector<HostTensor> inputs = checked.finish();
  for (const auto& o : r.outputs()) InferInputs::check_output(model, o.name());
  return inputs;
}

void set_bool(google::protobuf::Map<std::string, InferParameter>& parameters, const std::string& key, bool value) {
  parameters[key].set_bool_param(value);
}

void fill_infer_response(ModelInferResponse& out, const ModelSignature& model, const std::string& id,
                         const std::vector<HostTensor>& outputs) {
  MESHRT_CHECK(outputs.size() == model.outputs.size(), ErrorKind::kInternal, "model '", model.name, "' has ",
               model.outputs.size(), " outputs but ", outputs.size(), " came");
  out.set_model_name(model.name);
  out.set_model_version(model.version);
  if (!id.empty()) out.set_id(id);
  for (size_t i = 0; i < outputs.size(); ++i) add_raw_output(out, model.outputs[i].name, outputs[i]);
}

// Triton's serialized BYTES element: a 4-byte little-endian length, then the bytes.
std::string serialized_bytes(const std::string& text) {
  uint32_t n = static_cast<uint32_t>(text.size());
  std::string out(4, '\0');
  for (int i = 0; i < 4; ++i) out[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + text;
}

// The one string of a BYTES input (bytes_contents, or raw as Triton serializes it).
std::string text_of(const WireInput& in) {
  const std::string& name = in.tensor.name();
  if (in.tensor.datatype() != "BYTES") bad("input '" + name + "' must be BYTES, got " + in.tensor.datatype());
  if (in.raw) {
    const std::string& raw = *in.raw;
    if (raw.size() < 4) bad("input '" + name + "': raw BYTES data must start with a 4-byte length");
    uint32_t n = 0;
    for (int i = 0; i < 4; ++i) n |= static_cast<uint32_t>(static_cast<unsigned char>(raw[static_cast<size_t>(i)])) << (8 * i);
    if (raw.size() != 4 + static_cast<size_t>(n)) {
      bad("input '" + name + "': one BYTES element expected: its 4-byte length says " + std::to_string(n) + " bytes, " +
          std::to_string(raw.size() - 4) + " follow");
    }
    return raw.substr(4);
  }
  if (in.tensor.contents().bytes_contents_size() != 1) {
    bad("input '" + name + "': one BYTES element expected in bytes_contents, got " +
        std::to_string(in.tensor.contents().bytes_contents_size()));
  }
  return in.tensor.contents().bytes_contents(0);
}

// A number as it came: integers exactly (a seed may need all 64 bits), or a real.
using Number = std::variant<int64_t, uint64_t, double>;

// A numeric input of any numeric datatype, its elements as they are.
std::vector<Number> numbers_of(const WireInput& in) {
  DType dtype;
  try {
    dtype = parse_kserve_datatype(in.tensor.datatype());
  } catch (const Error& e) {
    bad("input '" + in.tensor.name() + "': " + e.message());
  }
  std::vector<int64_t> shape = shape_of(in.tensor);
  check_data_size(in, dtype, shape);  // the elements are those the message carries: bounded
  HostTensor t = HostTensor::empty(Shape(shape), dtype);
  fill(t, in);
  std::vector<Number> out;
  out.reserve(static_cast<size_t>(t.numel()));
  visit_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* p = t.data<T>();
    for (int64_t i = 0; i < t.numel(); ++i) {
      if constexpr (std::is_integral_v<T>) {
        out.emplace_back(static_cast<int64_t>(p[i]));
      } else {
        out.emplace_back(static_cast<double>(static_cast<float>(p[i])));
        if constexpr (std::is_same_v<T, double>) out.back() = p[i];
      }
    }
  });
  return out;
}

// An integer field: exact, or a whole real within int64's range.
int64_t integer(const Number& v, const std::string& key) {
  if (auto* i = std::get_if<int64_t>(&v)) return *i;
  if (auto* u = std::get_if<uint64_t>(&v)) {
    if (*u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) bad("\"" + key + "\" is out of range");
    return static_cast<int64_t>(*u);
  }
  double d = std::get<double>(v);
  if (!(d >= -9.2e18 && d <= 9.2e18) || d != std::floor(d)) bad("\"" + key + "\" must be an integer, got " + std::to_string(d));
  return static_cast<int64_t>(d);
}

double real(const Number& v) {
  if (auto* i = std::get_if<int64_t>(&v)) return static_cast<double>(*i);
  if (auto* u = std::get_if<uint64_t>(&v)) return static_cast<double>(*u);
  return std::get<double>(v);
}

// A generation request from a stream request: inputs and parameters named as
// the HTTP generate fields.
GenerateRequest generate_request_from(const ModelInferRequest& r) {
  GenerateRequest out;
  auto set = [&](const std::string& key, const std::vector<Number>& values) {
    if (key == "input_ids" || key == "stop_token_ids") {
      std::vector<int64_t> ids;
      for (const Number& v : values) ids.push_back(integer(v, key));
      (key == "input_ids" ? out.input_ids : out.stop_token_ids) = ids;
      return;
    }
    if (values.size() != 1) bad("\"" + key + "\" takes one value, got " + std::to_string(values.size()));
    const Number& v = values[0];
    if (key == "max_tokens") {
      out.max_tokens = integer(v, key);
    } else if (key == "temperature") {
      out.temperature = real(v);
    } else if (key == "top_k") {
      out.top_k = integer(v, key);
    } else if (key == "top_p") {
      out.top_p = real(v);
    } else if (key == "seed") {
      if (auto* u = std::get_if<uint64_t>(&v)) {
        out.seed = *u;
      } else {
        int64_t seed = integer(v, key);
        if (seed < 0) bad("\"seed\" must be a non-negative integer");
        out.seed = static_cast<uint64_t>(seed);
      }
    } else {
      bad("unknown input or parameter '" + key + "' (a generation takes input_ids or text_input, max_tokens, "
          "temperature, top_k, top_p, seed, stop_token_ids)");
    }
  };
  for (const WireInput& in : wire_inputs(r)) {
    if (in.tensor.name() == "text_input") {
      out.text_input = text_of(in);
    } else {
      set(in.tensor.name(), numbers_of(in));
    }
  }
  for (const auto& [key, p] : r.parameters()) {
    // Triton's own flags and the binary-output switch say nothing about the generation.
    if (key.rfind("triton_", 0) == 0 || key == "binary_data_output" || key == "streaming") continue;
    switch (p.parameter_choice_case()) {
      case InferParameter::kInt64Param: set(key, {Number(p.int64_param())}); break;
      case InferParameter::kUint64Param: set(key, {Number(p.uint64_param())}); break;
      case InferParameter::kDoubleParam: set(key, {Number(p.double_param())}); break;
      default: bad("parameter '" + key + "' must be a number");
    }
  }
  if (out.input_ids.empty() && !out.text_input) bad("the request needs an input \"input_ids\" (token ids) or \"text_input\"");
  if (!out.input_ids.empty() && out.text_input) bad("give \"input_ids\" or \"text_input\", not both");
  return out;
}

}  // namespace

struct GrpcFrontend::Service : inference::GRPCInferenceService::CallbackService {
  Service(Frontend& core, Metrics& metrics) : core_(core), metrics_(metrics) {}

  Frontend& core_;
  Metrics& metrics_;
  std::atomic<size_t> in_flight_{0};

  // Finishes a unary call, counting it.
  void finish(grpc::ServerUnaryReactor* reactor, const char* method, const grpc::Status& status) {
    counted(method, status);
    reactor->Finish(status);
  }

  // Counts a call and, at --log-verbose 1, logs it (as HTTP logs each request).
  void counted(const char* method, const grpc::Status& status) {
    metrics_.grpc_request(method, rpc::code_name(status.error_code()));
    if (log::verbose_enabled(1)) {
      log::verbose(1, detail::cat("gRPC ", method, ": ", rpc::code_name(status.error_code()),
                                  status.ok() ? "" : ": " + status.error_message()));
    }
  }

  // The model a call names, or -1 after finishing the call with NOT_FOUND.
  int find_or_finish(grpc::ServerUnaryReactor* reactor, const char* method, const std::string& name,
                     const std::string& version) {
    std::string error;
    int model = core_.find(name, version, &error);
    if (model < 0) finish(reactor, method, rpc::status_for_http(404, error));
    return model;
  }

  grpc::ServerUnaryReactor* ServerLive(grpc::CallbackServerContext* context, const inference::ServerLiveRequest*,
                                       inference::ServerLiveResponse* response) override {
    response->set_live(true);
    auto* reactor = context->DefaultReactor();
    finish(reactor, "ServerLive", grpc::Status::OK);
    return reactor;
  }

  grpc::ServerUnaryReactor* ServerReady(grpc::CallbackServerContext* context, const inference::ServerReadyRequest*,
                                        inference::ServerReadyResponse* response) override {
    response->set_ready(core_.ready());
    auto* reactor = context->DefaultReactor();
    finish(reactor, "ServerReady", grpc::Status::OK);
    return reactor;
  }

  grpc::ServerUnaryReactor* ModelReady(grpc::CallbackServerContext* context, const inference::ModelReadyRequest* request,
                                       inference::ModelReadyResponse* response) override {
    auto* reactor = context->DefaultReactor();
    int model = find_or_finish(reactor, "ModelReady", request->name(), request->version());
    if (model < 0) return reactor;
    response->set_ready(core_.model_ready(model, nullptr));
    finish(reactor, "ModelReady", grpc::Status::OK);
    return reactor;
  }

  grpc::ServerUnaryReactor* ServerMetadata(grpc::CallbackServerContext* context, const inference::ServerMetadataRequest*,
                                           inference::ServerMetadataResponse* response) override {
    const ServerIdentity& id = server_identity();
    response->set_name(id.name);
    response->set_version(id.version);
    for (const std::string& e : id.extensions) response->add_extensions(e);
    auto* reactor = context->DefaultReactor();
    finish(reactor, "ServerMetadata", grpc::Status::OK);
    return reactor;
  }

  grpc::ServerUnaryReactor* ModelMetadata(grpc::CallbackServerContext* context,
                                          const inference::ModelMetadataRequest* request,
                                          inference::ModelMetadataResponse* response) override {
    auto* reactor = context->DefaultReactor();
    int model = find_or_finish(reactor, "ModelMetadata", request->name(), request->version());
    if (model < 0) return reactor;
    const ModelSignature& s = core_.signature(model);
    response->set_name(s.name);
    for (const std::string& v : core_.versions(s.name)) response->add_versions(v);
    response->set_platform("meshrt");
    auto add = [](const TensorSpec& spec, inference::ModelMetadataResponse::TensorMetadata* t) {
      t->set_name(spec.name);
      t->set_datatype(kserve_datatype(spec.dtype));
      for (int64_t d : spec.shape) t->add_shape(d);
    };
    for (const TensorSpec& t : s.inputs) add(t, response->add_inputs());
    for (const TensorSpec& t : s.outputs) add(t, response->add_outputs());
    finish(reactor, "ModelMetadata", grpc::Status::OK);
    return reactor;
  }

  grpc::ServerUnaryReactor* ModelConfig(grpc::CallbackServerContext* context,
                                        const inference::ModelConfigRequest* request,
                                        inference::ModelConfigResponse* response) override {
    auto* reactor = context->DefaultReactor();
    int model = find_or_finish(reactor, "ModelConfig", request->name(), request->version());
    if (model < 0) return reactor;
    const TritonModelConfig c = core_.config(model);
    inference::ModelConfig* out = response->mutable_config();
    out->set_name(c.name);
    out->set_platform(c.platform);
    out->set_backend(c.backend);
    switch (c.version_policy.kind) {
      case VersionPolicy::Kind::kAll: out->mutable_version_policy()->mutable_all(); break;
      case VersionPolicy::Kind::kSpecific:
        for (int64_t v : c.version_policy.versions) out->mutable_version_policy()->mutable_specific()->add_versions(v);
        break;
      case VersionPolicy::Kind::kLatest:
        out->mutable_version_policy()->mutable_latest()->set_num_versions(
            static_cast<uint32_t>(c.version_policy.num_versions));
        break;
    }
    out->set_max_batch_size(static_cast<int32_t>(c.max_batch_size));
    // ModelInput and ModelOutput share these fields.
    auto tensor = [](const TritonTensorConfig& t, auto* m) {
      m->set_name(t.name);
      m->set_data_type(static_cast<inference::DataType>(triton_data_type_number(t.dtype)));
      for (int64_t d : t.dims) m->add_dims(d);
    };
    for (const TritonTensorConfig& t : c.inputs) {
      inference::ModelInput* in = out->add_input();
      tensor(t, in);
      in->set_optional(t.optional);
    }
    for (const TritonTensorConfig& t : c.outputs) tensor(t, out->add_output());
    if (c.dynamic_batching) {
      inference::ModelDynamicBatching* b = out->mutable_dynamic_batching();
      for (int64_t size : c.preferred_batch_sizes) b->add_preferred_batch_size(static_cast<int32_t>(size));
      b->set_max_queue_delay_microseconds(static_cast<uint64_t>(c.max_queue_delay_us));
    }
    inference::ModelInstanceGroup* group = out->add_instance_group();
    group->set_name(c.name);
    group->set_kind(c.gpu ? inference::ModelInstanceGroup::KIND_GPU : inference::ModelInstanceGroup::KIND_CPU);
    group->set_count(1);
    (*out->mutable_parameters())["rank_size"].set_string_value(std::to_string(c.rank_size));
    (*out->mutable_parameters())["stage_size"].set_string_value(std::to_string(c.stage_size));
    finish(reactor, "ModelConfig", grpc::Status::OK);
    return reactor;
  }

  grpc::ServerUnaryReactor* ModelStatistics(grpc::CallbackServerContext* context,
                                            const inference::ModelStatisticsRequest* request,
                                            inference::ModelStatisticsResponse* response) override {
    auto* reactor = context->DefaultReactor();
    // A named model (and version) must exist; no name: every model.
    if (!request->name().empty() &&
        find_or_finish(reactor, "ModelStatistics", request->name(), request->version()) < 0) {
      return reactor;
    }
    auto duration = [](const DurationStat& d, inference::StatisticDuration* out) {
      out->set_count(d.count);
      out->set_ns(d.ns);
    };
    for (const serving::ModelStatistics& s : core_.statistics(request->name(), request->version())) {
      inference::ModelStatistics* m = response->add_model_stats();
      m->set_name(s.name);
      m->set_version(s.version);
      m->set_last_inference(s.last_inference_ms);
      m->set_inference_count(s.inference_count);
      m->set_execution_count(s.execution_count);
      inference::InferStatistics* i = m->mutable_inference_stats();
      duration(s.success, i->mutable_success());
      duration(s.fail, i->mutable_fail());
      duration(s.queue, i->mutable_queue());
      duration(s.compute_input, i->mutable_compute_input());
      duration(s.compute_infer, i->mutable_compute_infer());
      duration(s.compute_output, i->mutable_compute_output());
      duration(s.cache_hit, i->mutable_cache_hit());
      duration(s.cache_miss, i->mutable_cache_miss());
      for (const auto& [size, b] : s.batches) {
        inference::InferBatchStatistics* bs = m->add_batch_stats();
        bs->set_batch_size(static_cast<uint64_t>(size));
        duration(b.compute_input, bs->mutable_compute_input());
        duration(b.compute_infer, bs->mutable_compute_infer());
        duration(b.compute_output, bs->mutable_compute_output());
      }
    }
    finish(reactor, "ModelStatistics", grpc::Status::OK);
    return reactor;
  }

  grpc::ServerUnaryReactor* RepositoryIndex(grpc::CallbackServerContext* context,
                                            const inference::RepositoryIndexRequest* request,
                                            inference::RepositoryIndexResponse* response) override {
    for (const RepositoryEntry& e : core_.repository_index(request->ready())) {
      inference::RepositoryIndexResponse::ModelIndex* m = response->add_models();
      m->set_name(e.name);
      m->set_version(e.version);
      m->set_state(e.state);
      m->set_reason(e.reason);
    }
    auto* reactor = context->DefaultReactor();
    finish(reactor, "RepositoryIndex", grpc::Status::OK);
    return reactor;
  }

  // Load and unload answer when done (on this callback thread: a load builds
  // the model on every rank first). Parameters are refused, as over HTTP.
  grpc::ServerUnaryReactor* RepositoryModelLoad(grpc::CallbackServerContext* context,
                                                const inference::RepositoryModelLoadRequest* request,
                                                inference::RepositoryModelLoadResponse*) override {
    return repository_action(context, "RepositoryModelLoad", request->model_name(), request->parameters_size(), true);
  }
  grpc::ServerUnaryReactor* RepositoryModelUnload(grpc::CallbackServerContext* context,
                                                  const inference::RepositoryModelUnloadRequest* request,
                                                  inference::RepositoryModelUnloadResponse*) override {
    return repository_action(context, "RepositoryModelUnload", request->model_name(), request->parameters_size(), false);
  }
  grpc::ServerUnaryReactor* repository_action(grpc::CallbackServerContext* context, const char* method,
                                              const std::string& model, int parameters, bool load) {
    Outcome o;
    if (parameters > 0) {
      o = {400, std::string(load ? "load" : "unload") + " '" + model +
                    "': parameters are not supported: meshrt loads the model's config and files from the repository"};
    } else {
      o = load ? core_.load_model(model) : core_.unload_model(model);
    }
    auto* reactor = context->DefaultReactor();
    finish(reactor, method, o.ok() ? grpc::Status::OK : rpc::status_for_http(o.status, o.error));
    return reactor;
  }

  // Checks and queues an infer request; done(outcome, model) once, from any
  // thread (model -1: no such model). Nothing thrown escapes: a bug is a 500.
  using InferAnswer = std::function<void(const Outcome&, int model)>;
  void start_infer(const ModelInferRequest& request, ModelInferResponse* response, InferAnswer done) {
    std::string error;
    int model = core_.find(request.model_name(), request.model_version(), &error);
    if (model < 0) return done({404, error}, -1);
    const ModelSignature& signature = core_.signature(model);
    std::vector<HostTensor> inputs;
    try {
      inputs = infer_inputs(request, signature, core_.servable(model).batching.max_batch_size);
    } catch (const RequestError& e) {
      return done({e.status(), e.what()}, model);
    } catch (const Error& e) {
      return done({e.kind() == ErrorKind::kInternal ? 500 : 400, e.message()}, model);
    } catch (const std::exception& e) {
      return done({500, std::string("internal error: ") + e.what()}, model);
    }
    try {
      // (core_.infer calls done only once it queued the request, or to refuse it: a throw is before either.)
      core_.infer(model, std::move(inputs),
                  [&signature, id = request.id(), response, done, model](const Outcome& outcome, std::vector<HostTensor> outputs) {
                    if (!outcome.ok()) return done(outcome, model);
                    try {
                      fill_infer_response(*response, signature, id, outputs);
                    } catch (const std::exception& e) {
                      return done({500, std::string("internal error: ") + e.what()}, model);
                    }
                    done({}, model);
                  });
    } catch (const std::exception& e) {
      done({500, std::string("internal error: ") + e.what()}, model);
    }
  }

  grpc::ServerUnaryReactor* ModelInfer(grpc::CallbackServerContext* context, const ModelInferRequest* request,
                                       ModelInferResponse* response) override {
    auto* reactor = context->DefaultReactor();
    ++in_flight_;
    auto arrival = Frontend::Clock::now();
    start_infer(*request, response, [this, reactor, arrival](const Outcome& outcome, int model) {
      if (model >= 0) core_.answered(model, outcome.status, arrival);
      finish(reactor, "ModelInfer", outcome.ok() ? grpc::Status::OK : rpc::status_for_http(outcome.status, outcome.error));
      --in_flight_;
    });
    return reactor;
  }

  class Stream;
  grpc::ServerBidiReactor<ModelInferRequest, ModelStreamInferResponse>* ModelStreamInfer(
      grpc::CallbackServerContext* context) override;
};

// One ModelStreamInfer call: reads requests one after the other, starts each,
// and writes responses in the order they are ready, one write at a time.
// Owned by itself (and by the callbacks of its requests) until gRPC is done
// with it and no request refers to it. At most kMaxPending requests of a
// stream are in progress: past that it reads no more until one is answered
// (a client that sends without reading cannot grow the server without bound).
// Each request in progress counts in the service's in_flight_ (an idle open
// stream does not: it does not hold a drain back).
class GrpcFrontend::Service::Stream : public grpc::ServerBidiReactor<ModelInferRequest, ModelStreamInferResponse> {
 public:
  static constexpr int kMaxPending = 64;

  explicit Stream(Service& service) : service_(service) {}

  void start(std::shared_ptr<Stream> self) {
    self_ = std::move(self);
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!ok || broken_ || finished_) {  // the client closed its side, or the stream is over
        reads_done_ = true;
        maybe_finish_locked();
        return;
      }
      ++pending_;
      ++service_.in_flight_;
    }
    handle(request_);
    request_.Clear();
    std::lock_guard<std::mutex> lock(mutex_);
    if (broken_ || finished_) {
      reads_done_ = true;
      maybe_finish_locked();
    } else if (pending_ < kMaxPending) {
      StartRead(&request_);
    } else {
      read_paused_ = true;  // resumed when a request is answered
    }
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mutex_);
    queue_.pop_front();
    writing_ = false;
    if (!ok) broken_ = true;  // the client is gone
    if (!broken_ && !queue_.empty()) {
      writing_ = true;
      StartWrite(&queue_.front());
      return;
    }
    maybe_finish_locked();
  }

  void OnCancel() override {
    std::lock_guard<std::mutex> lock(mutex_);
    broken_ = true;
    maybe_finish_locked();
  }

  void OnDone() override {
    std::shared_ptr<Stream> last = std::move(self_);  // may destroy this when it returns
  }

 private:
  // Queues a response; false once the stream is broken or finished (stop producing).
  // A request ends with its last response, or with the first response that
  // cannot be sent (its producer stops at that false): it leaves pending_ then.
  bool send(ModelStreamInferResponse response, bool last_of_request) {
    std::lock_guard<std::mutex> lock(mutex_);
    bool open = !broken_ && !finished_;
    if (last_of_request || !open) {
      --pending_;
      --service_.in_flight_;
      if (read_paused_ && open) {
        read_paused_ = false;
        StartRead(&request_);
      }
    }
    if (!open) {
      maybe_finish_locked();
      return false;
    }
    queue_.push_back(std::move(response));
    if (!writing_) {
      writing_ = true;
      StartWrite(&queue_.front());
    }
    if (last_of_request) maybe_finish_locked();
    return true;
  }

  // Finishes when nothing more can come: the client closed its side and every
  // request was answered and written, or the stream broke (no write pending).
  // A paused read (kMaxPending) counts as outstanding: the stream goes on.
  void maybe_finish_locked() {
    if (finished_ || writing_) return;
    if (broken_) {
      finished_ = true;
      grpc::Status cancelled(grpc::StatusCode::CANCELLED, "the stream was cancelled");
      Finish(cancelled);
      service_.counted("ModelStreamInfer", cancelled);
    } else if (reads_done_ && pending_ == 0 && queue_.empty()) {
      finished_ = true;
      Finish(grpc::Status::OK);
      service_.counted("ModelStreamInfer", grpc::Status::OK);
    }
  }

  static ModelStreamInferResponse error_response(const std::string& id, const std::string& model, const Outcome& outcome) {
    ModelStreamInferResponse r;
    r.set_error_message(std::string(rpc::code_name(rpc::status_code_for_http(outcome.status))) + ": " + outcome.error);
    r.mutable_infer_response()->set_id(id);
    r.mutable_infer_response()->set_model_name(model);
    return r;
  }

  // Starts one request; its last response is sent exactly once, whatever happens.
  void handle(const ModelInferRequest& request) {
    auto arrival = Frontend::Clock::now();
    try {
      std::string error;
      int model = service_.core_.find(request.model_name(), request.model_version(), &error);
      if (model >= 0 && service_.core_.generates(model)) return generate(model, request, arrival);
      // One response for one request, flagged final.
      auto response = std::make_shared<ModelStreamInferResponse>();
      std::shared_ptr<Stream> self = self_;
      service_.start_infer(request, response->mutable_infer_response(),
                           [self, response, id = request.id(), name = request.model_name(), arrival, this](
                               const Outcome& outcome, int model) {
                             if (model >= 0) service_.core_.answered(model, outcome.status, arrival);
                             if (!outcome.ok()) {
                               send(error_response(id, name, outcome), true);
                               return;
                             }
                             set_bool(*response->mutable_infer_response()->mutable_parameters(), "triton_final_response", true);
                             send(std::move(*response), true);
                           });
    } catch (const std::exception& e) {
      send(error_response(request.id(), request.model_name(), {500, std::string("internal error: ") + e.what()}), true);
    }
  }

  // A generation: its request is checked here (400 as an error response),
  // then each token is a response, then the final one.
  void generate(int model, const ModelInferRequest& request, Frontend::Clock::time_point arrival) {
    std::shared_ptr<Stream> self = self_;
    const ModelSignature& signature = service_.core_.signature(model);
    std::string id = request.id();
    auto refuse = [&](const Outcome& outcome) {
      service_.core_.answered(model, outcome.status, arrival);
      send(error_response(id, signature.name, outcome), true);
    };
    GenerateRequest parsed;
    try {
      parsed = generate_request_from(request);
    } catch (const RequestError& e) {
      return refuse({e.status(), e.what()});
    } catch (const Error& e) {
      return refuse({400, e.message()});
    }
    auto tokenizer = std::make_shared<std::shared_ptr<const models::Tokenizer>>();
    auto text = std::make_shared<std::unique_ptr<models::DecodeStream>>();
    auto base = [&signature, id]() {
      ModelStreamInferResponse r;
      ModelInferResponse* out = r.mutable_infer_response();
      out->set_model_name(signature.name);
      out->set_model_version(signature.version);
      if (!id.empty()) out->set_id(id);
      return r;
    };
    Outcome admitted = service_.core_.generate(
        model, std::move(parsed),
        [this, self, base, tokenizer, text, model, arrival](const GenerateUpdate& u) {
          if (u.done()) service_.core_.lasted(model, arrival, u.status == 200);
          if (u.status != 200) {
            ModelStreamInferResponse r = base();
            r.set_error_message(std::string(rpc::code_name(rpc::status_code_for_http(u.status))) + ": " + u.error);
            send(std::move(r), true);
            return false;
          }
          if (*tokenizer && !*text) *text = std::make_unique<models::DecodeStream>(**tokenizer);
          if (!u.tokens.empty()) {
            ModelStreamInferResponse r = base();
            ModelInferResponse* out = r.mutable_infer_response();
            add_raw_output(*out, "output_ids", "INT64", {static_cast<int64_t>(u.tokens.size())},
                           std::string(reinterpret_cast<const char*>(u.tokens.data()), u.tokens.size() * sizeof(int64_t)));
            if (*text) add_raw_output(*out, "text_output", "BYTES", {1}, serialized_bytes((*text)->step(u.tokens)));
            set_bool(*out->mutable_parameters(), "triton_final_response", false);
            if (!send(std::move(r), false)) return false;  // the stream broke: the generation is cancelled
          }
          if (!u.done()) return true;
          ModelStreamInferResponse r = base();
          ModelInferResponse* out = r.mutable_infer_response();
          if (*text) {
            std::string rest = (*text)->finish();
            if (!rest.empty()) add_raw_output(*out, "text_output", "BYTES", {1}, serialized_bytes(rest));
          }
          set_bool(*out->mutable_parameters(), "triton_final_response", true);
          (*out->mutable_parameters())["finish_reason"].set_string_param(u.finish_reason);
          return send(std::move(r), true);
        },
        tokenizer.get());
    if (!admitted.ok()) return refuse(admitted);
    service_.core_.answered(model, 200);
  }

  Service& service_;
  std::shared_ptr<Stream> self_;
  ModelInferRequest request_;
  std::mutex mutex_;
  std::deque<ModelStreamInferResponse> queue_;  // front: being written
  bool writing_ = false, reads_done_ = false, broken_ = false, finished_ = false, read_paused_ = false;
  int pending_ = 0;  // requests read whose last response is not queued yet
};

grpc::ServerBidiReactor<ModelInferRequest, ModelStreamInferResponse>* GrpcFrontend::Service::ModelStreamInfer(
    grpc::CallbackServerContext*) {
  auto stream = std::make_shared<Stream>(*this);
  stream->start(stream);
  return stream.get();
}

GrpcFrontend::GrpcFrontend(Frontend& core, Metrics& metrics, const rpc::ServerOptions& options)
    : service_(std::make_unique<Service>(core, metrics)),
      server_(std::make_unique<rpc::Server>(options, std::vector<grpc::Service*>{service_.get()})) {}

GrpcFrontend::~GrpcFrontend() { shutdown(std::chrono::milliseconds(0)); }

uint16_t GrpcFrontend::port() const { return server_->port(); }

size_t GrpcFrontend::in_flight() const { return service_->in_flight_.load(); }

void GrpcFrontend::shutdown(std::chrono::milliseconds grace) { server_->shutdown(grace); }

}  // namespace meshrt::serving

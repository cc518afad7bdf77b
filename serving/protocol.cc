#include "serving/protocol.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <variant>
#include <nlohmann/json.hpp>

#include "io/json_limits.h"

namespace meshrt::serving {

namespace {
using json = nlohmann::json;

struct DatatypeName {
  const char* name;
  DType dtype;
};
constexpr DatatypeName kDatatypes[] = {{"FP32", DType::kF32},  {"FP64", DType::kF64},   {"FP16", DType::kF16},
                                       {"BF16", DType::kBF16}, {"INT32", DType::kI32},  {"INT64", DType::kI64},
                                       {"UINT8", DType::kU8},  {"BOOL", DType::kBool}};

[[noreturn]] void bad(const std::string& message) { throw RequestError(400, message); }


// Flattens (possibly nested) JSON arrays of scalars into values, row-major.
void flatten(const json& v, std::vector<const json*>& out, const std::string& input, int depth) {
  if (depth > 32) bad("input '" + input + "': data is nested too deeply");
  if (v.is_array()) {
    for (const auto& e : v) flatten(e, out, input, depth + 1);
  } else {
    out.push_back(&v);
  }
}

template <class T>
T integer_value(const json& v, const std::string& input, size_t index, const char* datatype) {
  if (!v.is_number_integer()) {
    bad("input '" + input + "': element " + std::to_string(index) + " is " + io::json_limits::brief(v) + ", expected an integer for " + datatype);
  }
  if (v.is_number_unsigned()) {
    uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<T>::max())) {
      bad("input '" + input + "': element " + std::to_string(index) + " = " + io::json_limits::brief(v) + " is out of range for " + datatype);
    }
    return static_cast<T>(u);
  }
  int64_t i = v.get<int64_t>();
  if (i < static_cast<int64_t>(std::numeric_limits<T>::lowest()) ||
      (i > 0 && static_cast<uint64_t>(i) > static_cast<uint64_t>(std::numeric_limits<T>::max()))) {
    bad("input '" + input + "': element " + std::to_string(index) + " = " + io::json_limits::brief(v) + " is out of range for " + datatype);
  }
  return static_cast<T>(i);
}

double float_value(const json& v, const std::string& input, size_t index, const char* datatype) {
  if (!v.is_number()) {
    bad("input '" + input + "': element " + std::to_string(index) + " is " + io::json_limits::brief(v) + ", expected a number for " + datatype);
  }
  return v.get<double>();
}

template <class T>
constexpr bool kSixteenBitFloat = std::is_same_v<T, Half> || std::is_same_v<T, BFloat16>;

const char* largest_magnitude(const char* datatype) {
  std::string_view d = datatype;
  if (d == "FP16") return "65504";
  if (d == "BF16") return "3.3895e+38";
  return "3.40282e+38";
}

// One JSON value as element i of a T tensor; throws RequestError naming the input.
template <class T>
T element_from_json(const json& v, const std::string& input, size_t i, const char* datatype) {
  if constexpr (std::is_same_v<T, bool>) {
    if (!v.is_boolean()) {
      bad("input '" + input + "': element " + std::to_string(i) + " is " + io::json_limits::brief(v) +
          ", expected true or false for BOOL");
    }
    return v.get<bool>();
  } else if constexpr (std::is_integral_v<T>) {
    return integer_value<T>(v, input, i, datatype);
  } else {
    double d = float_value(v, input, i, datatype);
    T out = T(static_cast<float>(d));
    if constexpr (std::is_same_v<T, double>) out = d;
    // A finite JSON number that does not fit the datatype would become infinity
    // (and go back out as null): refuse it.
    if (!std::isfinite(static_cast<double>(static_cast<float>(out)))) {
      bad("input '" + input + "': element " + std::to_string(i) + " = " + io::json_limits::brief(v) + " is out of range for " +
          datatype + " (largest magnitude " + largest_magnitude(datatype) + ")");
    }
    return out;
  }
}

void fill_from_json(HostTensor& t, const std::vector<const json*>& values, const std::string& input) {
  const char* datatype = kserve_datatype(t.dtype());
  visit_dtype(t.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T* out = t.data<T>();
    for (size_t i = 0; i < values.size(); ++i) out[i] = element_from_json<T>(*values[i], input, i, datatype);
  });
}

json to_json_values(const HostTensor& t) {
  json data = json::array();
  visit_dtype(t.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* in = t.data<T>();
    for (int64_t i = 0; i < t.numel(); ++i) {
      if constexpr (kSixteenBitFloat<T>) {
        data.push_back(static_cast<float>(in[i]));
      } else {
        data.push_back(in[i]);
      }
    }
  });
  return data;
}

bool binary_flag(const json& parameters, const char* key) {
  return parameters.is_object() && parameters.contains(key) && parameters[key].is_boolean() && parameters[key].get<bool>();
}
}  // namespace

const char* kserve_datatype(DType dtype) {
  for (const auto& d : kDatatypes) {
    if (d.dtype == dtype) return d.name;
  }
  return "?";
}

DType parse_kserve_datatype(const std::string& name) {
  for (const auto& d : kDatatypes) {
    if (name == d.name) return d.dtype;
  }
  throw Error(ErrorKind::kInvalidArgument,
              "expected a datatype of FP32, FP64, FP16, BF16, INT32, INT64, UINT8 or BOOL, got \"" + name + "\"");
}

std::optional<size_t> parse_header_length(const std::optional<std::string>& value) {
  if (!value) return std::nullopt;
  const std::string& v = *value;
  bool digits = !v.empty() && v.size() <= 18 &&
                std::all_of(v.begin(), v.end(), [](unsigned char c) { return c >= '0' && c <= '9'; });
  if (!digits) bad("Inference-Header-Content-Length " + io::json_limits::brief(json(v)) + " is not a number (a byte count: digits only)");
  return static_cast<size_t>(std::stoull(v));
}

InferInputs::InferInputs(const ModelSignature& model, int64_t max_rows, size_t wire_bytes)
    : model_(model), max_rows_(max_rows), wire_bytes_(wire_bytes), inputs_(model.inputs.size()) {}

const TensorSpec& InferInputs::spec_of(const std::string& name) const {
  for (size_t k = 0; k < model_.inputs.size(); ++k) {
    if (model_.inputs[k].name != name) continue;
    if (inputs_[k].defined()) bad("input '" + name + "' is given twice");
    return model_.inputs[k];
  }
  std::string names;
  for (const TensorSpec& t : model_.inputs) names += (names.empty() ? "'" : ", '") + t.name + "'";
  bad("model '" + model_.name + "' has no input '" + name + "' (its input" + (model_.inputs.size() == 1 ? " is " : "s are ") +
      names + ")");
}

const TensorSpec& InferInputs::check_datatype(const std::string& name, const std::string& datatype) const {
  const TensorSpec& spec = spec_of(name);
  if (datatype != kserve_datatype(spec.dtype)) {
    bad("input '" + name + "': expected datatype " + kserve_datatype(spec.dtype) + ", got " + datatype);
  }
  return spec;
}

HostTensor& InferInputs::add(const std::string& name, const std::string& datatype, const std::vector<int64_t>& shape) {
  const TensorSpec& spec = check(name, datatype, shape);
  batch_rows_ = shape[0];
  HostTensor& t = inputs_[static_cast<size_t>(&spec - model_.inputs.data())];  // spec is an element of model_.inputs
  t = HostTensor::empty(Shape(shape), spec.dtype);
  return t;
}

const TensorSpec& InferInputs::check(const std::string& name, const std::string& datatype,
                                     const std::vector<int64_t>& shape) const {
  const TensorSpec& spec = check_datatype(name, datatype);
  // Elements counted without overflow: past the bound the input cannot have come.
  uint64_t elements = 1, past = bound() + 1;
  for (int64_t d : shape) {
    if (d < 0) bad("input '" + name + "': shape " + shape_text(shape) + " must hold non-negative integers");
    uint64_t extent = static_cast<uint64_t>(d);
    elements = extent > 0 && elements > past / extent ? past : elements * extent;
  }
  bool fits = shape.size() == spec.shape.size() && !shape.empty() && shape[0] >= 1;
  for (size_t d = 1; fits && d < shape.size(); ++d) fits = spec.shape[d] < 0 || shape[d] == spec.shape[d];
  if (!fits) {
    std::vector<int64_t> wanted(spec.shape.begin() + 1, spec.shape.end());
    std::string pattern = shape_text(wanted);
    pattern = wanted.empty() ? "[n]" : "[n, " + pattern.substr(1);
    bad("input '" + name + "': expected shape " + pattern + " with n >= 1 (the model's " + shape_text(spec.shape) +
        "), got " + shape_text(shape));
  }
  if (shape[0] > max_rows_) {
    bad("input '" + name + "': " + std::to_string(shape[0]) + " rows exceed the model's max_batch_size of " +
        std::to_string(max_rows_));
  }
  if (batch_rows_ >= 0 && shape[0] != batch_rows_) {
    bad("input '" + name + "' has " + std::to_string(shape[0]) + " rows but the inputs before it have " +
        std::to_string(batch_rows_) + " (one batch axis for all inputs)");
  }
  if (elements > bound()) {
    bad("input '" + name + "': shape " + shape_text(shape) + " holds more elements than the request's " +
        std::to_string(wire_bytes_) + " bytes can carry");
  }
  return spec;
}

std::vector<HostTensor> InferInputs::finish() {
  for (size_t k = 0; k < model_.inputs.size(); ++k) {
    if (!inputs_[k].defined() && !model_.inputs[k].optional) bad("input '" + model_.inputs[k].name + "' is missing");
  }
  return std::move(inputs_);
}

void InferInputs::check_output(const ModelSignature& model, const std::string& name) {
  std::string names;
  for (const TensorSpec& t : model.outputs) {
    if (t.name == name) return;
    names += (names.empty() ? "'" : ", '") + t.name + "'";
  }
  bad("model '" + model.name + "' has no output '" + name + "' (its output" + (model.outputs.size() == 1 ? " is " : "s are ") +
      names + ")");
}

InferRequest parse_infer_request(std::string_view body, std::optional<size_t> header_length,
                                 const ModelSignature& model, int64_t max_rows) {
  size_t json_bytes = body.size();
  if (header_length) {
    if (*header_length > body.size()) {
      bad("Inference-Header-Content-Length is " + std::to_string(*header_length) + " but the body has only " +
          std::to_string(body.size()) + " bytes");
    }
    json_bytes = *header_length;
  }
  json request;
  try {
    request = io::json_limits::parse(body.substr(0, json_bytes));
  } catch (const json::exception& e) {
    bad(std::string("the request body is not valid JSON: ") + e.what());
  } catch (const std::length_error& e) {
    bad(std::string("the request body is not accepted: ") + e.what());
  }
  if (!request.is_object()) bad("the request body must be a JSON object with \"inputs\"");
  InferRequest out;
  if (request.contains("id")) {
    if (!request["id"].is_string()) bad("\"id\" must be a string");
    out.id = request["id"].get<std::string>();
  }
  if (request.contains("parameters")) out.binary_output = binary_flag(request["parameters"], "binary_data_output");
  if (!request.contains("inputs") || !request["inputs"].is_array()) bad("the request has no \"inputs\" list");

  InferInputs checked(model, max_rows, body.size());
  size_t binary_at = json_bytes;  // where the next input's binary data starts
  for (const json& in : request["inputs"]) {
    if (!in.is_object() || !in.contains("name") || !in["name"].is_string()) bad("every input needs a \"name\" string");
    std::string name = in["name"].get<std::string>();
    checked.spec_of(name);
    if (!in.contains("datatype") || !in["datatype"].is_string()) bad("input '" + name + "': \"datatype\" is missing");
    std::string datatype = in["datatype"].get<std::string>();
    checked.check_datatype(name, datatype);
    if (!in.contains("shape") || !in["shape"].is_array()) bad("input '" + name + "': \"shape\" is missing");
    std::vector<int64_t> shape;
    for (const auto& d : in["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) bad("input '" + name + "': shape " + io::json_limits::brief(in["shape"]) + " must hold non-negative integers");
      shape.push_back(d.get<int64_t>());
    }
    HostTensor& t = checked.add(name, datatype, shape);
    bool binary = in.contains("parameters") && in["parameters"].is_object() && in["parameters"].contains("binary_data_size");
    if (binary) {
      const json& size = in["parameters"]["binary_data_size"];
      if (!size.is_number_unsigned()) bad("input '" + name + "': binary_data_size must be a non-negative integer");
      size_t bytes = size.get<size_t>();
      if (bytes != t.nbytes()) {
        bad("input '" + name + "': binary_data_size is " + std::to_string(bytes) + " bytes but " + datatype +
            shape_text(shape) + " needs " + std::to_string(t.nbytes()));
      }
      if (!header_length) bad("input '" + name + "' has binary data but the Inference-Header-Content-Length header is missing");
      if (binary_at + bytes > body.size()) {
        bad("input '" + name + "': the body ends after " + std::to_string(body.size() - binary_at) + " of its " +
            std::to_string(bytes) + " binary bytes");
      }
      std::memcpy(t.raw_data(), body.data() + binary_at, bytes);
      binary_at += bytes;
      if (in.contains("data")) bad("input '" + name + "' has both binary data and \"data\"");
    } else {
      if (!in.contains("data")) bad("input '" + name + "' has no \"data\" (and no binary_data_size)");
      std::vector<const json*> values;
      flatten(in["data"], values, name, 0);
      if (static_cast<int64_t>(values.size()) != t.numel()) {
        bad("input '" + name + "': shape " + shape_text(shape) + " needs " + std::to_string(t.numel()) + " values, got " +
            std::to_string(values.size()));
      }
      fill_from_json(t, values, name);
    }
  }
  out.inputs = checked.finish();
  if (binary_at != body.size()) {
    bad("the body has " + std::to_string(body.size() - binary_at) + " bytes after the JSON header and the inputs' binary data");
  }
  if (request.contains("outputs")) {
    if (!request["outputs"].is_array()) bad("\"outputs\" must be a list");
    for (const json& o : request["outputs"]) {
      if (!o.is_object() || !o.contains("name") || !o["name"].is_string()) bad("every requested output needs a \"name\"");
      InferInputs::check_output(model, o["name"].get<std::string>());
      if (o.contains("parameters") && o["parameters"].is_object() && o["parameters"].contains("binary_data")) {
        out.binary_output = binary_flag(o["parameters"], "binary_data");
      }
    }
  }
  return out;
}

namespace {
// A message whose list `list` (inputs or outputs) holds the named tensors: their
// values in the JSON, or, binary, their bytes after the JSON header in order.
HttpPayload with_tensors(json message, const char* list, const std::vector<std::pair<std::string, HostTensor>>& tensors,
                         bool binary) {
  json entries = json::array();
  for (const auto& [name, t] : tensors) {
    json entry = {{"name", name}, {"datatype", kserve_datatype(t.dtype())}, {"shape", t.shape().dims()}};
    if (binary) {
      entry["parameters"] = {{"binary_data_size", t.nbytes()}};
    } else {
      entry["data"] = to_json_values(t);
    }
    entries.push_back(std::move(entry));
  }
  message[list] = std::move(entries);
  HttpPayload payload;
  payload.body = io::json_limits::dump(message);
  if (binary) {
    payload.header_length = payload.body.size();
    for (const auto& [name, t] : tensors) payload.body.append(static_cast<const char*>(t.raw_data()), t.nbytes());
    payload.content_type = "application/octet-stream";
  }
  return payload;
}

json tensor_metadata(const TensorSpec& t) {
  json j{{"name", t.name}, {"datatype", kserve_datatype(t.dtype)}, {"shape", t.shape}};
  if (t.optional) j["optional"] = true;
  return j;
}

TensorSpec tensor_spec(const json& t) {
  TensorSpec s{t.at("name").get<std::string>(), parse_kserve_datatype(t.at("datatype").get<std::string>()),
               t.at("shape").get<std::vector<int64_t>>()};
  s.optional = t.contains("optional") && t["optional"].is_boolean() && t["optional"].get<bool>();
  return s;
}
}  // namespace

HttpPayload make_infer_response(const ModelSignature& model, const InferRequest& request,
                                const std::vector<HostTensor>& outputs) {
  MESHRT_CHECK(outputs.size() == model.outputs.size(), ErrorKind::kInternal, "model '", model.name, "' has ",
               model.outputs.size(), " outputs but ", outputs.size(), " came");
  json response = {{"model_name", model.name}, {"model_version", model.version}};
  if (!request.id.empty()) response["id"] = request.id;
  std::vector<std::pair<std::string, HostTensor>> named;
  for (size_t i = 0; i < outputs.size(); ++i) named.emplace_back(model.outputs[i].name, outputs[i]);
  return with_tensors(std::move(response), "outputs", named, request.binary_output);
}

std::string model_metadata_json(const ModelSignature& model, const std::string& unavailable,
                                const std::vector<std::string>& versions) {
  json inputs = json::array(), outputs = json::array(), parameters = json::object();
  for (const TensorSpec& t : model.inputs) inputs.push_back(tensor_metadata(t));
  for (const TensorSpec& t : model.outputs) outputs.push_back(tensor_metadata(t));
  for (const auto& [key, value] : model.parameters) {
    std::visit([&, key = key](const auto& v) { parameters[key] = v; }, value);
  }
  json m = {{"name", model.name}, {"versions", versions.empty() ? json::array({model.version}) : json(versions)},
            {"platform", "meshrt"},
            {"inputs", inputs},   {"outputs", outputs},                        {"parameters", parameters}};
  if (!unavailable.empty()) {
    m["state"] = "UNAVAILABLE";
    m["reason"] = unavailable;
  }
  return io::json_limits::dump(m);
}

ModelSignature parse_model_metadata(std::string_view body) {
  try {
    json m = io::json_limits::parse(body);
    ModelSignature s;
    s.name = m.at("name").get<std::string>();
    if (m.contains("versions") && !m["versions"].empty()) s.version = m["versions"].at(0).get<std::string>();
    for (const json& t : m.at("inputs")) s.inputs.push_back(tensor_spec(t));
    for (const json& t : m.at("outputs")) s.outputs.push_back(tensor_spec(t));
    if (s.inputs.empty() || s.outputs.empty()) throw std::length_error("a model needs an input and an output");
    return s;
  } catch (const std::exception& e) {
    throw Error(ErrorKind::kInvalidArgument, std::string("malformed model metadata: ") + e.what());
  }
}

HttpPayload make_infer_request(const TensorSpec& input, const HostTensor& data, bool binary, const std::string& id) {
  json request = json::object();
  if (!id.empty()) request["id"] = id;
  if (binary) request["parameters"] = {{"binary_data_output", true}};
  return with_tensors(std::move(request), "inputs", {{input.name, data}}, binary);
}

HostTensor parse_infer_response(std::string_view body, std::optional<size_t> header_length) {
  try {
    size_t json_bytes = header_length.value_or(body.size());
    if (json_bytes > body.size()) throw std::length_error("the header length runs past the body");
    json out = io::json_limits::parse(body.substr(0, json_bytes)).at("outputs").at(0);
    std::string name = out.at("name").get<std::string>();
    std::vector<int64_t> shape = out.at("shape").get<std::vector<int64_t>>();
    HostTensor t = HostTensor::empty(Shape(shape), parse_kserve_datatype(out.at("datatype").get<std::string>()));
    if (out.contains("data")) {
      std::vector<const json*> values;
      flatten(out["data"], values, name, 0);
      if (static_cast<int64_t>(values.size()) != t.numel()) throw std::length_error("data does not fill the shape");
      fill_from_json(t, values, name);
    } else {
      if (body.size() - json_bytes != t.nbytes()) throw std::length_error("binary data does not fill the shape");
      std::memcpy(t.raw_data(), body.data() + json_bytes, t.nbytes());
    }
    return t;
  } catch (const std::exception& e) {
    throw Error(ErrorKind::kInvalidArgument, std::string("malformed inference response: ") + e.what());
  }
}

std::string model_ready_json(const std::string& name, bool ready, const std::string& reason) {
  json j{{"name", name}, {"ready", ready}};
  if (!reason.empty()) j["reason"] = reason;
  return io::json_limits::dump(j);
}

const ServerIdentity& server_identity() {
  static const ServerIdentity identity{"meshrt", "0.1.0", {"binary_tensor_data", "model_configuration", "statistics"}};
  return identity;
}

std::string server_metadata_json() {
  const ServerIdentity& id = server_identity();
  return json{{"name", id.name}, {"version", id.version}, {"extensions", id.extensions}}.dump();
}

GenerateRequest parse_generate_request(std::string_view body) {
  json request;
  try {
    request = io::json_limits::parse(body);
  } catch (const json::exception& e) {
    bad(std::string("the body is not valid JSON: ") + e.what());
  } catch (const std::length_error& e) {
    bad(e.what());
  }
  if (!request.is_object()) bad("the body must be a JSON object with \"input_ids\" or \"text_input\"");
  GenerateRequest out;
  auto integers = [](const json& v, const std::string& field) {
    if (!v.is_array()) bad("\"" + field + "\" must be a list of token ids, got " + io::json_limits::brief(v));
    std::vector<int64_t> ids;
    for (const json& x : v) {
      if (!x.is_number_integer()) bad("\"" + field + "\" must hold integers, got " + io::json_limits::brief(x));
      ids.push_back(x.get<int64_t>());
    }
    return ids;
  };
  auto number = [](const json& v, const std::string& field) {
    if (!v.is_number()) bad("\"" + field + "\" must be a number, got " + io::json_limits::brief(v));
    return v.get<double>();
  };
  auto integer = [](const json& v, const std::string& field) {
    if (!v.is_number_integer()) bad("\"" + field + "\" must be an integer, got " + io::json_limits::brief(v));
    return v.get<int64_t>();
  };
  auto field = [&](const std::string& key, const json& v) {
    if (key == "input_ids") {
      out.input_ids = integers(v, key);
    } else if (key == "text_input") {
      if (!v.is_string()) bad("\"text_input\" must be a string");
      out.text_input = v.get<std::string>();
    } else if (key == "max_tokens") {
      out.max_tokens = integer(v, key);
    } else if (key == "temperature") {
      out.temperature = number(v, key);
    } else if (key == "top_k") {
      out.top_k = integer(v, key);
    } else if (key == "top_p") {
      out.top_p = number(v, key);
    } else if (key == "seed") {
      if (!v.is_number_integer() || (v.is_number_integer() && !v.is_number_unsigned() && v.get<int64_t>() < 0)) {
        bad("\"seed\" must be a non-negative integer, got " + io::json_limits::brief(v));
      }
      out.seed = v.get<uint64_t>();
    } else if (key == "stop_token_ids") {
      out.stop_token_ids = integers(v, key);
    } else if (key == "id" || key == "stream") {
      // the request's id (not echoed) and Triton's stream flag (the route decides)
    } else {
      bad("unknown field \"" + key + "\" (the generate fields: input_ids or text_input, max_tokens, temperature, "
          "top_k, top_p, seed, stop_token_ids)");
    }
  };
  for (auto it = request.begin(); it != request.end(); ++it) {
    if (it.key() == "parameters") {
      if (!it.value().is_object()) bad("\"parameters\" must be an object");
      for (auto p = it.value().begin(); p != it.value().end(); ++p) field(p.key(), p.value());
    } else {
      field(it.key(), it.value());
    }
  }
  if (out.input_ids.empty() && !out.text_input) bad("the request needs \"input_ids\" (a list of token ids) or \"text_input\"");
  if (!out.input_ids.empty() && out.text_input) bad("give \"input_ids\" or \"text_input\", not both");
  return out;
}

std::string generate_response_json(const std::string& model, const std::string& version,
                                   const std::vector<int64_t>& output_ids, const std::string& finish_reason,
                                   const std::optional<std::string>& text) {
  json out{{"model_name", model}, {"model_version", version}, {"output_ids", output_ids},
           {"finish_reason", finish_reason.empty() ? json(nullptr) : json(finish_reason)}};
  if (text) out["text_output"] = *text;
  return io::json_limits::dump(out);
}

std::string error_json(const std::string& message) { return io::json_limits::dump(json{{"error", message}}); }

}  // namespace meshrt::serving

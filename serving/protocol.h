// The KServe v2 / Open Inference Protocol over HTTP: request parsing and
// response building, JSON tensors and the binary tensor data extension
// (https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/).
//
// Binary extension: a request whose inputs carry "parameters":
// {"binary_data_size": N} sends the JSON header first and then the inputs' raw
// bytes, in input order; the header length is in the Inference-Header-Content-
// Length HTTP header. Outputs are returned binary when requested ("parameters":
// {"binary_data": true} on an output, or {"binary_data_output": true} on the
// request), the same way.
//
// Every problem with a request is a RequestError with its HTTP status (400 bad
// input) and a message naming the input, what was expected and what came.
#pragma once

#include <algorithm>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "device/tensor.h"
#include "serving/signature.h"

namespace meshrt::serving {

class RequestError : public std::runtime_error {
 public:
  RequestError(int status, const std::string& message) : std::runtime_error(message), status_(status) {}
  int status() const { return status_; }

 private:
  int status_;
};

struct InferRequest {
  std::string id;
  std::vector<HostTensor> inputs;  // in the model's input order, [rows, ...] with the same rows
                                   // (undefined: an optional input the request left out)
  bool binary_output = false;      // return the outputs as binary data
};

// The checks every infer request goes through, whatever carried it (JSON and
// binary data over HTTP, protobuf over gRPC), so both say the same about the
// same mistake: each input named by the model once (an optional one at most
// once), of its datatype and shape (the first axis, -1 in the signature, is the
// batch axis: 1 to max_rows rows, the same for every input). Every problem is
// a RequestError(400).
class InferInputs {
 public:
  // wire_bytes: the size of what carried the request (a body). No element
  // takes less than a byte on any wire, so an input of more elements than that
  // cannot have come: it is refused before anything is allocated (past 2^20
  // elements; a smaller mistake gets the data's own message when it is read).
  // 0: no such bound (the caller checks each input's data against its shape
  // before add()).
  InferInputs(const ModelSignature& model, int64_t max_rows, size_t wire_bytes);
  // The model's input of this name, not given before (the first checks, in the order HTTP has always made them).
  const TensorSpec& spec_of(const std::string& name) const;
  // spec_of, then the datatype.
  const TensorSpec& check_datatype(const std::string& name, const std::string& datatype) const;
  // Checks one input (as add() does, allocating nothing); returns its spec.
  const TensorSpec& check(const std::string& name, const std::string& datatype, const std::vector<int64_t>& shape) const;
  // Checks one input; returns its tensor (uninitialized) for the caller to fill.
  HostTensor& add(const std::string& name, const std::string& datatype, const std::vector<int64_t>& shape);
  // Checks that every required input came; returns them in the model's order
  // (undefined: an optional input left out).
  std::vector<HostTensor> finish();
  // RequestError(400) unless the model has an output of this name.
  static void check_output(const ModelSignature& model, const std::string& name);

 private:
  const ModelSignature& model_;
  int64_t max_rows_;
  size_t wire_bytes_;
  // The most elements an input may hold.
  uint64_t bound() const { return wire_bytes_ > 0 ? std::max<uint64_t>(wire_bytes_, uint64_t{1} << 20) : uint64_t{1} << 62; }
  int64_t batch_rows_ = -1;  // of the first input given
  std::vector<HostTensor> inputs_;
};

// Parses and checks a request for model: every input of the signature exactly
// once (an optional one at most once), of its datatype and shape (the first axis, -1 in the signature, is the
// batch axis: 1 to max_rows rows, the same for every input). header_length: the
// Inference-Header-Content-Length header, when present. max_rows: the most rows
// one request may carry (the model's max_batch_size).
InferRequest parse_infer_request(std::string_view body, std::optional<size_t> header_length,
                                 const ModelSignature& model, int64_t max_rows);
// The Inference-Header-Content-Length header's value (absent: nullopt): digits
// only, else RequestError(400) quoting it.
std::optional<size_t> parse_header_length(const std::optional<std::string>& value);

struct HttpPayload {
  std::string body;
  std::string content_type = "application/json";
  std::optional<size_t> header_length;  // set for binary responses
};

// outputs: one per output of the signature, in its order.
HttpPayload make_infer_response(const ModelSignature& model, const InferRequest& request,
                                const std::vector<HostTensor>& outputs);
// unavailable: why the model cannot serve now ("" when it can): adds
// "state": "UNAVAILABLE" and "reason" (as Triton's repository index does).
// versions: every served version of the model (empty: the signature's own).
std::string model_metadata_json(const ModelSignature& model, const std::string& unavailable = "",
                                const std::vector<std::string>& versions = {});

// The client side (meshrt-infer, meshrt-loadgen), with the same encodings.
// A model's signature, from the body of GET /v2/models/{name}.
ModelSignature parse_model_metadata(std::string_view body);
// A request carrying data for input, as JSON values or as binary tensor data
// (then the output is asked for in binary too).
HttpPayload make_infer_request(const TensorSpec& input, const HostTensor& data, bool binary, const std::string& id = "");
// The first output of a response body, whether JSON or binary. Throws
// Error(kInvalidArgument) saying what is wrong with a malformed response.
HostTensor parse_infer_response(std::string_view body, std::optional<size_t> header_length);
// reason: why not ready (added as "reason" when not empty).
std::string model_ready_json(const std::string& name, bool ready, const std::string& reason = "");

// Triton's generate extension (POST /v2/models/{m}/generate and
// generate_stream): {"input_ids": [...], "max_tokens": N, "temperature": T,
// "top_k": K, "top_p": P, "seed": S, "stop_token_ids": [...]} (the fields may
// also sit in a "parameters" object; "text_input" instead of input_ids for a
// model with a tokenizer).
struct GenerateRequest {
  std::vector<int64_t> input_ids;  // the prompt, used exactly as given
  int64_t max_tokens = 16;
  double temperature = 0;
  int64_t top_k = 0;  // 0: every token
  double top_p = 1;
  std::optional<uint64_t> seed;
  std::vector<int64_t> stop_token_ids;
  std::optional<std::string> text_input;  // to tokenize (then input_ids is empty)
};
// RequestError(400) naming the field for a malformed or unknown field.
GenerateRequest parse_generate_request(std::string_view body);
// {"model_name", "model_version", "output_ids": [...], "finish_reason": "stop" | "length" | null}
// (and "text_output" when text is given): the generate answer, and each
// event of a stream (one token, finish_reason null; then the last one).
std::string generate_response_json(const std::string& model, const std::string& version,
                                   const std::vector<int64_t>& output_ids, const std::string& finish_reason,
                                   const std::optional<std::string>& text = std::nullopt);
// What the server says of itself, over HTTP (server_metadata_json) and gRPC alike.
struct ServerIdentity {
  std::string name, version;
  std::vector<std::string> extensions;
};
const ServerIdentity& server_identity();
std::string server_metadata_json();
std::string error_json(const std::string& message);

}  // namespace meshrt::serving

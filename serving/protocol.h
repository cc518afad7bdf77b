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

#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "serving/servable.h"

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
  HostTensor input;             // the model's one input, [rows, width]
  bool binary_output = false;   // return the output as binary data
};

// Parses and checks a request for model. header_length: the
// Inference-Header-Content-Length header, when present. max_rows: the most rows
// one request may carry (the model's max_batch_size).
InferRequest parse_infer_request(std::string_view body, std::optional<size_t> header_length,
                                 const ServableDefinition& model, int64_t max_rows);

struct HttpPayload {
  std::string body;
  std::string content_type = "application/json";
  std::optional<size_t> header_length;  // set for binary responses
};

HttpPayload make_infer_response(const ServableDefinition& model, const InferRequest& request, const HostTensor& output);
std::string model_metadata_json(const ServableDefinition& model);
std::string model_ready_json(const std::string& name, bool ready);
std::string server_metadata_json();
std::string error_json(const std::string& message);

}  // namespace meshrt::serving

// KServe v2 over gRPC on rank 0 (inference.GRPCInferenceService, the proto in
// rpc/proto/grpc_service.proto): the same models, limits, batching, errors
// and metrics as the HTTP routes, through the same core (frontend.h).
//
// - ModelInfer: inputs as typed contents or raw_input_contents (all raw or
//   none), checked as HTTP checks JSON inputs (InferInputs); outputs always
//   as raw_output_contents, as Triton answers.
// - ModelStreamInfer: on a generation model a request is a generation:
//   inputs "input_ids" (INT64 or INT32, any shape: the prompt) or
//   "text_input" (BYTES, one element) and optionally "max_tokens",
//   "temperature", "top_k", "top_p", "seed", "stop_token_ids" (as one-element
//   tensors or as request parameters of those names); it is answered with one
//   response per token ("output_ids" INT64 [n], and "text_output" BYTES [1] for
//   text), each flagged "triton_final_response": false, then a final empty
//   response flagged true with "finish_reason". On other models a stream
//   request is an infer request with one response, flagged final. An error is a
//   response with error_message; the stream goes on. Responses carry the
//   request's id. A client that cancels the stream cancels its generations.
// - Errors: the core's HTTP statuses mapped as Triton maps them (rpc/status.h).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>

#include "rpc/server.h"
#include "serving/frontend.h"
#include "serving/metrics.h"

namespace meshrt::serving {

class GrpcFrontend {
 public:
  // Binds and starts serving (Error(kUnavailable) when the port is taken).
  GrpcFrontend(Frontend& core, Metrics& metrics, const rpc::ServerOptions& options);
  ~GrpcFrontend();
  uint16_t port() const;
  // Calls accepted and not yet answered (a stream counts while open).
  size_t in_flight() const;
  // Stops taking calls; those in flight get `grace`, then are cancelled.
  void shutdown(std::chrono::milliseconds grace);

  struct Service;  // grpc_frontend.cc

 private:
  std::unique_ptr<Service> service_;
  std::unique_ptr<rpc::Server> server_;
};

}  // namespace meshrt::serving

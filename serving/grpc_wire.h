// KServe v2 gRPC messages built and read the one way meshrt does it, for the
// server (grpc_frontend.cc) and its clients (meshrt-infer, meshrt-loadgen):
// tensors as raw contents (little-endian, row-major), as Triton sends them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "device/tensor.h"
#include "rpc/proto/grpc_service.pb.h"

namespace meshrt::serving {

// Appends an input of tensor's datatype and shape, its bytes in raw_input_contents.
void add_raw_input(inference::ModelInferRequest& request, const std::string& name, const HostTensor& tensor);
// Appends an output with its bytes in raw_output_contents.
void add_raw_output(inference::ModelInferResponse& response, const std::string& name, const std::string& datatype,
                    const std::vector<int64_t>& shape, std::string bytes);
void add_raw_output(inference::ModelInferResponse& response, const std::string& name, const HostTensor& tensor);
// Output `index` of a response as a tensor; Error(kInvalidArgument) when it is
// missing, of an unknown datatype, or its bytes do not fill its shape.
HostTensor raw_output(const inference::ModelInferResponse& response, int index = 0);

}  // namespace meshrt::serving

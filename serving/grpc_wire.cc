#include "serving/grpc_wire.h"

#include <cstring>

#include "serving/signature.h"

namespace meshrt::serving {

void add_raw_input(inference::ModelInferRequest& request, const std::string& name, const HostTensor& tensor) {
  auto* in = request.add_inputs();
  in->set_name(name);
  in->set_datatype(kserve_datatype(tensor.dtype()));
  for (int64_t d : tensor.shape().dims()) in->add_shape(d);
  request.add_raw_input_contents(static_cast<const char*>(tensor.raw_data()), tensor.nbytes());
}

void add_raw_output(inference::ModelInferResponse& response, const std::string& name, const std::string& datatype,
                    const std::vector<int64_t>& shape, std::string bytes) {
  auto* out = response.add_outputs();
  out->set_name(name);
  out->set_datatype(datatype);
  for (int64_t d : shape) out->add_shape(d);
  response.add_raw_output_contents(std::move(bytes));
}

void add_raw_output(inference::ModelInferResponse& response, const std::string& name, const HostTensor& tensor) {
  add_raw_output(response, name, kserve_datatype(tensor.dtype()), tensor.shape().dims(),
                 std::string(static_cast<const char*>(tensor.raw_data()), tensor.nbytes()));
}

HostTensor raw_output(const inference::ModelInferResponse& response, int index) {
  MESHRT_CHECK_ARG(index >= 0 && index < response.outputs_size() && index < response.raw_output_contents_size(),
                   "the response has no raw output ", index, " (", response.outputs_size(), " outputs, ",
                   response.raw_output_contents_size(), " raw contents)");
  const auto& o = response.outputs(index);
  HostTensor t = HostTensor::empty(Shape(std::vector<int64_t>(o.shape().begin(), o.shape().end())),
                                   parse_kserve_datatype(o.datatype()));
  const std::string& bytes = response.raw_output_contents(index);
  MESHRT_CHECK_ARG(bytes.size() == t.nbytes(), "output '", o.name(), "': ", bytes.size(), " bytes do not fill ",
                   o.datatype(), shape_text(t.shape().dims()));
  std::memcpy(t.raw_data(), bytes.data(), bytes.size());
  return t;
}

}  // namespace meshrt::serving

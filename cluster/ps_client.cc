#include "cluster/ps_client.h"

#include <utility>

#include "cluster/wire.h"
#include "device/error.h"
#include "rpc/client.h"
#include "rpc/status.h"

namespace meshrt::cluster {

PsClient::PsClient(int index, std::string address, PsClientOptions options)
    : index_(index), address_(std::move(address)), options_(options) {
  MESHRT_CHECK_ARG(options_.timeout.count() > 0, "PsClient: ps ", index_, ": timeout must be > 0 ms");
  // Reconnects within a second of a restarted server coming back.
  stub_ = ParameterServer::NewStub(
      rpc::make_channel(address_, options_.max_message_bytes, false, std::chrono::milliseconds(1000)));
}

std::string PsClient::describe() const { return meshrt::detail::cat("ps ", index_, " (", address_, ")"); }

// wait_for_ready: a call to a server that is restarting (its connection in
// backoff) waits for it up to the deadline instead of failing at once; a
// server that stays down is still an error within the deadline.
void PsClient::prepare(grpc::ClientContext& context) const {
  rpc::set_timeout(context, options_.timeout);
  context.set_wait_for_ready(true);
}

template <class Request, class Response>
void PsClient::call(const char* method,
                    grpc::Status (ParameterServer::Stub::*rpc)(grpc::ClientContext*, const Request&, Response*),
                    const Request& request, Response& response) {
  grpc::ClientContext context;
  prepare(context);
  grpc::Status status = (stub_.get()->*rpc)(&context, request, &response);
  if (!status.ok()) fail(method, status);
}

void PsClient::fail(const char* method, const grpc::Status& status) const {
  const grpc::StatusCode code = status.error_code();
  // Gone, unreachable or too slow: the caller may retry elsewhere or later
  // (a worker's step goes to another worker; a restarted server is restored).
  if (code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::DEADLINE_EXCEEDED ||
      code == grpc::StatusCode::CANCELLED) {
    throw Error(ErrorKind::kUnavailable, meshrt::detail::cat(describe(), " is unavailable: ", method, ": ",
                                                     rpc::code_name(code), ": ", status.error_message()));
  }
  // A variable the server does not hold: it restarted and lost them (a
  // server that was never given them is the caller's bug, but reads the same).
  if (code == grpc::StatusCode::NOT_FOUND) {
    throw Error(ErrorKind::kUnavailable, meshrt::detail::cat(describe(), " is unavailable: it does not hold what ",
                                                             method, " asked for (restarted, and lost its variables?): ",
                                                             status.error_message()));
  }
  throw Error(ErrorKind::kInvalidArgument, meshrt::detail::cat(describe(), " refused ", method, " (", rpc::code_name(code),
                                                       "): ", status.error_message()));
}

bool PsClient::create_variable(const std::string& name, const HostTensor& initial, const OptimizerConfig& optimizer) {
  CreateVariableRequest request;
  request.set_name(name);
  put_tensor(request.mutable_initial(), initial);
  *request.mutable_optimizer() = optimizer;
  CreateVariableResponse response;
  call("CreateVariable", &ParameterServer::Stub::CreateVariable, request, response);
  return response.created();
}

std::vector<HostTensor> PsClient::read(const std::vector<std::string>& names) {
  ReadRequest request;
  for (const std::string& name : names) request.add_names(name);
  ReadResponse response;
  call("Read", &ParameterServer::Stub::Read, request, response);
  MESHRT_CHECK(static_cast<size_t>(response.values_size()) == names.size(), ErrorKind::kInternal, describe(),
               ": Read answered ", response.values_size(), " values for ", names.size(), " names");
  std::vector<HostTensor> values;
  for (size_t i = 0; i < names.size(); ++i) {
    values.push_back(get_tensor(response.values(static_cast<int>(i)), describe() + ": the value of " + names[i]));
  }
  return values;
}

HostTensor PsClient::read_rows(const std::string& name, const std::vector<int64_t>& ids) {
  ReadRowsRequest request;
  request.set_name(name);
  for (int64_t id : ids) request.add_ids(id);
  ReadRowsResponse response;
  call("ReadRows", &ParameterServer::Stub::ReadRows, request, response);
  return get_tensor(response.rows(), describe() + ": rows of " + name);
}

ApplyResult PsClient::apply(int64_t step_id, const std::vector<GradientUpdate>& gradients, int64_t done_below) {
  ApplyRequest request;
  request.set_step_id(step_id);
  request.set_done_below(done_below);
  for (const GradientUpdate& g : gradients) {
    Gradient* out = request.add_gradients();
    out->set_name(g.name);
    if (g.dense.defined()) put_tensor(out->mutable_dense(), g.dense);
    for (int64_t id : g.ids) out->add_ids(id);
    if (g.rows.defined()) put_tensor(out->mutable_rows(), g.rows);
  }
  ApplyResponse response;
  call("Apply", &ParameterServer::Stub::Apply, request, response);
  return {response.applied(), response.duplicates()};
}

int64_t PsClient::save(const std::string& path) {
  SaveRequest request;
  request.set_path(path);
  SaveResponse response;
  call("Save", &ParameterServer::Stub::Save, request, response);
  return response.bytes();
}

int PsClient::restore(const std::string& path, int64_t fence_step_id) {
  RestoreRequest request;
  request.set_path(path);
  request.set_fence_step_id(fence_step_id);
  RestoreResponse response;
  call("Restore", &ParameterServer::Stub::Restore, request, response);
  return response.variables();
}

StatusResponse PsClient::status() {
  StatusRequest request;
  StatusResponse response;
  call("Status", &ParameterServer::Stub::Status, request, response);
  return response;
}

std::unique_ptr<training::Optimizer> make_optimizer(const OptimizerConfig& config) {
  // Keras's defaults for the fields a config leaves 0 (proto3 cannot tell 0
  // from unset; a rate, rho, beta or epsilon of exactly 0 is not a useful one).
  auto or_default = [](double value, double fallback) { return value == 0 ? fallback : value; };
  const std::string& kind = config.kind();
  if (kind == "sgd") {
    return std::make_unique<training::SGD>(or_default(config.learning_rate(), 0.01), config.momentum());
  }
  if (kind == "rmsprop") {
    return std::make_unique<training::RMSprop>(or_default(config.learning_rate(), 0.001), or_default(config.rho(), 0.9),
                                               or_default(config.epsilon(), 1e-7));
  }
  if (kind == "adam") {
    return std::make_unique<training::Adam>(or_default(config.learning_rate(), 0.001),
                                            or_default(config.beta1(), 0.9), or_default(config.beta2(), 0.999),
                                            or_default(config.epsilon(), 1e-7));
  }
  throw Error(ErrorKind::kInvalidArgument,
              "optimizer \"" + kind + "\" is not one a parameter server applies (sgd, rmsprop, adam)");
}

}  // namespace meshrt::cluster

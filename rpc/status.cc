#include "rpc/status.h"

namespace meshrt::rpc {

grpc::StatusCode status_code_for_http(int http_status) {
  switch (http_status) {
    case 200: return grpc::StatusCode::OK;
    case 400: return grpc::StatusCode::INVALID_ARGUMENT;
    case 404: return grpc::StatusCode::NOT_FOUND;
    case 409: return grpc::StatusCode::ALREADY_EXISTS;
    case 413: return grpc::StatusCode::RESOURCE_EXHAUSTED;
    case 415:
    case 501: return grpc::StatusCode::UNIMPLEMENTED;
    case 429:
    case 503: return grpc::StatusCode::UNAVAILABLE;
    case 504: return grpc::StatusCode::DEADLINE_EXCEEDED;
    default: break;
  }
  return http_status >= 400 && http_status < 500 ? grpc::StatusCode::FAILED_PRECONDITION : grpc::StatusCode::INTERNAL;
}

int http_status_for(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return 200;
    case grpc::StatusCode::INVALID_ARGUMENT: return 400;
    case grpc::StatusCode::NOT_FOUND: return 404;
    case grpc::StatusCode::ALREADY_EXISTS: return 409;
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return 413;
    case grpc::StatusCode::UNIMPLEMENTED: return 501;
    case grpc::StatusCode::UNAVAILABLE: return 503;
    case grpc::StatusCode::DEADLINE_EXCEEDED: return 504;
    case grpc::StatusCode::FAILED_PRECONDITION: return 400;
    default: return 500;
  }
}

grpc::Status status_for_http(int http_status, const std::string& message) {
  return {status_code_for_http(http_status), message};
}

grpc::Status status_for_error(const Error& error) {
  grpc::StatusCode code = grpc::StatusCode::INTERNAL;
  switch (error.kind()) {
    case ErrorKind::kInvalidArgument:
    case ErrorKind::kShape: code = grpc::StatusCode::INVALID_ARGUMENT; break;
    case ErrorKind::kUnavailable: code = grpc::StatusCode::UNAVAILABLE; break;
    case ErrorKind::kDeadlineExceeded: code = grpc::StatusCode::DEADLINE_EXCEEDED; break;
    default: break;
  }
  return {code, error.message()};
}

const char* code_name(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return "OK";
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::UNKNOWN: return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED: return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL: return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS: return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
    default: return "?";
  }
}

}  // namespace meshrt::rpc

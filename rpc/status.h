// How meshrt's failures read as gRPC statuses, the way Triton maps its own:
// a bad request is INVALID_ARGUMENT, an unknown model NOT_FOUND, an overloaded,
// draining or failed server UNAVAILABLE, a deadline DEADLINE_EXCEEDED, a bug
// INTERNAL. The serving front ends decide in HTTP statuses (one decision for
// both protocols); the gRPC one translates them here.
#pragma once

#include <string>

#include <grpcpp/support/status.h>

#include "device/error.h"

namespace meshrt::rpc {

// 400 -> INVALID_ARGUMENT, 404 -> NOT_FOUND, 409 -> ALREADY_EXISTS,
// 413 -> RESOURCE_EXHAUSTED, 415/501 -> UNIMPLEMENTED, 429/503 -> UNAVAILABLE,
// 504 -> DEADLINE_EXCEEDED, other 4xx -> FAILED_PRECONDITION, other -> INTERNAL.
grpc::StatusCode status_code_for_http(int http_status);
// The reverse, for clients that speak both (meshrt-infer, the benchmarks).
int http_status_for(grpc::StatusCode code);
grpc::Status status_for_http(int http_status, const std::string& message);
// kInvalidArgument and kShape -> INVALID_ARGUMENT, kUnavailable -> UNAVAILABLE,
// kDeadlineExceeded -> DEADLINE_EXCEEDED, the rest INTERNAL; the message without its prefix.
grpc::Status status_for_error(const Error& error);
// "UNAVAILABLE" etc.
const char* code_name(grpc::StatusCode code);

}  // namespace meshrt::rpc

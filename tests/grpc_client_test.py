#!/usr/bin/python3
"""A Python gRPC client of meshrt-serve: Debian's python3-grpcio with stubs
generated from meshrt's own proto (rpc/proto/grpc_service.proto, built into
<build>/rpc/python). Run by grpc_e2e_test (Grpc.PythonClient) against its
running server (matmul_neg and llama-tiny); prints OK and exits 0 when every
check passes, else names the first that failed and exits 1.

  grpc_client_test.py --port <grpc port> --http-port <http port> --stubs <build>/rpc/python
"""
import argparse
import json
import sys
import urllib.request
from concurrent import futures

import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True, help="meshrt-serve's gRPC port on 127.0.0.1")
    parser.add_argument("--http-port", type=int, required=True, help="its HTTP port (the answers are compared)")
    parser.add_argument("--stubs", required=True, help="the folder of the generated Python code (rpc/proto/*_pb2*.py)")
    args = parser.parse_args()
    sys.path.insert(0, args.stubs)
    import grpc
    from rpc.proto import grpc_service_pb2 as pb
    from rpc.proto import grpc_service_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{args.port}")
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    timeout = 120

    def check(condition, what):
        if not condition:
            print(f"FAILED: {what}")
            sys.exit(1)

    def matmul_request(rows, value, raw=True, request_id=""):
        data = np.full((rows, 96), value, dtype=np.float32)
        request = pb.ModelInferRequest(model_name="matmul_neg", id=request_id)
        tensor = request.inputs.add(name="x", datatype="FP32", shape=[rows, 96])
        if raw:
            request.raw_input_contents.append(data.tobytes())
        else:
            tensor.contents.fp32_contents.extend(data.ravel().tolist())
        return request

    def output(response, index=0):
        o = response.outputs[index]
        dtype = {"FP32": np.float32, "INT64": np.int64}[o.datatype]
        return np.frombuffer(response.raw_output_contents[index], dtype=dtype).reshape(list(o.shape))

    def error_of(call, request):
        try:
            call(request, timeout=timeout)
        except grpc.RpcError as e:
            return e.code(), e.details()
        return grpc.StatusCode.OK, ""

    # Health and metadata.
    check(stub.ServerLive(pb.ServerLiveRequest(), timeout=timeout).live, "ServerLive")
    check(stub.ServerReady(pb.ServerReadyRequest(), timeout=timeout).ready, "ServerReady")
    check(stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=timeout).name == "meshrt", "ServerMetadata")
    check(stub.ModelReady(pb.ModelReadyRequest(name="llama-tiny"), timeout=timeout).ready, "ModelReady")
    metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="matmul_neg"), timeout=timeout)
    check([(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [("x", "FP32", [-1, 96])],
          f"ModelMetadata inputs: {metadata.inputs}")

    # Binary (raw) and typed contents.
    for raw in (True, False):
        response = stub.ModelInfer(matmul_request(4, 1.0, raw, "py-1"), timeout=timeout)
        y = output(response)
        check(response.id == "py-1" and y.shape == (4, 16) and np.all(y == -48.0), f"ModelInfer raw={raw}: {y}")

    # Errors: the status codes Triton gives, the messages HTTP gives.
    bad = matmul_request(2, 1.0)
    bad.inputs[0].datatype = "FP64"
    code, details = error_of(stub.ModelInfer, bad)
    check(code == grpc.StatusCode.INVALID_ARGUMENT and details == "input 'x': expected datatype FP32, got FP64",
          f"wrong datatype: {code} {details}")
    unknown = matmul_request(1, 1.0)
    unknown.model_name = "nope"
    code, details = error_of(stub.ModelInfer, unknown)
    check(code == grpc.StatusCode.NOT_FOUND and details == "unknown model 'nope'", f"unknown model: {code} {details}")
    code, _ = error_of(stub.ModelMetadata, pb.ModelMetadataRequest(name="nope"))
    check(code == grpc.StatusCode.NOT_FOUND, f"metadata of an unknown model: {code}")

    # 64 concurrent calls.
    pending = [(k, stub.ModelInfer.future(matmul_request(1 + k % 3, float(k % 5), k % 2 == 0, str(k)), timeout=timeout))
               for k in range(64)]
    for k, f in pending:
        response = f.result()
        y = output(response)
        check(response.id == str(k) and y.shape == (1 + k % 3, 16) and np.all(y == -48.0 * (k % 5)), f"concurrent call {k}")

    # Streaming generation (Triton's decoupled responses) against HTTP's generate.
    prompt = [60, 193, 243]
    request = pb.ModelInferRequest(model_name="llama-tiny", id="py-gen")
    request.inputs.add(name="input_ids", datatype="INT64", shape=[len(prompt)]).contents.int64_contents.extend(prompt)
    request.parameters["max_tokens"].int64_param = 5
    tokens, finals, reason = [], [], None
    for response in stub.ModelStreamInfer(iter([request]), timeout=timeout):
        check(response.error_message == "", f"stream error: {response.error_message}")
        r = response.infer_response
        check(r.id == "py-gen", "stream response id")
        finals.append(r.parameters["triton_final_response"].bool_param)
        if len(r.outputs):
            tokens += output(r).tolist()
        if "finish_reason" in r.parameters:
            reason = r.parameters["finish_reason"].string_param
    check(finals == [False] * 5 + [True], f"final flags {finals}")
    check(reason == "length", f"finish_reason {reason}")
    body = json.dumps({"input_ids": prompt, "max_tokens": 5}).encode()
    http = urllib.request.Request(f"http://127.0.0.1:{args.http_port}/v2/models/llama-tiny/generate", data=body,
                                  headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(http, timeout=timeout) as answer:
        expected = json.load(answer)["output_ids"]
    check(tokens == expected, f"streamed tokens {tokens} != HTTP's {expected}")

    # An error on the stream is a response; the stream goes on.
    bad_stream = pb.ModelInferRequest(model_name="llama-tiny", id="py-bad")
    bad_stream.inputs.add(name="input_ids", datatype="INT64", shape=[1]).contents.int64_contents.extend([10 ** 9])
    responses = list(stub.ModelStreamInfer(iter([bad_stream, matmul_request(1, 1.0, True, "py-after")]), timeout=timeout))
    by_id = {r.infer_response.id: r for r in responses}
    check(by_id["py-bad"].error_message.startswith("INVALID_ARGUMENT: "), f"bad stream request: {by_id['py-bad']}")
    check(np.all(output(by_id["py-after"].infer_response) == -48.0), "the request after the error")
    print("OK: every RPC, raw and typed contents, errors, 64 concurrent calls, streaming")


if __name__ == "__main__":
    main()

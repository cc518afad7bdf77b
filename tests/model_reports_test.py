#!/usr/bin/python3
"""Triton's model configuration and statistics extensions and the model
repository index, read by code
written against Triton's documented formats (docs/protocol/extension_model_configuration.md
and extension_statistics.md of triton-inference-server/server): GET
/v2/models/{m}/config (ModelConfig JSON), GET /v2/models[/{m}[/versions/{v}]]/stats,
and the gRPC ModelConfig and ModelStatistics calls. Run by grpc_e2e_test
(Grpc.ConfigAndStatisticsAsTritonReportsThem) against its server (matmul_neg:
4 ranks, batching up to 256 rows; llama-tiny); prints OK and exits 0 when
every check passes, else names the first that failed and exits 1.

  model_reports_test.py --http-port <port> --port <grpc port> --stubs <build>/rpc/python
"""
import argparse
import concurrent.futures
import json
import sys
import urllib.error
import urllib.request

import numpy as np


def check(condition, what):
    if not condition:
        print(f"FAILED: {what}")
        sys.exit(1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--port", type=int, required=True, help="the gRPC port")
    parser.add_argument("--stubs", required=True, help="the folder of the generated Python code")
    args = parser.parse_args()
    base = f"http://127.0.0.1:{args.http_port}"

    def get(path):
        try:
            with urllib.request.urlopen(base + path, timeout=120) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def infer(rows, columns=96):
        x = np.ones((rows, columns), dtype=np.float32)
        body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, columns],
                                       "data": x.ravel().tolist()}]}).encode()
        request = urllib.request.Request(base + "/v2/models/matmul_neg/infer", data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    # --- the server says it has both extensions
    status, meta = get("/v2")
    check(status == 200 and {"model_configuration", "statistics"} <= set(meta["extensions"]),
          f"server metadata extensions: {meta}")

    # --- model configuration ($model_config: Triton's ModelConfig as JSON)
    status, config = get("/v2/models/matmul_neg/config")
    check(status == 200, f"GET config: {status} {config}")
    check(config["name"] == "matmul_neg", f"config name: {config}")
    check(config["max_batch_size"] == 256, f"max_batch_size: {config}")
    check(config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "format": "FORMAT_NONE", "dims": [96],
                               "optional": False}], f"input: {config['input']}")
    check(config["output"] == [{"name": "y", "data_type": "TYPE_FP32", "dims": [16]}], f"output: {config['output']}")
    check(config["dynamic_batching"] == {"preferred_batch_size": [128, 256], "max_queue_delay_microseconds": 2000},
          f"dynamic_batching: {config.get('dynamic_batching')}")
    check(config["instance_group"][0]["kind"] in ("KIND_CPU", "KIND_GPU"), f"instance_group: {config}")
    check(config["parameters"]["rank_size"] == {"string_value": "4"}, f"parameters: {config['parameters']}")
    check(config["version_policy"] == {"latest": {"num_versions": 1}}, f"version_policy: {config}")
    status, versioned = get("/v2/models/matmul_neg/versions/1/config")
    check(status == 200 and versioned == config, "the versioned config differs")
    status, missing = get("/v2/models/no_such_model/config")
    check(status == 404 and "error" in missing, f"an unknown model's config: {status} {missing}")
    status, llama = get("/v2/models/llama-tiny/config")
    check(status == 200 and llama["name"] == "llama-tiny", f"llama-tiny config: {llama}")

    # --- statistics: counts move by exactly what this script sends
    def stat_of(stats, name):
        models = [m for m in stats["model_stats"] if m["name"] == name]
        check(len(models) == 1, f"{name} in the statistics: {stats}")
        return models[0]

    status, all_stats = get("/v2/models/stats")
    check(status == 200 and {m["name"] for m in all_stats["model_stats"]} >= {"matmul_neg", "llama-tiny"},
          f"GET /v2/models/stats: {all_stats}")
    status, before = get("/v2/models/matmul_neg/stats")
    check(status == 200 and len(before["model_stats"]) == 1, f"one model's stats: {before}")
    before = before["model_stats"][0]
    for key in ("name", "version", "last_inference", "inference_count", "execution_count", "inference_stats",
                "batch_stats"):
        check(key in before, f"$model_stat lacks {key}: {before}")
    for key in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        check(set(before["inference_stats"][key]) == {"count", "ns"}, f"$duration_stat {key}: {before}")
    for rows in (1, 3, 5):
        check(infer(rows) == 200, f"infer {rows} rows")
    check(infer(2, columns=7) == 400, "a request of the wrong shape is refused")
    status, after = get("/v2/models/matmul_neg/versions/1/stats")
    after = after["model_stats"][0]
    inf, inf0 = after["inference_stats"], before["inference_stats"]
    check(after["inference_count"] - before["inference_count"] == 9, f"inference_count: {before} -> {after}")
    executions = after["execution_count"] - before["execution_count"]
    check(1 <= executions <= 3, f"execution_count moved by {executions}")
    check(inf["success"]["count"] - inf0["success"]["count"] == 3, f"success: {inf0} -> {inf}")
    check(inf["fail"]["count"] - inf0["fail"]["count"] == 1, f"fail: {inf0} -> {inf}")
    check(inf["success"]["ns"] > inf0["success"]["ns"], "success ns did not grow")
    check(inf["queue"]["count"] - inf0["queue"]["count"] == 3, f"queue: {inf0} -> {inf}")
    check(inf["compute_infer"]["count"] - inf0["compute_infer"]["count"] == 3, f"compute_infer: {inf0} -> {inf}")
    check(inf["compute_infer"]["ns"] > inf0["compute_infer"]["ns"], "compute_infer ns did not grow")
    batch_counts = sum(b["compute_infer"]["count"] for b in after["batch_stats"]) - \
        sum(b["compute_infer"]["count"] for b in before["batch_stats"])
    check(batch_counts == executions, f"batch_stats counts {batch_counts} != executions {executions}")
    check(after["last_inference"] >= before["last_inference"] and after["last_inference"] > 1.6e12,
          f"last_inference: {after['last_inference']}")
    status, missing = get("/v2/models/no_such_model/stats")
    check(status == 404, f"an unknown model's stats: {status}")

    # --- a generation model: each step (prefill or decode) is one execution of
    # its sequences, each request one inference (counted at its prefill)
    def generate(prompt, max_tokens):
        body = json.dumps({"input_ids": prompt, "max_tokens": max_tokens}).encode()
        request = urllib.request.Request(base + "/v2/models/llama-tiny/generate", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as r:
            return json.loads(r.read())["output_ids"]

    status, gen0 = get("/v2/models/llama-tiny/stats")
    gen0 = gen0["model_stats"][0]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        outputs = list(pool.map(lambda k: generate([60 + k, 193, 243][:k + 1], 3 + k), range(3)))
    tokens = sum(len(o) for o in outputs)
    check(tokens >= 3, f"generated {outputs}")
    status, gen1 = get("/v2/models/llama-tiny/stats")
    gen1 = gen1["model_stats"][0]
    ginf, ginf0 = gen1["inference_stats"], gen0["inference_stats"]
    check(gen1["inference_count"] - gen0["inference_count"] == 3, f"generate inference_count: {gen0} -> {gen1}")
    steps = gen1["execution_count"] - gen0["execution_count"]
    check(steps >= 1, f"generate execution_count moved by {steps}")
    for key in ("success", "queue", "compute_infer", "compute_input", "compute_output"):
        check(ginf[key]["count"] - ginf0[key]["count"] == 3, f"generate {key}: {ginf0} -> {ginf}")
    check(ginf["compute_infer"]["ns"] > ginf0["compute_infer"]["ns"], "generate compute_infer ns did not grow")

    def batch_totals(stat):  # (steps, sequences summed over the steps)
        return (sum(b["compute_infer"]["count"] for b in stat["batch_stats"]),
                sum(b["batch_size"] * b["compute_infer"]["count"] for b in stat["batch_stats"]))
    (b1, rows1), (b0, rows0) = batch_totals(gen1), batch_totals(gen0)
    check(b1 - b0 == steps, f"generate batch_stats counts {b1 - b0} != executions {steps}")
    check(rows1 - rows0 == tokens, f"a step gives each of its sequences a token: {rows1 - rows0} != {tokens}")

    # --- the repository index (Triton's model repository extension)
    def post(path, body):
        request = urllib.request.Request(base + path, data=body.encode(), headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    status, index = post("/v2/repository/index", "{}")
    check(status == 200 and isinstance(index, list), f"index: {status} {index}")
    states = {(m["name"], m["version"]): m["state"] for m in index}
    check(states.get(("matmul_neg", "1")) == "READY" and states.get(("llama-tiny", "1")) == "READY",
          f"index states: {index}")
    status, ready = post("/v2/repository/index", '{"ready": true}')
    check(status == 200 and len(ready) == len(index), f"ready index: {ready}")
    status, error = post("/v2/repository/index", '{"ready": "yes"}')
    check(status == 400 and "ready" in error.get("error", ""), f"a bad index request: {status} {error}")
    status, error = post("/v2/repository/models/matmul_neg/unload", "{}")
    check(status == 400 and "model control mode none" in error.get("error", ""), f"unload: {status} {error}")

    # --- the same over gRPC
    sys.path.insert(0, args.stubs)
    import grpc
    from rpc.proto import grpc_service_pb2 as pb
    from rpc.proto import grpc_service_pb2_grpc as pb_grpc
    stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{args.port}"))
    c = stub.ModelConfig(pb.ModelConfigRequest(name="matmul_neg"), timeout=120).config
    check(c.name == "matmul_neg" and c.max_batch_size == 256, f"gRPC config: {c}")
    check(c.input[0].data_type == pb.TYPE_FP32 and list(c.input[0].dims) == [96], f"gRPC input: {c.input}")
    check(list(c.output[0].dims) == [16], f"gRPC output: {c.output}")
    check(list(c.dynamic_batching.preferred_batch_size) == [128, 256], f"gRPC batching: {c.dynamic_batching}")
    check(c.parameters["rank_size"].string_value == "4", f"gRPC parameters: {c.parameters}")
    check(c.version_policy.latest.num_versions == 1, f"gRPC version policy: {c.version_policy}")
    try:
        stub.ModelConfig(pb.ModelConfigRequest(name="no_such_model"), timeout=120)
        check(False, "gRPC config of an unknown model")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.NOT_FOUND, f"gRPC unknown model: {e.code()}")
    s = stub.ModelStatistics(pb.ModelStatisticsRequest(name="matmul_neg"), timeout=120)
    check(len(s.model_stats) == 1, f"gRPC statistics: {s}")
    g = s.model_stats[0]
    check(g.inference_count == after["inference_count"] and g.execution_count == after["execution_count"],
          f"gRPC and HTTP statistics differ: {g} vs {after}")
    check(g.inference_stats.success.count == inf["success"]["count"], "gRPC success count")
    g = stub.ModelStatistics(pb.ModelStatisticsRequest(name="llama-tiny"), timeout=120).model_stats[0]
    check(g.inference_count == gen1["inference_count"] and g.execution_count == gen1["execution_count"],
          f"gRPC and HTTP statistics of llama-tiny differ: {g} vs {gen1}")
    grpc_index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=120)
    check({(m.name, m.version, m.state) for m in grpc_index.models} >=
          {("matmul_neg", "1", "READY"), ("llama-tiny", "1", "READY")}, f"gRPC index: {grpc_index}")
    try:
        stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="matmul_neg"), timeout=120)
        check(False, "gRPC unload in model control mode none")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.INVALID_ARGUMENT and "model control mode none" in e.details(),
              f"gRPC unload in mode none: {e.code()} {e.details()}")
    every = stub.ModelStatistics(pb.ModelStatisticsRequest(), timeout=120)
    check({m.name for m in every.model_stats} >= {"matmul_neg", "llama-tiny"}, "gRPC statistics of every model")
    print("OK")


if __name__ == "__main__":
    main()

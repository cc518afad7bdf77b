#!/usr/bin/env python3
"""Writes a meshrt model folder (config.json + safetensors weights) with numpy only.

The safetensors format is written by hand (no `safetensors` package): an 8-byte
little-endian header length N, N bytes of JSON naming each tensor's dtype, shape
and [begin, end) byte range in the data, then the data: every tensor row-major,
little-endian, back to back in the header's order.

By default it writes the example MatMul+Neg model (the same config as
examples/models/matmul_neg, and the same weight bytes):

    python3 examples/write_model.py --repository /tmp/my-models
    mpirun -np 4 build/apps/meshrt-serve --model-repository /tmp/my-models --device cpu

Stage 0 computes x @ w (w: [96, 16] of 0.5, row-parallel over the stage's 2
ranks), stage 1 negates: a row of 96 ones gives 16 values of -48.
See docs/USER_GUIDE.md ("Bringing your own model") for every config key.
"""
import argparse
import json
import os
import struct

import numpy as np

# numpy dtype -> safetensors dtype (the ones meshrt reads; BF16 below).
DTYPES = {
    np.dtype(np.float32): "F32",
    np.dtype(np.float64): "F64",
    np.dtype(np.float16): "F16",
    np.dtype(np.int32): "I32",
    np.dtype(np.int64): "I64",
    np.dtype(np.uint8): "U8",
    np.dtype(np.bool_): "BOOL",
}


def bf16(array):
    """float32 values rounded to bfloat16 (nearest even), as (uint16 bits, "BF16"):
    numpy has no bfloat16, so the bits travel as uint16 with the dtype named."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16), "BF16"


def write_safetensors(path, tensors, metadata=None):
    """tensors: {name: array} or {name: (array, dtype name)}, written in name order."""
    header, chunks, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name in sorted(tensors):
        value = tensors[name]
        array, dtype = value if isinstance(value, tuple) else (value, None)
        array = np.ascontiguousarray(array)
        dtype = dtype or DTYPES[array.dtype]
        data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # pad to 8 bytes, so the data starts aligned
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for data in chunks:
            f.write(data)
    os.replace(path + ".tmp", path)


def write_matmul_neg(repository, name="matmul_neg"):
    folder = os.path.join(repository, name)  # the folder's name is the model's name
    os.makedirs(folder, exist_ok=True)
    write_safetensors(os.path.join(folder, "weights.safetensors"),
                      {"w": np.full((96, 16), 0.5, dtype=np.float32)}, metadata={"format": "pt"})
    config = {
        "name": name,
        "version": "1",
        "rank_size": 4,   # mpirun -np 4
        "stage_size": 2,  # 2 pipeline stages of 4 / 2 = 2 tensor-parallel ranks each
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 96]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 16]}],
        "weights": "weights.safetensors",
        "stages": [
            {"layers": [{"type": "linear", "weight": "w", "parallel": "row"}]},
            {"layers": [{"type": "neg"}]},
        ],
        "batching": {"max_batch_size": 256, "max_queue_delay_us": 2000, "preferred_batch_sizes": [128, 256],
                     "micro_batches": 2, "max_queue_size": 256},
    }
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    return folder


def self_test(example):
    """Writes matmul_neg into a temporary folder and compares it with the example
    folder meshrt-make-example-models wrote: the same weight bytes, the same config
    (but for its description). Returns the failures."""
    import tempfile
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_matmul_neg(tmp)
        with open(os.path.join(folder, "weights.safetensors"), "rb") as ours, \
                open(os.path.join(example, "weights.safetensors"), "rb") as theirs:
            if ours.read() != theirs.read():
                failures.append("weights.safetensors differs from " + example)
        with open(os.path.join(folder, "config.json")) as ours, open(os.path.join(example, "config.json")) as theirs:
            expected = json.load(theirs)
            expected.pop("description", None)
            if json.load(ours) != expected:
                failures.append("config.json differs from " + example + "'s (description aside)")
    # bfloat16 rounding: 1.0 is exact, pi rounds down to 3.140625, 1 + 2^-8 (a tie) to even (1.0),
    # 1 + 3 * 2^-8 (a tie) up to even (1 + 2^-6).
    got = [int(b) for b in bf16(np.array([1.0, np.pi, 1 + 2**-8, 1 + 3 * 2**-8], np.float32))[0]]
    if got != [0x3F80, 0x4049, 0x3F80, 0x3F82]:
        failures.append("bf16 rounding: got " + str([hex(g) for g in got]))
    return failures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", help="the model repository folder (created if missing)")
    parser.add_argument("--name", default="matmul_neg", help="the model's name (its folder's name)")
    parser.add_argument("--self-test", metavar="EXAMPLE", help="compare with examples/models/matmul_neg (tests)")
    args = parser.parse_args()
    if args.self_test:
        problems = self_test(args.self_test)
        for p in problems:
            print("write_model self-test:", p)
        print("write_model self-test: " + ("FAILED" if problems else "all passed"))
        raise SystemExit(1 if problems else 0)
    if not args.repository:
        parser.error("--repository is required")
    print("wrote", write_matmul_neg(args.repository, args.name))

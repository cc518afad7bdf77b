#!/usr/bin/python3
"""Reference logits of Hugging Face decoder-only checkpoints (GPT-2, Llama) in float64.

Independent of meshrt's code and of the `transformers` package: reads a model
folder as save_pretrained writes it (config.json; model.safetensors or
model.safetensors.index.json with its shards, the safetensors parsed here by
hand), and runs the forward pass with numpy in float64, following transformers'
semantics (the eager attention path of v4.46):

  GPT-2  wte[ids] + wpe[positions]; pre-LN blocks (LayerNorm, biased variance);
         Conv1D x @ W + b; c_attn's output split into q, k, v in that order, then
         into heads; causal attention scaled by 1/sqrt(head_dim) when
         scale_attn_weights; gelu_new; ln_f; the LM head tied to wte.
  Llama  embed_tokens[ids]; RMSNorm x * rsqrt(mean(x^2) + eps) * weight;
         rotate_half RoPE with rope_theta and rope_scaling none / linear / llama3
         (_compute_llama3_parameters); grouped-query attention by repeat_kv
         (query head h reads key/value head h // (heads / kv_heads)); SiLU-gated
         MLP down(silu(gate(x)) * up(x)); Linear x @ W^T; model.norm; lm_head.

Masks are transformers' additive ones in the computing dtype (here float64):
masked scores get finfo.min, so a query whose every key is masked (a left-pad
position) attends uniformly, as in transformers' eager path. Logits at such
positions mean nothing (transformers' attention implementations disagree
there): compare only positions the attention mask keeps. Positions are
0..seq-1 whatever the mask, as transformers' forward without position_ids;
--position-ids gives them explicitly (generate() passes cumsum(mask) - 1).

One difference, of rounding only: transformers computes RoPE's angles in
float32 whatever the model's dtype; here they are float64 (a relative
difference of about 1e-7 in cos and sin at these positions).

Usage:
  hf_reference.py --model DIR --input-ids "[[1, 2, 3]]" [--attention-mask "[[1, 1, 1]]"]
                  [--position-ids "[[0, 1, 2]]"] [--out FILE.npy]
      prints {"logits": [...], "shape": [batch, seq, vocab]} (or writes FILE.npy, float64)
  hf_reference.py --model DIR --input-ids "[[1, 2, 3]]" --generate N [--stop-ids "[0]"]
      greedy generation of N tokens per row (full recompute each step), printing
      {"tokens": [[...]], "min_gap": smallest top-1 - top-2 logit gap}
  hf_reference.py --self-test --models examples/hf
      checks invariants of the reference and of the example checkpoints; exits
      77 (CTest's skip) when numpy is missing.
"""

import argparse
import json
import math
import os
import struct
import sys
import tempfile

try:
    import numpy as np
except ImportError:  # the self-test is skipped, the CLI cannot run
    np = None

SKIP = 77

# ---------------------------------------------------------------------------
# safetensors, by hand: 8-byte little-endian header length N, N bytes of JSON,
# then the raw little-endian data at data_offsets from the end of the header.
# ---------------------------------------------------------------------------


def _dtypes():
    return {"F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
            "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "U8": np.dtype("u1"), "BOOL": np.dtype("u1")}


def read_safetensors(path):
    """{name: float64 (or integer) array} of one file, and its __metadata__."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path}: shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        raise ValueError(f"{path}: header length {n} passes the end of the file ({len(data)} bytes)")
    header = json.loads(data[8:8 + n].decode("utf-8"))
    body = memoryview(data)[8 + n:]
    metadata = header.pop("__metadata__", {})
    tensors = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        shape = tuple(entry["shape"])
        raw = body[begin:end]
        count = int(np.prod(shape, dtype=np.int64))
        if entry["dtype"] == "BF16":
            # bf16 is the upper 16 bits of an f32.
            bits = np.frombuffer(raw, dtype="<u2", count=count).astype(np.uint32) << 16
            array = bits.view(np.float32).astype(np.float64)
        else:
            dtype = _dtypes().get(entry["dtype"])
            if dtype is None:
                raise ValueError(f"{path}: tensor {name} has dtype {entry['dtype']}, which this reader does not know")
            array = np.frombuffer(raw, dtype=dtype, count=count)
            array = array.astype(np.float64) if array.dtype.kind == "f" else array.copy()
        if end - begin != count * (2 if entry["dtype"] == "BF16" else _dtypes()[entry["dtype"]].itemsize):
            raise ValueError(f"{path}: tensor {name}'s byte range does not match its shape {list(shape)}")
        tensors[name] = array.reshape(shape)
    return tensors, metadata


def write_safetensors(path, tensors):
    """Writes float32 tensors (sorted by name) as one safetensors file."""
    header, offset, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for name in sorted(tensors):
        blob = np.ascontiguousarray(tensors[name], dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def read_weights(folder):
    """All tensors of a model folder: model.safetensors, or the shards its index names."""
    index_path = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index_path):
        with open(index_path) as f:
            index = json.load(f)
        tensors = {}
        for file in sorted(set(index["weight_map"].values())):
            part, _ = read_safetensors(os.path.join(folder, file))
            for name, array in part.items():
                if index["weight_map"].get(name) != file:
                    raise ValueError(f"{folder}: {file} holds {name}, which the index places in "
                                     f"{index['weight_map'].get(name)}")
                tensors[name] = array
        missing = set(index["weight_map"]) - set(tensors)
        if missing:
            raise ValueError(f"{folder}: the index names tensors no shard holds: {sorted(missing)[:5]}")
        return tensors
    return read_safetensors(os.path.join(folder, "model.safetensors"))[0]


def load_model(folder):
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    return config, read_weights(folder)


# ---------------------------------------------------------------------------
# The forward passes
# ---------------------------------------------------------------------------

# transformers' mask value: the computing dtype's finfo.min (added to a score, it
# rounds to itself: a fully masked row stays finite and attends uniformly).
MIN = np.finfo(np.float64).min if np is not None else None


def _masks(batch, seq, attention_mask):
    """[batch, 1, seq, seq]: True where a query may read a key (key <= query and the
    key is not padding)."""
    causal = np.tril(np.ones((seq, seq), dtype=bool))
    keep = np.broadcast_to(causal, (batch, 1, seq, seq)).copy()
    if attention_mask is not None:
        keep &= attention_mask.astype(bool)[:, None, None, :]
    return keep


def _softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def _layer_norm(x, weight, bias, eps):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def _gelu_new(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def _gpt2_weights(tensors):
    """The save_pretrained names; the hub's layout (no "transformer." prefix) read too,
    its attn.bias / attn.masked_bias buffers ignored."""
    if "transformer.wte.weight" in tensors:
        return {k[len("transformer."):]: v for k, v in tensors.items() if k.startswith("transformer.")}
    return {k: v for k, v in tensors.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}


def gpt2_forward(config, tensors, ids, attention_mask=None, position_ids=None):
    w = _gpt2_weights(tensors)
    batch, seq = ids.shape
    d = config["n_embd"]
    heads = config["n_head"]
    head_dim = d // heads
    eps = config.get("layer_norm_epsilon", 1e-5)
    if config.get("activation_function", "gelu_new") != "gelu_new":
        raise ValueError("this reference runs GPT-2 with gelu_new only")
    if config.get("scale_attn_by_inverse_layer_idx") or config.get("reorder_and_upcast_attn"):
        raise ValueError("scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not modelled")
    if position_ids is None:
        position_ids = np.broadcast_to(np.arange(seq), (batch, seq))
    h = w["wte.weight"][ids] + w["wpe.weight"][position_ids]
    for i in range(config["n_layer"]):
        p = f"h.{i}."
        x = _layer_norm(h, w[p + "ln_1.weight"], w[p + "ln_1.bias"], eps)
        qkv = x @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]
        q, k, v = (qkv[..., j * d:(j + 1) * d].reshape(batch, seq, heads, head_dim).transpose(0, 2, 1, 3)
                   for j in range(3))
        scores = q @ k.transpose(0, 1, 3, 2)
        if config.get("scale_attn_weights", True):
            scores = scores / math.sqrt(head_dim)
        # GPT-2's eager path: where(causal, scores, min), then + (1 - mask) * min.
        scores = np.where(np.tril(np.ones((seq, seq), dtype=bool)), scores, MIN)
        if attention_mask is not None:
            with np.errstate(over="ignore"):
                scores = scores + (1.0 - attention_mask[:, None, None, :].astype(np.float64)) * MIN
        attn = _softmax(scores) @ v
        attn = attn.transpose(0, 2, 1, 3).reshape(batch, seq, d)
        h = h + attn @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
        x = _layer_norm(h, w[p + "ln_2.weight"], w[p + "ln_2.bias"], eps)
        ff = _gelu_new(x @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"])
        h = h + ff @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
    h = _layer_norm(h, w["ln_f.weight"], w["ln_f.bias"], eps)
    return h @ w["wte.weight"].T  # tied LM head


def rope_inv_freq(config, head_dim):
    """transformers' ROPE_INIT_FUNCTIONS for "default", "linear" and "llama3"."""
    base = config.get("rope_theta", 10000.0)
    inv_freq = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float64) / head_dim))
    scaling = config.get("rope_scaling")
    if not scaling:
        return inv_freq
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        factor = scaling["factor"]
        low_freq_factor = scaling["low_freq_factor"]
        high_freq_factor = scaling["high_freq_factor"]
        old_context_len = scaling["original_max_position_embeddings"]
        low_freq_wavelen = old_context_len / low_freq_factor
        high_freq_wavelen = old_context_len / high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
        return np.where(medium, smoothed, scaled)
    raise ValueError(f"rope_scaling type {kind!r} is not modelled (default, linear, llama3 are)")


def _rotate_half(x):
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def _rms_norm(x, weight, eps):
    return weight * (x * (1.0 / np.sqrt((x ** 2).mean(axis=-1, keepdims=True) + eps)))


def llama_forward(config, w, ids, attention_mask=None, position_ids=None):
    batch, seq = ids.shape
    d = config["hidden_size"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or d // heads
    groups = heads // kv_heads
    eps = config.get("rms_norm_eps", 1e-6)
    if config.get("hidden_act", "silu") != "silu":
        raise ValueError("this reference runs Llama with silu only")
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise ValueError("attention_bias / mlp_bias are not modelled")
    if position_ids is None:
        position_ids = np.broadcast_to(np.arange(seq), (batch, seq))
    freqs = position_ids.astype(np.float64)[..., None] * rope_inv_freq(config, head_dim)  # [b, s, head_dim/2]
    emb = np.concatenate([freqs, freqs], axis=-1)[:, None]  # [b, 1, s, head_dim]
    cos, sin = np.cos(emb), np.sin(emb)
    # _update_causal_mask: min above the diagonal and at padding keys, 0 elsewhere.
    keep = _masks(batch, seq, attention_mask)
    additive = np.where(keep, 0.0, MIN)
    h = w["model.embed_tokens.weight"][ids]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        x = _rms_norm(h, w[p + "input_layernorm.weight"], eps)
        q = (x @ w[p + "self_attn.q_proj.weight"].T).reshape(batch, seq, heads, head_dim).transpose(0, 2, 1, 3)
        k = (x @ w[p + "self_attn.k_proj.weight"].T).reshape(batch, seq, kv_heads, head_dim).transpose(0, 2, 1, 3)
        v = (x @ w[p + "self_attn.v_proj.weight"].T).reshape(batch, seq, kv_heads, head_dim).transpose(0, 2, 1, 3)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        k = np.repeat(k, groups, axis=1)  # repeat_kv: heads j*groups .. (j+1)*groups-1 read kv head j
        v = np.repeat(v, groups, axis=1)
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(head_dim)
        with np.errstate(over="ignore"):
            scores = scores + additive
        attn = (_softmax(scores) @ v).transpose(0, 2, 1, 3).reshape(batch, seq, heads * head_dim)
        h = h + attn @ w[p + "self_attn.o_proj.weight"].T
        x = _rms_norm(h, w[p + "post_attention_layernorm.weight"], eps)
        gate = x @ w[p + "mlp.gate_proj.weight"].T
        up = x @ w[p + "mlp.up_proj.weight"].T
        h = h + (gate / (1.0 + np.exp(-gate)) * up) @ w[p + "mlp.down_proj.weight"].T
    h = _rms_norm(h, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if config.get("tie_word_embeddings", False) else w["lm_head.weight"]
    return h @ head.T


def forward(config, tensors, ids, attention_mask=None, position_ids=None):
    """Logits [batch, seq, vocab] in float64."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 2:
        raise ValueError(f"input ids must be [batch, seq], got shape {list(ids.shape)}")
    if attention_mask is not None:
        attention_mask = np.asarray(attention_mask, dtype=np.int64)
        if attention_mask.shape != ids.shape:
            raise ValueError(f"attention mask shape {list(attention_mask.shape)} != input ids' {list(ids.shape)}")
    if position_ids is not None:
        position_ids = np.asarray(position_ids)
        if position_ids.shape != ids.shape:
            raise ValueError(f"position ids shape {list(position_ids.shape)} != input ids' {list(ids.shape)}")
    vocab = config.get("vocab_size")
    if vocab is not None and ids.size and (ids.min() < 0 or ids.max() >= vocab):
        raise ValueError(f"input ids must lie in [0, {vocab}) (vocab_size), got {ids.min()}..{ids.max()}")
    model_type = config.get("model_type")
    if model_type == "gpt2":
        return gpt2_forward(config, tensors, ids, attention_mask, position_ids)
    if model_type == "llama":
        return llama_forward(config, tensors, ids, attention_mask, position_ids)
    raise ValueError(f"model_type {model_type!r} is not modelled (gpt2, llama are)")


# ---------------------------------------------------------------------------
# A second implementation, for the self-test only: one sequence, position by
# position and head by head, with torch's own ops in float64 (F.layer_norm,
# F.gelu(approximate="tanh"), F.silu, F.linear, F.softmax), RoPE as a rotation of
# the pairs (x[i], x[i + half]) by position * frequency, llama3's frequencies by
# Meta's scalar piecewise rule, and each query head's kv head picked by index.
# It shares no code with the numpy one above.
# ---------------------------------------------------------------------------


def _naive_llama3_freqs(theta, dim, scaling):
    freqs = [1.0 / theta ** (2 * i / dim) for i in range(dim // 2)]
    if not scaling:
        return freqs
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "linear":
        return [f / scaling["factor"] for f in freqs]
    old, lo, hi, factor = (scaling["original_max_position_embeddings"], scaling["low_freq_factor"],
                           scaling["high_freq_factor"], scaling["factor"])
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < old / hi:
            out.append(f)
        elif wavelen > old / lo:
            out.append(f / factor)
        else:
            smooth = (old / wavelen - lo) / (hi - lo)
            out.append((1 - smooth) * f / factor + smooth * f)
    return out


def naive_forward(config, tensors, ids):
    """Logits [seq, vocab] of one sequence (no padding), or None without torch."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    t = {k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in tensors.items()
         if np.asarray(v).dtype.kind == "f"}
    gpt2 = config["model_type"] == "gpt2"
    if gpt2:
        t = {(k[len("transformer."):] if k.startswith("transformer.") else k): v for k, v in t.items()}
        d, heads, layers = config["n_embd"], config["n_head"], config["n_layer"]
        kv_heads, eps = heads, config.get("layer_norm_epsilon", 1e-5)
    else:
        d, heads, layers = config["hidden_size"], config["num_attention_heads"], config["num_hidden_layers"]
        kv_heads, eps = config.get("num_key_value_heads") or heads, config.get("rms_norm_eps", 1e-6)
    hd = config.get("head_dim") or d // heads
    seq = len(ids)

    def rms(x, weight):
        return weight * x / torch.sqrt(torch.mean(x * x) + eps)

    def rotate(v, pos, freqs):  # v: [hd]; pairs (i, i + hd/2)
        out = v.clone()
        for i, f in enumerate(freqs):
            c, s = math.cos(pos * f), math.sin(pos * f)
            out[i] = v[i] * c - v[i + hd // 2] * s
            out[i + hd // 2] = v[i] * s + v[i + hd // 2] * c
        return out

    freqs = None if gpt2 else _naive_llama3_freqs(config.get("rope_theta", 10000.0), hd, config.get("rope_scaling"))
    if gpt2:
        xs = [t["wte.weight"][ids[p]] + t["wpe.weight"][p] for p in range(seq)]
    else:
        xs = [t["model.embed_tokens.weight"][ids[p]].clone() for p in range(seq)]
    for i in range(layers):
        if gpt2:
            p_ = f"h.{i}."
            normed = [F.layer_norm(x, (d,), t[p_ + "ln_1.weight"], t[p_ + "ln_1.bias"], eps) for x in xs]
            qkv = [F.linear(x, t[p_ + "attn.c_attn.weight"].T, t[p_ + "attn.c_attn.bias"]) for x in normed]
            q = [v[:d] for v in qkv]
            k = [v[d:2 * d] for v in qkv]
            v_ = [v[2 * d:] for v in qkv]
        else:
            p_ = f"model.layers.{i}."
            normed = [rms(x, t[p_ + "input_layernorm.weight"]) for x in xs]
            q = [F.linear(x, t[p_ + "self_attn.q_proj.weight"]) for x in normed]
            k = [F.linear(x, t[p_ + "self_attn.k_proj.weight"]) for x in normed]
            v_ = [F.linear(x, t[p_ + "self_attn.v_proj.weight"]) for x in normed]
        outs = []
        for pos in range(seq):
            heads_out = []
            for h in range(heads):
                g = h // (heads // kv_heads)
                qh = q[pos][h * hd:(h + 1) * hd]
                if not gpt2:
                    qh = rotate(qh, pos, freqs)
                scores = []
                for key in range(pos + 1):
                    kh = k[key][g * hd:(g + 1) * hd]
                    if not gpt2:
                        kh = rotate(kh, key, freqs)
                    scores.append(torch.dot(qh, kh) / math.sqrt(hd))
                probs = F.softmax(torch.stack(scores), dim=0)
                heads_out.append(sum(probs[key] * v_[key][g * hd:(g + 1) * hd] for key in range(pos + 1)))
            outs.append(torch.cat(heads_out))
        if gpt2:
            xs = [x + F.linear(o, t[p_ + "attn.c_proj.weight"].T, t[p_ + "attn.c_proj.bias"]) for x, o in zip(xs, outs)]
            ff = [F.gelu(F.linear(F.layer_norm(x, (d,), t[p_ + "ln_2.weight"], t[p_ + "ln_2.bias"], eps),
                                  t[p_ + "mlp.c_fc.weight"].T, t[p_ + "mlp.c_fc.bias"]), approximate="tanh")
                  for x in xs]
            xs = [x + F.linear(f, t[p_ + "mlp.c_proj.weight"].T, t[p_ + "mlp.c_proj.bias"]) for x, f in zip(xs, ff)]
        else:
            xs = [x + F.linear(o, t[p_ + "self_attn.o_proj.weight"]) for x, o in zip(xs, outs)]
            normed = [rms(x, t[p_ + "post_attention_layernorm.weight"]) for x in xs]
            xs = [x + F.linear(F.silu(F.linear(n, t[p_ + "mlp.gate_proj.weight"])) * F.linear(n, t[p_ + "mlp.up_proj.weight"]),
                               t[p_ + "mlp.down_proj.weight"]) for x, n in zip(xs, normed)]
    if gpt2:
        final = [F.layer_norm(x, (d,), t["ln_f.weight"], t["ln_f.bias"], eps) for x in xs]
        return torch.stack([F.linear(x, t["wte.weight"]) for x in final]).numpy()
    final = [rms(x, t["model.norm.weight"]) for x in xs]
    return torch.stack([F.linear(x, t["lm_head.weight"]) for x in final]).numpy()


# ---------------------------------------------------------------------------
# Self-test
# ---------------------------------------------------------------------------


class Checks:
    def __init__(self):
        self.failed = 0

    def check(self, ok, what, detail=""):
        print(f"{'ok  ' if ok else 'FAIL'} {what}{': ' + detail if detail else ''}")
        if not ok:
            self.failed += 1


def _bf16_round(a):
    """float64 -> f32 -> bf16 (round to nearest even) -> float64."""
    bits = a.astype(np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def _closed_form_llama(c):
    """A 1-layer Llama with hand-set weights, against a value worked out by hand.

    hidden 2, 1 head of dim 2 (inv_freq = theta^0 = 1: position p rotates by p
    radians), q/k/v/o = identity, MLP weights zero (silu(0) * 0 = 0), norms' weights
    1, lm_head identity. Tokens [0, 1] with embeddings e0 = [1, 0], e1 = [0, 1]:
    after input_layernorm x0 = [a, 0], x1 = [0, a] with a = 1/sqrt(1/2 + eps).
    Position 1: q1 = k1 = R(1) x1 = [-a sin 1, a cos 1], k0 = x0, so the scores are
    q1.k0 / sqrt 2 = -a^2 sin(1)/sqrt 2 and q1.k1 / sqrt 2 = a^2/sqrt 2; with their
    softmax (p0, p1), h1 = e1 + p0 v0 + p1 v1 = [p0 a, 1 + p1 a] and the logits are
    h1 / sqrt(mean(h1^2) + eps). Position 0 reads only itself: h0 = e0 + x0.
    """
    eps = 1e-6
    config = {"model_type": "llama", "hidden_size": 2, "num_attention_heads": 1, "num_key_value_heads": 1,
              "num_hidden_layers": 1, "intermediate_size": 1, "rms_norm_eps": eps, "rope_theta": 10000.0,
              "vocab_size": 2, "hidden_act": "silu"}
    eye, zero = np.eye(2), np.zeros((1, 2))
    w = {"model.embed_tokens.weight": np.eye(2), "model.norm.weight": np.ones(2), "lm_head.weight": eye,
         "model.layers.0.input_layernorm.weight": np.ones(2),
         "model.layers.0.post_attention_layernorm.weight": np.ones(2)}
    for name in "qkvo":
        w[f"model.layers.0.self_attn.{name}_proj.weight"] = eye
    w["model.layers.0.mlp.gate_proj.weight"] = zero
    w["model.layers.0.mlp.up_proj.weight"] = zero
    w["model.layers.0.mlp.down_proj.weight"] = zero.T
    got = forward(config, w, [[0, 1]])[0]
    a = 1 / math.sqrt(0.5 + eps)
    s0, s1 = -a * a * math.sin(1) / math.sqrt(2), a * a / math.sqrt(2)
    p0 = math.exp(s0) / (math.exp(s0) + math.exp(s1))
    p1 = 1 - p0
    h0 = [1 + a, 0.0]
    h1 = [p0 * a, 1 + p1 * a]
    want = [[x / math.sqrt((h[0] ** 2 + h[1] ** 2) / 2 + eps) for x in h] for h in (h0, h1)]
    err = float(np.abs(got - np.array(want)).max())
    c.check(err < 1e-12, "Llama closed form (RoPE rotation direction, softmax, RMSNorm)", f"max error {err:.2e}")


def _closed_form_gpt2(c):
    """A 1-layer GPT-2 with hand-set weights, against a value worked out by hand.

    n_embd 2, 1 head, vocab 2, wte = [[1, -1], [2, 0]], wpe = 0, all LayerNorm
    weights 1 and biases 0. c_attn: q and k zero (uniform attention over the
    causal keys), v = ln_1's output; c_proj identity. ln_1 of [u, v] is
    [1, -1] * sign(u - v) * r with r = |u - v| / 2 / sqrt((u - v)^2 / 4 + eps), so
    for tokens [0, 1]: y0 = [r0, -r0] (r0 from [1, -1]), y1 = [r1, -r1] (from [2, 0]),
    h0 = e0 + y0, h1 = e1 + (y0 + y1) / 2. MLP: c_fc weight zero, bias b = [1, 0.5,
    -1, 2, 0, 0, 0, 0] (gelu_new of each, as a closed form), c_proj [8, 2] with
    row j = [j + 1, -(j + 1)] / 8; so h += [g, -g], g = sum_j (j + 1) gelu_new(b_j) / 8.
    Logits: ln_f(h) @ wte^T.
    """
    eps = 1e-5
    config = {"model_type": "gpt2", "n_embd": 2, "n_head": 1, "n_layer": 1, "n_positions": 2,
              "vocab_size": 2, "layer_norm_epsilon": eps, "activation_function": "gelu_new"}
    wte = np.array([[1.0, -1.0], [2.0, 0.0]])
    b = np.array([1.0, 0.5, -1.0, 2.0, 0, 0, 0, 0])
    c_attn = np.zeros((2, 6))
    c_attn[:, 4:6] = np.eye(2)
    w = {"transformer.wte.weight": wte, "transformer.wpe.weight": np.zeros((2, 2)),
         "transformer.h.0.attn.c_attn.weight": c_attn, "transformer.h.0.attn.c_attn.bias": np.zeros(6),
         "transformer.h.0.attn.c_proj.weight": np.eye(2), "transformer.h.0.attn.c_proj.bias": np.zeros(2),
         "transformer.h.0.mlp.c_fc.weight": np.zeros((2, 8)), "transformer.h.0.mlp.c_fc.bias": b,
         "transformer.h.0.mlp.c_proj.weight": np.array([[j + 1.0, -(j + 1.0)] for j in range(8)]) / 8,
         "transformer.h.0.mlp.c_proj.bias": np.zeros(2)}
    for ln in ("h.0.ln_1", "h.0.ln_2", "ln_f"):
        w[f"transformer.{ln}.weight"], w[f"transformer.{ln}.bias"] = np.ones(2), np.zeros(2)
    got = forward(config, w, [[0, 1]])[0]

    def gelu_new(x):
        return 0.5 * x * (1 + math.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))

    def ln(u, v):
        half = (u - v) / 2
        return [half / math.sqrt(half * half + eps), -half / math.sqrt(half * half + eps)]

    y0, y1 = ln(1, -1), ln(2, 0)
    g = sum((j + 1) * gelu_new(b[j]) for j in range(8)) / 8
    h0 = [1 + y0[0] + g, -1 + y0[1] - g]
    h1 = [2 + (y0[0] + y1[0]) / 2 + g, 0 + (y0[1] + y1[1]) / 2 - g]
    want = []
    for h in (h0, h1):
        n = ln(*h)
        want.append([n[0] * wte[t][0] + n[1] * wte[t][1] for t in range(2)])
    err = float(np.abs(got - np.array(want)).max())
    c.check(err < 1e-12, "GPT-2 closed form (c_attn split, causal average, gelu_new, tied head)", f"max error {err:.2e}")


def self_test(models):
    c = Checks()
    _closed_form_llama(c)
    _closed_form_gpt2(c)

    rng = np.random.default_rng(0)
    seq = 12
    models_seen = {}
    for name in ("gpt2-tiny", "gpt2-tiny-bf16", "gpt2-tiny-hub", "llama-tiny", "llama-tiny-bf16", "llama-tiny-llama3"):
        folder = os.path.join(models, name)
        c.check(os.path.isdir(folder), f"{folder} exists")
        if os.path.isdir(folder):
            models_seen[name] = load_model(folder)
    if len(models_seen) < 6:
        print(f"hf_reference self-test: {c.failed} FAILED (the example checkpoints are missing)")
        return c.failed
    vocab = models_seen["gpt2-tiny"][0]["vocab_size"]
    ids = rng.integers(0, vocab, size=(2, seq))
    logits = {name: forward(cfg, w, ids) for name, (cfg, w) in models_seen.items()}

    # The second implementation (torch, position by position) agrees on every example.
    for name, (cfg, w) in models_seen.items():
        other = naive_forward(cfg, w, ids[1])
        if other is None:
            print(f"skip {name}: the torch cross-check (python3-torch is not installed)")
            continue
        err = float(np.abs(other - logits[name][1]).max())
        c.check(err < 1e-10, f"{name}: numpy and the position-by-position torch implementation agree",
                f"max error {err:.1e}")

    # The logits are not degenerate: spread over the vocabulary, different per position.
    for name, out in logits.items():
        spread = float(out.std(axis=-1).min())
        c.check(spread > 0.3 and np.isfinite(out).all(), f"{name}: finite logits, spread over the vocabulary",
                f"smallest per-position std {spread:.3f}")

    # (a) bf16 weights give logits close to f32's (relative to their spread), and the
    #     bf16 files hold exactly the f32 weights rounded to nearest even.
    for f32, bf16 in (("gpt2-tiny", "gpt2-tiny-bf16"), ("llama-tiny", "llama-tiny-bf16")):
        wf, wb = models_seen[f32][1], models_seen[bf16][1]
        same = set(wf) == set(wb) and all(np.array_equal(_bf16_round(wf[k]), wb[k]) for k in wf)
        c.check(same, f"{bf16} holds {f32}'s weights rounded to bf16")
        diff = float(np.abs(logits[f32] - logits[bf16]).max() / logits[f32].std())
        c.check(1e-6 < diff < 0.05, f"{bf16}'s logits close to {f32}'s", f"max |diff| / std = {diff:.4f}")

    # (b) the hub's layout (buffers included) gives exactly the same logits.
    c.check(np.array_equal(logits["gpt2-tiny"], logits["gpt2-tiny-hub"]),
            "gpt2-tiny-hub (hub layout) gives exactly gpt2-tiny's logits")
    hub = models_seen["gpt2-tiny-hub"][1]
    n = models_seen["gpt2-tiny-hub"][0]["n_positions"]
    c.check(np.array_equal(hub["h.0.attn.bias"], np.tril(np.ones((n, n)))[None, None])
            and float(hub["h.0.attn.masked_bias"]) == -1e4, "gpt2-tiny-hub's buffers are the causal mask and -1e4")

    # (c) the sharded checkpoint: the index covers its files exactly, total_size is the
    #     tensors' bytes, a layer spans both files, and the same tensors written as one
    #     file read back equal.
    folder = os.path.join(models, "llama-tiny")
    with open(os.path.join(folder, "model.safetensors.index.json")) as f:
        index = json.load(f)
    files = sorted(set(index["weight_map"].values()))
    sharded = models_seen["llama-tiny"][1]
    per_file = {file: read_safetensors(os.path.join(folder, file)) for file in files}
    c.check(files == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
            and not os.path.exists(os.path.join(folder, "model.safetensors")), "llama-tiny is in two shards")
    c.check(all(meta == {"format": "pt"} for _, meta in per_file.values()), "every shard's metadata is format pt")
    c.check(sum(len(t) for t, _ in per_file.values()) == len(index["weight_map"]) == len(sharded),
            "the index names each stored tensor once")
    c.check(index["metadata"]["total_size"] == sum(4 * a.size for a in sharded.values()),
            "the index's total_size is the tensors' bytes", str(index["metadata"]["total_size"]))
    layer_files = {index["weight_map"][k] for k in index["weight_map"] if k.startswith("model.layers.2.")}
    c.check(len(layer_files) == 2, "one layer spans both shards")
    with tempfile.TemporaryDirectory() as tmp:
        write_safetensors(os.path.join(tmp, "model.safetensors"), sharded)
        single = read_weights(tmp)
    c.check(set(single) == set(sharded) and all(np.array_equal(single[k], sharded[k]) for k in sharded),
            "the sharded index reads the same tensors as one file")

    # (d) causality: logits at positions <= t do not change when later tokens do.
    for name in ("gpt2-tiny", "llama-tiny"):
        cfg, w = models_seen[name]
        t = 5
        other = ids.copy()
        other[:, t + 1:] = (other[:, t + 1:] + 7) % vocab
        a, b = logits[name], forward(cfg, w, other)
        err = float(np.abs(a[:, :t + 1] - b[:, :t + 1]).max())
        c.check(err < 1e-12 and float(np.abs(a[:, t + 1:] - b[:, t + 1:]).max()) > 1e-3,
                f"{name}: causal (later tokens change only later logits)", f"max change before: {err:.1e}")

    # (e) left padding with a key mask of zeros: the unpadded positions' logits equal
    #     the sequence's alone. Llama's rotary embedding is relative, so positions
    #     0..seq-1 (shifted by the padding) give the same scores; GPT-2's absolute
    #     positions need position_ids = cumsum(mask) - 1 as generate() passes them.
    pad = 3
    short = ids[:, :seq - pad]
    padded = np.concatenate([np.zeros((2, pad), dtype=np.int64), short], axis=1)
    padded[1, :pad] = [5, 9, 11]  # what the padding holds does not matter
    mask = np.ones_like(padded)
    mask[:, :pad] = 0
    for name in ("llama-tiny", "llama-tiny-llama3", "gpt2-tiny"):
        cfg, w = models_seen[name]
        alone = forward(cfg, w, short)
        positions = None
        if cfg["model_type"] == "gpt2":
            positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
        got = forward(cfg, w, padded, attention_mask=mask, position_ids=positions)
        err = float(np.abs(got[:, pad:] - alone).max())
        c.check(err < 1e-9, f"{name}: left-padded with a mask = unpadded alone", f"max error {err:.1e}")
        nomask = forward(cfg, w, padded, position_ids=positions)
        c.check(float(np.abs(nomask[:, pad:] - alone).max()) > 1e-3, f"{name}: without the mask they differ")

    # (f) was the closed forms above. (g) llama3 rope scaling: position 0 is not
    #     rotated, so llama-tiny-llama3 (same bf16 weights) matches llama-tiny-bf16
    #     there exactly and differs after.
    a, b = logits["llama-tiny-bf16"], logits["llama-tiny-llama3"]
    c.check(np.array_equal(a[:, 0], b[:, 0]) and float(np.abs(a[:, 1:] - b[:, 1:]).max(axis=-1).min()) > 1e-6,
            "llama-tiny-llama3 = llama-tiny-bf16 at position 0 only")
    # The llama3 frequencies: unchanged above high_freq_wavelen... checked on their branches.
    cfg = models_seen["llama-tiny-llama3"][0]
    head_dim = cfg["head_dim"]
    plain = rope_inv_freq(dict(cfg, rope_scaling=None), head_dim)
    scaled = rope_inv_freq(cfg, head_dim)
    wavelen = 2 * math.pi / plain
    rs = cfg["rope_scaling"]
    high = wavelen < rs["original_max_position_embeddings"] / rs["high_freq_factor"]
    low = wavelen > rs["original_max_position_embeddings"] / rs["low_freq_factor"]
    mid = ~high & ~low
    c.check(high.any() and low.any() and mid.any(), "llama-tiny-llama3's frequencies fall in all three llama3 bands")
    c.check(np.array_equal(scaled[high], plain[high]) and np.allclose(scaled[low], plain[low] / rs["factor"])
            and bool(np.all((scaled[mid] < plain[mid]) & (scaled[mid] > plain[mid] / rs["factor"]))),
            "llama3: high frequencies kept, low ones / factor, the middle between")
    # Linear scaling is positions / factor.
    lin = dict(models_seen["llama-tiny"][0], rope_scaling={"rope_type": "linear", "factor": 4.0})
    w = models_seen["llama-tiny"][1]
    positions = np.broadcast_to(np.arange(seq), ids.shape)
    err = float(np.abs(forward(lin, w, ids) - forward(models_seen["llama-tiny"][0], w, ids,
                                                      position_ids=positions / 4.0)).max())
    c.check(err < 1e-10, "linear rope_scaling = positions / factor", f"max error {err:.1e}")

    # GQA: query head h reads kv head h // groups (repeat_kv), so llama-tiny equals the
    #     multi-head model whose k_proj / v_proj repeat each kv head's rows per group.
    cfg, w = models_seen["llama-tiny"]
    heads, kv_heads, head_dim = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    mha = dict(w)
    for i in range(cfg["num_hidden_layers"]):
        for proj in ("k_proj", "v_proj"):
            name = f"model.layers.{i}.self_attn.{proj}.weight"
            blocks = w[name].reshape(kv_heads, head_dim, -1)
            mha[name] = np.concatenate([blocks[h // (heads // kv_heads)] for h in range(heads)], axis=0)
    err = float(np.abs(forward(dict(cfg, num_key_value_heads=heads), mha, ids) - logits["llama-tiny"]).max())
    c.check(kv_heads < heads and err < 1e-10, "llama-tiny's grouped-query attention = multi-head with kv rows repeated",
            f"max error {err:.1e}")

    print(f"hf_reference self-test: {'all passed' if c.failed == 0 else str(c.failed) + ' FAILED'}")
    return c.failed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a model folder (config.json and safetensors weights)")
    parser.add_argument("--input-ids", help='token ids as JSON, [[...], ...] (batch x seq)')
    parser.add_argument("--attention-mask", help="1 to attend, 0 for padding keys, as JSON; same shape as the ids")
    parser.add_argument("--position-ids", help="positions as JSON (default 0..seq-1 for every row); same shape")
    parser.add_argument("--out", help="write the logits to this .npy file (float64) instead of JSON on stdout")
    parser.add_argument("--time", type=int, metavar="N",
                        help="instead of the logits, print JSON {\"seconds\": mean seconds per forward over N runs "
                             "after one untimed run, \"tokens\": batch x seq} (a benchmark's baseline)")
    parser.add_argument("--generate", type=int, metavar="N",
                        help="greedy generation of N tokens after each row of --input-ids (full recompute per token, "
                             "no cache): prints JSON {\"tokens\": [[...], ...], \"min_gap\": the smallest top-1 - "
                             "top-2 logit gap over the steps} (stopping after an id in --stop-ids)")
    parser.add_argument("--stop-ids", default="[]", help="token ids that end a row's generation (JSON list)")
    parser.add_argument("--time-generate", type=int, metavar="N",
                        help="time greedy generation of N tokens for every row at once (rows of one length; full "
                             "recompute of the batch per token): prints JSON {\"seconds\", \"first_token_seconds\", "
                             "\"tokens\": rows x N} (a benchmark's baseline)")
    parser.add_argument("--self-test", action="store_true", help="check the reference's invariants and exit")
    parser.add_argument("--models", default="examples/hf", help="the example checkpoints' folder, for --self-test")
    args = parser.parse_args()
    if np is None:
        print("hf_reference: skipped: numpy is not installed (Debian: apt-get install python3-numpy)")
        return SKIP
    if args.self_test:
        return 1 if self_test(args.models) else 0
    if not args.model or not args.input_ids:
        parser.error("--model and --input-ids are required (or --self-test)")
    config, tensors = load_model(args.model)
    mask = json.loads(args.attention_mask) if args.attention_mask else None
    positions = json.loads(args.position_ids) if args.position_ids else None
    ids = json.loads(args.input_ids)
    if args.time_generate:
        import time
        seqs = [list(r) for r in ids]
        start = time.perf_counter()
        first = None
        for _ in range(args.time_generate):
            last = forward(config, tensors, seqs)[:, -1]
            for row, token in zip(seqs, np.argmax(last, axis=-1)):
                row.append(int(token))
            if first is None:
                first = time.perf_counter() - start
        seconds = time.perf_counter() - start
        json.dump({"seconds": seconds, "first_token_seconds": first, "tokens": len(seqs) * args.time_generate}, sys.stdout)
        sys.stdout.write("\n")
        return 0
    if args.generate:
        stops = set(json.loads(args.stop_ids))
        rows, gaps = [], []
        for row in ids:
            seq, out = list(row), []
            for _ in range(args.generate):
                last = forward(config, tensors, [seq])[0, -1]
                order = np.argsort(-last, kind="stable")
                gaps.append(float(last[order[0]] - last[order[1]]))
                token = int(order[0])
                out.append(token)
                seq.append(token)
                if token in stops:
                    break
            rows.append(out)
        json.dump({"tokens": rows, "min_gap": min(gaps)}, sys.stdout)
        sys.stdout.write("\n")
        return 0
    if args.time:
        import time
        forward(config, tensors, ids, mask, positions)
        start = time.perf_counter()
        for _ in range(args.time):
            forward(config, tensors, ids, mask, positions)
        seconds = (time.perf_counter() - start) / args.time
        json.dump({"seconds": seconds, "tokens": len(ids) * len(ids[0])}, sys.stdout)
        sys.stdout.write("\n")
        return 0
    logits = forward(config, tensors, ids, mask, positions)
    if args.out:
        np.save(args.out, logits)
    else:
        json.dump({"logits": logits.tolist(), "shape": list(logits.shape)}, sys.stdout)
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

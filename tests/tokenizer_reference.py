#!/usr/bin/env python3
"""An independent reference of byte-level BPE tokenizers (Hugging Face
tokenizer.json, the kind GPT-2 and Llama 3 have), for tests/tokenizer_test.cc.

Written from the `tokenizers` library's documented behaviour, not from
meshrt's C++ (models/tokenizer.cc), and built differently on purpose: Python
strings of code points instead of bytes, the `regex` module (Debian's
python3-regex) instead of PCRE2, and no rewriting of the patterns (regex's \\s
is Unicode's White_Space, as Oniguruma's is in `tokenizers`), added tokens
matched by one alternation sorted longest first, BPE by rescanning all pairs
for the lowest rank (leftmost among equals) after each merge, and decoding with
Python's bytes.decode(errors="replace").

What it follows, as `tokenizers` does (encode without special tokens):
  1. added tokens whose exact content is in the text are cut out, leftmost-
     longest: first those with normalized false, then those with normalized
     true in the text between them;
  2. the pre-tokenizer on each other stretch: ByteLevel (a space prepended to a
     piece not starting with one when add_prefix_space; GPT-2's pattern when
     use_regex) or a Sequence of Split (Isolated: matches and the stretches
     between them are pieces) ending in ByteLevel; empty pieces dropped;
  3. each piece's UTF-8 bytes in GPT-2's byte alphabet, then BPE: the whole
     piece when ignore_merges and it is in the vocabulary; else its characters
     (missing ones become unk_token, fused with fuse_unk, or are dropped), and
     while some adjacent pair has a merge, the pair of lowest rank (leftmost
     first) is merged; a merge listed twice has its later rank;
  4. decode: each id's token (added tokens first; specials skipped when asked;
     ids without a token skipped), its characters back to bytes when all are
     in the byte alphabet, else its UTF-8; then UTF-8 with errors replaced.

Usage:
  tokenizer_reference.py --tokenizer FILE --requests FILE
      requests: {"encode": [text, ...], "decode": [[id, ...], ...]}; prints
      {"encode": [[id, ...], ...], "decode": [text, ...] (special tokens
      skipped), "decode_keep_special": [text, ...]}
  tokenizer_reference.py --self-test
      checks the reference on hand-computed cases; prints
      "tokenizer_reference self-test: all passed"
Exits 77 (skipped) when the regex module is missing.
"""

import argparse
import json
import sys

try:
    import regex
except ImportError:
    print("tokenizer_reference: the regex module (Debian's python3-regex) is not installed", file=sys.stderr)
    sys.exit(77)

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def bytes_to_unicode():
    """GPT-2's byte -> character table (encoder.py of openai/gpt-2)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


BYTE_ENCODER = bytes_to_unicode()
BYTE_DECODER = {c: b for b, c in BYTE_ENCODER.items()}


def alternation(contents):
    """A pattern that finds the leftmost, then longest, of contents (None when empty)."""
    if not contents:
        return None
    ordered = sorted(set(contents), key=len, reverse=True)
    return regex.compile("|".join(regex.escape(c) for c in ordered))


def split_isolated(pattern, text):
    pieces, previous = [], 0
    for m in pattern.finditer(text):
        if m.start() > previous:
            pieces.append(text[previous:m.start()])
        pieces.append(m.group())
        previous = m.end()
    if previous < len(text):
        pieces.append(text[previous:])
    return [p for p in pieces if p]


class Reference:
    def __init__(self, spec):
        model = spec["model"]
        assert model.get("type", "BPE") == "BPE", model.get("type")
        self.vocab = dict(model["vocab"])
        self.ranks = {}
        for rank, m in enumerate(model["merges"]):
            left, right = m.split(" ") if isinstance(m, str) else m
            self.ranks[(left, right)] = rank
        self.ignore_merges = bool(model.get("ignore_merges", False))
        self.unk = model.get("unk_token")
        self.fuse_unk = bool(model.get("fuse_unk", False))

        added = spec.get("added_tokens") or []
        self.added = {t["content"]: t["id"] for t in added}
        self.special_ids = {t["id"] for t in added if t.get("special", False)}

        def normalized(t):
            return t.get("normalized", not t.get("special", False))

        self.raw_added = alternation([t["content"] for t in added if not normalized(t)])
        self.normalized_added = alternation([t["content"] for t in added if normalized(t)])

        self.id_to_token = {i: token for token, i in self.vocab.items()}
        for t in added:
            self.id_to_token[t["id"]] = t["content"]

        self.steps = []  # (add_prefix_space or None for Split, compiled pattern or None)
        pre = spec["pre_tokenizer"]
        for p in pre["pretokenizers"] if pre["type"] == "Sequence" else [pre]:
            if p["type"] == "ByteLevel":
                use_regex = p.get("use_regex", True)
                self.steps.append((p.get("add_prefix_space", True), regex.compile(GPT2_PATTERN) if use_regex else None))
            elif p["type"] == "Split":
                assert p["behavior"] == "Isolated" and not p.get("invert", False), p
                pattern = p["pattern"]
                source = pattern["Regex"] if "Regex" in pattern else regex.escape(pattern["String"])
                self.steps.append((None, regex.compile(source)))
            else:
                raise ValueError("unsupported pre-tokenizer " + p["type"])

    @staticmethod
    def split_added(segments, pattern):
        if pattern is None:
            return segments
        out = []
        for text, token_id in segments:
            if token_id is not None:
                out.append((text, token_id))
                continue
            previous = 0
            for m in pattern.finditer(text):
                if m.start() > previous:
                    out.append((text[previous:m.start()], None))
                out.append((m.group(), m.group()))
                previous = m.end()
            if previous < len(text):
                out.append((text[previous:], None))
        return out

    def pre_tokenize(self, text):
        pieces = [text] if text else []
        for add_prefix_space, pattern in self.steps:
            out = []
            for piece in pieces:
                if add_prefix_space and not piece.startswith(" "):
                    piece = " " + piece
                out.extend(split_isolated(pattern, piece) if pattern is not None else [piece])
            pieces = [p for p in out if p]
        return pieces

    def bpe(self, word):
        if self.ignore_merges and word in self.vocab:
            return [self.vocab[word]]
        symbols, unk_open = [], False
        for ch in word:
            if ch in self.vocab:
                symbols.append(ch)
                unk_open = False
            elif self.unk is not None:
                if not (unk_open and self.fuse_unk):
                    symbols.append(self.unk)
                unk_open = True
        while len(symbols) > 1:
            best = None
            for i in range(len(symbols) - 1):
                rank = self.ranks.get((symbols[i], symbols[i + 1]))
                if rank is not None and (best is None or rank < best[0]):
                    best = (rank, i)
            if best is None:
                break
            i = best[1]
            symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
        return [self.vocab[s] for s in symbols]

    def encode(self, text):
        segments = [(text, None)] if text else []
        segments = self.split_added(segments, self.raw_added)
        segments = self.split_added(segments, self.normalized_added)
        ids = []
        for text_part, content in segments:
            if content is not None:
                ids.append(self.added[content])
                continue
            for piece in self.pre_tokenize(text_part):
                ids.extend(self.bpe("".join(BYTE_ENCODER[b] for b in piece.encode("utf-8"))))
        return ids

    def decode(self, ids, skip_special_tokens=True):
        data = bytearray()
        for i in ids:
            token = self.id_to_token.get(i)
            if token is None or (skip_special_tokens and i in self.special_ids):
                continue
            if all(c in BYTE_DECODER for c in token):
                data += bytes(BYTE_DECODER[c] for c in token)
            else:
                data += token.encode("utf-8")
        return data.decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------
# Self-test
# ---------------------------------------------------------------------------

def byte_vocab():
    return {c: i for i, c in enumerate(BYTE_ENCODER[b] for b in sorted(BYTE_ENCODER, key=lambda b: (BYTE_ENCODER[b] != chr(b), b)))}


def tiny_spec(merges, extra=(), added=(), ignore_merges=False, pre_tokenizer=None):
    vocab = byte_vocab()
    for token in [a + b for a, b in merges] + list(extra):
        vocab.setdefault(token, len(vocab))
    return {
        "added_tokens": list(added),
        "pre_tokenizer": pre_tokenizer or {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True},
        "decoder": {"type": "ByteLevel"},
        "model": {"type": "BPE", "vocab": vocab, "merges": [list(m) for m in merges], "ignore_merges": ignore_merges},
    }


def self_test():
    failures = []

    def check(name, got, expected):
        if got != expected:
            failures.append(f"{name}: got {got!r}, expected {expected!r}")

    check("alphabet size", len(set(BYTE_ENCODER.values())), 256)
    check("space", BYTE_ENCODER[ord(" ")], "Ġ")
    check("newline", BYTE_ENCODER[ord("\n")], "Ċ")
    check("printable", BYTE_ENCODER[ord("a")], "a")
    check("vocab order", [c for c, i in sorted(byte_vocab().items(), key=lambda e: e[1])][:3] + [byte_vocab()["Ā"]],
          ["!", '"', "#", 188])

    gpt2 = Reference(tiny_spec([]))
    check("gpt2 pieces", gpt2.pre_tokenize("Hello world's 123  x\n"),
          ["Hello", " world", "'s", " 123", " ", " x", "\n"])
    # " ?" is a plain space only: a no-break space stays apart from the word after it
    check("gpt2 nbsp", gpt2.pre_tokenize("a\u00a0\u00a0b"), ["a", "\u00a0", "\u00a0", "b"])
    llama = Reference(tiny_spec([], pre_tokenizer={"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"},
         "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]}))
    check("llama digits", llama.pre_tokenize("x 1234567"), ["x", " ", "123", "456", "7"])
    check("llama contraction", llama.pre_tokenize("DON'T"), ["DON", "'T"])

    # BPE by rank: a a a b d -> aa a b d -> aaa b d -> aaa bd
    bpe = Reference(tiny_spec([("a", "a"), ("aa", "a"), ("b", "d")]))
    v = bpe.vocab
    check("bpe", bpe.encode("aaabd"), [v["aaa"], v["bd"]])
    # a a a a -> aa a a -> aa aa: (a, a) ranks before (aa, a)
    check("bpe by rank", bpe.encode("aaaa"), [v["aa"], v["aa"]])
    check("bpe round trip", bpe.decode(bpe.encode("aaabd caaa")), "aaabd caaa")
    # ignore_merges: a piece in the vocabulary is one token even without merges to it
    for flag, expected in ((False, ["x", "y", "z"]), (True, ["xyz"])):
        r = Reference(tiny_spec([], extra=["xyz"], ignore_merges=flag))
        check(f"ignore_merges {flag}", r.encode("xyz"), [r.vocab[t] for t in expected])
    # added tokens: leftmost-longest, specials skipped on request
    added = [{"id": 300, "content": "<a>", "special": True, "normalized": False},
             {"id": 301, "content": "<a><b>", "special": True, "normalized": False},
             {"id": 302, "content": "hi there", "special": False, "normalized": True}]
    r = Reference(tiny_spec([], added=added))
    check("added longest", r.encode("x<a><b>y<a>"), [r.vocab["x"], 301, r.vocab["y"], 300])
    check("added plain", r.encode("hi there"), [302])
    check("decode special kept", r.decode([301, r.vocab["x"]], skip_special_tokens=False), "<a><b>x")
    check("decode special skipped", r.decode([301, r.vocab["x"]]), "x")
    check("decode added with space", r.decode([302]), "hi there")
    check("decode unknown id", r.decode([999999, r.vocab["x"]]), "x")
    # UTF-8 repair: one U+FFFD per maximal subpart (as Rust's from_utf8_lossy)
    def ids_of(data):
        return [r.vocab[BYTE_ENCODER[b]] for b in data]
    check("repair cut", r.decode(ids_of(b"\xe2\x82A")), "\ufffdA")
    check("repair surrogate", r.decode(ids_of(b"\xed\xa0\x80")), "\ufffd" * 3)
    check("repair end", r.decode(ids_of(b"a\xf0\x9f\x98")), "a\ufffd")
    check("repair lone", r.decode(ids_of(b"\x80\xff")), "\ufffd\ufffd")

    for f in failures:
        print("FAILED " + f)
    if failures:
        return 1
    print("tokenizer_reference self-test: all passed")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", help="a tokenizer.json")
    parser.add_argument("--requests", help='{"encode": [text, ...], "decode": [[id, ...], ...]}')
    parser.add_argument("--self-test", action="store_true")
    args = parser.parse_args()
    if args.self_test:
        return self_test()
    if not args.tokenizer or not args.requests:
        parser.error("--tokenizer and --requests (or --self-test) are needed")
    with open(args.tokenizer, encoding="utf-8") as f:
        reference = Reference(json.load(f))
    with open(args.requests, encoding="utf-8") as f:
        requests = json.load(f)
    result = {
        "encode": [reference.encode(t) for t in requests.get("encode", [])],
        "decode": [reference.decode(ids) for ids in requests.get("decode", [])],
        "decode_keep_special": [reference.decode(ids, skip_special_tokens=False) for ids in requests.get("decode", [])],
    }
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

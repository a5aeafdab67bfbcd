#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpus (fuzz/corpus/<target>/): small valid and near-valid
inputs for each parser, so that libFuzzer starts from the formats' real shapes. Run from the
repository root; the corpus is checked in (crash reproducers found later go next to it, in
fuzz/regressions/<target>/)."""
import json
import os
import shutil
import struct

ROOT = os.path.dirname(os.path.abspath(__file__))


def put(target, name, data):
    d = os.path.join(ROOT, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def field(num, value):
    """One protobuf field: str/bytes as length-delimited, int as varint, bool as varint."""
    if isinstance(value, bool):
        return varint(num << 3) + varint(int(value))
    if isinstance(value, int):
        return varint(num << 3) + varint(value & 0xFFFFFFFFFFFFFFFF)
    if isinstance(value, float):
        return varint((num << 3) | 1) + struct.pack("<d", value)
    b = value.encode() if isinstance(value, str) else value
    return varint((num << 3) | 2) + varint(len(b)) + b


def method_specs():
    for i, s in enumerate([
            "none", "quant:bits=4,group=64", "quant:bits=2,group=32,target=k",
            "quant:bits=4,axis=channel,sym=1", "quant:bits=2,axis=channel,group=32,residual=32",
            "quant:bits=4,basis=hadamard,seed=3,packed=1", "rank:r=32,basis=pca,target=kv",
            "rank:r=8,basis=random,seed=7,rope=pre", "hybrid:r=32,bits=4,group=32,basis=svd",
            "quant:bits=99", "rank:", "quant:bits=4,,group=", "hybrid:r=-1",
            "k=quant:bits=2,axis=channel,group=32;v=quant:bits=2",
            "k=rank:r=16,basis=svd;v=quant:bits=4,sym=1;layers=0-1:none;layers=5:quant:bits=8",
            "quant:bits=2;layers=3:hybrid:r=8,bits=4", "v=none;k=none", "k=;v=", "layers=1-:x"]):
        put("method_spec", "seed%02d" % i, s)


def sweep_yamls():
    put("sweep_yaml", "full", """name: demo
priority: 2
max_attempts: 3
mode: product
models:
  - {path: models/ref-llama, name: llama, dtype: fp32}
tasks:
  - {task: lambada_openai, data: data/lambada_openai/lambada_test.jsonl, limit: 20}
  - {task: wikitext, data: data/wikitext-2/wiki.test.raw, window: 128}
methods:
  - none
  - quant:bits=4,group=64
  - {family: rank, budget: [0.25, 0.5]}
kv_heads: [native, 1]
exclude:
  - {method: none, kv_heads: 1}
""")
    put("sweep_yaml", "zip", "name: z\nmode: zip\nmodels: [a, b]\ntasks: [{task: text, data: x}]\n"
        "methods: [none, none]\n")
    put("sweep_yaml", "anchors", "name: &n x\nmodels: [*n]\nmethods: [{<<: {a: 1}}]\n")
    put("sweep_yaml", "bad", "name: [\n")


def safetensors():
    def st(header, data=b""):
        h = json.dumps(header).encode()
        return struct.pack("<Q", len(h)) + h + data
    put("safetensors", "ok", st({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
                                 "__metadata__": {"format": "pt"}}, b"\0" * 16))
    put("safetensors", "two", st({"a": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]},
                                  "b": {"dtype": "I64", "shape": [1], "data_offsets": [6, 14]}},
                                 b"\1" * 14))
    put("safetensors", "overlap", st({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                                      "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}},
                                     b"\0" * 6))
    put("safetensors", "short", struct.pack("<Q", 1 << 40) + b"{}")


def tokenizers():
    src = os.path.join(ROOT, "..", "worker", "engine", "tokenizer", "testdata")
    for name in ("synthetic_bytelevel.json", "synthetic_sp_unk.json"):
        shutil.copy(os.path.join(src, name), os.path.join(ROOT, "corpus", "hf_tokenizer", name))
    put("hf_tokenizer", "minimal", json.dumps({
        "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]},
        "added_tokens": [{"id": 3, "content": "<s>", "special": True}],
        "pre_tokenizer": {"type": "Whitespace"}, "normalizer": {"type": "NFC"}}))


def spm_models():
    def piece(text, score, typ):
        return field(1, text) + varint((2 << 3) | 5) + struct.pack("<f", score) + field(3, typ)
    model = b"".join(field(1, piece(p, s, t)) for p, s, t in [
        ("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3), ("\u2581a", -1.0, 1),
        ("b", -2.0, 1), ("<0x41>", 0.0, 6)])
    trainer = field(3, 2) + field(40, 0) + field(41, 1) + field(42, 2)  # BPE, unk/bos/eos ids
    normalizer = field(1, "identity") + field(3, True) + field(4, True)
    put("spm_model", "tiny", model + field(2, trainer) + field(3, normalizer))
    put("spm_model", "empty", b"")


def rpcs():
    job = "a" * 64
    worker = field(1, "w1") + field(2, "host") + field(3, "cpu") + field(4, "fake") + field(6, "s1")
    seeds = {
        0: field(1, "name: x\nmodels: [m]\nmethods: [none]\ntasks: [{task: text, data: d}]\n")
           + field(3, True),
        1: field(1, "x"), 2: field(1, "x") + field(2, 50), 3: field(1, "x"),
        4: field(1, "x") + field(2, True) + field(3, True),
        5: field(1, "SELECT model, avg(ppl) FROM sweep_results GROUP BY 1") + field(2, 5),
        6: field(1, "x") + field(2, True),
        7: field(1, worker) + field(2, "m"),
        8: field(1, "w1") + field(2, job) + field(3, "0" * 32) + field(4, 1) + field(5, 0.5),
        9: field(1, "w1") + field(2, job) + field(3, "0" * 32) + field(4, 1)
           + field(5, '{"metrics": {"lambada_openai": {"acc": 0.5}}}') + field(6, field(1, worker)),
        10: field(1, "w1") + field(2, job) + field(3, "0" * 32) + field(4, 1) + field(5, 1)
            + field(6, "boom"),
        11: field(1, "0" * 32) + field(2, 50),
        12: field(1, "w1") + field(2, job) + field(3, "0" * 32) + field(4, 1) + field(5, "b" * 64)
            + field(6, 10) + field(7, 4096),
    }
    for k, body in seeds.items():
        put("rpc", "call%02d" % k, bytes([k]) + body)


if __name__ == "__main__":
    shutil.rmtree(os.path.join(ROOT, "corpus"), ignore_errors=True)
    os.makedirs(os.path.join(ROOT, "corpus", "hf_tokenizer"))
    method_specs()
    sweep_yamls()
    safetensors()
    tokenizers()
    spm_models()
    rpcs()

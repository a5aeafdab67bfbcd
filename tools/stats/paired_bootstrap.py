#!/usr/bin/env python3
"""Independent check of `kvsweep table --delta`: recomputes every paired-bootstrap interval from
the per-document (per-window) values stored with the results, in numpy, and compares it with
what the table printed (--format json).

    paired_bootstrap.py EXPORT.jsonl TABLE.json

EXPORT.jsonl: `kvsweep export SWEEP --format jsonl`; TABLE.json: `kvsweep table SWEEP --delta X
--format json` with the same rows/cols/metric. The resample indices come from SplitMix64 drawn
as next() % n, resample after resample (stats/bootstrap.h), written here with numpy's uint64
arithmetic; the interval is numpy.quantile's default (linear). Exit 0 when every interval agrees
to 1e-9 relative, 1 otherwise (each disagreement printed)."""
import base64
import json
import sys

import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(seed, count):
    """The first `count` outputs of SplitMix64(seed)."""
    with np.errstate(over="ignore"):
        k = np.arange(1, count + 1, dtype=np.uint64)
        z = np.uint64(seed) + k * GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def units(result):
    for task in result["metrics"].values():
        if "units" in task:
            u = task["units"]
            out = {"kind": u["kind"],
                   "loglik": np.frombuffer(base64.b64decode(u["loglik_f64"]), dtype="<f8")}
            if "tokens_i32" in u:
                out["tokens"] = np.frombuffer(base64.b64decode(u["tokens_i32"]), dtype="<i4")
            if "greedy_u8" in u:
                out["greedy"] = np.frombuffer(base64.b64decode(u["greedy_u8"]), dtype="u1")
            out["words"] = u.get("total_words", 0)
            out["bytes"] = u.get("total_bytes", 0)
            # wikitext documents: words and bytes of each (lm-eval's weights)
            if "words_i32" in u:
                out["unit_words"] = np.frombuffer(base64.b64decode(u["words_i32"]), dtype="<i4")
            if "bytes_i32" in u:
                out["unit_bytes"] = np.frombuffer(base64.b64decode(u["bytes_i32"]), dtype="<i4")
            return out
    return None


def metric(u, name, idx):
    """The metric over the units at idx (rows of a 2-D index array: one value per resample)."""
    ll = u["loglik"][idx].sum(axis=-1)
    if name == "acc":
        return u["greedy"][idx].mean(axis=-1)
    if name == "loglik_sum":
        return ll
    if name == "ppl":
        return np.exp(-ll / idx.shape[-1])
    if name == "word_ppl" and "unit_words" in u:
        return np.exp(-ll / u["unit_words"][idx].sum(axis=-1))
    if name in ("byte_ppl", "bits_per_byte") and "unit_bytes" in u:
        per_byte = -ll / u["unit_bytes"][idx].sum(axis=-1)
        return np.exp(per_byte) if name == "byte_ppl" else per_byte / np.log(2.0)
    tokens = u["tokens"][idx].sum(axis=-1).astype(np.float64)
    per_token = -ll / tokens
    all_tokens = float(u["tokens"].sum())
    if name == "token_ppl":
        return np.exp(per_token)
    if name == "word_ppl":
        return np.exp(per_token * all_tokens / u["words"])
    if name == "byte_ppl":
        return np.exp(per_token * all_tokens / u["bytes"])
    if name == "bits_per_byte":
        return per_token * all_tokens / (u["bytes"] * np.log(2.0))
    raise ValueError(name)


def label_text(labels, key):
    v = labels.get(key)
    if v is None:
        return ""
    if isinstance(v, bool):
        return json.dumps(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "%g" % v
    return v if isinstance(v, str) else json.dumps(v)


def main():
    jobs = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    table = json.load(open(sys.argv[2]))
    row_dims = [d.strip() for d in table["rows_dim"].split(",")]
    col_dim = table["cols_dim"]
    by_cell = {}
    for j in jobs:
        if j["result"] is None:
            continue
        r = ", ".join(label_text(j["labels"], d) for d in row_dims)
        by_cell[(r, label_text(j["labels"], col_dim))] = j["result"]
    checked, bad = 0, 0
    base_col = table["delta"]
    for ri, row in enumerate(table["rows"]):
        for ci, col in enumerate(table["cols"]):
            d = table["details"][ri][ci]
            if "diff_ci" not in d:
                continue
            a, b = units(by_cell[(row, col)]), units(by_cell[(row, base_col)])
            n = len(a["loglik"])
            name = table["metric"]
            if name == "auto":
                name = "ppl" if a["kind"] == "document" and "unit_words" not in a else "token_ppl"
            idx = (splitmix64(d["seed"], d["resamples"] * n) % np.uint64(n)).astype(np.int64)
            idx = idx.reshape(d["resamples"], n)
            diffs = metric(a, name, idx) - metric(b, name, idx)
            ratios = metric(a, name, idx) / metric(b, name, idx)
            tail = (1 - d["level"]) / 2
            want = [np.quantile(diffs, tail), np.quantile(diffs, 1 - tail),
                    np.quantile(ratios, tail), np.quantile(ratios, 1 - tail)]
            got = d["diff_ci"] + d["ratio_ci"]
            checked += 1
            for w, g in zip(want, got):
                if abs(w - g) > 1e-9 * max(1.0, abs(w)):
                    bad += 1
                    print("row %s col %s: table %r, numpy %r" % (row, col, got, want))
                    break
            sig = want[0] > 0 or want[1] < 0
            if sig != d["significant"]:
                bad += 1
                print("row %s col %s: significance differs" % (row, col))
    print("%d intervals checked, %d disagree" % (checked, bad))
    sys.exit(0 if checked > 0 and bad == 0 else 1)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Side-by-side table of kvsweep vs transformers rows (JSON lines from kvsweep-engine-bench job
mode and hf_bench.py): tokens/s, speedup, compression overhead vs none, numerics agreement and
model FLOP utilization.

  report.py RESULTS.jsonl [--models-dir DIR] [--peak-tflops 989] [--ceiling gemm_ceiling.jsonl]

Rows are kept per (model, task, dtype, method), the last one of each. Tokens/s is the median of
a row's passes (`tokens_per_s_runs`; of an even count, the mean of the middle two), computed here
the same way for both engines. Position-dependent methods
(axis=channel, residual=N) have no transformers run (hf_bench.py skips them): their speed-up is
against transformers' `none` of the same task and dtype, marked †. "of cap" is the speed-up as a
fraction of the largest speed-up over transformers any engine could reach on that shape
(gemm_ceiling.py's products + attention cap: --ceiling).

MFU counts 2·params FLOPs per forward token for every matmul of the body (of a mixture of
experts, the experts a token runs), plus the LM head for scored tokens only, plus causal
attention 2·H·D·T_mean per layer per token (QK^T and PV, half the square; under a sliding window
w < T, 4·H·D·(w − w²/2T)), against the H200's dense bf16 datasheet peak (989 TFLOP/s; cuBLAS reaches ~754 on
these shapes, tools/gpu/gemm_ceiling.py).
"""
import argparse
import collections
import json
import os
import statistics


def flops_per_token(cfg, window, scored_frac):
    if cfg.get("model_type") == "gpt2":
        Hd, L, V = cfg["n_embd"], cfg["n_layer"], cfg["vocab_size"]
        H = cfg["n_head"]
        D = Hd // H
        I = cfg.get("n_inner") or 4 * Hd
        body = L * (4 * Hd * Hd + 2 * Hd * I)
    else:
        Hd, L, V = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
        H = cfg["num_attention_heads"]
        D = cfg.get("head_dim") or Hd // H
        Hkv = cfg.get("num_key_value_heads") or H
        I = cfg["intermediate_size"]
        # A mixture of experts runs num_experts_per_tok of its MLPs per token, after its router.
        experts = cfg.get("num_experts_per_tok") or 1
        router = Hd * cfg["num_local_experts"] if cfg.get("num_local_experts") else 0
        body = L * (Hd * H * D * 2 + Hd * Hkv * D * 2 + 3 * Hd * I * experts + router)
    # Causal attention: 2 matmuls x 2 FLOPs x H*D x the mean number of entries a query reads, T/2,
    # or under a sliding window w < T (the layers layer_types marks, else every layer where
    # sliding_window is set) w - w^2 / (2T).
    w = cfg.get("sliding_window") or 0
    types = cfg.get("layer_types") or (["sliding_attention" if w else "full_attention"] * L)
    read = [w - w * w / (2 * window) if t == "sliding_attention" and 0 < w < window else window / 2
            for t in types]
    attn = 4 * H * D * sum(read)
    return 2 * body + attn + 2 * Hd * V * scored_frac


def tps(r):
    """A row's tokens/s: the median of its passes (the mean of the middle two for an even count),
    the same for both engines; rows without per-pass figures give their stored value."""
    runs = r.get("tokens_per_s_runs")
    return statistics.median(runs) if runs else r["tokens_per_s"]


DEFAULT_QUERY_BLOCK = 128  # worker/engine/attention.h: kAttentionQueryBlock


# kvsweep rows of another attention query block (engine bench --attention-blocks) are rows of
# their own, compared with the `none` row of the same block. So are rows run without the fused
# layer (--fused-layer off / both: libtorch elementwise ops, separate projections) and rows run
# with libtorch's products where tuned ones would apply (--tuned-gemm off); those two are the same
# computation as transformers' row of the method.
ENGINE_VARIANTS = (" @ unfused layer", " @ libtorch products")


def label(r):
    b = r.get("attention_block", DEFAULT_QUERY_BLOCK)
    out = r["method"] + ("" if b == DEFAULT_QUERY_BLOCK else f" @ query block {b}")
    out += " @ unfused layer" if r.get("fused_layer") is False else ""
    return out + (" @ libtorch products" if r.get("tuned_gemm") is False else "")


def engine_variant_of(method_label):
    """The label without the engine variants' suffixes: the row transformers' figure is under."""
    for v in ENGINE_VARIANTS:
        method_label = method_label.replace(v, "")
    return method_label


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--models-dir", default="")
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--ceiling", default="")
    a = ap.parse_args()
    rows = [json.loads(l) for l in open(a.results) if l.strip()]
    caps = {}
    if a.ceiling and os.path.exists(a.ceiling):
        for l in open(a.ceiling):
            if l.strip():
                c = json.loads(l)
                caps[c["shape"]] = c["max_speedup_gemm_plus_attention"]
    by = collections.defaultdict(dict)
    for r in rows:
        by[(r["model"], r["task"], r.get("dtype", "bf16"), label(r))][r["engine"]] = r
    print("| model | task | W | dtype | method | transformers tok/s | kvsweep tok/s | speedup | of cap | vs none (kvsweep) | rel Δ loglik | MFU (kvsweep) | peak GiB (kvsweep / HF) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for (model, task, dtype, method), e in sorted(by.items()):
        k, h = e.get("kvsweep"), e.get("transformers")
        if not h and engine_variant_of(method) != method:  # transformers' row of the method
            h = by.get((model, task, dtype, engine_variant_of(method)), {}).get("transformers")
        tail = method[method.index(" @ "):] if " @ " in method else ""
        none = by.get((model, task, dtype, "none" + tail), {}).get("kvsweep")
        dagger = ""
        if k and not h and ("axis=channel" in method or "residual=" in method):
            h = by.get((model, task, dtype, "none"), {}).get("transformers")
            dagger = " †"
        cfg = {}
        if a.models_dir and os.path.exists(os.path.join(a.models_dir, model, "config.json")):
            cfg = json.load(open(os.path.join(a.models_dir, model, "config.json")))
        cell = lambda x, f: f.format(x) if x is not None else "–"
        ktps = tps(k) if k else None
        htps = tps(h) if h else None
        speed = ktps / htps if k and h else None
        over = (tps(none) / ktps - 1) if k and none else None
        if k and "cost_vs_none_paired" in k:  # interleaved passes: the median of per-pass costs
            over = k["cost_vs_none_paired"]
        rel = None
        if k and h and not dagger:
            kl, hl = k["metrics"]["loglik_sum"], h["metrics"]["loglik_sum"]
            rel = abs(kl - hl) / abs(hl)
        mfu = None
        if k and cfg:
            t = k["timing"]
            window_mean = t["forward_tokens"] / max(1, t["sequences"])
            f = flops_per_token(cfg, window_mean, t["scored_tokens"] / t["forward_tokens"])
            mfu = ktps * f / (a.peak_tflops * 1e12)
        peak = "{:.1f} / {}".format(k["timing"].get("peak_device_bytes", 0) / 2**30,
                                   "{:.1f}".format(h["peak_gpu_bytes"] / 2**30) if h else "–") if k else "–"
        cap = caps.get(model)
        of_cap = speed / cap if speed is not None and cap else None
        print(f"| {model} | {task} | {(k or h)['window']} | {dtype} | `{method}` | {cell(htps, '{:.0f}')}{dagger} | {cell(ktps, '{:.0f}')} | "
              f"{cell(speed, '{:.2f}×')}{dagger} | {cell(of_cap, '{:.0%}')} | {cell(over, '{:+.1%}')} | {cell(rel, '{:.1e}')} | {cell(mfu, '{:.1%}')} | {peak} |")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""How fast can ANY engine score a window at this shape? (docs/gpu.md, "The ceiling at 1B, 7B and 14B")

For each model shape, in one process on the GPU, bf16:
  1. transformers' decoder body (AutoModelForCausalLM.from_config, SDPA, random weights: speed
     does not depend on the values) on B windows of W tokens, without the LM head: t_hf;
  2. the same forward's matrix products alone (q, k, v, o, gate, up, down of every layer, as
     F.linear on the same shapes): t_gemm;
  3. causal attention alone (torch's scaled_dot_product_attention, flash, GQA K/V expanded):
     t_attn.
Any engine that computes the same model must do at least the products and the attention, so
t_hf / (t_gemm + t_attn) bounds its speed-up over transformers from above (norms, RoPE,
activations and residual adds only lower it further). Prints one JSON line per shape.

  gemm_ceiling.py [--shapes mistral-7b,qwen2-14b,llama-1b] [--window 4096] [--batch 4] [--iters 10]
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F

# The shapes of tools/gpu/make_checkpoints.py (the reference study's models).
SHAPES = {
    "llama-1b": dict(arch="llama", hidden=2048, inter=8192, layers=16, heads=32, kv=8, vocab=128256),
    "mistral-7b": dict(arch="mistral", hidden=4096, inter=14336, layers=32, heads=32, kv=8, vocab=32000),
    "qwen2-14b": dict(arch="qwen2", hidden=5120, inter=13824, layers=48, heads=40, kv=8, vocab=152064),
}


def timed(fn, iters):
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(3):  # best of 3 rounds of `iters` calls: the ceiling, not the average
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) / iters)
    return best


def hf_body(name, s, batch, window, iters):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(
        s["arch"], hidden_size=s["hidden"], intermediate_size=s["inter"],
        num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
        num_key_value_heads=s["kv"], vocab_size=s["vocab"], max_position_embeddings=window,
        **({"sliding_window": None} if s["arch"] == "mistral" else {}))
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16,
                                                 attn_implementation="sdpa")
    model.eval()
    ids = torch.randint(0, s["vocab"], (batch, window), device="cuda")
    body = model.model  # the decoder without the LM head

    def run():
        with torch.inference_mode():
            body(input_ids=ids, use_cache=False)

    t = timed(run, iters)
    del model, body
    torch.cuda.empty_cache()
    return t


def gemms(s, tokens, iters):
    h, i, d = s["hidden"], s["inter"], s["hidden"] // s["heads"]
    x = torch.randn(tokens, h, device="cuda", dtype=torch.bfloat16)
    xi = torch.randn(tokens, i, device="cuda", dtype=torch.bfloat16)
    w = {n: torch.randn(*shape, device="cuda", dtype=torch.bfloat16) * 0.02 for n, shape in {
        "q": (h, h), "kv": (s["kv"] * d, h), "o": (h, h), "gu": (i, h), "down": (h, i)}.items()}

    def layer():  # nn.Linear's product, weights stored [out, in]
        F.linear(x, w["q"])
        F.linear(x, w["kv"])
        F.linear(x, w["kv"])
        F.linear(x, w["o"])
        F.linear(x, w["gu"])
        F.linear(x, w["gu"])
        F.linear(xi, w["down"])

    flops = 2 * tokens * (2 * h * h + 2 * h * s["kv"] * d + 3 * h * i)
    return timed(layer, iters) * s["layers"], flops * s["layers"]


def attention(s, batch, window, iters):
    d = s["hidden"] // s["heads"]
    q = torch.randn(batch, s["heads"], window, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(batch, s["heads"], window, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    t = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), iters)
    return t * s["layers"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="mistral-7b,qwen2-14b,llama-1b")
    ap.add_argument("--window", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--iters", type=int, default=10)
    a = ap.parse_args()
    for name in a.shapes.split(","):
        s = SHAPES[name]
        tokens = a.batch * a.window
        t_hf = hf_body(name, s, a.batch, a.window, a.iters)
        t_gemm, flops = gemms(s, tokens, a.iters)
        t_attn = attention(s, a.batch, a.window, a.iters)
        print(json.dumps({
            "shape": name, "window": a.window, "batch": a.batch, "tokens": tokens,
            "device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "t_hf_body_ms": round(t_hf * 1e3, 2), "t_gemm_ms": round(t_gemm * 1e3, 2),
            "t_attn_ms": round(t_attn * 1e3, 2),
            "gemm_tflops": round(flops / t_gemm / 1e12, 1),
            "hf_tokens_per_s": round(tokens / t_hf),
            "max_speedup_gemm_only": round(t_hf / t_gemm, 3),
            "max_speedup_gemm_plus_attention": round(t_hf / (t_gemm + t_attn), 3)}), flush=True)


if __name__ == "__main__":
    main()

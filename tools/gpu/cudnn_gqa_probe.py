#!/usr/bin/env python3
"""Does cuDNN's fused attention read grouped K/V itself? (docs/gpu.md, "Where the position-dependent cost goes")

The packed position-dependent attention's causal part calls aten::_scaled_dot_product_cudnn_attention
(queries S.. over entries 0..T-S-1, causal, with its log-sum-exp). This compares, at one shape, that
call with K/V of Hkv heads against the same call with K/V repeated to H heads: the largest
difference of the outputs and of the log-sum-exps (0 = bitwise the same), and the median time of
each, the repeat included. Prints one JSON line.

  cudnn_gqa_probe.py [--shape B,H,Hkv,T,D] [--shift S] [--iters 15]
"""
import argparse
import json

import torch

from gpu_timing import median_ms


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="4,32,8,4096,128", help="B,H,Hkv,T,D (7B: 4 windows)")
    ap.add_argument("--shift", type=int, default=31, help="S = residual + block - 1")
    ap.add_argument("--iters", type=int, default=15)
    args = ap.parse_args()
    B, H, Hkv, T, D = (int(x) for x in args.shape.split(","))
    S = args.shift
    torch.manual_seed(0)
    o = dict(device="cuda", dtype=torch.bfloat16)
    q = torch.randn(B, H, T, D, **o)
    k = torch.randn(B, Hkv, T, D, **o)
    v = torch.randn(B, Hkv, T, D, **o)
    qs, ks, vs = q[:, :, S:], k[:, :, : T - S], v[:, :, : T - S]
    op = torch.ops.aten._scaled_dot_product_cudnn_attention

    def rep(x):
        return x.repeat_interleave(H // Hkv, 1)

    def run(kk, vv):
        return op(qs, kk, vv, None, True, 0.0, True, False, scale=D ** -0.5)

    row = {"shape": {"B": B, "H": H, "Hkv": Hkv, "T": T, "D": D}, "shift": S}
    ref = run(rep(ks), rep(vs))
    row["repeated_ms"] = median_ms(lambda: run(rep(ks), rep(vs)), args.iters)
    try:
        got = run(ks, vs)
        row["grouped_out_max_diff"] = (got[0].float() - ref[0].float()).abs().max().item()
        row["grouped_lse_max_diff"] = (got[1].float() - ref[1].float()).abs().max().item()
        row["grouped_ms"] = median_ms(lambda: run(ks, vs), args.iters)
    except RuntimeError as e:  # a version whose cuDNN path refuses grouped K/V
        row["grouped_error"] = str(e).splitlines()[0]
    print(json.dumps(row))


if __name__ == "__main__":
    main()

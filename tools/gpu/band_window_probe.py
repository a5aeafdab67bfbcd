#!/usr/bin/env python3
"""Can flash attention's sliding window compute the packed attention's band? (docs/gpu.md, "Where the position-dependent cost goes")

The packed position-dependent attention reads, for query t, entries j <= t - S compressed through a
shifted causal attention and the band (t - S, t] through a second kernel. Where every entry of a
query block's band is read in one state by all of the block's queries, the band's entries laid out
in position order make each query's band a sliding window of S entries ending at its own row:
flash attention's variable-length form (one sequence per query block) with window (S - 1, 0).

This checks that form against an explicit fp32 softmax (outputs and log-sum-exps, a query per row
of a one-window batch, with queries read through a strided [T, H, D] view of [H, T, D]), prints
the op's schema and the log-sum-exp's shape, and times at one shape the windowed band against the
memory-efficient kernel with a bias (the form it replaces) and against causal attention over the
whole window (`none`). Prints JSON lines.

  band_window_probe.py [--shape B,H,Hkv,T,D] [--iters 15]
"""
import argparse
import json
import math

import torch

from gpu_timing import median_ms

flash = torch.ops.aten._flash_attention_forward


def blocks(T, C, first):
    """Query blocks [t0, t1): the first `first` queries, then C at a time."""
    out, t0 = [], 0
    while t0 < T:
        t1 = min(T, t0 + (first if t0 == 0 and first > 0 else C))
        out.append((t0, t1))
        t0 = t1
    return out


def layout(T, C, first, S, device):
    """Per block its entries [max(0, t0 - S + 1), t1): the gather index and cumulative lengths."""
    bl = blocks(T, C, first)
    index, cu_q, cu_k = [], [0], [0]
    for t0, t1 in bl:
        lo = max(0, t0 - S + 1)
        index.extend(range(lo, t1))
        cu_q.append(t1)
        cu_k.append(cu_k[-1] + t1 - lo)
    max_q = max(t1 - t0 for t0, t1 in bl)
    max_k = max(cu_k[i + 1] - cu_k[i] for i in range(len(bl)))
    i32 = lambda x: torch.tensor(x, dtype=torch.int32, device=device)
    return torch.tensor(index, device=device), i32(cu_q), i32(cu_k), max_q, max_k


def band(q_tHD, k_THD, v_THD, lay, S, scale):
    index, cu_q, cu_k, max_q, max_k = lay
    kb, vb = k_THD.index_select(0, index), v_THD.index_select(0, index)
    r = flash(q_tHD, kb, vb, cu_q, cu_k, max_q, max_k, 0.0, True, False, scale=scale,
              window_size_left=S - 1, window_size_right=0)
    return r[0], r[1]


def check(H, Hkv, T, D, C, first, S, dtype):
    torch.manual_seed(0)
    dev = "cuda"
    scale = 1 / math.sqrt(D)
    q = torch.randn(H, T, D, device=dev, dtype=dtype)  # [H, T, D], read as [T, H, D] strided
    k = torch.randn(T, Hkv, D, device=dev, dtype=dtype)
    v = torch.randn(T, Hkv, D, device=dev, dtype=dtype)
    out, lse = band(q.transpose(0, 1), k, v, layout(T, C, first, S, dev), S, scale)
    g = H // Hkv
    s = torch.einsum("htd,jhd->htj", q.float(), k.float().repeat_interleave(g, 1)) * scale
    t = torch.arange(T, device=dev)
    seen = (t[None, :] <= t[:, None]) & (t[None, :] > t[:, None] - S)
    s = s.masked_fill(~seen, float("-inf"))
    ref_lse = torch.logsumexp(s, -1)  # [H, T]
    ref = torch.einsum("htj,jhd->thd", torch.softmax(s, -1), v.float().repeat_interleave(g, 1))
    if lse.dim() == 2:  # [H, total_q]
        lse_f = lse.float()[:, :T]
    else:  # [blocks, H, max_q], padded
        lse_f = torch.cat([lse[j, :, : t1 - t0].float()
                           for j, (t0, t1) in enumerate(blocks(T, C, first))], 1)
    return {
        "probe": "check", "H": H, "Hkv": Hkv, "T": T, "D": D, "C": C, "first": first, "S": S,
        "dtype": str(dtype), "lse_shape": list(lse.shape),
        "out_max_abs_diff": (out.float() - ref).abs().max().item(),
        "out_ref_max_abs": ref.abs().max().item(),
        "lse_max_abs_diff": (lse_f - ref_lse).abs().max().item(),
    }


def timing(B, H, Hkv, T, D, C, first, S, iters):
    dev, dt = "cuda", torch.bfloat16
    scale = 1 / math.sqrt(D)
    q = torch.randn(B, H, T, D, device=dev, dtype=dt)
    k = torch.randn(B, T, Hkv, D, device=dev, dtype=dt)
    v = torch.randn(B, T, Hkv, D, device=dev, dtype=dt)
    lay = layout(T, C, first, S, dev)
    kb = k.index_select(1, lay[0])
    vb = v.index_select(1, lay[0])

    def windowed():
        for b in range(B):
            flash(q[b].transpose(0, 1), kb[b], vb[b], lay[1], lay[2], lay[3], lay[4], 0.0, True,
                  False, scale=scale, window_size_left=S - 1, window_size_right=0)

    def gather():
        k.index_select(1, lay[0])
        v.index_select(1, lay[0])

    # The form it replaces: blocks of 128 queries (GQA heads folded into rows) over L entries
    # with a [g*128, L] additive bias per block.
    g, Cb = H // Hkv, 128
    nb = (T + Cb - 1) // Cb
    L = (Cb + S - 1 + 7) // 8 * 8
    qf = torch.randn(B * Hkv, nb, g * Cb, D, device=dev, dtype=dt)
    kf = torch.randn(B * Hkv, nb, L, D, device=dev, dtype=dt)
    bias = torch.zeros(1, nb, g * Cb, L, device=dev, dtype=dt).expand(B * Hkv, nb, g * Cb, L)

    def biased():
        torch.ops.aten._scaled_dot_product_efficient_attention(qf, kf, kf, bias, True, 0.0, False,
                                                               scale=scale)

    kn = k.transpose(1, 2).contiguous()

    def none():
        torch.nn.functional.scaled_dot_product_attention(q, kn, kn, is_causal=True,
                                                         enable_gqa=True)

    return {"probe": "timing", "B": B, "H": H, "Hkv": Hkv, "T": T, "D": D, "C": C, "first": first,
            "S": S, "windowed_band_ms": median_ms(windowed, iters),
            "index_select_gather_ms": median_ms(gather, iters),
            "biased_band_ms": median_ms(biased, iters), "none_ms": median_ms(none, iters)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="4,32,8,4096,128", help="B,H,Hkv,T,D (7B: 4 windows)")
    ap.add_argument("--iters", type=int, default=15)
    args = ap.parse_args()
    B, H, Hkv, T, D = map(int, args.shape.split(","))
    print(json.dumps({"torch": torch.__version__, "schema": str(flash.default._schema)}),
          flush=True)
    # (C, first, S): channel blocks of 128 (INT4), of 32 with a residual of 32, per-token r128.
    cases = [(128, 127, 127), (32, 31 + 32, 63), (128, 0, 128)]
    for C, first, S in cases:
        for dtype in (torch.bfloat16, torch.float16):
            print(json.dumps(check(H, Hkv, 1000, D, C, first, S, dtype)), flush=True)
    for C, first, S in cases:
        print(json.dumps(timing(B, H, Hkv, T, D, C, first, S, args.iters)), flush=True)


if __name__ == "__main__":
    main()

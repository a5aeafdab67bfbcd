#!/usr/bin/env python3
"""transformers side of the GPU comparison (docs/gpu.md): the same tasks, definitions and KV
compression as kvsweep, in transformers' fastest honest configuration — bf16, SDPA (flash for
causal batches), batched, right-padded, hidden states from transformers' own modules and the LM
head applied only to scored positions (what kvsweep does; the naive full-logits path is slower).

  hf_bench.py --model DIR --out FILE.jsonl [--tasks wikitext,lambada_openai] [--methods ...]
              [--window W] [--limit N] [--batch-tokens N] --assets ASSETS [--dtype bf16|fp32]

Methods (K post-RoPE and V, inside attention, as kvsweep simulates them):
  none; quant:bits=B,group=G (per token, asym min-max, round half to even);
  rank:r=R,basis=identity (keep the first R coordinates); hybrid:r=R,bits=B,basis=identity
  (first R coordinates, quantized per token as one group of R). Position-dependent methods
  (axis=channel, residual=N) are skipped: report.py compares those rows with transformers' `none`.
Prints one JSON line per (task, method): metrics, tokens/s, peak memory.
"""
import argparse
import json
import math
import os
import re
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "reference"))
from make_reference import fake_quant, lambada_split, encode_pair, rolling_windows, count_words, read_lambada  # noqa: E402


def parse_method(s):
    if s == "none":
        return None
    fam, _, rest = s.partition(":")
    kv = dict(p.split("=") for p in rest.split(",") if p)
    m = {"family": fam, "target": kv.get("target", "kv")}
    if kv.get("axis", "token") != "token" or int(kv.get("residual", "0")) > 0:
        # Position-dependent caches (each query reads its own mix of compressed and raw entries)
        # have no transformers implementation here; report.py sets those rows against `none`.
        raise NotImplementedError(s)
    if fam == "quant":
        m.update(bits=int(kv["bits"]), group=int(kv.get("group", 0)), sym=kv.get("sym", "0") == "1")
    elif fam == "rank":
        assert kv.get("basis", "identity") == "identity", "hf_bench implements basis=identity only"
        m.update(r=int(kv["r"]))
    elif fam == "hybrid":
        assert kv.get("basis", "identity") == "identity", "hf_bench implements basis=identity only"
        m.update(r=int(kv["r"]), bits=int(kv["bits"]), group=int(kv.get("group", kv["r"])))
    else:
        raise ValueError(s)
    return m


def compress(x, m):
    d = x.shape[-1]
    if m["family"] == "quant":
        return fake_quant(x, m["bits"], m["group"] or d, m["sym"])
    y = torch.zeros_like(x)
    r = m["r"]
    if m["family"] == "rank":
        y[..., :r] = x[..., :r]
    else:
        y[..., :r] = fake_quant(x[..., :r].contiguous(), m["bits"], m["group"], False)
    return y


class Hook:
    def __init__(self):
        self.m = None
        self.calls = 0

    def __enter__(self):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
        self.table = ALL_ATTENTION_FUNCTIONS
        self.orig = ALL_ATTENTION_FUNCTIONS["sdpa"]

        def wrapped(module, query, key, value, *args, **kw):
            if self.m is not None:
                self.calls += 1
                if self.m["target"] in ("k", "kv"):
                    key = compress(key, self.m)
                if self.m["target"] in ("v", "kv"):
                    value = compress(value, self.m)
            return self.orig(module, query, key, value, *args, **kw)

        ALL_ATTENTION_FUNCTIONS["sdpa"] = wrapped
        return self

    def __exit__(self, *a):
        self.table["sdpa"] = self.orig


def base_and_head(model):
    if hasattr(model, "transformer"):
        return model.transformer, model.lm_head
    return model.model, model.lm_head


def score(model, reqs, batch_tokens, dtype):
    """reqs: [(input, cont)] -> [(ll, greedy)], scored tokens."""
    base, lm_head = base_and_head(model)
    cap = getattr(model.config, "final_logit_softcapping", None)

    def head(h):
        # The causal-LM forward's final soft-capping (Gemma 2), as transformers applies it.
        logits = lm_head(h)
        return logits if not cap else torch.tanh(logits / cap) * cap

    order = sorted(range(len(reqs)), key=lambda i: -len(reqs[i][0]))
    res = [None] * len(reqs)
    pos = 0
    while pos < len(order):
        T = len(reqs[order[pos]][0])
        B = max(1, min(batch_tokens // T, len(order) - pos))
        idx = order[pos:pos + B]
        pos += B
        ids = torch.zeros(B, T, dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, :len(reqs[i][0])] = torch.tensor(reqs[i][0])
        with torch.no_grad():
            h = base(input_ids=ids.cuda(), use_cache=False).last_hidden_state  # [B, T, H]
            rows, tgt, owner = [], [], []
            for r, i in enumerate(idx):
                inp, cont = reqs[i]
                n = len(cont)
                rows.extend(r * T + len(inp) - n + k for k in range(n))
                tgt.extend(cont)
                owner.extend([r] * n)
            flat = h.reshape(B * T, -1)
            rows_t = torch.tensor(rows, device="cuda")
            tgt_t = torch.tensor(tgt, device="cuda")
            ll = torch.empty(len(rows), dtype=torch.float64, device="cuda")
            hit = torch.empty(len(rows), dtype=torch.bool, device="cuda")
            for s in range(0, len(rows), 4096):
                lp = torch.log_softmax(head(flat[rows_t[s:s + 4096]]).float(), -1)
                t = tgt_t[s:s + 4096]
                ll[s:s + 4096] = lp.gather(1, t[:, None])[:, 0].double()
                hit[s:s + 4096] = lp.argmax(-1) == t
            ll, hit = ll.cpu().tolist(), hit.cpu().tolist()
        acc = {}
        for k, r in enumerate(owner):
            a = acc.setdefault(r, [0.0, True])
            a[0] += ll[k]
            a[1] = a[1] and hit[k]
        for r, i in enumerate(idx):
            res[i] = tuple(acc.get(r, [0.0, True]))
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--assets", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tasks", default="wikitext,lambada_openai")
    ap.add_argument("--methods", default="none")
    ap.add_argument("--window", type=int, default=0)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--wiki-lines", type=int, default=0)
    ap.add_argument("--batch-tokens", type=int, default=32768)
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--repeat", type=int, default=1, help="scoring passes; tokens/s is their median")
    a = ap.parse_args()
    import transformers
    from tokenizers import Tokenizer
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[a.dtype]
    t0 = time.time()
    # Soft-capped attention scores (Gemma 2) are computed by transformers' eager attention only;
    # the compression hook wraps SDPA, so such a model runs `none` alone.
    softcapped = bool(getattr(transformers.AutoConfig.from_pretrained(a.model), "attn_logit_softcapping", None))
    impl = "eager" if softcapped else "sdpa"
    model = transformers.AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype, attn_implementation=impl).cuda().eval()
    load_s = time.time() - t0
    tok = Tokenizer.from_file(os.path.join(a.model, "tokenizer.json"))
    enc = lambda s: tok.encode(s, add_special_tokens=False).ids
    prefix = next(tok.token_to_id(t) for t in ["<s>", "<|endoftext|>", "<|begin_of_text|>"] if tok.token_to_id(t) is not None)
    cfg = model.config
    W = a.window or getattr(cfg, "max_position_embeddings", None) or cfg.n_positions
    with Hook() as hook, open(a.out, "a") as out:
        for task in a.tasks.split(","):
            if task == "wikitext":
                text = open(os.path.join(a.assets, "data/wikitext-2/wiki.test.raw"), "rb").read().decode("utf-8")
                if a.wiki_lines:
                    parts = text.split("\n")
                    text = "\n".join(parts[:a.wiki_lines]) + ("\n" if len(parts) > a.wiki_lines else "")
                tokens = enc(text)
                reqs = []
                for x, y in rolling_windows(tokens, prefix, W, 1):
                    x = x[:len(x) - (len(y) - 1)]
                    reqs.append(((x + y)[-(W + 1):][:-1], y))
            else:
                docs = read_lambada(a.assets)
                if a.limit:
                    docs = docs[:a.limit]
                reqs = []
                for text in docs:
                    c, k = encode_pair(enc, *lambada_split(text), prefix)
                    reqs.append(((c + k)[-(W + 1):][:-1], k))
            fwd_tokens = sum(len(r[0]) for r in reqs)
            for mspec in a.methods.split(";"):
                try:
                    hook.m = parse_method(mspec)
                except NotImplementedError:
                    print("skipped (position dependent, no transformers implementation):", mspec, flush=True)
                    continue
                if softcapped and hook.m is not None:
                    print("skipped (soft-capped attention runs eager, which the hook does not wrap):", mspec,
                          flush=True)
                    continue
                score(model, reqs[:2], a.batch_tokens, dtype)  # warm-up (kernels, allocator)
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                calls0 = hook.calls
                times = []
                for _ in range(max(1, a.repeat)):
                    t1 = time.time()
                    res = score(model, reqs, a.batch_tokens, dtype)
                    torch.cuda.synchronize()
                    times.append(time.time() - t1)
                # The median pass (of an even count, the mean of the middle two tokens/s, as
                # kvsweep-engine-bench and report.py take it).
                dt = fwd_tokens / statistics.median([fwd_tokens / t for t in times])
                if hook.m is not None and hook.calls == calls0:
                    raise RuntimeError("compression hook never ran for " + mspec)
                lls = [r[0] for r in res]
                if task == "wikitext":
                    ll = sum(lls)
                    metrics = {"token_ppl": math.exp(-ll / len(tokens)), "word_ppl": math.exp(-ll / count_words(text)),
                               "bits_per_byte": -ll / (len(text.encode("utf-8")) * math.log(2)), "loglik_sum": ll,
                               "tokens": len(tokens)}
                else:
                    metrics = {"acc": sum(r[1] for r in res) / len(res), "ppl": math.exp(-sum(lls) / len(lls)),
                               "loglik_sum": sum(lls), "n": len(lls)}
                row = {"engine": "transformers", "model": os.path.basename(a.model.rstrip("/")), "task": task,
                       "method": mspec, "window": W, "dtype": a.dtype, "metrics": metrics,
                       "forward_tokens": fwd_tokens, "score_s": dt, "tokens_per_s": fwd_tokens / dt,
                       "tokens_per_s_runs": [fwd_tokens / t for t in times],
                       "peak_gpu_bytes": torch.cuda.max_memory_allocated(), "load_s": load_s,
                       "hook_calls": hook.calls, "transformers": transformers.__version__}
                out.write(json.dumps(row) + "\n")
                out.flush()
                print(json.dumps({k: row[k] for k in ["model", "task", "method", "tokens_per_s"]}), metrics, flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Reference fixtures for kvsweep, computed with Hugging Face transformers/tokenizers.

Run on the accelerator machine (it has torch 2.11, transformers 5.17, tokenizers, sentencepiece);
see tools/reference/README.md. Everything kvsweep's engine is checked against comes from here:

  tokenizer_ids.json    token ids of LAMBADA and wiki.test.raw for five tokenizers (hashes + heads)
  tiny_models/<name>/   tiny random-initialized HF checkpoints written by transformers itself
  logits/<name>.json    fixed input ids + logits (fp32, TF32 off) for tiny and ref models
  logits/<name>.f32     raw little-endian float32 logits [batch, seq, vocab_slice]
  task_reference_<v>.json  LAMBADA / WikiText metrics, method none and fake-quantized KV (full data and
                        CI-sized subsets), lm-evaluation-harness definitions (see docs/engine.md)
  task_reference_ci.json  also per document / per window loglik of every method on the CI subsets
                        (LAMBADA first 400, WikiText first 200 lines at W = 128): "ci_per_doc"
  quant_unit.json       the fake-quantization function on fixed vectors (unit fixture)
  kv/<name>.f32, .json  ref models' post-RoPE K/V on 16 tokens and hashes of their fake quantization
  env.json              library versions and device

Each section is independent: a failure is logged and recorded in errors.json; the others still run.
"""
import argparse
import hashlib
import json
import math
import os
import re
import sys
import time
import traceback

import torch

T0 = time.time()
ERRORS = {}


def log(*a):
    print(f"[{time.time() - T0:7.1f}s]", *a, flush=True)


def section(name):
    def deco(fn):
        def run(*args, **kw):
            log("== section", name)
            try:
                return fn(*args, **kw)
            except Exception as e:  # keep going: other sections are independent
                ERRORS[name] = traceback.format_exc()
                log("!! section", name, "failed:", repr(e))
                traceback.print_exc()
                return None
        return run
    return deco


def sha(s):
    return hashlib.sha256(s.encode("utf-8")).hexdigest()


def dump(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, separators=(",", ":"))


# ----------------------------------------------------------------------------------------------
# Data
def read_lambada(assets):
    docs = []
    with open(os.path.join(assets, "data/lambada_openai/lambada_test.jsonl"), "rb") as f:
        for line in f:
            line = line.decode("utf-8")
            if line.strip():
                docs.append(json.loads(line)["text"])
    return docs


def read_text(path):
    with open(path, "rb") as f:
        return f.read().decode("utf-8")


def head_lines(text, n):
    # First n lines, each keeping its '\n' (what `head -n` writes).
    parts = text.split("\n")
    out = "\n".join(parts[:n])
    if len(parts) > n:
        out += "\n"
    return out


def count_words(text):
    # Runs of non-whitespace, whitespace = ASCII space, \t, \n, \v, \f, \r (docs/engine.md: words).
    return len(re.findall(r"[^ \t\n\r\f\v]+", text))


# ----------------------------------------------------------------------------------------------
# Tokenizers
def load_tokenizers(assets):
    """name -> (encode(list[str]) -> list[list[int]], description, files)."""
    from tokenizers import Tokenizer
    import transformers

    toks = {}

    def from_tokenizers_lib(path):
        t = Tokenizer.from_file(path)
        return lambda texts: [e.ids for e in t.encode_batch(texts, add_special_tokens=False)]

    def from_transformers(tok):
        return lambda texts: [tok(x, add_special_tokens=False)["input_ids"] for x in texts]

    # GPT-2 vocab.json + merges.txt: transformers' GPT2Tokenizer.from_pretrained on a folder holding
    # just those two files (v5's constructor ignores vocab_file=; from_pretrained converts them).
    import shutil
    import tempfile
    gdir = tempfile.mkdtemp()
    for f in ["vocab.json", "merges.txt"]:
        shutil.copy(os.path.join(assets, "tokenizers/gpt2", f), gdir)
    t = transformers.GPT2Tokenizer.from_pretrained(gdir)
    toks["gpt2-vocab-merges"] = (from_transformers(t), f"transformers.GPT2Tokenizer.from_pretrained(vocab+merges) -> {type(t).__name__}",
                                 ["tokenizers/gpt2/vocab.json", "tokenizers/gpt2/merges.txt"])
    from tokenizers import ByteLevelBPETokenizer
    bl = ByteLevelBPETokenizer(os.path.join(gdir, "vocab.json"), os.path.join(gdir, "merges.txt"))
    toks["gpt2-vocab-merges@tokenizers"] = (lambda texts: [e.ids for e in bl.encode_batch(texts)],
                                            "tokenizers.ByteLevelBPETokenizer(vocab, merges)",
                                            ["tokenizers/gpt2/vocab.json", "tokenizers/gpt2/merges.txt"])

    for name, rel in [("ref-gpt2", "models/ref-gpt2"), ("ref-llama", "models/ref-llama")]:
        d = os.path.join(assets, rel)
        t = transformers.AutoTokenizer.from_pretrained(d)
        toks[name] = (from_transformers(t), f"transformers.AutoTokenizer -> {type(t).__name__}",
                      [rel + "/tokenizer.json"])
        toks[name + "@tokenizers"] = (from_tokenizers_lib(os.path.join(d, "tokenizer.json")),
                                      "tokenizers.Tokenizer.from_file", [rel + "/tokenizer.json"])

    mpath = os.path.join(assets, "tokenizers/mistral/tokenizer.json")
    try:
        t = transformers.PreTrainedTokenizerFast(tokenizer_file=mpath)
        toks["mistral"] = (from_transformers(t), f"transformers.{type(t).__name__}(tokenizer_file)",
                           ["tokenizers/mistral/tokenizer.json"])
    except Exception:
        log("PreTrainedTokenizerFast(tokenizer_file) failed; mistral reference = tokenizers library")
        traceback.print_exc()
        toks["mistral"] = (from_tokenizers_lib(mpath), "tokenizers.Tokenizer.from_file",
                           ["tokenizers/mistral/tokenizer.json"])
    toks["mistral@tokenizers"] = (from_tokenizers_lib(mpath), "tokenizers.Tokenizer.from_file",
                                  ["tokenizers/mistral/tokenizer.json"])

    spm = os.path.join(assets, "tokenizers/llama2/tokenizer.model")
    import sentencepiece as spmlib
    sp = spmlib.SentencePieceProcessor(model_file=spm)
    toks["llama2-spm"] = (lambda texts: [list(x) for x in sp.encode(texts)], "sentencepiece.SentencePieceProcessor",
                          ["tokenizers/llama2/tokenizer.model"])
    # Llama 2 tokenizer.model through transformers: from_pretrained on a folder holding only the
    # SentencePiece model (v5 converts it to a tokenizers pipeline). This is the reference for
    # kvsweep's tokenizer.model support; plain sentencepiece is recorded beside it.
    ldir = tempfile.mkdtemp()
    shutil.copy(spm, ldir)
    t = transformers.LlamaTokenizer.from_pretrained(ldir)
    toks["llama2-hf"] = (from_transformers(t), f"transformers.LlamaTokenizer.from_pretrained(tokenizer.model) -> {type(t).__name__}",
                         ["tokenizers/llama2/tokenizer.model"])
    return toks


def lambada_split(text):
    # lm-evaluation-harness lambada_openai: doc_to_text / doc_to_target.
    words = text.split(" ")
    return " ".join(words[:-1]), " " + words[-1]


@section("tokenizers")
def tokenizer_fixtures(assets, out):
    toks = load_tokenizers(assets)
    docs = read_lambada(assets)
    wiki = read_text(os.path.join(assets, "data/wikitext-2/wiki.test.raw"))
    contexts = [lambada_split(t)[0] for t in docs]
    result = {}
    for name, (enc, desc, files) in toks.items():
        t0 = time.time()
        ctx_ids = enc(contexts)
        full_ids = enc(docs)
        lines = [",".join(map(str, c)) + "|" + ",".join(map(str, f)) + "\n" for c, f in zip(ctx_ids, full_ids)]
        wiki_ids = enc([wiki])[0]
        if not wiki_ids or not full_ids[0]:
            ERRORS["tokenizers/" + name] = f"{desc} produced no ids; entry dropped"
            log("!!", name, "produced no ids; dropped")
            continue
        chunks = [",".join(map(str, wiki_ids[k:k + 4096])) for k in range(0, len(wiki_ids), 4096)]
        result[name] = {
            "reference": desc,
            "files": files,
            "lambada": {"n_docs": len(docs), "sha256": sha("".join(lines)),
                        "doc_hashes": [sha(l)[:8] for l in lines], "head": full_ids[0]},
            "wikitext": {"count": len(wiki_ids), "sha256": sha(",".join(map(str, wiki_ids))),
                         "chunk_hashes": [sha(c)[:16] for c in chunks], "head": wiki_ids[:300]},
        }
        log(f"tokenizer {name}: {desc}; wiki {len(wiki_ids)} ids; {time.time() - t0:.1f}s")
    # Agreement between the library paths, for the record.
    agree = {}
    for name in list(result):
        if "@" in name:
            base = name.split("@")[0]
            if base in result:
                agree[name] = (result[name]["lambada"]["sha256"] == result[base]["lambada"]["sha256"] and
                               result[name]["wikitext"]["sha256"] == result[base]["wikitext"]["sha256"])
    for a, b in [("gpt2-vocab-merges", "ref-gpt2"), ("llama2-hf", "ref-llama"), ("llama2-hf", "llama2-spm")]:
        if a in result and b in result:
            agree[a + "=" + b] = (result[a]["lambada"]["sha256"] == result[b]["lambada"]["sha256"] and
                                  result[a]["wikitext"]["sha256"] == result[b]["wikitext"]["sha256"])
    result["_agreement"] = agree
    log("agreement:", agree)
    dump(os.path.join(out, "tokenizer_ids.json"), result)


# ----------------------------------------------------------------------------------------------
# Models
def load_model(path, dtype=torch.float32, device="cuda"):
    import transformers
    try:
        m = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    except TypeError:
        m = transformers.AutoModelForCausalLM.from_pretrained(path, torch_dtype=dtype, attn_implementation="sdpa")
    return m.to(device).eval()


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=g) * 0.08
            if "norm" in name or "ln_" in name:
                if name.endswith("weight"):
                    p.copy_(1.0 + noise)
                else:
                    p.copy_(noise)
            else:
                p.copy_(noise)


@section("tiny_models")
def tiny_models(out):
    import transformers as tf
    common = dict(vocab_size=96)
    specs = {
        "tiny-gpt2": (tf.GPT2Config(n_positions=64, n_embd=64, n_layer=2, n_head=4, **common),
                      torch.float32, None),
        "tiny-llama": (tf.LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      tie_word_embeddings=False, **common), torch.float16, "40KB"),
        "tiny-llama3rope": (tf.LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=64,
                                           tie_word_embeddings=True,
                                           rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0,
                                                            "factor": 8.0, "low_freq_factor": 1.0,
                                                            "high_freq_factor": 4.0,
                                                            "original_max_position_embeddings": 16},
                                           **common), torch.float32, None),
        "tiny-mistral": (tf.MistralConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                          max_position_embeddings=64, sliding_window=8, **common),
                         torch.bfloat16, None),
        "tiny-qwen2": (tf.Qwen2Config(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      tie_word_embeddings=True, rope_theta=1000000.0, **common),
                       torch.float32, None),
    }
    made = {}
    for i, (name, (cfg, dtype, shard)) in enumerate(specs.items()):
        try:
            torch.manual_seed(i)
            model = tf.AutoModelForCausalLM.from_config(cfg)
            randomize(model, 1000 + i)
            model = model.to(dtype)
            d = os.path.join(out, "tiny_models", name)
            kw = {"max_shard_size": shard} if shard else {}
            model.save_pretrained(d, **kw)
            made[name] = d
            log("wrote", name, sorted(os.listdir(d)))
        except Exception:
            ERRORS["tiny_models/" + name] = traceback.format_exc()
            traceback.print_exc()
    return made


def configure_exact():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


@section("logits")
def logits_fixtures(assets, out, tiny):
    configure_exact()
    import transformers
    g = torch.Generator().manual_seed(7)
    for name, d in (tiny or {}).items():
        try:
            m = load_model(d)
            ids = torch.randint(0, m.config.vocab_size, (2, 40), generator=g)
            with torch.no_grad():
                lg = m(ids.cuda()).logits.float().cpu()
            write_logits(out, name, d, ids, lg, lg.shape[-1])
        except Exception:
            ERRORS["logits/" + name] = traceback.format_exc()
            traceback.print_exc()
    wiki = read_text(os.path.join(assets, "data/wikitext-2/wiki.test.raw"))
    for name in ["ref-gpt2", "ref-llama"]:
        try:
            d = os.path.join(assets, "models", name)
            m = load_model(d)
            tok = transformers.AutoTokenizer.from_pretrained(d)
            ids = torch.tensor([tok(wiki[:4000], add_special_tokens=False)["input_ids"][:64]])
            with torch.no_grad():
                lg = m(ids.cuda()).logits.float().cpu()
            write_logits(out, name, "models/" + name, ids, lg, 512)
        except Exception:
            ERRORS["logits/" + name] = traceback.format_exc()
            traceback.print_exc()


def write_logits(out, name, path, ids, lg, vocab_slice):
    lp = torch.log_softmax(lg.double(), -1)
    nxt = ids[:, 1:]
    meta = {
        "model": os.path.basename(path), "input_ids": ids.tolist(), "shape": list(lg.shape),
        "vocab_slice": vocab_slice, "dtype": "float32",
        "logsumexp": torch.logsumexp(lg.double(), -1).tolist(),
        "next_token_logprob": lp[:, :-1].gather(-1, nxt.unsqueeze(-1)).squeeze(-1).tolist(),
        "argmax": lg.argmax(-1).tolist(),
    }
    os.makedirs(os.path.join(out, "logits"), exist_ok=True)
    dump(os.path.join(out, "logits", name + ".json"), meta)
    lg[..., :vocab_slice].contiguous().numpy().astype("<f4").tofile(os.path.join(out, "logits", name + ".f32"))
    log("logits", name, tuple(lg.shape))


# ----------------------------------------------------------------------------------------------
# Fake KV quantization (docs/kv-methods.md, quant), written independently of the
# C++ engine: per token, groups of `group` consecutive channels of each head vector, min-max
# (asym: scale=(max-min)/(2^B-1), zero=min; sym: scale=absmax/(2^(B-1)-1)), round half to even.
def fake_quant(x, bits, group, sym):
    shp = x.shape
    xf = x.float().reshape(*shp[:-1], shp[-1] // group, group)
    if sym:
        qmax = float(2 ** (bits - 1) - 1)
        scale = xf.abs().amax(-1, keepdim=True) / qmax
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = torch.clamp(torch.round(xf / safe), -qmax, qmax)
        y = torch.where(scale > 0, q * scale, xf)
    else:
        mn = xf.amin(-1, keepdim=True)
        mx = xf.amax(-1, keepdim=True)
        scale = (mx - mn) / float(2 ** bits - 1)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = torch.clamp(torch.round((xf - mn) / safe), 0.0, float(2 ** bits - 1))
        y = torch.where(scale > 0, q * scale + mn, xf)
    return y.reshape(shp).to(x.dtype)


class KvQuant:
    """Fake-quantizes K and V (post-RoPE) inside attention.

    Primary hook: wrap transformers' "sdpa" attention function (keys/values [B, Hkv, T, D], before
    GQA repetition). Fallback: wrap torch's scaled_dot_product_attention ([B, H, T, D]; per-token
    quantization commutes with repeating heads). Exactly one of the two quantizes each call.
    """

    def __init__(self):
        self.cfg = None
        self.calls = 0
        self.capture = None  # a list: every call's (key, value) as attention receives them
        self.inside = False
        self.orig_sdpa = torch.nn.functional.scaled_dot_product_attention
        self.iface = None

    def quant(self, k, v):
        c = self.cfg
        if c["target"] in ("k", "kv"):
            k = fake_quant(k, c["bits"], c["group"], c["sym"])
        if c["target"] in ("v", "kv"):
            v = fake_quant(v, c["bits"], c["group"], c["sym"])
        return k, v

    def __enter__(self):
        try:
            from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
            orig = ALL_ATTENTION_FUNCTIONS["sdpa"]

            def iface_wrapped(module, query, key, value, *args, **kw):
                if self.capture is not None:
                    self.capture.append((key.detach(), value.detach()))
                if self.cfg is not None:
                    key, value = self.quant(key, value)
                    self.calls += 1
                self.inside = True
                try:
                    return orig(module, query, key, value, *args, **kw)
                finally:
                    self.inside = False

            ALL_ATTENTION_FUNCTIONS["sdpa"] = iface_wrapped
            self.iface = (ALL_ATTENTION_FUNCTIONS, orig)
        except Exception:
            log("could not wrap ALL_ATTENTION_FUNCTIONS['sdpa']; relying on the torch SDPA hook")
            traceback.print_exc()

        def sdpa_wrapped(q, k, v, *args, **kw):
            if self.capture is not None and not self.inside:
                self.capture.append((k.detach(), v.detach()))
            if self.cfg is not None and not self.inside:
                k, v = self.quant(k, v)
                self.calls += 1
            return self.orig_sdpa(q, k, v, *args, **kw)

        torch.nn.functional.scaled_dot_product_attention = sdpa_wrapped
        return self

    def __exit__(self, *a):
        torch.nn.functional.scaled_dot_product_attention = self.orig_sdpa
        if self.iface is not None:
            self.iface[0]["sdpa"] = self.iface[1]


@section("quant_unit")
def quant_unit(out):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(6, 64, generator=g) * 2.0
    x[3] = 0.75                       # constant row: min == max must be exact
    x[4] = torch.arange(64) * 0.5     # many exact half-way codes
    x[5, :32] = -1.0
    cases = []
    for bits, group, sym in [(1, 64, 0), (2, 32, 0), (2, 64, 0), (3, 64, 0), (4, 64, 0), (4, 32, 0),
                             (4, 16, 0), (8, 64, 0), (4, 64, 1), (8, 32, 1), (2, 32, 1)]:
        y = fake_quant(x, bits, group, bool(sym))
        cases.append({"bits": bits, "group": group, "sym": sym, "y": y.tolist()})
    dump(os.path.join(out, "quant_unit.json"), {"x": x.tolist(), "cases": cases})


# ----------------------------------------------------------------------------------------------
# Tasks, lm-evaluation-harness definitions (docs/engine.md)
def encode_pair(enc, context, continuation, prefix_id):
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    if context == "":
        return [prefix_id], enc(continuation)
    whole = enc(context + continuation)
    ctx = enc(context)
    return ctx, whole[len(ctx):]


def f32(x):
    # The shortest decimal that reads back as the same fp32 value (values here are fp32 sums).
    return float(f"{x:.9g}")


def score_batches(model, reqs, batch, device="cuda"):
    """reqs: list of (input_ids, n_cont, cont_tokens). Returns [(loglik, greedy)] in order."""
    order = sorted(range(len(reqs)), key=lambda i: -len(reqs[i][0]))
    res = [None] * len(reqs)
    for s in range(0, len(order), batch):
        idx = order[s:s + batch]
        L = max(len(reqs[i][0]) for i in idx)
        ids = torch.zeros(len(idx), L, dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, :len(reqs[i][0])] = torch.tensor(reqs[i][0])
        with torch.no_grad():
            logits = model(ids.to(device)).logits.float()
        lp = torch.log_softmax(logits, -1)
        for r, i in enumerate(idx):
            inp, n, cont = reqs[i]
            if n == 0:
                res[i] = (0.0, True)
                continue
            rows = lp[r, len(inp) - n:len(inp)]
            c = torch.tensor(cont, device=rows.device)
            ll = rows.gather(-1, c.unsqueeze(-1)).sum().item()
            greedy = bool((rows.argmax(-1) == c).all().item())
            res[i] = (ll, greedy)
    return res


def lambada_eval(model, enc, docs, max_len, prefix_id):
    reqs = []
    for text in docs:
        ctx, cont = lambada_split(text)
        c, k = encode_pair(enc, ctx, cont, prefix_id)
        inp = (c + k)[-(max_len + 1):][:-1]
        reqs.append((inp, len(k), k))
    res = score_batches(model, reqs, batch=64)
    lls = [r[0] for r in res]
    acc = sum(1 for r in res if r[1]) / len(res)
    return {"acc": acc, "ppl": math.exp(-sum(lls) / len(lls)), "loglik_sum": sum(lls), "n": len(lls)}, lls, \
        [r[1] for r in res]


def rolling_windows(tokens, prefix, W, C):
    # lm_eval.utils.get_rolling_token_windows + make_disjoint_window
    assert 1 <= C <= W
    if not tokens:
        return
    pred_len = W - C + 1
    predicted = 0
    first = min(W, len(tokens))
    yield [prefix] + tokens[:first - 1], tokens[:first]
    predicted += first
    while predicted < len(tokens):
        wl = min(len(tokens) - predicted, pred_len)
        end = predicted + wl
        yield tokens[end - W - 1:end - 1], tokens[end - wl:end]
        predicted += wl


def wikitext_eval(model, enc, text, W, C, prefix_id):
    tokens = enc(text)
    reqs = []
    for a, b in rolling_windows(tokens, prefix_id, W, C):
        a = a[:len(a) - (len(b) - 1)]
        inp = (a + b)[-(W + 1):][:-1]
        reqs.append((inp, len(b), b))
    res = score_batches(model, reqs, batch=8)
    ll = sum(r[0] for r in res)
    n_tok = sum(r[1] for r in reqs)
    assert n_tok == len(tokens), (n_tok, len(tokens))
    words = count_words(text)
    nbytes = len(text.encode("utf-8"))
    return {"token_ppl": math.exp(-ll / n_tok), "word_ppl": math.exp(-ll / words),
            "bits_per_byte": -ll / (nbytes * math.log(2)), "loglik_sum": ll, "tokens": n_tok,
            "words": words, "bytes": nbytes, "windows": len(reqs)}, [r[0] for r in res]


QUANT_METHODS = {
    # name (kvsweep canonical spec prefix) -> config of the patched attention
    "quant:bits=8,group=64": dict(bits=8, group=64, sym=False, target="kv"),
    "quant:bits=4,group=64": dict(bits=4, group=64, sym=False, target="kv"),
    "quant:bits=3,group=64": dict(bits=3, group=64, sym=False, target="kv"),
    "quant:bits=2,group=64": dict(bits=2, group=64, sym=False, target="kv"),
    "quant:bits=4,group=32": dict(bits=4, group=32, sym=False, target="kv"),
    "quant:bits=2,group=32,target=k": dict(bits=2, group=32, sym=False, target="k"),
    "quant:bits=2,group=32,target=v": dict(bits=2, group=32, sym=False, target="v"),
}


@section("tasks")
def task_reference(assets, out, variants):
    configure_exact()
    import transformers
    docs = read_lambada(assets)
    wiki = read_text(os.path.join(assets, "data/wikitext-2/wiki.test.raw"))
    result = {"definitions": "lm-evaluation-harness lambada_openai / loglikelihood_rolling; docs/engine.md",
              "subsets": {"lambada_limit": 400, "wikitext_head_lines": 200}, "models": {}}
    per_doc = {}
    for name in ["ref-gpt2", "ref-llama"]:
        d = os.path.join(assets, "models", name)
        model = load_model(d)
        tok = transformers.AutoTokenizer.from_pretrained(d)
        enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]
        max_len = model.config.max_position_embeddings if hasattr(model.config, "max_position_embeddings") \
            else model.config.n_positions
        prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        mres = {"max_len": max_len, "prefix_id": prefix, "methods": {}}
        methods = {"none": None, **QUANT_METHODS}
        with KvQuant() as kq:
            for mname, cfg in methods.items():
                kq.cfg = cfg
                kq.calls = 0
                r = {}
                t0 = time.time()
                for var in variants:
                    if var == "full":
                        lam, lam_docs, _ = lambada_eval(model, enc, docs, max_len, prefix)
                        wk, wk_w = wikitext_eval(model, enc, wiki, max_len, 1, prefix)
                        r["full"] = {"lambada_openai": lam, "wikitext": wk}
                        if mname == "none":
                            per_doc[name] = {"lambada_loglik": lam_docs, "wikitext_window_loglik": wk_w}
                            # The sliding-window variant C = W/2 + 1 (lm-eval's context_len knob).
                            wk2, _ = wikitext_eval(model, enc, wiki, max_len, max_len // 2 + 1, prefix)
                            r["full_sliding"] = {"wikitext": wk2, "context": max_len // 2 + 1}
                    else:
                        lam, lam_docs, lam_greedy = lambada_eval(model, enc, docs[:400], max_len, prefix)
                        sub = head_lines(wiki, 200)
                        wk, _ = wikitext_eval(model, enc, sub, max_len, 1, prefix)
                        wk_small, wk_small_w = wikitext_eval(model, enc, sub, 128, 1, prefix)
                        wk_slide, _ = wikitext_eval(model, enc, sub, 128, 65, prefix)
                        r["ci"] = {"lambada_openai": lam, "wikitext": wk, "wikitext_w128": wk_small,
                                   "wikitext_w128_c65": wk_slide}
                        # Per document (LAMBADA) and per window (WikiText W = 128), in request
                        # order, for reference_test.cc's per-document comparison. Each value is
                        # an fp32 sum; 9 significant digits round-trip it exactly.
                        r["ci_per_doc"] = {
                            "lambada_openai": {"loglik": [f32(x) for x in lam_docs],
                                               "greedy": "".join("1" if g else "0" for g in lam_greedy)},
                            "wikitext_w128": {"loglik": [f32(x) for x in wk_small_w]},
                        }
                if cfg is not None and kq.calls == 0:
                    raise RuntimeError(f"{name}: the SDPA patch was never called; quantization not applied")
                r["sdpa_calls"] = kq.calls
                mres["methods"][mname] = r
                log(name, mname, f"{time.time() - t0:.1f}s", json.dumps({k: v for k, v in r.items() if k != "sdpa_calls"})[:400])
        result["models"][name] = mres
        del model
        torch.cuda.empty_cache()
        dump(os.path.join(out, f"task_reference_{'_'.join(variants)}.json"), result)
    if per_doc:
        dump(os.path.join(out, "task_per_doc.json"), per_doc)


KV_TOKENS = 16


def sha16(t):
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().astype("<f4").tobytes()).hexdigest()[:16]


@section("kv")
def kv_reference(assets, out):
    """The reference models' K/V on one short input, and the quantizer applied to them.

    kv/<model>.f32: for each layer, K then V, each [Hkv, T, D] fp32 little-endian: post-RoPE,
    what attention receives with method none; T = KV_TOKENS, the first tokens of the first LAMBADA
    document (no prefix token). kv/<model>.json: the input ids and shapes, and for each quantized
    method, per layer and tensor (k then v), the first 16 hex digits of the sha256 of the
    fake-quantized values (the tensor itself where the method does not target it) computed on the
    CPU (the engine's exact semantics) and on the GPU (how the task references were computed:
    CUDA multiplies by the reciprocal of a Python-scalar divisor), and how many elements differ
    between the two. reference_test.cc quantizes the stored K/V exactly and compares the engine's
    own K/V with them.
    """
    configure_exact()
    import transformers
    docs = read_lambada(assets)
    for name in ["ref-gpt2", "ref-llama"]:
        d = os.path.join(assets, "models", name)
        model = load_model(d)
        cfg = model.config
        tok = transformers.AutoTokenizer.from_pretrained(d)
        ids = tok(docs[0], add_special_tokens=False)["input_ids"][:KV_TOKENS]
        n_layers = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
        n_heads = getattr(cfg, "num_attention_heads", None) or cfg.n_head
        hkv = getattr(cfg, "num_key_value_heads", None) or n_heads
        with KvQuant() as kq:
            kq.capture = []
            with torch.no_grad():
                model(torch.tensor([ids]).cuda())
            caps = kq.capture
        assert len(caps) == n_layers, (len(caps), n_layers)
        kv = []
        for k, v in caps:
            if k.shape[1] == n_heads and hkv != n_heads:  # the torch SDPA hook sees repeated heads
                k, v = k[:, ::n_heads // hkv], v[:, ::n_heads // hkv]
            assert k.shape[0] == 1 and k.shape[1] == hkv and k.shape[2] == len(ids), tuple(k.shape)
            kv.append((k[0].float().contiguous(), v[0].float().contiguous()))
        os.makedirs(os.path.join(out, "kv"), exist_ok=True)
        with open(os.path.join(out, "kv", name + ".f32"), "wb") as f:
            for k, v in kv:
                f.write(k.cpu().numpy().astype("<f4").tobytes())
                f.write(v.cpu().numpy().astype("<f4").tobytes())
        methods = {}
        for mname, c in QUANT_METHODS.items():
            e = {"cpu": [], "gpu": [], "gpu_cpu_differ": 0}
            for k, v in kv:
                for which, x in (("k", k), ("v", v)):
                    if c["target"] in (which, "kv"):
                        yg = fake_quant(x, c["bits"], c["group"], c["sym"]).cpu()
                        yc = fake_quant(x.cpu(), c["bits"], c["group"], c["sym"])
                    else:
                        yg = yc = x.cpu()
                    e["cpu"].append(sha16(yc))
                    e["gpu"].append(sha16(yg))
                    e["gpu_cpu_differ"] += int((yg.view(torch.int32) != yc.view(torch.int32)).sum())
            methods[mname] = e
            log("kv", name, mname, "gpu/cpu elements differing:", e["gpu_cpu_differ"])
        dump(os.path.join(out, "kv", name + ".json"),
             {"model": name, "input_ids": ids, "layers": n_layers, "kv_heads": hkv, "tokens": len(ids),
              "head_dim": kv[0][0].shape[-1], "layout": "per layer: K then V, each [kv_heads, tokens, head_dim] fp32 LE",
              "methods": methods})
        del model
        torch.cuda.empty_cache()


@section("env")
def env(out):
    import transformers, tokenizers
    info = {"torch": torch.__version__, "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
            "cuda": torch.version.cuda, "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "python": sys.version}
    try:
        import sentencepiece
        info["sentencepiece"] = sentencepiece.__version__
    except Exception:
        pass
    dump(os.path.join(out, "env.json"), info)
    log(info)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--assets", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", default="env,quant_unit,tiny,logits,tasks,tokenizers,kv")
    ap.add_argument("--variants", default="ci,full")
    a = ap.parse_args()
    only = set(a.only.split(","))
    os.makedirs(a.out, exist_ok=True)
    if "env" in only:
        env(a.out)
    if "quant_unit" in only:
        quant_unit(a.out)
    tiny = tiny_models(a.out) if "tiny" in only else {}
    if "logits" in only:
        logits_fixtures(a.assets, a.out, tiny)
    if "tokenizers" in only:
        tokenizer_fixtures(a.assets, a.out)
    if "kv" in only:
        kv_reference(a.assets, a.out)
    if "tasks" in only:
        for variant in a.variants.split(","):  # each variant its own file, CI-sized first
            task_reference(a.assets, a.out, [variant])
    dump(os.path.join(a.out, "errors.json"), ERRORS)
    log("done; errors in sections:", list(ERRORS))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""lm-evaluation-harness's `wikitext` task, reimplemented on its own, for checking kvsweep.

Independent of kvsweep's C++ (and of make_reference.py): written from lm-eval's definitions.

  documents     the `EleutherAI/wikitext_document_level` builder on wikitext-2-raw-v1: the raw
                file split on "\n"; a line that, after "= = =" -> "===" and "= =" -> "==" and
                strip(), starts with "= " and ends with " =" (a top-level heading) starts a new
                page; a page is its lines joined with "\n", kept when page.strip() is non-empty
                (the last page always)
  request       loglikelihood_rolling of wikitext_detokenizer(page) (doc_to_target; doc_to_text
                is ""): tokens without special tokens, lm_eval.utils.get_rolling_token_windows
                (prefix token = BOS else EOS, max_seq_len = the model's max length, context_len
                = 1) + make_disjoint_window, each window scored as HFLM._loglikelihood_tokens
                does ((context + continuation)[-(max_length + 1):][:-1], log_softmax, sum over
                the continuation); the document's loglik is the sum over its windows
  counts        words = len(re.split(r"\\s+", page)), bytes = len(page.encode("utf-8")), on the
                page before detokenization (process_results)
  aggregates    word_perplexity = exp(-sum loglik / sum words), byte_perplexity = exp(-sum
                loglik / sum bytes), bits_per_byte = -sum loglik / sum bytes / ln 2
                (lm_eval.api.metrics weighted_perplexity and bits_per_byte over documents)

Model and tokenizer: transformers AutoModelForCausalLM / AutoTokenizer from the model directory,
fp32 with TF32 off (and, as a diagnostic of the fp32 reference's own rounding, the same in fp64).

  lm_eval_wikitext.py --model DIR --data wiki.test.raw --out FIXTURE.json [--device cuda|cpu]
"""
import argparse
import hashlib
import json
import math
import re
import sys
import time

import torch


def split_documents(raw):
    pages, lines = [], []
    for line in raw.split("\n"):
        rline = line.replace("= = =", "===").replace("= =", "==").strip()
        if rline.startswith("= ") and rline.strip().endswith(" ="):
            page = "\n".join(lines)
            if page.strip():
                pages.append(page)
            lines = []
        lines.append(line)
    pages.append("\n".join(lines))
    return pages


def wikitext_detokenizer(string):
    # lm_eval/tasks/wikitext/preprocess_wikitext.py, step by step.
    string = string.replace("s '", "s'")
    string = re.sub(r"/' [0-9]/", r"/'[0-9]/", string)
    string = string.replace(" @-@ ", "-")
    string = string.replace(" @,@ ", ",")
    string = string.replace(" @.@ ", ".")
    string = string.replace(" : ", ": ")
    string = string.replace(" ; ", "; ")
    string = string.replace(" . ", ". ")
    string = string.replace(" ! ", "! ")
    string = string.replace(" ? ", "? ")
    string = string.replace(" , ", ", ")
    string = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", string)
    string = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", string)
    string = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", string)
    string = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', string)
    string = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", string)
    string = string.replace("= = = =", "====")
    string = string.replace("= = =", "===")
    string = string.replace("= =", "==")
    string = string.replace(" " + chr(176) + " ", chr(176))
    string = string.replace(" \n", "\n")
    string = string.replace("\n ", "\n")
    string = string.replace(" N ", " 1 ")
    string = string.replace(" 's", "'s")
    return string


def rolling_token_windows(token_list, prefix_token, max_seq_len, context_len):
    # lm_eval.utils.get_rolling_token_windows
    assert 1 <= context_len <= max_seq_len
    if not token_list:
        return
    pred_len = max_seq_len - context_len + 1
    predicted = 0
    first_seq_len = min(max_seq_len, len(token_list))
    yield [prefix_token] + token_list[:first_seq_len - 1], token_list[:first_seq_len]
    predicted += first_seq_len
    while predicted < len(token_list):
        window_pred_len = min(len(token_list) - predicted, pred_len)
        window_end = predicted + window_pred_len
        yield (token_list[window_end - max_seq_len - 1:window_end - 1],
               token_list[window_end - window_pred_len:window_end])
        predicted += window_pred_len


def make_disjoint_window(pair):
    a, b = pair
    return a[:len(a) - (len(b) - 1)], b


def score_window(model, context, continuation, max_length, device):
    inp = (context + continuation)[-(max_length + 1):][:-1]
    ids = torch.tensor([inp], dtype=torch.long, device=device)
    with torch.no_grad():
        logits = model(ids).logits
    lp = torch.log_softmax(logits, dim=-1)[0, len(inp) - len(continuation):len(inp)]
    cont = torch.tensor(continuation, dtype=torch.long, device=device)
    return float(lp.gather(-1, cont.unsqueeze(-1)).squeeze(-1).sum())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-f64", action="store_true", help="skip the fp64 diagnostic run")
    a = ap.parse_args()
    import transformers

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    t0 = time.time()
    with open(a.data, encoding="utf-8") as f:  # text mode, as the dataset builder reads it
        raw = f.read()
    pages = split_documents(raw)
    tok = transformers.AutoTokenizer.from_pretrained(a.model)
    model = transformers.AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    model = model.to(a.device).eval()
    cfg = model.config
    max_length = next(getattr(cfg, k) for k in ("n_positions", "max_position_embeddings", "n_ctx")
                      if hasattr(cfg, k))
    prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    model64 = None if a.no_f64 else transformers.AutoModelForCausalLM.from_pretrained(
        a.model, dtype=torch.float64).to(a.device).eval()

    docs = []
    for i, page in enumerate(pages):
        text = wikitext_detokenizer(page)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        windows = [make_disjoint_window(w) for w in rolling_token_windows(ids, prefix, max_length, 1)]
        ll = sum(score_window(model, c, k, max_length, a.device) for c, k in windows)
        d = {"title": page.strip().split("\n")[0].strip(),
             "page_sha256": hashlib.sha256(page.encode("utf-8")).hexdigest(),
             "target_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
             "ids_sha256": hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest(),
             "words": len(re.split(r"\s+", page)),
             "bytes": len(page.encode("utf-8")),
             "tokens": len(ids),
             "windows": len(windows),
             "loglik": ll}
        if model64 is not None:
            d["loglik_f64"] = sum(score_window(model64, c, k, max_length, a.device) for c, k in windows)
        docs.append(d)
        print(f"[{time.time() - t0:6.1f}s] doc {i}: {d['title'][:40]!r} tokens {d['tokens']} "
              f"loglik {ll:.6f}", flush=True)

    ll = sum(d["loglik"] for d in docs)
    words = sum(d["words"] for d in docs)
    nbytes = sum(d["bytes"] for d in docs)
    tokens = sum(d["tokens"] for d in docs)
    out = {
        "definition": "lm-evaluation-harness wikitext (wikitext-2-raw-v1 documents, wikitext_detokenizer, "
                      "loglikelihood_rolling, weighted_perplexity / bits_per_byte over documents); "
                      "tools/reference/lm_eval_wikitext.py",
        "env": {"torch": torch.__version__, "transformers": transformers.__version__,
                "device": torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu",
                "dtype": "float32", "tf32": False, "python": sys.version.split()[0]},
        "model": a.model.rstrip("/").split("/")[-1],
        "data_sha256": hashlib.sha256(raw.encode("utf-8")).hexdigest(),
        "max_length": max_length,
        "prefix_token_id": prefix,
        "results": {"word_perplexity": math.exp(-ll / words),
                    "byte_perplexity": math.exp(-ll / nbytes),
                    "bits_per_byte": -ll / nbytes / math.log(2)},
        "totals": {"documents": len(docs), "loglik": ll, "words": words, "bytes": nbytes,
                   "tokens": tokens, "windows": sum(d["windows"] for d in docs),
                   "token_perplexity": math.exp(-ll / tokens)},
        "documents": docs,
    }
    if model64 is not None:
        ll64 = sum(d["loglik_f64"] for d in docs)
        out["totals"]["loglik_f64"] = ll64
        out["totals"]["max_rel_diff_f32_f64"] = max(abs(d["loglik"] - d["loglik_f64"]) / abs(d["loglik_f64"])
                                                    for d in docs)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(json.dumps({k: out[k] for k in ("results", "totals")}, indent=1))


if __name__ == "__main__":
    main()

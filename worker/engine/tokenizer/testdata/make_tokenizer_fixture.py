#!/usr/bin/env python3
"""Writes the Hugging Face reference ids in the format tokenizer_fixture_test.cc reads.

Run where transformers, tokenizers and sentencepiece are installed (the accelerator machine):
    python3 make_tokenizer_fixture.py "$KVSWEEP_ASSETS" > tests/fixtures/tokenizer_ids.json
Untested on the CPU machine (it has no transformers); the same computation, done with the
`tokenizers` Node binding, reproduces this module's ids on gpt2-vocab-merges, ref-gpt2,
ref-llama and mistral.

"llama2-spm" uses the sentencepiece package (EncodeAsIds), which is what the "sentencepiece"
kind reproduces. transformers 5 converts a raw .model to a `tokenizers` BPE whose merges rank
"▁ ▁" first (as in models/ref-llama/tokenizer.json); that differs from SentencePiece at runs of
spaces (see docs/tokenizers.md), so do not produce this entry with LlamaTokenizer.
"""
import hashlib
import json
import os
import sys


def sha(s):
    return hashlib.sha256(s.encode("utf-8")).hexdigest()


def entry(enc, files, assets):
    with open(os.path.join(assets, "data/lambada_openai/lambada_test.jsonl"), encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    lines = []
    for text in texts:
        context = " ".join(text.split(" ")[:-1])
        lines.append(",".join(map(str, enc(context))) + "|" + ",".join(map(str, enc(text))) + "\n")
    with open(os.path.join(assets, "data/wikitext-2/wiki.test.raw"), encoding="utf-8", newline="") as f:
        ids = enc(f.read())
    chunks = [ids[k:k + 4096] for k in range(0, len(ids), 4096)]
    return {
        "files": files,
        "lambada": {"n_docs": len(texts), "sha256": sha("".join(lines)),
                    "doc_hashes": [sha(l)[:8] for l in lines], "head": enc(texts[0])},
        "wikitext": {"count": len(ids), "sha256": sha(",".join(map(str, ids))),
                     "chunk_hashes": [sha(",".join(map(str, c)))[:16] for c in chunks],
                     "head": ids[:300]},
    }


def main():
    assets = sys.argv[1]
    a = lambda p: os.path.join(assets, p)
    from transformers import AutoTokenizer, GPT2Tokenizer, PreTrainedTokenizerFast
    import sentencepiece

    def hf(tok):
        return lambda s: tok(s, add_special_tokens=False)["input_ids"]

    out = {}
    gpt2 = GPT2Tokenizer(vocab_file=a("tokenizers/gpt2/vocab.json"),
                         merges_file=a("tokenizers/gpt2/merges.txt"))
    out["gpt2-vocab-merges"] = entry(hf(gpt2), ["tokenizers/gpt2/vocab.json",
                                                "tokenizers/gpt2/merges.txt"], assets)
    out["ref-gpt2"] = entry(hf(AutoTokenizer.from_pretrained(a("models/ref-gpt2"))),
                            ["models/ref-gpt2/tokenizer.json"], assets)
    out["ref-llama"] = entry(hf(AutoTokenizer.from_pretrained(a("models/ref-llama"))),
                             ["models/ref-llama/tokenizer.json"], assets)
    sp = sentencepiece.SentencePieceProcessor(model_file=a("tokenizers/llama2/tokenizer.model"))
    out["llama2-spm"] = entry(lambda s: sp.encode(s), ["tokenizers/llama2/tokenizer.model"], assets)
    mistral = PreTrainedTokenizerFast(tokenizer_file=a("tokenizers/mistral/tokenizer.json"))
    out["mistral"] = entry(hf(mistral), ["tokenizers/mistral/tokenizer.json"], assets)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()

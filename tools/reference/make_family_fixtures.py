#!/usr/bin/env python3
"""Tiny random checkpoints of the model families kvsweep's engine reads beyond gpt2/llama/mistral/
qwen2, written by transformers itself, and transformers' fp32 logits on fixed token ids.

  make_family_fixtures.py --out DIR [--only tiny-qwen3,tiny-phi3,...] [--device cuda]

Run on the accelerator machine (torch 2.11, transformers 5.17; TF32 off, eager attention, fp32).
Writes, in the layout model_test.cc reads (tests/fixtures/):

  DIR/tiny_models/<name>/   config.json + model.safetensors (fp32, well under 1 MB)
  DIR/logits/<name>.json    input ids [2, 40], logsumexp, next-token log-probs, argmax
  DIR/logits/<name>.f32     the logits [2, 40, vocab] as little-endian float32
  DIR/families.json         per checkpoint: transformers' class, its tensor names and shapes

Each family exercises what sets it apart: qwen3 (per-head q/k RMSNorm), gemma2 (logit and
attention soft-capping, alternating sliding windows, scaled embeddings, (1 + w) norms, GeGLU,
pre/post norms), gemma3 (q/k norms, a local RoPE base for sliding layers, five sliding to one
global), phi3 (fused qkv and gate-up projections), olmo2 (norms after attention and MLP,
q/k norms over all heads), mixtral (top-2 of 4 experts).
"""
import argparse
import json
import os
import sys
import traceback

import torch

sys.path.insert(0, os.path.dirname(__file__))
from make_reference import configure_exact, randomize, write_logits  # noqa: E402


def specs():
    import transformers as tf
    common = dict(vocab_size=96, max_position_embeddings=64, bos_token_id=1, eos_token_id=2,
                  pad_token_id=0)
    attn = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2)
    out = {
        "tiny-qwen3": tf.Qwen3Config(head_dim=32, tie_word_embeddings=True, rope_theta=1000000.0,
                                     **attn, **common),
        "tiny-gemma2": tf.Gemma2Config(**{**attn, "num_hidden_layers": 3}, head_dim=16,
                                       sliding_window=8, query_pre_attn_scalar=24,
                                       attn_logit_softcapping=5.0, final_logit_softcapping=3.0,
                                       **common),
        "tiny-gemma3": tf.Gemma3TextConfig(**{**attn, "num_hidden_layers": 3}, head_dim=16,
                                           sliding_window=8, query_pre_attn_scalar=16,
                                           rope_theta=1000000.0, rope_local_base_freq=10000.0,
                                           layer_types=["sliding_attention", "sliding_attention",
                                                        "full_attention"],
                                           **common),
        "tiny-phi3": tf.Phi3Config(**attn, **common),
        "tiny-olmo2": tf.Olmo2Config(**attn, **common),
        "tiny-mixtral": tf.MixtralConfig(**{**attn, "intermediate_size": 48}, num_local_experts=4,
                                         num_experts_per_tok=2, **common),
    }
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", default="")
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()
    configure_exact()
    import transformers as tf
    from safetensors import safe_open
    only = set(filter(None, a.only.split(",")))
    summary, errors = {}, {}
    g = torch.Generator().manual_seed(7)
    for i, (name, cfg) in enumerate(specs().items()):
        ids = torch.randint(3, cfg.vocab_size, (2, 40), generator=g)
        if only and name not in only:
            continue
        try:
            torch.manual_seed(i)
            cfg._attn_implementation = "eager"
            model = tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
            randomize(model, 2000 + i)
            model = model.to(torch.float32)
            d = os.path.join(a.out, "tiny_models", name)
            model.save_pretrained(d)
            for extra in ("generation_config.json",):
                if os.path.exists(os.path.join(d, extra)):
                    os.remove(os.path.join(d, extra))
            # Logits from the checkpoint as written (what the engine reads), not the live model.
            m = tf.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32,
                                                        attn_implementation="eager")
            m = m.to(a.device).eval()
            with torch.no_grad():
                lg = m(ids.to(a.device)).logits.float().cpu()
            write_logits(a.out, name, d, ids, lg, lg.shape[-1])
            with safe_open(os.path.join(d, "model.safetensors"), "pt") as f:
                tensors = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
            summary[name] = {"class": type(m).__name__, "bytes": os.path.getsize(os.path.join(d, "model.safetensors")),
                             "tensors": tensors}
            print(name, type(m).__name__, summary[name]["bytes"], "bytes", flush=True)
        except Exception:
            errors[name] = traceback.format_exc()
            traceback.print_exc()
    summary["_errors"] = errors
    summary["_versions"] = {"torch": torch.__version__, "transformers": tf.__version__}
    with open(os.path.join(a.out, "families.json"), "w") as f:
        json.dump(summary, f, indent=1, sort_keys=True)
    print("errors:", list(errors))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Random-initialized Hugging Face checkpoints at the reference study's real shapes, written by
transformers itself (bf16 safetensors, sharded as save_pretrained does), each with a tokenizer
copied beside it. Run on the accelerator machine; see docs/gpu.md.

  make_checkpoints.py --assets ASSETS --out DIR [--only gpt2-124m,llama-1b,mistral-7b,qwen2-14b]

Shapes: GPT-2 124M (12x768, 12 heads, 1024 positions); Llama-3.2-1B (16 layers, 2048 hidden,
32 q / 8 kv heads of 64, SwiGLU 8192, vocab 128256, llama3 RoPE, tied); Mistral-7B (32 layers,
4096 hidden, 32 q / 8 kv heads of 128, SwiGLU 14336, vocab 32000, no sliding window);
Qwen2-14B (48 layers, 5120 hidden, 40 q / 8 kv heads of 128, 13824, vocab 152064, qkv bias).
Weights ~ N(0, 0.02) (transformers' init); norms 1. Tokenizers: GPT-2's for gpt2/qwen2-14b,
ref-llama's (Llama 2) for llama-1b, Mistral's for mistral-7b; a tokenizer smaller than the
model's vocabulary is allowed (ids stay in range).
"""
import argparse
import json
import os
import shutil
import time

import torch
import transformers as tf


def shapes():
    return {
        "gpt2-124m": (tf.GPT2Config(n_layer=12, n_embd=768, n_head=12, n_positions=1024, vocab_size=50257),
                      "models/ref-gpt2/tokenizer.json"),
        "llama-1b": (tf.LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                    num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                                    max_position_embeddings=131072, vocab_size=128256, tie_word_embeddings=True,
                                    rms_norm_eps=1e-5,
                                    rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                                     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                     "original_max_position_embeddings": 8192}),
                     "models/ref-llama/tokenizer.json"),
        "mistral-7b": (tf.MistralConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                        num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                                        max_position_embeddings=32768, vocab_size=32000, sliding_window=None,
                                        rms_norm_eps=1e-5, tie_word_embeddings=False),
                       "tokenizers/mistral/tokenizer.json"),
        "qwen2-14b": (tf.Qwen2Config(hidden_size=5120, intermediate_size=13824, num_hidden_layers=48,
                                     num_attention_heads=40, num_key_value_heads=8, max_position_embeddings=32768,
                                     vocab_size=152064, tie_word_embeddings=False, rms_norm_eps=1e-6),
                      "models/ref-gpt2/tokenizer.json"),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--assets", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", default="gpt2-124m,llama-1b,mistral-7b")
    a = ap.parse_args()
    for name in a.only.split(","):
        cfg, tok = shapes()[name]
        d = os.path.join(a.out, name)
        if os.path.exists(os.path.join(d, "config.json")):
            print("exists", d, flush=True)
            continue
        t0 = time.time()
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = tf.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
        n = sum(p.numel() for p in model.parameters())
        model.save_pretrained(d, max_shard_size="5GB")
        shutil.copy(os.path.join(a.assets, tok), os.path.join(d, "tokenizer.json"))
        del model
        torch.cuda.empty_cache()
        print(json.dumps({"model": name, "params": n, "seconds": round(time.time() - t0, 1),
                          "files": sorted(os.listdir(d))}), flush=True)


if __name__ == "__main__":
    main()

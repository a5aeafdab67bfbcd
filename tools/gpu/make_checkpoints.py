#!/usr/bin/env python3
"""Random-initialized Hugging Face checkpoints at the reference study's real shapes, written by
transformers itself (bf16 safetensors, sharded as save_pretrained does), each with a tokenizer
copied beside it. Run on the accelerator machine; see docs/gpu.md.

  make_checkpoints.py --assets ASSETS --out DIR [--only gpt2-124m,llama-1b,mistral-7b,qwen2-14b]

Shapes: GPT-2 124M (12x768, 12 heads, 1024 positions); Llama-3.2-1B (16 layers, 2048 hidden,
32 q / 8 kv heads of 64, SwiGLU 8192, vocab 128256, llama3 RoPE, tied); Mistral-7B (32 layers,
4096 hidden, 32 q / 8 kv heads of 128, SwiGLU 14336, vocab 32000, no sliding window);
Qwen2-14B (48 layers, 5120 hidden, 40 q / 8 kv heads of 128, 13824, vocab 152064, qkv bias);
and the newer families at released shapes: Qwen3-8B, Gemma-2-2B, Gemma-3-1B (text), Phi-3-mini
(4k), OLMo-2-1B and Mixtral-8x7B's layers (4 of 32; shapes() lists each).
Weights ~ N(0, 0.02) (transformers' init); norms 1. Tokenizers: ref-llama's (Llama 2) for
llama-1b and phi3-mini, Mistral's for mistral-7b and mixtral, GPT-2's for the others; a tokenizer
smaller than the model's vocabulary is allowed (ids stay in range).
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
        # The newer families at released shapes (docs/gpu.md, "The newer families at real shapes").
        "qwen3-8b": (tf.Qwen3Config(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                                    num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                                    vocab_size=151936, max_position_embeddings=40960, rms_norm_eps=1e-6,
                                    rope_theta=1000000.0, tie_word_embeddings=False),
                     "models/ref-gpt2/tokenizer.json"),
        "gemma2-2b": (tf.Gemma2Config(hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                                      num_attention_heads=8, num_key_value_heads=4, head_dim=256,
                                      vocab_size=256000, max_position_embeddings=8192, sliding_window=4096,
                                      query_pre_attn_scalar=256, attn_logit_softcapping=50.0,
                                      final_logit_softcapping=30.0, rms_norm_eps=1e-6, tie_word_embeddings=True),
                      "models/ref-gpt2/tokenizer.json"),
        "gemma3-1b": (tf.Gemma3TextConfig(hidden_size=1152, intermediate_size=6912, num_hidden_layers=26,
                                          num_attention_heads=4, num_key_value_heads=1, head_dim=256,
                                          vocab_size=262144, max_position_embeddings=32768, sliding_window=512,
                                          query_pre_attn_scalar=256, rope_theta=1000000.0,
                                          rope_local_base_freq=10000.0, rms_norm_eps=1e-6,
                                          tie_word_embeddings=True),
                      "models/ref-gpt2/tokenizer.json"),
        "phi3-mini": (tf.Phi3Config(hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                                    num_attention_heads=32, num_key_value_heads=32, vocab_size=32064,
                                    max_position_embeddings=4096, original_max_position_embeddings=4096,
                                    sliding_window=2047, rope_theta=10000.0, rms_norm_eps=1e-5,
                                    tie_word_embeddings=False),
                      "models/ref-llama/tokenizer.json"),
        "olmo2-1b": (tf.Olmo2Config(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                    num_attention_heads=16, num_key_value_heads=16, vocab_size=100352,
                                    max_position_embeddings=4096, rope_theta=500000.0, rms_norm_eps=1e-6,
                                    tie_word_embeddings=False),
                     "models/ref-gpt2/tokenizer.json"),
        # Mixtral-8x7B's layer (8 experts of 14336, top 2) with 4 of its 32 layers: the whole model
        # (93 GB in bf16) does not fit the accelerator machine's disk.
        "mixtral-8x7b-4l": (tf.MixtralConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=4,
                                             num_attention_heads=32, num_key_value_heads=8, num_local_experts=8,
                                             num_experts_per_tok=2, vocab_size=32000,
                                             max_position_embeddings=32768, rope_theta=1000000.0,
                                             rms_norm_eps=1e-5, sliding_window=None, tie_word_embeddings=False),
                            "tokenizers/mistral/tokenizer.json"),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--assets", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", default="gpt2-124m,llama-1b,mistral-7b")
    a = ap.parse_args()
    for name in a.only.split(","):
        d = os.path.join(a.out, name)
        if os.path.exists(os.path.join(d, "config.json")):
            print("exists", d, flush=True)
            continue
        cfg, tok = shapes()[name]
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

#!/usr/bin/env python3
"""report.py's FLOP count and median against independent figures: the published parameter
counts of Mistral-7B (7,241,732,096) and Mixtral-8x7B (46,702,792,704 in all, 12.9 B active per
token), and a brute-force sum of what each query reads under a sliding window.

  python3 tools/gpu/report_test.py      (ctest: ReportFlops)
"""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report import engine_variant_of, flops_per_token, label, tps  # noqa: E402

MISTRAL = dict(model_type="mistral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=32000)
MIXTRAL = dict(MISTRAL, model_type="mixtral", num_local_experts=8, num_experts_per_tok=2)
# Untied embedding and head, 2 RMSNorms per layer and the final one.
EMBED_AND_NORMS = 2 * 32000 * 4096 + (2 * 32 + 1) * 4096


class FlopsTest(unittest.TestCase):
    def test_dense_body_is_twice_the_matmul_parameters(self):
        # window 0 and no scored tokens: the body's products alone.
        self.assertEqual(flops_per_token(MISTRAL, 0, 0) / 2, 7241732096 - EMBED_AND_NORMS)

    def test_mixture_counts_the_experts_a_token_runs(self):
        active = flops_per_token(MIXTRAL, 0, 0) / 2
        # All experts: the published total; per token 2 of 8 experts, 12.9 B with the embeddings.
        per_expert = 3 * 4096 * 14336 * 32
        self.assertEqual(active + 6 * per_expert, 46702792704 - EMBED_AND_NORMS)
        self.assertAlmostEqual((active + 2 * 32000 * 4096) / 1e9, 12.9, delta=0.05)

    def test_head_counts_scored_tokens_only(self):
        self.assertEqual(flops_per_token(MISTRAL, 0, 0.5) - flops_per_token(MISTRAL, 0, 0), 4096 * 32000)

    def test_attention_reads_under_a_sliding_window(self):
        T, w, H, D, L = 4096, 512, 4, 256, 6
        cfg = dict(model_type="gemma3_text", hidden_size=1152, intermediate_size=6912, num_hidden_layers=L,
                   num_attention_heads=H, num_key_value_heads=1, head_dim=D, vocab_size=262144, sliding_window=w,
                   layer_types=["sliding_attention"] * 5 + ["full_attention"])
        attn = flops_per_token(cfg, T, 0) - flops_per_token(cfg, 0, 0)
        # Query t (1-based) reads min(t, w) entries in a sliding layer and t in a full one; QK^T and
        # PV, 2 FLOPs per multiply-add.
        reads = (5 * sum(min(t, w) for t in range(1, T + 1)) + sum(range(1, T + 1))) / T
        self.assertAlmostEqual(attn / (4 * H * D * reads), 1.0, delta=1e-3)

    def test_window_at_least_the_sequence_is_full_attention(self):
        full = dict(MISTRAL)
        slid = dict(MISTRAL, sliding_window=4096)
        self.assertEqual(flops_per_token(full, 4096, 1), flops_per_token(slid, 4096, 1))


class MedianTest(unittest.TestCase):
    def test_even_count_is_the_mean_of_the_middle_two(self):
        self.assertEqual(tps({"tokens_per_s_runs": [10.0, 1.0, 3.0, 2.0]}), 2.5)
        self.assertEqual(tps({"tokens_per_s_runs": [3.0, 1.0, 2.0]}), 2.0)
        self.assertEqual(tps({"tokens_per_s": 7.0}), 7.0)


class LabelTest(unittest.TestCase):
    def test_engine_variants_are_rows_of_their_own_under_transformers_method(self):
        base = {"method": "none", "attention_block": 128}
        self.assertEqual(label(base), "none")
        self.assertEqual(label(dict(base, fused_layer=True, tuned_gemm=True)), "none")
        both = label(dict(base, fused_layer=False, tuned_gemm=False))
        self.assertEqual(both, "none @ unfused layer @ libtorch products")
        self.assertEqual(engine_variant_of(both), "none")
        block = label(dict(base, attention_block=512, tuned_gemm=False))
        self.assertEqual(block, "none @ query block 512 @ libtorch products")
        self.assertEqual(engine_variant_of(block), "none @ query block 512")


if __name__ == "__main__":
    unittest.main()

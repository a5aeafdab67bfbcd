// The scorer's GPU batch sizing on synthetic shapes: the batch a soft-capped model gets leaves
// room for its explicit attention's [B, H, T, T] scores (Gemma-2-2B at W = 4096 asked for 32 GiB
// of fp32 scores in one allocation with the sizing that ignored them).
#include "worker/engine/scorer.h"

#include "gtest/gtest.h"

namespace kvsweep::engine {
namespace {

// Gemma-2-2B's shapes (config.json of google/gemma-2-2b): 26 layers, hidden 2304, 8 query / 4 KV
// heads of 256, MLP 9216, scores soft-capped at 50.
ModelConfig Gemma2B() {
  ModelConfig c;
  c.arch = Arch::kLlama;
  c.gemma = true;
  c.vocab_size = 256000;
  c.hidden_size = 2304;
  c.num_layers = 26;
  c.num_heads = 8;
  c.num_kv_heads = 4;
  c.head_dim = 256;
  c.intermediate_size = 9216;
  c.max_positions = 8192;
  c.attn_softcap = 50.0;
  c.final_softcap = 30.0;
  return c;
}

constexpr int64_t kGiB = int64_t{1} << 30;

TEST(ScorerBatchTest, SoftcappedScoresFitTheBudget) {
  const ModelConfig c = Gemma2B();
  const int64_t free_bytes = 108 * kGiB, window = 4096, bf16 = 2;
  const int64_t tokens = BatchTokensFor(
      ActivationBytesPerToken(c, bf16, c.num_kv_heads, /*position_dependent=*/false, window),
      window, free_bytes);
  // One layer's fp32 scores for the batch, [B, H, T, T] with B = tokens / T, and the copies the
  // explicit softmax makes of them (scaled, capped, masked, softmax) fit half of what is free.
  const int64_t scores = tokens * c.num_heads * window * 4;
  EXPECT_LE(4 * scores, free_bytes / 2);
  EXPECT_GE(tokens, window);
  // Without the cap the same model takes the fused kernels and the batch is not held back by T.
  ModelConfig uncapped = c;
  uncapped.attn_softcap = 0;
  EXPECT_GT(BatchTokensFor(ActivationBytesPerToken(uncapped, bf16, c.num_kv_heads, false, window),
                           window, free_bytes),
            3 * tokens);
}

TEST(ScorerBatchTest, BudgetIsAtLeastOneWindowAndAtMostTheCap) {
  const ModelConfig c = Gemma2B();
  const int64_t per_token = ActivationBytesPerToken(c, 2, c.num_kv_heads, false, 4096);
  EXPECT_EQ(BatchTokensFor(per_token, 4096, kGiB / 1024), 4096);  // too little free: one window
  EXPECT_EQ(BatchTokensFor(1, 4096, 1024 * kGiB), 262144);
  EXPECT_EQ(BatchTokensFor(per_token, 4096, 0), 16384);  // free memory unknown
}

}  // namespace
}  // namespace kvsweep::engine

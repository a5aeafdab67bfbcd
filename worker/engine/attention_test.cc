// The blockwise attention of position-dependent caches (attention.h), a block at a time and
// packed into two calls, against the masked reference, in fp32 on the CPU: on random operands over
// every block phase, residual window, sliding window, GQA grouping, K/V under different rules and
// query-block size, on the real ref-llama (GQA, RoPE) and ref-gpt2 (MHA) checkpoints, layer by
// layer, for the position-dependent methods that the GPU tables report, and on tiny-gemma3's
// per-layer sliding windows.
#include "worker/engine/attention.h"

#include <cmath>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/path_policy.h"
#include "gtest/gtest.h"
#include "spec/method_spec.h"
#include "worker/engine/kv/cache_masks.h"
#include "worker/engine/kv/kv_codec.h"
#include "worker/engine/model.h"

namespace kvsweep::engine {
namespace {

using torch::Tensor;

// An operand whose compressed state differs from its raw one by O(1), so reading an entry in the
// wrong state moves the output far beyond fp32 rounding.
KvOperand Operand(const Tensor& raw, int block, int residual) {
  Tensor compressed = raw + 0.75 * torch::randn_like(raw);
  if (block == 0) return KvOperand{compressed, {}, {}};  // position independent
  return KvOperand{compressed, raw, CompressedStateMask(raw.size(2), block, residual, raw.device()),
                   block, residual};
}

double MaxAbsDiff(const Tensor& a, const Tensor& b) { return (a - b).abs().max().item<double>(); }

struct Case {
  int k_block, k_residual, v_block, v_residual;  // block 0: that operand is position independent
};

TEST(AttentionTest, BlockwiseEqualsMaskedOnRandomOperands) {
  const std::vector<Case> cases = {{1, 0, 1, 0},     {1, 5, 1, 5},  {4, 0, 4, 0},   {4, 3, 4, 3},
                                   {32, 32, 32, 32}, {7, 0, 0, 0},  {0, 0, 3, 2},   {5, 2, 1, 9},
                                   {1, 9, 6, 0},     {8, 0, 1, 16}, {3, 40, 3, 40}, {64, 0, 64, 0},
                                   {8, 8, 1, 4}};
  int checked = 0, windowed = 0;
  for (const Case& c : cases) {
    for (int64_t T : {1, 5, 37, 70}) {
      for (int64_t groups : {1, 3}) {
        for (int window : {0, 6, 29}) {
          torch::manual_seed(static_cast<uint64_t>(T * 131 + groups * 7 + window));
          const int64_t B = 2, Hkv = 2, D = 16, H = Hkv * groups;
          Tensor q = torch::randn({B, H, T, D});
          Tensor k = torch::randn({B, Hkv, T, D}), v = torch::randn({B, Hkv, T, D});
          KvPair kv{Operand(k, c.k_block, c.k_residual), Operand(v, c.v_block, c.v_residual)};
          if (!kv.k.position_dependent() && !kv.v.position_dependent()) continue;
          const double scale = 1.0 / std::sqrt(static_cast<double>(D));
          Tensor ref = AttendMasked(q, kv, AllowedMask(T, window, q.device()), scale);
          for (int64_t qb : {1, 4, 16, 256}) {
            Tensor got = AttendBlockwise(q, kv, window, scale, qb);
            ASSERT_EQ(got.sizes(), ref.sizes());
            EXPECT_LT(MaxAbsDiff(got, ref), 2e-5)
                << "K " << c.k_block << "/" << c.k_residual << ", V " << c.v_block << "/"
                << c.v_residual << ", T " << T << ", groups " << groups << ", window " << window
                << ", query block " << qb;
            // The packed path (the GPU's two-call packing with explicit softmax in place of
            // each kernel).
            if (window != 0) {
              ++checked;
              continue;  // the packed path takes no window
            }
            // Both forms of the band: the sliding window where the rules admit it, the bias.
            windowed += PackedBandWindowApplies(kv, T, qb, /*fused=*/false);
            for (bool band_window : {true, false}) {
              SetPackedBandWindow(band_window);
              Tensor packed = AttendPacked(q, kv, scale, qb, /*fused=*/false);
              SetPackedBandWindow(true);
              ASSERT_EQ(packed.sizes(), ref.sizes());
              EXPECT_LT(MaxAbsDiff(packed, ref), 2e-5)
                  << "packed (band window " << band_window << "): K " << c.k_block << "/"
                  << c.k_residual << ", V " << c.v_block << "/" << c.v_residual << ", T " << T
                  << ", groups " << groups << ", query block " << qb;
            }
            ++checked;
          }
        }
      }
    }
  }
  EXPECT_GT(checked, 500);
  EXPECT_GT(windowed, 100);
}

// The sliding-window form of the band applies exactly where every query block's band entries
// have one state in blocks of at least 32 queries: the methods the GPU tables report (channel
// blocks, with and without a residual window; per-token residual windows), K and V under
// different rules whose band states agree, and not where V's residual window is narrower than
// K's band (V's state then changes inside the band from one query to the next: blocks of one
// query).
TEST(AttentionTest, PackedBandWindowAppliesWhereBandsHaveOneState) {
  const Tensor x = torch::randn({1, 1, 300, 4});
  auto pair = [&](int kb, int kr, int vb, int vr) {
    return KvPair{Operand(x, kb, kr), Operand(x, vb, vr)};
  };
  EXPECT_TRUE(PackedBandWindowApplies(pair(32, 0, 32, 0), 300, 128));    // channel INT4
  EXPECT_TRUE(PackedBandWindowApplies(pair(32, 32, 32, 32), 300, 128));  // channel g32 r32
  EXPECT_TRUE(PackedBandWindowApplies(pair(1, 128, 1, 128), 300, 128));  // per-token r128
  EXPECT_TRUE(PackedBandWindowApplies(pair(32, 0, 1, 32), 300, 128));
  EXPECT_FALSE(PackedBandWindowApplies(pair(8, 0, 1, 16), 300, 128));  // blocks of 8
  EXPECT_TRUE(PackedBandWindowApplies(pair(32, 0, 0, 0), 300, 128));   // V position independent
  EXPECT_FALSE(PackedBandWindowApplies(pair(8, 8, 1, 4), 300, 128));
  EXPECT_FALSE(PackedBandWindowApplies(pair(32, 32, 1, 32), 300, 128));  // KIVI's K and V
}

// A batch of more tokens than one packed call takes goes through in chunks of windows, each
// chunk packed like a small batch: the result is still the reference's, row by row.
TEST(AttentionTest, PackedSplitsLargeBatchesIntoChunks) {
  torch::manual_seed(11);
  const int64_t B = 500, Hkv = 1, H = 2, T = 70, D = 8;  // 32768 / 70 = 468 windows per call
  Tensor q = torch::randn({B, H, T, D});
  Tensor k = torch::randn({B, Hkv, T, D}), v = torch::randn({B, Hkv, T, D});
  KvPair kv{Operand(k, 8, 4), Operand(v, 8, 4)};
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  Tensor ref = AttendMasked(q, kv, AllowedMask(T, 0, q.device()), scale);
  Tensor got = AttendPacked(q, kv, scale, 16, /*fused=*/false);
  ASSERT_EQ(got.sizes(), ref.sizes());
  EXPECT_LT(MaxAbsDiff(got, ref), 2e-5);
  // The last window (in the second chunk) is not a copy of the first chunk's.
  EXPECT_LT(MaxAbsDiff(got[B - 1], ref[B - 1]), 2e-5);
  EXPECT_GT(MaxAbsDiff(got[B - 1], ref[0]), 0.05);
}

// The comparison can fail: reading every entry compressed (or ignoring the window) is far from
// the reference, so the 2e-5 above is not vacuous.
TEST(AttentionTest, WrongStatesAreFarFromTheReference) {
  torch::manual_seed(5);
  const int64_t T = 40, D = 16;
  Tensor q = torch::randn({1, 2, T, D}), k = torch::randn({1, 2, T, D}),
         v = torch::randn({1, 2, T, D});
  KvPair kv{Operand(k, 4, 3), Operand(v, 4, 3)};
  const double scale = 0.25;
  Tensor ref = AttendMasked(q, kv, AllowedMask(T, 0, q.device()), scale);
  KvPair all_compressed{KvOperand{kv.k.compressed, {}, {}}, KvOperand{kv.v.compressed, {}, {}}};
  EXPECT_GT(MaxAbsDiff(AttendMasked(q, all_compressed, AllowedMask(T, 0, q.device()), scale), ref),
            0.05);
  EXPECT_GT(MaxAbsDiff(AttendBlockwise(q, kv, 8, scale, 16), ref), 0.05);
  EXPECT_GT(MaxAbsDiff(AttendPacked(q, kv, scale, 16, /*fused=*/false),
                       AttendMasked(q, kv, AllowedMask(T, 8, q.device()), scale)),
            0.05);
}

// On the real checkpoints: each layer's own q and K/V through the codec, both paths.
class BothPaths : public AttentionObserver {
 public:
  BothPaths(const Model& m, int64_t query_block) : model_(m), query_block_(query_block) {}
  void Observe(int layer, const Tensor& q, const Tensor&, const Tensor&, const KvPair& seen,
               const Tensor& allowed) override {
    const double scale = model_.AttentionScale(layer);
    const int window = model_.config().sliding_window[layer];
    Tensor ref = AttendMasked(q, seen, allowed, scale);
    Tensor got = AttendBlockwise(q, seen, window, scale, query_block_);
    max_diff = std::max(max_diff, MaxAbsDiff(got, ref) / (ref.abs().max().item<double>() + 1e-30));
    if (window == 0) {
      Tensor packed = AttendPacked(q, seen, scale, query_block_, /*fused=*/false);
      max_diff =
          std::max(max_diff, MaxAbsDiff(packed, ref) / (ref.abs().max().item<double>() + 1e-30));
    }
    // The compressed states matter on this data (in some layer: the comparison is not vacuous).
    Tensor none = AttendMasked(
        q,
        KvPair{KvOperand{seen.k.raw.defined() ? seen.k.raw : seen.k.compressed, {}, {}},
               KvOperand{seen.v.raw.defined() ? seen.v.raw : seen.v.compressed, {}, {}}},
        allowed, scale);
    max_effect =
        std::max(max_effect, MaxAbsDiff(none, ref) / (ref.abs().max().item<double>() + 1e-30));
    ++layers;
  }
  double max_diff = 0, max_effect = 0;
  int layers = 0;

 private:
  const Model& model_;
  int64_t query_block_;
};

// Every method of `methods` on `model` with input `ids`, at each query block: the blockwise path
// equals the masked one on every layer, and the compressed states matter in some layer.
void CheckModel(const Model& model, const std::string& name, const Tensor& ids,
                const std::vector<const char*>& methods, const std::vector<int64_t>& blocks,
                bool position_dependent_codec = false) {
  for (const char* text : methods) {
    absl::StatusOr<KvMethod> parsed = ParseKvMethod(text);
    ASSERT_TRUE(parsed.ok()) << text << ": " << parsed.status();
    absl::StatusOr<KvMethod> method =
        ResolveKvMethod(*parsed, model.config().head_dim, model.config().num_layers);
    ASSERT_TRUE(method.ok()) << text << ": " << method.status();
    auto codec = NewKvCodec(*method);
    ASSERT_TRUE(codec.ok()) << codec.status();
    if (position_dependent_codec) {
      ASSERT_TRUE((*codec)->position_dependent()) << text;
    }
    for (int64_t qb : blocks) {
      BothPaths check(model, qb);
      model.Forward(ids, codec->get(), &check);
      EXPECT_EQ(check.layers, model.config().num_layers);
      EXPECT_LT(check.max_diff, 1e-5) << name << " " << text << " query block " << qb;
      EXPECT_GT(check.max_effect, 1e-3) << name << " " << text;
      std::cout << name << " " << text << " query block " << qb << ": max relative difference "
                << check.max_diff << ", effect of the compressed states " << check.max_effect
                << "\n";
    }
  }
}

TEST(AttentionTest, BlockwiseEqualsMaskedOnRefModels) {
  for (const char* name : {"ref-llama", "ref-gpt2"}) {
    auto m = Model::Load(AssetsDir() + "/models/" + name, ModelOptions{});
    ASSERT_TRUE(m.ok()) << m.status();
    const Model& model = **m;
    torch::manual_seed(3);
    Tensor ids = torch::randint(3, model.config().vocab_size, {2, 300}, torch::kLong);
    CheckModel(model, name, ids,
               {"quant:bits=4,axis=channel", "quant:bits=2,axis=channel,group=32,residual=32",
                "quant:bits=4,residual=128",
                "k=quant:bits=2,axis=channel,group=32;v=quant:bits=2,residual=8"},
               {int64_t{64}, kAttentionQueryBlock});
  }
}

// tiny-gemma3 (tests/fixtures): sliding windows of 8 on layers 0 and 1, full attention on layer
// 2, each layer with its own RoPE, blocks and residual windows that cross the window's lower edge.
TEST(AttentionTest, BlockwiseEqualsMaskedOnGemma3SlidingLayers) {
  auto m = Model::Load(std::string(KVSWEEP_FIXTURES) + "/tiny_models/tiny-gemma3", ModelOptions{});
  ASSERT_TRUE(m.ok()) << m.status();
  const Model& model = **m;
  ASSERT_EQ(model.config().sliding_window, (std::vector<int>{8, 8, 0}));
  torch::manual_seed(4);
  Tensor ids =
      torch::randint(3, model.config().vocab_size, {2, model.config().max_positions}, torch::kLong);
  CheckModel(model, "tiny-gemma3", ids,
             {"quant:bits=2,axis=channel,group=4,residual=3", "quant:bits=2,group=8,residual=5",
              "k=quant:bits=2,axis=channel,group=8;v=quant:bits=2,group=16,residual=2",
              "quant:bits=2,axis=channel,group=4,residual=3,rope=pre"},
             {int64_t{1}, int64_t{16}, kAttentionQueryBlock}, /*position_dependent_codec=*/true);
}

}  // namespace
}  // namespace kvsweep::engine

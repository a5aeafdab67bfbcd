// The shared quantizer against the reference (tests/fixtures/quant_unit.json, written by
// tools/reference/make_reference.py's fake_quant on CPU), the code encoder/decoder, bit packing,
// and the cache-state masks.
#include "worker/engine/kv/quantizer.h"

#include <cstring>

#include "common/json_util.h"
#include "gtest/gtest.h"
#include "worker/engine/kv/cache_masks.h"

namespace kvsweep::engine {
namespace {

using torch::Tensor;

Tensor FromJson2d(const nlohmann::json& rows) {
  std::vector<float> flat;
  for (const auto& r : rows)
    for (const auto& v : r) flat.push_back(static_cast<float>(v.get<double>()));
  return torch::tensor(flat).view({static_cast<int64_t>(rows.size()), -1});
}

// Bitwise equality of two fp32 tensors (torch::equal treats -0.0 == 0.0).
int64_t BitMismatches(const Tensor& a, const Tensor& b) {
  Tensor ac = a.contiguous(), bc = b.contiguous();
  EXPECT_EQ(ac.numel(), bc.numel());
  return (ac.view(torch::kInt32) != bc.view(torch::kInt32)).sum().item<int64_t>();
}

// The same after mapping -0.0 to +0.0 (a symmetric code 0 decodes to +0 from the stored offset
// code, where the simulation's round(x / scale) * scale keeps the sign of a small negative x).
int64_t ValueMismatches(const Tensor& a, const Tensor& b) {
  return BitMismatches(a + 0.0f, b + 0.0f);
}

TEST(QuantizerTest, BitIdenticalToTheReference) {
  auto fx = ReadJsonFile(std::string(KVSWEEP_FIXTURES) + "/quant_unit.json");
  ASSERT_TRUE(fx.ok()) << fx.status();
  Tensor x = FromJson2d((*fx)["x"]);  // [6, 64]: random rows, a constant row, exact halves
  ASSERT_EQ(x.size(1), 64);
  ASSERT_EQ((*fx)["cases"].size(), 11u);
  for (const auto& c : (*fx)["cases"]) {
    QuantFormat f;
    f.bits = c["bits"].get<int>();
    f.group = c["group"].get<int>();
    f.sym = c["sym"].get<int>() != 0;
    Tensor want = FromJson2d(c["y"]);
    Tensor got = FakeQuantize(x, f);
    EXPECT_EQ(BitMismatches(got, want), 0)
        << "bits " << f.bits << " group " << f.group << " sym " << f.sym << ": max |diff| "
        << (got - want).abs().max().item<double>();
    // The constant row (index 3) comes back exactly.
    EXPECT_TRUE(torch::equal(got[3], x[3]));
  }
}

TEST(QuantizerTest, ErrorIsAtMostHalfAStep) {
  torch::manual_seed(3);
  Tensor x = torch::randn({7, 3, 64}) * 3 + 0.5;
  for (int bits = 1; bits <= 8; ++bits) {
    for (int group : {64, 32, 8}) {
      for (bool sym : {false, true}) {
        if (sym && bits == 1) continue;
        QuantFormat f{bits, group, sym, false};
        Tensor g = x.view({7, 3, 64 / group, group});
        Tensor step = sym ? g.abs().amax(-1, true) / ((1 << (bits - 1)) - 1)
                          : (g.amax(-1, true) - g.amin(-1, true)) / ((1 << bits) - 1);
        Tensor err = (FakeQuantize(x, f).view_as(g) - g).abs();
        const double worst = (err / (step / 2)).max().item<double>();
        EXPECT_LE(worst, 1.0 + 1e-5) << "bits " << bits << " group " << group << " sym " << sym;
      }
    }
  }
}

TEST(QuantizerTest, Fp16MetadataDecodeIsBitIdenticalToItsSimulation) {
  torch::manual_seed(4);
  Tensor x = torch::randn({5, 2, 9, 64}) * 2;
  x[0][0][0] = 0.75;  // a constant row
  for (int bits = 1; bits <= 8; ++bits) {
    for (int group : {64, 16}) {
      for (bool sym : {false, true}) {
        if (sym && bits == 1) continue;
        QuantFormat f{bits, group, sym, /*fp16_meta=*/true};
        QuantCodes c = EncodeCodes(x, f);
        EXPECT_EQ(c.codes.scalar_type(), torch::kUInt8);
        EXPECT_EQ(c.scale.scalar_type(), torch::kFloat16);
        EXPECT_EQ(c.zero.defined(), !sym);
        EXPECT_LT(c.codes.max().item<int>(), 1 << bits);
        QuantCodes held{UnpackCodes(PackCodes(c.codes, bits), bits, 64), c.scale, c.zero};
        EXPECT_EQ(ValueMismatches(DecodeCodes(held, f, torch::kFloat32), FakeQuantize(x, f)), 0)
            << "bits " << bits << " group " << group << " sym " << sym;
        // fp16 metadata stays within a small fraction of a step of the reference semantics.
        QuantFormat f32 = f;
        f32.fp16_meta = false;
        Tensor g = x.view({5, 2, 9, 64 / group, group});
        Tensor range = (g.amax(-1, true) - g.amin(-1, true)).expand_as(g).reshape(x.sizes());
        Tensor step = sym ? g.abs().amax(-1, true) / ((1 << (bits - 1)) - 1)
                          : (g.amax(-1, true) - g.amin(-1, true)) / ((1 << bits) - 1);
        step = step.expand_as(g).reshape(x.sizes());
        Tensor diff = (FakeQuantize(x, f) - FakeQuantize(x, f32)).abs();
        // A code may move by one where x sits within fp16 rounding of a half-step; the rounded
        // scale/zero add at most ~2^-11 of the range: bound by one step plus 1e-3 of the range.
        EXPECT_LE((diff - step - 1e-3 * range).max().item<double>(), 0.0)
            << "bits " << bits << " group " << group << " sym " << sym;
      }
    }
  }
}

TEST(QuantizerTest, PackingLayoutAndRoundTrip) {
  auto u8 = [](std::vector<int> v) {
    std::vector<uint8_t> b(v.begin(), v.end());
    return torch::tensor(torch::ArrayRef<uint8_t>(b)).clone();
  };
  // Two INT4 per byte, low nibble first.
  Tensor p4 = PackCodes(u8({1, 2, 3, 4, 5, 6, 7, 15}).view({1, 8}), 4);
  EXPECT_TRUE(torch::equal(p4, u8({0x21, 0x43, 0x65, 0xF7}).view({1, 4})));
  // Eight 3-bit codes in three bytes: value sum c_i << 3i = 0x1F58D1.
  Tensor p3 = PackCodes(u8({1, 2, 3, 4, 5, 6, 7, 0}).view({1, 8}), 3);
  EXPECT_TRUE(torch::equal(p3, u8({0xD1, 0x58, 0x1F}).view({1, 3})));
  // 1-bit: LSB first.
  Tensor p1 = PackCodes(u8({1, 0, 0, 0, 0, 0, 0, 1}).view({1, 8}), 1);
  EXPECT_TRUE(torch::equal(p1, u8({0x81}).view({1, 1})));
  torch::manual_seed(5);
  for (int bits = 1; bits <= 8; ++bits) {
    for (int64_t n : {64, 8, 13, 1}) {
      Tensor codes = torch::randint(0, 1 << bits, {3, 4, n}, torch::kLong).to(torch::kUInt8);
      Tensor packed = PackCodes(codes, bits);
      ASSERT_EQ(packed.size(-1), PackedBytesPerRow(n, bits));
      EXPECT_EQ(packed.size(-1), bits == 8 ? n : (n + 7) / 8 * bits);
      EXPECT_TRUE(torch::equal(UnpackCodes(packed, bits, n), codes))
          << "bits " << bits << " n " << n;
    }
  }
  EXPECT_EQ(PackedBytesPerRow(64, 4), 32);
  EXPECT_EQ(PackedBytesPerRow(64, 3), 24);
}

TEST(CacheMasksTest, ResidualWindowAndChannelBlocks) {
  // Token axis, residual 2: entry j is compressed once two newer tokens exist (j <= t - 2).
  Tensor r = CompressedStateMask(5, 1, 2, torch::kCPU);
  for (int t = 0; t < 5; ++t)
    for (int j = 0; j < 5; ++j) EXPECT_EQ(r[t][j].item<bool>(), j <= t - 2) << t << "," << j;
  // Blocks of 2 tokens, residual 1: compressed prefix floor(max(0, t)/2)*2 = 0,0,2,2,4,4.
  Tensor c = CompressedStateMask(6, 2, 1, torch::kCPU);
  const int prefix[] = {0, 0, 2, 2, 4, 4};
  for (int t = 0; t < 6; ++t)
    for (int j = 0; j < 6; ++j) EXPECT_EQ(c[t][j].item<bool>(), j < prefix[t]) << t << "," << j;
  // Blocks of 3, no residual: a block is compressed from the step that completes it.
  Tensor b = CompressedStateMask(7, 3, 0, torch::kCPU);
  EXPECT_FALSE(b[1][0].item<bool>());
  EXPECT_TRUE(b[2][0].item<bool>());
  EXPECT_TRUE(b[2][2].item<bool>());
  EXPECT_FALSE(b[4][3].item<bool>());
  EXPECT_TRUE(b[5][5].item<bool>());
  EXPECT_FALSE(b[6][6].item<bool>());
  EXPECT_EQ(CompressedTokens(1000, 32, 0), 992);
  EXPECT_EQ(CompressedTokens(1000, 1, 128), 872);
  EXPECT_EQ(CompressedTokens(10, 4, 20), 0);
}

}  // namespace
}  // namespace kvsweep::engine

#include "spec/ledger.h"

#include "gtest/gtest.h"

namespace kvsweep {
namespace {

Ledger L(const std::string& spec, int d = 64, int L = 1024, int kvh = 1, int native = 1) {
  auto m = ParseMethodSpec(spec);
  EXPECT_TRUE(m.ok()) << m.status();
  auto r = ResolveMethodSpec(*m, d);
  EXPECT_TRUE(r.ok()) << r.status();
  auto l = ComputeLedger(*r, d, kvh, native, 6, L);
  EXPECT_TRUE(l.ok()) << l.status();
  return *l;
}

TEST(LedgerTest, Int4Group64OnHeadDim64) {
  Ledger l = L("quant:bits=4,group=64");
  EXPECT_DOUBLE_EQ(l.k.payload, 256);
  EXPECT_DOUBLE_EQ(l.k.metadata, 32);
  EXPECT_DOUBLE_EQ(l.v.payload, 256);
  EXPECT_DOUBLE_EQ(l.v.metadata, 32);
  EXPECT_DOUBLE_EQ(l.fraction_payload, 0.25);
  EXPECT_DOUBLE_EQ(l.fraction_total, 0.28125);
}

TEST(LedgerTest, RankD4HasPayloadQuarterPlusAmortizedBasis) {
  Ledger l = L("rank:r=16", 64, 1024);
  EXPECT_DOUBLE_EQ(l.k.payload, 256);
  EXPECT_DOUBLE_EQ(l.k.metadata, 0);
  EXPECT_DOUBLE_EQ(l.k.basis, 16.0 * 16 * 64 / 1024);  // r×d fp16 over 1024 tokens = 16 bits
  EXPECT_DOUBLE_EQ(l.fraction_payload, 0.25);
  EXPECT_DOUBLE_EQ(l.fraction_total, 0.25 + 16.0 / 1024);
  // Seeded random bases are regenerated, not stored.
  EXPECT_DOUBLE_EQ(L("rank:r=16,basis=random").fraction_total, 0.25);
}

TEST(LedgerTest, NoneAndTargets) {
  EXPECT_DOUBLE_EQ(L("none").fraction_total, 1.0);
  Ledger k_only = L("quant:bits=2,group=32,target=k");
  EXPECT_DOUBLE_EQ(k_only.k.payload, 128);
  EXPECT_DOUBLE_EQ(k_only.k.metadata, 64);
  EXPECT_DOUBLE_EQ(k_only.v.payload, 1024);
  EXPECT_DOUBLE_EQ(k_only.fraction_total, (192.0 + 1024) / 2048);
}

TEST(LedgerTest, SymmetricStoresOnlyScales) {
  EXPECT_DOUBLE_EQ(L("quant:bits=4,group=32,sym=1").k.metadata, 32);
  EXPECT_DOUBLE_EQ(L("quant:bits=4,group=32").k.metadata, 64);
}

TEST(LedgerTest, ResidualAndUnfinishedBlockCountAsFp16) {
  // Residual 128 of 1024 tokens in fp16.
  Ledger r = L("quant:bits=4,group=64,residual=128", 64, 1024);
  EXPECT_DOUBLE_EQ(r.k.payload, 896.0 * 4 * 64 / 1024);
  EXPECT_DOUBLE_EQ(r.k.metadata, 896.0 * 32 / 1024 + 128.0 * 16 * 64 / 1024);
  // Channel blocks of 32 at L=1000: 992 tokens quantized (31 blocks), 8 in the open block.
  Ledger c = L("quant:bits=2,axis=channel,group=32", 64, 1000);
  EXPECT_DOUBLE_EQ(c.k.payload, 992.0 * 2 * 64 / 1000);
  EXPECT_DOUBLE_EQ(c.k.metadata, 31.0 * 64 * 32 / 1000 + 8.0 * 16 * 64 / 1000);
}

TEST(LedgerTest, HybridAndPooling) {
  Ledger h = L("hybrid:r=32,bits=8,basis=random");
  EXPECT_DOUBLE_EQ(h.fraction_payload, 0.25);
  EXPECT_DOUBLE_EQ(h.k.metadata, 32);
  Ledger p = L("none", 64, 1024, 1, 4);
  EXPECT_DOUBLE_EQ(p.fraction_total, 1.0);
  EXPECT_DOUBLE_EQ(p.fraction_of_native, 0.25);
  EXPECT_DOUBLE_EQ(p.cache_bytes(), 2.0 * 1024 * 1 * 6 * 1024 / 8);
}

Ledger LKv(const std::string& method, int layers = 6, int d = 64, int L = 1024) {
  auto m = ParseKvMethod(method);
  EXPECT_TRUE(m.ok()) << m.status();
  auto r = ResolveKvMethod(*m, d, layers);
  EXPECT_TRUE(r.ok()) << r.status();
  auto l = ComputeLedger(*r, d, 1, 1, layers, L);
  EXPECT_TRUE(l.ok()) << l.status();
  return *l;
}

TEST(LedgerTest, KAndVApartCountEachTensorByItsOwnSpec) {
  // KIVI-style: keys 2-bit per channel in blocks of 32, values 2-bit per token (group 64).
  Ledger kivi = LKv("k=quant:bits=2,axis=channel,group=32;v=quant:bits=2", 6, 64, 1000);
  const Ledger keys = L("quant:bits=2,axis=channel,group=32,target=k", 64, 1000);
  const Ledger values = L("quant:bits=2,target=v", 64, 1000);
  EXPECT_DOUBLE_EQ(kivi.k.total(), keys.k.total());
  EXPECT_DOUBLE_EQ(kivi.v.total(), values.v.total());
  EXPECT_DOUBLE_EQ(kivi.fraction_total, (keys.k.total() + values.v.total()) / 2048);
  // A single spec through the KvMethod path is the MethodSpec ledger.
  EXPECT_DOUBLE_EQ(LKv("quant:bits=4,group=32").fraction_total,
                   L("quant:bits=4,group=32").fraction_total);
}

TEST(LedgerTest, PerLayerOverridesAverageOverLayers) {
  // 4 layers at 2 bits, 2 layers at fp16: payload (4*128 + 2*1024) / 6 per tensor.
  Ledger l = LKv("quant:bits=2,group=64;layers=0:none;layers=5:none", 6);
  EXPECT_DOUBLE_EQ(l.k.payload, (4 * 128.0 + 2 * 1024.0) / 6);
  EXPECT_DOUBLE_EQ(l.k.metadata, 4 * 32.0 / 6);
  EXPECT_DOUBLE_EQ(l.v.payload, l.k.payload);
  // K apart on every layer but overridden on one.
  Ledger m = LKv("k=quant:bits=4;v=rank:r=16,basis=random;layers=2:none", 3);
  EXPECT_DOUBLE_EQ(m.k.payload, (2 * 256.0 + 1024.0) / 3);
  EXPECT_DOUBLE_EQ(m.v.payload, (2 * 256.0 + 1024.0) / 3);
}

TEST(SolverTest, KAndVApartSolveOneBitWidthForBoth) {
  SolverOptions o;
  o.extra_k = "axis=channel,group=32";
  o.extra_v = "axis=token";
  absl::StatusOr<SolvedMethod> s = SolveBudget("quant", 0.25, 64, o);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->method.ToString(),
            *CanonicalKvMethod("k=quant:bits=4,axis=channel,group=32;v=quant:bits=4", 64, 1));
  EXPECT_DOUBLE_EQ(s->achieved, 0.25);
  // Without keys of their own for K or V, the same as before.
  SolverOptions plain;
  EXPECT_EQ(SolveBudget("quant", 0.25, 64, plain)->method.ToString(),
            *CanonicalMethodSpec("quant:bits=4", 64));
}

TEST(SolverTest, QuarterBudgetMatchesInt4RankD4HybridHalf8) {
  SolverOptions o;
  auto q = SolveBudget("quant", 0.25, 64, o);
  auto r = SolveBudget("rank", 0.25, 64, o);
  auto h = SolveBudget("hybrid", 0.25, 64, o);
  ASSERT_TRUE(q.ok() && r.ok() && h.ok());
  EXPECT_EQ(q->method.ToString().substr(0, 22), "quant:bits=4,group=64,");
  EXPECT_EQ(r->method.ToString(), "rank:r=16,basis=pca,target=kv,rope=post,seed=0");
  EXPECT_EQ(h->method.ToString().substr(0, 22), "hybrid:r=32,bits=8,gro");
  EXPECT_DOUBLE_EQ(q->achieved, 0.25);
  EXPECT_DOUBLE_EQ(r->achieved, 0.25);
  EXPECT_DOUBLE_EQ(h->achieved, 0.25);
  // The solved methods are structures, resolved for the head dimension.
  ASSERT_TRUE(q->method.single() && r->method.single() && h->method.single());
  EXPECT_EQ(q->method.k.family, MethodFamily::kQuant);
  EXPECT_EQ(q->method.k.bits, 4);
  EXPECT_EQ(q->method.k.group, 64);
  EXPECT_TRUE(q->method.k.resolved());
  EXPECT_EQ(r->method.k.r, 16);
  EXPECT_EQ(h->method.k.r, 32);
  EXPECT_EQ(h->method.k.bits, 8);
  // head_dim 128.
  auto r128 = SolveBudget("rank", 0.25, 128, o);
  ASSERT_TRUE(r128.ok());
  EXPECT_EQ(r128->method.ToString().substr(0, 10), "rank:r=32,");
  o.extra = "basis=svd";
  auto svd = SolveBudget("rank", 0.125, 64, o);
  ASSERT_TRUE(svd.ok()) << svd.status();
  EXPECT_EQ(svd->method.ToString(), "rank:r=8,basis=svd,target=kv,rope=pre,seed=0");
}

TEST(SolverTest, TotalConventionCountsMetadata) {
  SolverOptions o;
  o.convention = BudgetConvention::kTotal;
  auto q = SolveBudget("quant", 0.25, 64, o);
  ASSERT_TRUE(q.ok()) << q.status();
  // 3 bits + 32/32 bits of scale/zero per element = 4 bits = 0.25.
  EXPECT_EQ(q->method.ToString().substr(0, 22), "quant:bits=3,group=32,");
  EXPECT_DOUBLE_EQ(q->achieved, 0.25);
}

TEST(SolverTest, MismatchesAreRefused) {
  SolverOptions o;
  auto q = SolveBudget("quant", 0.3, 64, o);
  ASSERT_FALSE(q.ok());
  EXPECT_EQ(q.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(q.status().message().find("cannot be met by family quant"), std::string::npos);
  o.tolerance = 0.1;  // 0.3 -> 5 bits = 0.3125 is within 10%
  EXPECT_TRUE(SolveBudget("quant", 0.3, 64, o).ok());
  EXPECT_FALSE(SolveBudget("quant", 0.0, 64, SolverOptions()).ok());
  EXPECT_FALSE(SolveBudget("quant", 1.5, 64, SolverOptions()).ok());
  EXPECT_FALSE(SolveBudget("evict", 0.25, 64, SolverOptions()).ok());
  // Rank r must be an integer: d/4 of 60 is 15, but 0.3·60 = 18 works, 0.33 does not.
  EXPECT_FALSE(SolveBudget("rank", 0.33, 60, SolverOptions()).ok());
}

}  // namespace
}  // namespace kvsweep

#include "spec/method_family.h"

#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "spec/ledger.h"

namespace kvsweep {
namespace {

using ::testing::HasSubstr;

TEST(MethodFamilyTest, NamesAreUniqueAndFoundByName) {
  std::set<std::string> names;
  std::set<int> ids;
  for (const MethodFamilyDef& d : MethodFamilies()) {
    EXPECT_TRUE(names.insert(d.name).second) << d.name;
    EXPECT_TRUE(ids.insert(static_cast<int>(d.family)).second) << d.name;
    ASSERT_NE(FindMethodFamily(d.name), nullptr);
    EXPECT_EQ(FindMethodFamily(d.name)->family, d.family);
    EXPECT_STREQ(FamilyName(d.family), d.name);
    EXPECT_STREQ(MethodFamilyDefOf(d.family).name, d.name);
  }
  EXPECT_EQ(FindMethodFamily("prune"), nullptr);
  EXPECT_EQ(MethodFamilyNames(), (std::vector<std::string>{"none", "quant", "rank", "hybrid"}));
}

// Every family's entry is complete and consistent with the parser: its probe parses, every key
// it lists is accepted and printed in the canonical string, every required key is refused when
// missing, and the default basis is what a parsed spec gets.
TEST(MethodFamilyTest, EachEntryAgreesWithTheParser) {
  for (const MethodFamilyDef& d : MethodFamilies()) {
    SCOPED_TRACE(d.name);
    ASSERT_TRUE(d.check && d.resolve && d.storage && d.budget_candidates);
    const std::string probe = *d.probe ? absl::StrCat(d.name, ":", d.probe) : d.name;
    absl::StatusOr<MethodSpec> m = ParseMethodSpec(probe);
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_EQ(m->family, d.family);
    EXPECT_EQ(m->basis, d.default_basis);
    const std::string canonical = m->ToString();
    for (const MethodKeyDef& k : d.keys) {
      EXPECT_THAT(canonical, HasSubstr(absl::StrCat(k.name, "="))) << canonical;
    }
    if (!d.required.empty()) {
      absl::StatusOr<MethodSpec> missing = ParseMethodSpec(absl::StrCat(d.name, ":target=kv"));
      ASSERT_FALSE(missing.ok());
      EXPECT_THAT(std::string(missing.status().message()),
                  HasSubstr(absl::StrCat("missing required key '", d.required[0], "'")));
    }
  }
}

// The solver's candidates of every family parse, resolve, and come from the largest storage to
// the smallest (the solver breaks ties toward the earlier, higher-fidelity one).
TEST(MethodFamilyTest, BudgetCandidatesParseAndShrink) {
  for (BudgetConvention conv : {BudgetConvention::kPayload, BudgetConvention::kTotal}) {
    SolverOptions o;
    o.convention = conv;
    for (const MethodFamilyDef& d : MethodFamilies()) {
      SCOPED_TRACE(absl::StrCat(d.name, " ", BudgetConventionName(conv)));
      const int head_dim = 64;
      std::vector<std::string> cands = d.budget_candidates(head_dim, o);
      ASSERT_FALSE(cands.empty());
      double previous = INFINITY;
      for (const std::string& c : cands) {
        absl::StatusOr<MethodSpec> m = ParseMethodSpec(c);
        ASSERT_TRUE(m.ok()) << m.status();
        EXPECT_EQ(m->family, d.family);
        absl::StatusOr<MethodSpec> r = ResolveMethodSpec(*m, head_dim);
        ASSERT_TRUE(r.ok()) << r.status();
        absl::StatusOr<Ledger> l = ComputeLedger(*r, head_dim, 1, 1, 1, o.context_len);
        ASSERT_TRUE(l.ok()) << l.status();
        const double f =
            conv == BudgetConvention::kPayload ? l->fraction_payload : l->fraction_total;
        if (conv == BudgetConvention::kPayload) EXPECT_LE(f, previous) << c;
        previous = std::min(previous, f);
      }
    }
  }
}

// The numbers that describe a spec, per family; a family without one answers nullopt.
TEST(MethodFamilyTest, MethodNumbers) {
  auto spec = [](const char* text) {
    absl::StatusOr<MethodSpec> m = ParseMethodSpec(text);
    EXPECT_TRUE(m.ok()) << m.status();
    return *m;
  };
  const MethodSpec quant = spec("quant:bits=3,residual=16");
  EXPECT_EQ(MethodNumber(quant, "bits"), 3);
  EXPECT_EQ(MethodNumber(quant, "group"), 0);  // the open token-axis group
  EXPECT_EQ(MethodNumber(quant, "residual"), 16);
  EXPECT_EQ(MethodNumber(quant, "r"), std::nullopt);
  const MethodSpec rank = spec("rank:r=8");
  EXPECT_EQ(MethodNumber(rank, "r"), 8);
  EXPECT_EQ(MethodNumber(rank, "bits"), std::nullopt);
  EXPECT_EQ(MethodNumber(rank, "group"), std::nullopt);
  const MethodSpec hybrid = spec("hybrid:r=8,bits=4,group=4");
  EXPECT_EQ(MethodNumber(hybrid, "r"), 8);
  EXPECT_EQ(MethodNumber(hybrid, "bits"), 4);
  EXPECT_EQ(MethodNumber(hybrid, "group"), 4);
  EXPECT_EQ(MethodNumber(hybrid, "residual"), std::nullopt);
  const MethodSpec none = spec("none");
  for (const char* n : {"bits", "r", "group", "residual", "seed"}) {
    EXPECT_EQ(MethodNumber(none, n), std::nullopt) << n;
  }
}

// The storage formulas on a case worked by hand (head_dim 64, L = 128): quant 4-bit token axis,
// asymmetric, group 32, residual 32 keeps 96 tokens quantized; rank 16 with a stored pca basis;
// hybrid r=16 at 4 bits in groups of 8.
TEST(MethodFamilyTest, StorageWorkedByHand) {
  auto bits = [](const char* text) {
    MethodSpec m = *ResolveMethodSpec(*ParseMethodSpec(text), 64);
    return MethodFamilyDefOf(m.family).storage(m, 64, 128);
  };
  TensorBits q = bits("quant:bits=4,group=32,residual=32");
  EXPECT_DOUBLE_EQ(q.payload, 96.0 * 4 * 64 / 128);
  EXPECT_DOUBLE_EQ(q.metadata, 96.0 * 2 * 32 / 128 + 32.0 * 16 * 64 / 128);
  EXPECT_DOUBLE_EQ(q.basis, 0);
  TensorBits r = bits("rank:r=16");
  EXPECT_DOUBLE_EQ(r.payload, 16.0 * 16);
  EXPECT_DOUBLE_EQ(r.basis, 16.0 * 16 * 64 / 128);
  TensorBits h = bits("hybrid:r=16,bits=4,group=8,basis=random");
  EXPECT_DOUBLE_EQ(h.payload, 4.0 * 16);
  EXPECT_DOUBLE_EQ(h.metadata, 2.0 * 32);
  EXPECT_DOUBLE_EQ(h.basis, 0);
  EXPECT_DOUBLE_EQ(bits("none").total(), 16.0 * 64);
}

}  // namespace
}  // namespace kvsweep

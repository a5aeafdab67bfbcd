#include "common/method_spec.h"

#include "gtest/gtest.h"

namespace kvsweep {
namespace {

std::string Canon(const std::string& s, int d = 64) {
  auto c = CanonicalMethodSpec(s, d);
  EXPECT_TRUE(c.ok()) << s << ": " << c.status();
  return c.ok() ? *c : "";
}

void ExpectError(const std::string& s, const std::string& fragment, int d = 64) {
  auto c = CanonicalMethodSpec(s, d);
  ASSERT_FALSE(c.ok()) << s << " parsed as " << *c;
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(c.status().message().find(fragment), std::string::npos)
      << s << " -> " << c.status().message();
  EXPECT_EQ(c.status().message().find('\n'), std::string::npos);
}

TEST(MethodSpecTest, DefaultsFilledInFixedOrder) {
  EXPECT_EQ(Canon("none"), "none");
  EXPECT_EQ(Canon("quant:bits=4"),
            "quant:bits=4,group=64,axis=token,sym=0,target=kv,residual=0,rope=post,"
            "basis=identity,seed=0,packed=0");
  EXPECT_EQ(Canon("rank:r=16"), "rank:r=16,basis=pca,target=kv,rope=post,seed=0");
  EXPECT_EQ(Canon("hybrid:bits=8,r=32"),
            "hybrid:r=32,bits=8,group=32,basis=pca,target=kv,rope=post,seed=0");
}

TEST(MethodSpecTest, SpellingsOfTheSameMethodAgree) {
  EXPECT_EQ(Canon("quant:bits=4"), Canon(" quant:group=64,bits=4 "));
  EXPECT_EQ(Canon("quant:bits=4"), Canon("quant:bits=4,group=head_dim"));
  EXPECT_EQ(Canon("rank:r=8,basis=svd"), Canon("rank:r=8,basis=svd,rope=pre"));
  // seed only matters for random bases.
  EXPECT_EQ(Canon("rank:r=8,seed=5"), Canon("rank:r=8"));
  EXPECT_NE(Canon("rank:r=8,basis=random,seed=5"), Canon("rank:r=8,basis=random"));
}

TEST(MethodSpecTest, CanonicalRoundTrips) {
  for (const char* s : {"none", "quant:bits=2,group=32,target=k", "quant:bits=3,axis=channel,residual=32",
                        "quant:bits=4,basis=hadamard", "rank:r=16,basis=random,seed=3",
                        "hybrid:r=32,bits=4,group=8,basis=svd", "quant:bits=8,sym=1,packed=1"}) {
    std::string c = Canon(s);
    EXPECT_EQ(Canon(c), c);
  }
}

TEST(MethodSpecTest, ChannelAxisDefaultsToBlocksOf32Tokens) {
  EXPECT_EQ(Canon("quant:bits=2,axis=channel"),
            "quant:bits=2,group=32,axis=channel,sym=0,target=kv,residual=0,rope=post,"
            "basis=identity,seed=0,packed=0");
  // Token blocks need not divide head_dim.
  EXPECT_EQ(Canon("quant:bits=2,axis=channel,group=48").substr(0, 22), "quant:bits=2,group=48,");
}

TEST(MethodSpecTest, BadSpecsAreOneLineErrors) {
  ExpectError("", "empty");
  ExpectError("zip:bits=4", "unknown family 'zip'");
  ExpectError("quant", "missing required key 'bits'");
  ExpectError("quant:bits=9", "bits=9 out of range [1, 8]");
  ExpectError("quant:bits=0", "out of range");
  ExpectError("quant:bits=four", "not an integer");
  ExpectError("quant:bits=4,colour=red", "unknown key 'colour'");
  ExpectError("quant:bits=4,bits=3", "given twice");
  ExpectError("quant:bits=4,axis=diagonal", "axis=diagonal is not one of token|channel");
  ExpectError("quant:bits=4,group=48", "group=48 does not divide head_dim=64");
  ExpectError("quant:bits=4,group=128", "does not divide head_dim=64");
  ExpectError("quant:bits=4,basis=svd", "basis=svd is not one of");
  ExpectError("quant:bits=4,target=v,rope=pre", "rope=pre applies to keys");
  ExpectError("rank:r=65", "r=65 exceeds head_dim=64");
  ExpectError("rank:r=16,basis=svd,rope=post", "implies rope=pre");
  ExpectError("hybrid:r=16", "missing required key 'bits'");
  ExpectError("hybrid:r=30,bits=4,group=8", "group=8 does not divide r=30");
  ExpectError("none:bits=4", "takes no keys");
  ExpectError("quant:bits", "expected key=value");
  ExpectError("quant:bits=4,basis=hadamard", "power-of-two head_dim", 96);
  ExpectError("quant:bits=1,sym=1", "sym=1 needs bits >= 2");
  ExpectError("quant:bits=4,packed=1,axis=channel", "packed=1 supports axis=token, basis=identity");
  ExpectError("quant:bits=4,packed=1,basis=hadamard", "packed=1 supports axis=token, basis=identity");
  ExpectError("quant:bits=4,packed=1,residual=8", "packed=1 supports residual=0 only");
  ExpectError("quant:bits=2,axis=channel,basis=pca", "basis rotation is defined for axis=token");
  ExpectError("rank:r=0", "r=0 out of range");
  ExpectError("hybrid:r=16,bits=4,basis=hadamard", "basis=hadamard is not one of");
}

TEST(MethodSpecTest, UnresolvedSpecPrintsSymbolicGroup) {
  auto m = ParseMethodSpec("quant:bits=4");
  ASSERT_TRUE(m.ok());
  EXPECT_FALSE(m->resolved());
  EXPECT_NE(m->ToString().find("group=head_dim"), std::string::npos);
}

TEST(MethodSpecTest, PositionDependence) {
  auto a = ParseMethodSpec("quant:bits=4");
  auto b = ParseMethodSpec("quant:bits=4,residual=16");
  auto c = ParseMethodSpec("quant:bits=2,axis=channel");
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_FALSE(a->position_dependent());
  EXPECT_TRUE(b->position_dependent());
  EXPECT_TRUE(c->position_dependent());
}

}  // namespace
}  // namespace kvsweep

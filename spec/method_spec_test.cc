#include "spec/method_spec.h"

#include "absl/strings/str_cat.h"
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
  for (const char* s :
       {"none", "quant:bits=2,group=32,target=k", "quant:bits=3,axis=channel,residual=32",
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
  ExpectError("quant:bits=4,packed=1,basis=hadamard",
              "packed=1 supports axis=token, basis=identity");
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

namespace kvsweep {
namespace {

std::string Kv(const std::string& text, int head_dim = 64, int layers = 6) {
  absl::StatusOr<std::string> c = CanonicalKvMethod(text, head_dim, layers);
  return c.ok() ? *c : absl::StrCat("ERROR ", c.status().message());
}

TEST(MethodSpecTest, SvdOnValuesRoundTrips) {
  // svd implies rope=pre for keys only; the canonical form of values-only svd says rope=post,
  // and must parse back to itself.
  const std::string c = Canon("rank:r=8,basis=svd,target=v");
  EXPECT_NE(c.find("rope=post"), std::string::npos) << c;
  EXPECT_EQ(Canon(c), c);
}

TEST(KvMethodTest, ASingleSpecIsItsOwnCanonicalString) {
  for (const char* s : {"none", "quant:bits=4", "rank:r=16", "hybrid:r=32,bits=8",
                        "quant:bits=2,axis=channel,group=32,residual=32"}) {
    EXPECT_EQ(Kv(s), *CanonicalMethodSpec(s, 64)) << s;
  }
}

TEST(KvMethodTest, KAndVApart) {
  // KIVI: keys per channel, values per token, both 2-bit.
  EXPECT_EQ(Kv("k=quant:bits=2,axis=channel,group=32;v=quant:bits=2"),
            "k=quant:bits=2,group=32,axis=channel,sym=0,target=k,residual=0,rope=post,"
            "basis=identity,seed=0,packed=0;"
            "v=quant:bits=2,group=64,axis=token,sym=0,target=v,residual=0,rope=post,"
            "basis=identity,seed=0,packed=0");
  // Order of the parts and spacing do not matter.
  EXPECT_EQ(Kv(" v=quant:bits=2 ; k=quant:bits=2,axis=channel,group=32 "),
            Kv("k=quant:bits=2,axis=channel,group=32;v=quant:bits=2"));
  // Families may differ.
  EXPECT_EQ(Kv("k=quant:bits=4;v=rank:r=32"),
            "k=" + *CanonicalMethodSpec("quant:bits=4,target=k", 64) +
                ";v=" + *CanonicalMethodSpec("rank:r=32,target=v", 64));
}

TEST(KvMethodTest, ApartSpellingsOfOneCacheCollapse) {
  EXPECT_EQ(Kv("k=quant:bits=4;v=quant:bits=4"), Kv("quant:bits=4"));
  EXPECT_EQ(Kv("k=quant:bits=4;v=none"), Kv("quant:bits=4,target=k"));
  EXPECT_EQ(Kv("k=quant:bits=4"), Kv("quant:bits=4,target=k"));
  EXPECT_EQ(Kv("v=rank:r=8"), Kv("rank:r=8,target=v"));
  EXPECT_EQ(Kv("k=none;v=none"), "none");
  // svd implies rope=pre for keys; on values rope is irrelevant: still one spec.
  EXPECT_EQ(Kv("k=rank:r=16,basis=svd;v=rank:r=16,basis=svd"), Kv("rank:r=16,basis=svd"));
  // An explicit target that agrees with the part is fine.
  EXPECT_EQ(Kv("k=quant:bits=4,target=k;v=quant:bits=2,target=kv"),
            Kv("k=quant:bits=4;v=quant:bits=2"));
}

TEST(KvMethodTest, PerLayerOverrides) {
  const std::string base = *CanonicalMethodSpec("quant:bits=2", 64);
  const std::string eight = *CanonicalMethodSpec("quant:bits=8", 64);
  EXPECT_EQ(Kv("quant:bits=2;layers=0:quant:bits=8;layers=5:none"),
            base + ";layers=0:" + eight + ";layers=5:none");
  // Sorted, adjacent equal ranges merged, overrides equal to the base dropped.
  EXPECT_EQ(
      Kv("quant:bits=2;layers=3-4:quant:bits=8;layers=0-2:quant:bits=8;layers=5:quant:bits=2"),
      base + ";layers=0-4:" + eight);
  EXPECT_EQ(Kv("quant:bits=2;layers=1-2:quant:bits=2"), base);

  absl::StatusOr<KvMethod> m =
      ResolveKvMethod(*ParseKvMethod("k=quant:bits=4;v=quant:bits=2;layers=1-2:none"), 64, 4);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_FALSE(m->single());
  EXPECT_EQ(m->KeySpec(0).bits, 4);
  EXPECT_EQ(m->ValueSpec(0).bits, 2);
  EXPECT_EQ(m->KeySpec(1).family, MethodFamily::kNone);
  EXPECT_EQ(m->ValueSpec(2).family, MethodFamily::kNone);
  EXPECT_EQ(m->KeySpec(3).bits, 4);
  EXPECT_EQ(m->Parts().size(), 3u);
  EXPECT_EQ(m->FamilyLabel(), "quant+layers");
  EXPECT_EQ(m->primary().bits, 4);
  // Canonical strings re-parse to themselves.
  EXPECT_EQ(Kv(m->ToString(), 64, 4), m->ToString());
}

TEST(KvMethodTest, BadMethodsAreOneLineErrors) {
  struct Case {
    const char* text;
    const char* says;
  };
  for (const Case& c : std::vector<Case>{
           {"quant:bits=4;k=quant:bits=2", "give one spec for K and V, or k= and v= parts"},
           {"quant:bits=4;rank:r=4", "more than one spec for K and V"},
           {"k=quant:bits=4;k=quant:bits=2", "k= given twice"},
           {"k=quant:bits=4,target=v", "target=v contradicts its place as the k= part"},
           {"v=quant:bits=4,rope=pre", "rope=pre applies to keys"},
           {"layers=0:none", "no spec for the layers without an override"},
           {"quant:bits=4;;layers=0:none", "empty part between ';'"},
           {"quant:bits=4;layers=x:none", "layers=x is not a layer or an increasing range"},
           {"quant:bits=4;layers=3-1:none", "layers=3-1 is not a layer or an increasing range"},
           {"quant:bits=4;layers=0-2:none;layers=2:rank:r=4", "layer 2 has two overrides"},
           {"quant:bits=4;layers=0-6:none", "beyond the model's 6 layers"},
           {"quant:bits=4;layers=2", "is not layers=A-B:SPEC"},
           {"k=quant:bits=4,rope=pre;v=quant:bits=4;layers=0:quant:bits=2",
            "every part that compresses keys must use the same rope stage"},
           {"k=quant:bits=4,packed=1;v=quant:bits=2", "packed=1 is for a single spec only"},
           {"k=foo:x=1", "unknown family 'foo'"},
       }) {
    const std::string got = Kv(c.text);
    EXPECT_EQ(got.rfind("ERROR ", 0), 0u) << c.text << " -> " << got;
    EXPECT_NE(got.find(c.says), std::string::npos) << c.text << " -> " << got;
    EXPECT_EQ(got.find('\n'), std::string::npos);
  }
}

}  // namespace
}  // namespace kvsweep

// One parameterized test over the codec registry (llama.cpp's test-quantize-fns style): every row
// is a method spec with its expected round-trip error band on Gaussian K/V and its exact ledger
// bits (head_dim 64, context length 1024); every registered family must have rows. Then the
// masks of position-dependent methods against a step-by-step simulated cache.
#include <cmath>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "spec/job_spec.h"
#include "spec/ledger.h"
#include "worker/engine/kv/cache_masks.h"
#include "worker/engine/kv/kv_codec.h"
#include "worker/engine/kv/quantizer.h"
#include "worker/engine/model.h"

namespace kvsweep::engine {
namespace {

using torch::Tensor;

struct Row {
  const char* spec;
  double rel_rms_lo, rel_rms_hi;    // ||x^ - x|| / ||x - mean|| band on N(0.3, 1.5^2) data
  double payload, metadata, basis;  // ledger bits per token per head of each compressed tensor
};

// Expected errors: b-bit min-max over 64 Gaussians (range ~ 4.9 sigma) leaves
// ~ range / ((2^b - 1) sqrt(12)); rank r of 64 iid coordinates leaves sqrt(1 - r/64) in any
// orthonormal basis; the bands allow for sampling and the approximations.
const Row kRows[] = {
    {"none", 0, 0, 1024, 0, 0},
    {"quant:bits=8,group=64", 0.004, 0.007, 512, 32, 0},
    {"quant:bits=7,group=64", 0.008, 0.014, 448, 32, 0},
    {"quant:bits=6,group=64", 0.017, 0.028, 384, 32, 0},
    {"quant:bits=5,group=64", 0.035, 0.055, 320, 32, 0},
    {"quant:bits=4,group=64", 0.07, 0.11, 256, 32, 0},
    {"quant:bits=4,group=32", 0.06, 0.10, 256, 64, 0},
    {"quant:bits=3,group=64", 0.15, 0.25, 192, 32, 0},
    {"quant:bits=2,group=64", 0.33, 0.55, 128, 32, 0},
    // 1 bit snaps every value to its group's min or max: RMS of (2.4 - |x|) for N(0, 1) ~ 1.7.
    {"quant:bits=1,group=64", 1.4, 1.9, 64, 32, 0},
    {"quant:bits=4,group=64,sym=1", 0.08, 0.14, 256, 16, 0},
    {"quant:bits=2,group=32,target=k", 0.3, 0.5, 128, 64, 0},
    {"quant:bits=2,group=32,target=v", 0.3, 0.5, 128, 64, 0},
    {"quant:bits=2,axis=channel,group=32", 0.3, 0.5, 128, 64, 0},
    {"quant:bits=4,residual=64", 0.07, 0.11, 240, 94, 0},
    {"quant:bits=4,rope=pre", 0.07, 0.11, 256, 32, 0},
    {"quant:bits=4,basis=hadamard", 0.07, 0.11, 256, 32, 0},
    {"quant:bits=4,basis=random,seed=7", 0.07, 0.11, 256, 32, 0},
    {"quant:bits=4,basis=pca", 0.07, 0.11, 256, 32, 64},
    {"quant:bits=4,packed=1", 0.07, 0.11, 256, 32, 0},
    {"quant:bits=3,group=16,sym=1,packed=1", 0.12, 0.22, 192, 64, 0},
    {"rank:r=16,basis=identity", 0.83, 0.90, 256, 0, 0},
    {"rank:r=16,basis=random", 0.83, 0.90, 256, 0, 0},
    {"rank:r=16", 0.83, 0.90, 256, 0, 16},
    {"rank:r=16,basis=svd", 0.83, 0.90, 256, 0, 16},
    {"rank:r=32,rope=pre", 0.67, 0.74, 512, 0, 32},
    {"rank:r=64,basis=random", 0, 1e-5, 1024, 0, 0},
    {"hybrid:r=32,bits=8", 0.67, 0.74, 256, 32, 32},
    {"hybrid:r=32,bits=8,basis=svd", 0.67, 0.74, 256, 32, 32},
    {"hybrid:r=32,bits=4,group=8,basis=random", 0.68, 0.76, 128, 128, 0},
    {"hybrid:r=16,bits=8,basis=identity", 0.83, 0.90, 128, 32, 0},
};

class RegistryTest : public ::testing::TestWithParam<Row> {
 protected:
  static void SetUpTestSuite() {
    auto m = Model::Load(AssetsDir() + "/models/ref-llama", ModelOptions{});
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = m->release();
  }
  static void TearDownTestSuite() {
    delete model_;
    model_ = nullptr;
  }
  static CodecContext Context() {
    CodecContext ctx;
    ctx.model = model_;
    torch::manual_seed(1);
    for (int w = 0; w < 2; ++w) {
      Tensor ids = torch::randint(3, 32000, {64}, torch::kLong);
      ctx.calibration_windows.emplace_back(ids.data_ptr<int64_t>(), ids.data_ptr<int64_t>() + 64);
    }
    return ctx;
  }
  static Model* model_;
};
Model* RegistryTest::model_ = nullptr;

absl::StatusOr<MethodSpec> Resolve(const std::string& s) {
  absl::StatusOr<MethodSpec> m = ParseMethodSpec(s);
  if (!m.ok()) return m.status();
  return ResolveMethodSpec(*m, 64);
}

double RelRms(const Tensor& got, const Tensor& x) {
  return std::sqrt((got - x).pow(2).sum().item<double>() /
                   (x - x.mean()).pow(2).sum().item<double>());
}

TEST_P(RegistryTest, RoundTripErrorAndLedgerBits) {
  const Row& row = GetParam();
  absl::StatusOr<MethodSpec> spec = Resolve(row.spec);
  ASSERT_TRUE(spec.ok()) << spec.status();
  absl::StatusOr<std::unique_ptr<KvCodec>> codec = NewKvCodec(*spec);
  ASSERT_TRUE(codec.ok()) << codec.status();
  EXPECT_EQ((*codec)->spec().ToString(), spec->ToString());
  absl::Status prepared = (*codec)->Prepare(Context());
  ASSERT_TRUE(prepared.ok()) << prepared;

  torch::manual_seed(2);
  const int64_t T = 64;
  Tensor k = torch::randn({2, 2, T, 64}) * 1.5 + 0.3;  // [B, Hkv, T, D]
  Tensor v = torch::randn({2, 2, T, 64}) * 1.5 + 0.3;
  KvPair out = (*codec)->Apply(/*layer=*/3, k, v);
  for (const auto& [name, x, op, compressed] :
       {std::tuple<const char*, Tensor, KvOperand, bool>{"k", k, out.k, spec->compresses_k()},
        std::tuple<const char*, Tensor, KvOperand, bool>{"v", v, out.v, spec->compresses_v()}}) {
    ASSERT_TRUE(op.compressed.defined());
    EXPECT_EQ(op.compressed.sizes(), x.sizes()) << name;
    EXPECT_EQ(op.compressed.scalar_type(), x.scalar_type()) << name;
    const double err = RelRms(op.compressed, x);
    if (compressed) {
      EXPECT_GE(err, row.rel_rms_lo) << row.spec << " " << name;
      EXPECT_LE(err, row.rel_rms_hi) << row.spec << " " << name;
    } else if (!spec->packed) {
      EXPECT_TRUE(torch::equal(op.compressed, x))
          << row.spec << " " << name << " must pass through";
    } else {
      // packed holds an untouched tensor in fp16.
      EXPECT_TRUE(torch::equal(op.compressed, x.to(torch::kFloat16).to(torch::kFloat32))) << name;
    }
    // Single pass for per-token methods; exact masks and the raw tensor otherwise.
    if (compressed && spec->position_dependent()) {
      ASSERT_TRUE(op.position_dependent()) << row.spec;
      EXPECT_TRUE(torch::equal(op.raw, x));
      const int block = spec->axis == QuantAxis::kChannel ? spec->group : 1;
      EXPECT_TRUE(torch::equal(op.use_compressed,
                               CompressedStateMask(T, block, spec->residual, torch::kCPU)));
    } else {
      EXPECT_FALSE(op.position_dependent())
          << row.spec << " " << name << " must take the single-pass path";
    }
  }
  absl::StatusOr<Ledger> l = ComputeLedger(*spec, 64, 2, 2, 6, 1024);
  ASSERT_TRUE(l.ok()) << l.status();
  if (spec->packed) {
    // The bytes the packed cache holds are the ledger's, K and V together.
    EXPECT_DOUBLE_EQ((*codec)->MeasuredBytesPerToken(), (l->k.total() + l->v.total()) / 8);
  } else {
    EXPECT_EQ((*codec)->MeasuredBytesPerToken(), -1);
  }
  const TensorBits& c = spec->compresses_k() || spec->family == MethodFamily::kNone ? l->k : l->v;
  EXPECT_DOUBLE_EQ(c.payload, row.payload) << row.spec;
  EXPECT_DOUBLE_EQ(c.metadata, row.metadata) << row.spec;
  EXPECT_DOUBLE_EQ(c.basis, row.basis) << row.spec;
  const TensorBits& other =
      spec->compresses_k() || spec->family == MethodFamily::kNone ? l->v : l->k;
  if (spec->target == KvTarget::kKV) {
    EXPECT_DOUBLE_EQ(other.total(), c.total());
  } else {
    EXPECT_DOUBLE_EQ(other.payload, 1024);
    EXPECT_DOUBLE_EQ(other.metadata + other.basis, 0);
  }
}

INSTANTIATE_TEST_SUITE_P(Codecs, RegistryTest, ::testing::ValuesIn(kRows), [](const auto& info) {
  std::string n = info.param.spec;
  for (char& ch : n) {
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  }
  return n;
});

// K and V apart and per-layer overrides (KvMethod): every layer's K is exactly what the codec
// of its K spec makes of it, and its V what the codec of its V spec makes of it.
class CompositeCodecTest : public RegistryTest {};

TEST_F(CompositeCodecTest, EachTensorOfEachLayerComesFromItsOwnSpec) {
  absl::StatusOr<KvMethod> parsed = ParseKvMethod(
      "k=quant:bits=2,axis=channel,group=32;v=rank:r=16;layers=1:none;layers=2:hybrid:r=32,bits=8");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  absl::StatusOr<KvMethod> method = ResolveKvMethod(*parsed, 64, 6);
  ASSERT_TRUE(method.ok()) << method.status();
  absl::StatusOr<std::unique_ptr<KvCodec>> composite = NewKvCodec(*method);
  ASSERT_TRUE(composite.ok()) << composite.status();
  ASSERT_TRUE((*composite)->Prepare(Context()).ok());
  EXPECT_TRUE((*composite)->position_dependent());  // the channel-axis keys
  EXPECT_FALSE((*composite)->keys_pre_rope());
  EXPECT_EQ((*composite)->spec().ToString(), method->k.ToString());

  std::map<std::string, std::unique_ptr<KvCodec>> single;
  for (const char* s : {"quant:bits=2,axis=channel,group=32,target=k", "rank:r=16,target=v",
                        "hybrid:r=32,bits=8"}) {
    absl::StatusOr<MethodSpec> spec = Resolve(s);
    ASSERT_TRUE(spec.ok()) << spec.status();
    absl::StatusOr<std::unique_ptr<KvCodec>> c = NewKvCodec(*spec);
    ASSERT_TRUE(c.ok());
    ASSERT_TRUE((*c)->Prepare(Context()).ok());
    single[s] = std::move(*c);
  }
  auto same = [](const KvOperand& a, const KvOperand& b) {
    return torch::equal(a.compressed, b.compressed) && a.raw.defined() == b.raw.defined() &&
           (!a.raw.defined() || torch::equal(a.raw, b.raw)) &&
           a.use_compressed.defined() == b.use_compressed.defined() &&
           (!a.use_compressed.defined() || torch::equal(a.use_compressed, b.use_compressed));
  };
  torch::manual_seed(3);
  const Tensor k = torch::randn({1, 2, 40, 64});
  const Tensor v = torch::randn({1, 2, 40, 64});
  for (int layer : {0, 3, 5}) {
    KvPair got = (*composite)->Apply(layer, k, v);
    EXPECT_TRUE(
        same(got.k, single["quant:bits=2,axis=channel,group=32,target=k"]->Apply(layer, k, v).k))
        << layer;
    EXPECT_TRUE(same(got.v, single["rank:r=16,target=v"]->Apply(layer, k, v).v)) << layer;
    EXPECT_TRUE(got.k.position_dependent());
    EXPECT_FALSE(got.v.position_dependent());
  }
  KvPair none = (*composite)->Apply(1, k, v);
  EXPECT_TRUE(torch::equal(none.k.compressed, k));
  EXPECT_TRUE(torch::equal(none.v.compressed, v));
  KvPair hybrid = (*composite)->Apply(2, k, v);
  KvPair want = single["hybrid:r=32,bits=8"]->Apply(2, k, v);
  EXPECT_TRUE(same(hybrid.k, want.k));
  EXPECT_TRUE(same(hybrid.v, want.v));
}

TEST(RegistryCoverageTest, EveryRegisteredFamilyHasRows) {
  std::set<MethodFamily> seen;
  for (const Row& r : kRows) seen.insert(ParseMethodSpec(r.spec)->family);
  for (MethodFamily f : RegisteredFamilies()) {
    EXPECT_TRUE(seen.count(f)) << "registered family '" << FamilyName(f) << "' has no test rows";
  }
  EXPECT_EQ(RegisteredFamilies().size(), MethodFamilyNames().size());
  MethodSpec unresolved = *ParseMethodSpec("quant:bits=4");
  auto c = NewKvCodec(unresolved);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(c.status().message().find("resolved"), std::string::npos);
}

// The ledger counts as compressed exactly the tokens the masks read compressed at the last step
// (L tokens cached), for every block size and window.
TEST(LedgerMatchesMasksTest, CompressedTokenCounts) {
  for (int L = 1; L <= 130; ++L) {
    for (int block : {1, 4, 32}) {
      for (int residual : {0, 3, 50}) {
        const std::string s = block == 1 ? absl::StrCat("quant:bits=2,residual=", residual)
                                         : absl::StrCat("quant:bits=2,axis=channel,group=", block,
                                                        ",residual=", residual);
        absl::StatusOr<MethodSpec> spec = Resolve(s);
        ASSERT_TRUE(spec.ok()) << spec.status();
        absl::StatusOr<Ledger> l = ComputeLedger(*spec, 64, 1, 1, 1, L);
        ASSERT_TRUE(l.ok());
        const int64_t n = CompressedTokens(L, block, residual);
        EXPECT_DOUBLE_EQ(l->k.payload * L, n * 2.0 * 64) << s << " L=" << L;
        // The last query's row of the mask has exactly n compressed entries.
        EXPECT_EQ(CompressedStateMask(L, block, residual, torch::kCPU)[L - 1].sum().item<int64_t>(),
                  n)
            << s;
      }
    }
  }
}

// A cache decoded step by step, written independently of the masks: at step t token t is
// appended in fp16 (raw); then, while at least `block` uncompressed tokens lie outside the
// residual window, the oldest `block` of them are quantized (each channel over the block's tokens
// for axis=channel, each token on its own for axis=token). Query t reads the state after that.
// The codec's one-pass view (compressed/raw chosen by the mask) must equal it at every (t, j).
TEST(FaithfulMasksTest, OnePassViewEqualsAStepByStepCache) {
  torch::manual_seed(6);
  const int64_t T = 23, D = 64;
  Tensor k = torch::randn({1, 2, T, D}), v = torch::randn({1, 2, T, D});
  for (const char* s :
       {"quant:bits=2,axis=channel,group=4", "quant:bits=3,axis=channel,group=4,residual=3",
        "quant:bits=4,residual=5", "quant:bits=2,group=32,sym=1,residual=1",
        "quant:bits=2,axis=channel,group=1",
        "quant:bits=4,axis=channel,group=8,residual=2,target=k"}) {
    absl::StatusOr<MethodSpec> spec = Resolve(s);
    ASSERT_TRUE(spec.ok()) << spec.status();
    auto codec = NewKvCodec(*spec);
    ASSERT_TRUE(codec.ok());
    KvPair out = (*codec)->Apply(0, k, v);
    const bool channel = spec->axis == QuantAxis::kChannel;
    const int64_t block = channel ? spec->group : 1;
    QuantFormat f{spec->bits, channel ? static_cast<int>(block) : spec->group, spec->sym, false};
    for (const auto& [x, op, on] :
         {std::tuple<Tensor, KvOperand, bool>{k, out.k, spec->compresses_k()},
          std::tuple<Tensor, KvOperand, bool>{v, out.v, spec->compresses_v()}}) {
      if (!on) {
        EXPECT_FALSE(op.position_dependent());
        continue;
      }
      ASSERT_TRUE(op.position_dependent()) << s;
      for (int64_t h = 0; h < 2; ++h) {
        Tensor xs = x[0][h];  // [T, D]
        std::vector<Tensor> state;
        int64_t n_compressed = 0;
        for (int64_t t = 0; t < T; ++t) {
          state.push_back(xs[t]);
          while ((t + 1 - n_compressed) - spec->residual >= block) {
            Tensor blk = xs.slice(0, n_compressed, n_compressed + block);  // [G, D]
            Tensor q = channel ? FakeQuantize(blk.t().contiguous(), f).t() : FakeQuantize(blk, f);
            for (int64_t i = 0; i < block; ++i) state[n_compressed + i] = q[i];
            n_compressed += block;
          }
          for (int64_t j = 0; j <= t; ++j) {
            const bool use = op.use_compressed[t][j].item<bool>();
            Tensor seen = use ? op.compressed[0][h][j] : op.raw[0][h][j];
            ASSERT_TRUE(torch::equal(seen, state[j])) << s << " query " << t << " entry " << j;
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace kvsweep::engine

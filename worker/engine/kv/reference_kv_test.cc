// The deterministic part of the comparison with transformers, element by element: the reference
// models' own post-RoPE K/V on 16 tokens (tests/fixtures/kv/<model>.f32, written by
// tools/reference/make_reference.py on the H200 with method none) and what the quantizer makes of
// them. reference_test.cc is the statistical part (per-document loglik over the CI subsets).
//
// 1. Same input, same output: every reference method's codec, applied to the reference K/V,
//    returns values bit-identical to make_reference.py's fake_quant of the same tensors on the CPU
//    (sha256 per layer and tensor). This is the method's full definition on real data: group
//    layout, bits, rounding, target. (The GPU run of fake_quant, which produced the loglik
//    references, differs from both in the last bit of the scale where CUDA multiplies by the
//    reciprocal of a Python-scalar divisor; the fixture records how many elements that changes.)
// 2. The engine's own K/V (its forward pass on the same ids) agree with the reference's to fp32
//    precision, and the min-max codes of the two agree everywhere except at elements whose scaled
//    reference value (x - min) / scale lies within the K/V difference of a rounding boundary
//    k + 1/2 ("near ties", where a last-bit difference may round either way). With δ the largest
//    |engine - reference| in a group and s the group's step, an element's scaled value moves by
//    at most 4δ/s (δ from x, δ from the minimum, and t·|Δs|/s <= (2^B - 1)·(2δ/(2^B - 1))/s from
//    the step) plus 4 fp32 rounding errors of a value below 2^B; outside that radius the codes
//    must be equal, inside they may differ by one. The mean scaled difference is the probability
//    that an element's code differs (the rate of "code flips" reference_test.cc has to tolerate);
//    the test prints it.
#include <cmath>
#include <cstring>
#include <fstream>
#include <set>
#include <tuple>

#include "common/hash.h"
#include "common/json_util.h"
#include "gtest/gtest.h"
#include "spec/job_spec.h"
#include "spec/method_spec.h"
#include "worker/engine/kv/kv_codec.h"
#include "worker/engine/kv/quantizer.h"
#include "worker/engine/kv/reference_methods.h"
#include "worker/engine/model.h"

namespace kvsweep::engine {
namespace {

using torch::Tensor;

const auto& kMethods = kReferenceMethods;

struct RefKv {
  nlohmann::json meta;
  std::vector<Tensor> k, v;  // per layer [1, Hkv, T, D]
};

RefKv ReadRefKv(const std::string& model) {
  RefKv r;
  const std::string base = std::string(KVSWEEP_FIXTURES) + "/kv/" + model;
  auto meta = ReadJsonFile(base + ".json");
  EXPECT_TRUE(meta.ok()) << meta.status();
  if (!meta.ok()) return r;
  r.meta = *meta;
  const int64_t layers = r.meta["layers"], hkv = r.meta["kv_heads"], t = r.meta["tokens"],
                d = r.meta["head_dim"];
  std::ifstream in(base + ".f32", std::ios::binary);
  std::vector<float> data(layers * 2 * hkv * t * d);
  in.read(reinterpret_cast<char*>(data.data()), data.size() * sizeof(float));
  EXPECT_EQ(in.gcount(), static_cast<std::streamsize>(data.size() * sizeof(float)))
      << base << ".f32";
  EXPECT_EQ(in.peek(), std::char_traits<char>::eof()) << base << ".f32 is longer than its shapes";
  Tensor all = torch::from_blob(data.data(), {layers, 2, 1, hkv, t, d}, torch::kFloat32).clone();
  for (int64_t l = 0; l < layers; ++l) {
    r.k.push_back(all[l][0]);
    r.v.push_back(all[l][1]);
  }
  return r;
}

// make_reference.py sha16: the first 16 hex digits of sha256 over the fp32 little-endian bytes.
std::string Sha16(const Tensor& x) {
  Tensor c = x.contiguous().to(torch::kFloat32);
  return Sha256Hex(
             absl::string_view(static_cast<const char*>(c.data_ptr()), c.numel() * sizeof(float)))
      .substr(0, 16);
}

bool LittleEndian() {
  const uint32_t one = 1;
  unsigned char b;
  std::memcpy(&b, &one, 1);
  return b == 1;
}

MethodSpec Resolved(const std::string& method, int head_dim) {
  absl::StatusOr<MethodSpec> parsed = ParseMethodSpec(method);
  EXPECT_TRUE(parsed.ok()) << parsed.status();
  absl::StatusOr<MethodSpec> resolved = ResolveMethodSpec(*parsed, head_dim);
  EXPECT_TRUE(resolved.ok()) << resolved.status();
  return *resolved;
}

class ReferenceKvTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ReferenceKvTest, CodecOnReferenceKvIsBitIdenticalToTheReference) {
  if (!LittleEndian()) GTEST_SKIP() << "the fixture's hashes are of little-endian fp32 bytes";
  const RefKv ref = ReadRefKv(GetParam());
  ASSERT_FALSE(ref.k.empty());
  const int head_dim = ref.meta["head_dim"];
  for (const char* method : kMethods) {
    const nlohmann::json& want = ref.meta["methods"][method];
    ASSERT_EQ(want["cpu"].size(), 2 * ref.k.size()) << method;
    absl::StatusOr<std::unique_ptr<KvCodec>> codec = NewKvCodec(Resolved(method, head_dim));
    ASSERT_TRUE(codec.ok()) << codec.status();
    ASSERT_TRUE((*codec)->Prepare(CodecContext{}).ok());
    int gpu_equal = 0;
    for (size_t l = 0; l < ref.k.size(); ++l) {
      const KvPair out = (*codec)->Apply(static_cast<int>(l), ref.k[l], ref.v[l]);
      ASSERT_FALSE(out.k.position_dependent());
      const std::string hk = Sha16(out.k.compressed), hv = Sha16(out.v.compressed);
      EXPECT_EQ(hk, want["cpu"][2 * l].get<std::string>())
          << GetParam() << " " << method << " layer " << l << " K";
      EXPECT_EQ(hv, want["cpu"][2 * l + 1].get<std::string>())
          << GetParam() << " " << method << " layer " << l << " V";
      gpu_equal += (hk == want["gpu"][2 * l].get<std::string>()) +
                   (hv == want["gpu"][2 * l + 1].get<std::string>());
    }
    std::cout << GetParam() << " " << method << ": bit-identical to fake_quant on the CPU; "
              << gpu_equal << " of " << 2 * ref.k.size() << " tensors also to the GPU run ("
              << want["gpu_cpu_differ"] << " elements differ there in the last bits)\n";
  }
}

// Records the K/V attention receives in each layer (post-RoPE, uncompressed).
class KvRecorder : public AttentionObserver {
 public:
  void Observe(int layer, const Tensor& q, const Tensor& k_raw, const Tensor& v_raw,
               const KvPair& seen, const Tensor& allowed) override {
    k.push_back(k_raw.contiguous().clone());
    v.push_back(v_raw.contiguous().clone());
  }
  std::vector<Tensor> k, v;
};

TEST_P(ReferenceKvTest, EngineKvMatchesAndCodesDifferOnlyNearRoundingBoundaries) {
  const RefKv ref = ReadRefKv(GetParam());
  ASSERT_FALSE(ref.k.empty());
  auto model = Model::Load(AssetsDir() + "/models/" + GetParam(), ModelOptions{});
  ASSERT_TRUE(model.ok()) << model.status();
  std::vector<int64_t> ids = ref.meta["input_ids"].get<std::vector<int64_t>>();
  KvRecorder rec;
  (*model)->Forward(torch::tensor(ids, torch::kLong).view({1, -1}), nullptr, &rec);
  ASSERT_EQ(rec.k.size(), ref.k.size());

  // K/V agreement: model_test's logit bound (1e-4 on values of order 10) relative to each
  // tensor's largest magnitude.
  double worst_rel = 0;
  for (size_t l = 0; l < ref.k.size(); ++l) {
    for (const auto& [got, want, name] :
         {std::tuple{rec.k[l], ref.k[l], "K"}, std::tuple{rec.v[l], ref.v[l], "V"}}) {
      ASSERT_EQ(got.sizes(), want.sizes()) << name << " layer " << l;
      const double diff = (got - want).abs().max().item<double>();
      const double scale = want.abs().max().item<double>();
      EXPECT_LE(diff, 1e-4 * scale) << GetParam() << " layer " << l << " " << name;
      worst_rel = std::max(worst_rel, diff / scale);
    }
  }
  std::cout << GetParam()
            << ": engine K/V vs transformers, max |diff| / max |x| per tensor <= " << worst_rel
            << "\n";

  // Codes, for every (bits, group) of the reference methods, over K and V of every layer.
  std::set<std::pair<int, int>> formats;
  for (const char* method : kMethods) {
    MethodSpec s = Resolved(method, ref.meta["head_dim"]);
    formats.insert({s.bits, s.group});
  }
  for (const auto& format : formats) {
    const int bits = format.first, group = format.second;
    QuantFormat f;
    f.bits = bits;
    f.group = group;
    int64_t elements = 0, near_ties = 0, flips = 0, bad = 0;
    double sum_dt = 0;
    for (size_t l = 0; l < ref.k.size(); ++l) {
      for (const auto& [got, want] :
           {std::pair{rec.k[l], ref.k[l]}, std::pair{rec.v[l], ref.v[l]}}) {
        const QuantCodes ce = EncodeCodes(got, f), cr = EncodeCodes(want, f);
        auto grouped = [&](const Tensor& x) {
          auto sz = x.sizes().vec();
          sz.back() /= group;
          sz.push_back(group);
          return x.reshape(sz).to(torch::kFloat64);
        };
        const Tensor xr = grouped(want), xe = grouped(got);
        const Tensor sr = cr.scale.to(torch::kFloat64).unsqueeze(-1),
                     mr = cr.zero.to(torch::kFloat64).unsqueeze(-1);
        const Tensor se = ce.scale.to(torch::kFloat64).unsqueeze(-1),
                     me = ce.zero.to(torch::kFloat64).unsqueeze(-1);
        ASSERT_TRUE((sr > 0).all().item<bool>()) << "a constant group in real K/V";
        const Tensor tr = (xr - mr) / sr, te = (xe - me) / se;
        const Tensor delta = (xe - xr).abs().amax(-1, /*keepdim=*/true);
        const Tensor radius = 4 * delta / sr + std::ldexp(1.0, bits - 22);
        const Tensor to_boundary = (tr - (tr.floor() + 0.5)).abs();
        // Boundaries k + 1/2 lie strictly inside [0, 2^B - 1]; the ends are the group's min/max.
        const Tensor near =
            (to_boundary <= radius) & (tr > 0.5 - radius) & (tr < (1 << bits) - 1.5 + radius);
        const Tensor code_e = grouped(ce.codes), code_r = grouped(cr.codes);
        const Tensor differ = code_e != code_r;
        elements += tr.numel();
        near_ties += near.sum().item<int64_t>();
        flips += differ.sum().item<int64_t>();
        bad += (differ & ~near).sum().item<int64_t>();
        EXPECT_LE((code_e - code_r).abs().max().item<double>(), 1)
            << "bits " << bits << " group " << group;
        sum_dt += (te - tr).abs().sum().item<double>();
      }
    }
    EXPECT_EQ(bad, 0) << GetParam() << " bits " << bits << " group " << group
                      << ": codes differ away from a rounding boundary";
    std::cout << GetParam() << " bits " << bits << " group " << group << ": " << elements
              << " elements, " << near_ties << " near a rounding boundary, " << flips
              << " codes differ; mean |t_engine - t_ref| = " << sum_dt / elements
              << " steps (the per-element probability of a code flip)\n";
  }
}

INSTANTIATE_TEST_SUITE_P(RefModels, ReferenceKvTest, ::testing::Values("ref-gpt2", "ref-llama"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n)
                             if (c == '-') c = '_';
                           return n;
                         });

}  // namespace
}  // namespace kvsweep::engine

// Logits of the engine against transformers (fp32, TF32 off) on fixed inputs: tiny
// random-initialized checkpoints written by transformers itself (gpt2, llama with sharded fp16
// weights and an untied head, llama with llama3 RoPE scaling, mistral with a sliding window of 8
// and head_dim != hidden/heads in bf16, qwen2 with q/k/v biases; fp32 qwen3 with per-head q/k
// norms, phi3 with fused qkv and gate-up, olmo2 with norms after each sublayer and q/k norms over
// all heads, mixtral with top-2 of 4 experts, gemma2 with soft-capped attention and logits,
// alternating sliding windows, scaled embeddings, (1 + w) norms around both sublayers and GeGLU,
// gemma3 with (1 + w) per-head q/k norms and a RoPE base per layer type) and the real ref-gpt2 /
// ref-llama. Fixtures:
// tools/reference/make_reference.py and tools/reference/make_family_fixtures.py.
#include "worker/engine/model.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <fstream>

#include "common/file_util.h"
#include "common/json_util.h"
#include "gtest/gtest.h"
#include "spec/job_spec.h"
#include "spec/method_spec.h"
#include "worker/engine/generate.h"
#include "worker/engine/kv/kv_codec.h"
#include "worker/engine/tokenizer/tokenizer.h"
#include "worker/engine/torch_util.h"
#include "worker/engine/tuned_gemm.h"

namespace kvsweep::engine {
namespace {

struct Fixture {
  nlohmann::json meta;
  std::vector<float> logits;  // [B, T, vocab_slice]
};

Fixture ReadFixture(const std::string& name) {
  Fixture f;
  const std::string base = std::string(KVSWEEP_FIXTURES) + "/logits/" + name;
  auto meta = ReadJsonFile(base + ".json");
  EXPECT_TRUE(meta.ok()) << meta.status();
  f.meta = *meta;
  std::ifstream in(base + ".f32", std::ios::binary);
  in.seekg(0, std::ios::end);
  f.logits.resize(in.tellg() / sizeof(float));
  in.seekg(0);
  in.read(reinterpret_cast<char*>(f.logits.data()), f.logits.size() * sizeof(float));
  return f;
}

torch::Tensor Ids(const nlohmann::json& ids) {
  std::vector<int64_t> flat;
  int64_t rows = ids.size(), cols = ids[0].size();
  for (const auto& r : ids)
    for (const auto& v : r) flat.push_back(v.get<int64_t>());
  return torch::tensor(flat, torch::kLong).view({rows, cols});
}

void CheckModel(const std::string& name, const std::string& path) {
  Fixture f = ReadFixture(name);
  auto m = Model::Load(path, ModelOptions{});
  ASSERT_TRUE(m.ok()) << m.status();
  torch::Tensor ids = Ids(f.meta["input_ids"]);
  torch::Tensor logits = (*m)->Logits((*m)->Forward(ids, nullptr));  // [B, T, V]
  const int64_t slice = f.meta["vocab_slice"].get<int64_t>();
  torch::Tensor want =
      torch::from_blob(f.logits.data(), {ids.size(0), ids.size(1), slice}, torch::kFloat32);
  const double diff = (logits.slice(-1, 0, slice) - want).abs().max().item<double>();
  EXPECT_LE(diff, 1e-4) << name << ": max |logit - transformers| = " << diff;
  // Whole-vocabulary checks: logsumexp per position and the next token's log-prob.
  torch::Tensor lse = torch::logsumexp(logits.to(torch::kFloat64), -1);
  double lse_diff = 0;
  for (int64_t b = 0; b < ids.size(0); ++b)
    for (int64_t t = 0; t < ids.size(1); ++t)
      lse_diff = std::max(
          lse_diff, std::fabs(lse[b][t].item<double>() - f.meta["logsumexp"][b][t].get<double>()));
  EXPECT_LE(lse_diff, 1e-4) << name;
  torch::Tensor argmax = logits.argmax(-1);
  int64_t mismatched = 0;
  for (int64_t b = 0; b < ids.size(0); ++b)
    for (int64_t t = 0; t < ids.size(1); ++t)
      mismatched += argmax[b][t].item<int64_t>() != f.meta["argmax"][b][t].get<int64_t>();
  EXPECT_EQ(mismatched, 0) << name;
  std::cout << name << ": max |dlogit| " << diff << ", max |dlogsumexp| " << lse_diff << "\n";
}

class TinyModelTest : public ::testing::TestWithParam<std::string> {};

TEST_P(TinyModelTest, LogitsMatchTransformers) {
  CheckModel(GetParam(), std::string(KVSWEEP_FIXTURES) + "/tiny_models/" + GetParam());
}

INSTANTIATE_TEST_SUITE_P(Arches, TinyModelTest,
                         ::testing::Values("tiny-gpt2", "tiny-llama", "tiny-llama3rope",
                                           "tiny-mistral", "tiny-qwen2", "tiny-qwen3", "tiny-phi3",
                                           "tiny-olmo2", "tiny-mixtral", "tiny-gemma2",
                                           "tiny-gemma3"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n)
                             if (c == '-') c = '_';
                           return n;
                         });

// Off the tuned table (here: the CPU), TunedLinear is torch::linear, bit for bit, and counts
// nothing as tuned.
TEST(TunedLinearTest, OffTheTableIsTorchLinearBitForBit) {
  torch::manual_seed(3);
  const int64_t before = TunedGemmCount();
  for (torch::ScalarType dt : {torch::kFloat32, torch::kBFloat16}) {
    const torch::Tensor x = torch::randn({2, 3, 16}).to(dt);
    const torch::Tensor w = torch::randn({8, 16}).to(dt);
    const torch::Tensor b = torch::randn({8}).to(dt);
    const torch::Tensor y = TunedLinear(x, w, torch::Tensor());
    EXPECT_EQ(y.sizes(), (std::vector<int64_t>{2, 3, 8}));
    EXPECT_TRUE(torch::equal(y, torch::linear(x, w)));
    EXPECT_TRUE(torch::equal(TunedLinear(x, w, b), torch::linear(x, w, b)));
  }
  EXPECT_EQ(TunedGemmCount(), before);
}

// Families kvsweep does not read: one line naming the architecture and the supported ones, no
// crash. Their config.json: tiny-gemma3's, relabelled (the weights are never reached).
TEST(ModelTest, UnsupportedFamilyIsAClearError) {
  auto base = ReadJsonFile(std::string(KVSWEEP_FIXTURES) + "/tiny_models/tiny-gemma3/config.json");
  ASSERT_TRUE(base.ok()) << base.status();
  const std::string supported =
      "(supported: gemma2, gemma3_text, gpt2, llama, mistral, mixtral, olmo2, phi3, qwen2, qwen3)";
  nlohmann::json falcon = *base;
  falcon["model_type"] = "falcon";
  falcon["architectures"] = {"FalconForCausalLM"};
  // The multimodal Gemma 3: the text model under text_config, a vision tower beside it.
  nlohmann::json multimodal = {{"model_type", "gemma3"},
                               {"architectures", {"Gemma3ForConditionalGeneration"}},
                               {"text_config", *base},
                               {"vision_config", {{"model_type", "siglip_vision_model"}}}};
  for (const auto& [config, fragment] :
       {std::pair{falcon, std::string("unknown architecture 'falcon' ")},
        std::pair{multimodal,
                  std::string("unknown architecture 'gemma3' (the multimodal Gemma 3; kvsweep "
                              "reads its text-only form, gemma3_text) ")}}) {
    const std::string dir =
        ::testing::TempDir() + "/kvsweep_unsupported_" + config["model_type"].get<std::string>();
    ::mkdir(dir.c_str(), 0755);
    ASSERT_TRUE(IsDirectory(dir)) << dir;
    ASSERT_TRUE(WriteFileAtomic(dir + "/config.json", config.dump()).ok());
    auto m = Model::Load(dir, ModelOptions{});
    ASSERT_FALSE(m.ok()) << fragment;
    EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument) << m.status();
    EXPECT_NE(m.status().message().find(fragment + supported), std::string::npos) << m.status();
    EXPECT_EQ(m.status().message().find('\n'), std::string::npos) << m.status();
  }
}

TEST(RefModelTest, Gpt2LogitsMatchTransformers) {
  CheckModel("ref-gpt2", AssetsDir() + "/models/ref-gpt2");
}

TEST(RefModelTest, LlamaLogitsMatchTransformers) {
  CheckModel("ref-llama", AssetsDir() + "/models/ref-llama");
}

TEST(ModelTest, KvHeadsNativeIsExactlyNone) {
  const std::string path = AssetsDir() + "/models/ref-llama";
  auto a = Model::Load(path, ModelOptions{});
  ModelOptions o;
  o.kv_heads = 2;
  auto b = Model::Load(path, o);
  ASSERT_TRUE(a.ok() && b.ok());
  torch::Tensor ids = torch::randint(0, 32000, {1, 32}, torch::kLong);
  EXPECT_TRUE(torch::equal((*a)->Forward(ids, nullptr), (*b)->Forward(ids, nullptr)));
}

TEST(ModelTest, KvHeadPoolingMeanPoolsProjections) {
  const std::string path = AssetsDir() + "/models/ref-llama";
  auto a = Model::Load(path, ModelOptions{});
  ModelOptions o;
  o.kv_heads = 1;
  auto b = Model::Load(path, o);
  ASSERT_TRUE(a.ok() && b.ok()) << b.status();
  EXPECT_EQ((*b)->kv_heads(), 1);
  torch::Tensor wk = (*a)->layer(0).wk;  // [2*64, 256]
  torch::Tensor pooled = (wk.slice(0, 0, 64) + wk.slice(0, 64, 128)) / 2;
  EXPECT_TRUE(torch::allclose((*b)->layer(0).wk, pooled, 1e-6, 1e-6));
  ModelOptions bad;
  bad.kv_heads = 3;
  auto c = Model::Load(path, bad);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(c.status().message().find("does not divide"), std::string::npos);
}

TEST(TorchUtilTest, ParseDtypeTakesTheSpellingsOfJobSpecs) {
  EXPECT_EQ(*ParseDtype("fp32"), torch::kFloat32);
  EXPECT_EQ(*ParseDtype("bfloat16"), torch::kBFloat16);  // transformers' spelling
  EXPECT_EQ(*ParseDtype("torch.float16"), torch::kFloat16);
  absl::StatusOr<torch::ScalarType> bad = ParseDtype("int8");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(),
            "dtype 'int8' is not fp32, bf16, fp16 (or float32, bfloat16, float16) or auto");
  absl::StatusOr<torch::ScalarType> aut = ParseDtype("auto");
  ASSERT_FALSE(aut.ok());
  EXPECT_EQ(aut.status().code(), absl::StatusCode::kInvalidArgument);
}

// gemma3's layers rotate with different RoPE bases (1e4 sliding, 1e6 full): a codec that takes
// keys before RoPE gets them back rotated by its own layer's. The identity basis at full rank
// stores keys exactly, so the pass must equal `none` bit for bit; the same keys read with the
// other layer type's RoPE move the logits.
TEST(ModelTest, Gemma3KeysBeforeRopeTakeTheirLayersRope) {
  const std::string path = std::string(KVSWEEP_FIXTURES) + "/tiny_models/tiny-gemma3";
  auto m = Model::Load(path, ModelOptions{});
  ASSERT_TRUE(m.ok()) << m.status();
  absl::StatusOr<KvMethod> parsed = ParseKvMethod("rank:r=16,basis=identity,target=k,rope=pre");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  absl::StatusOr<KvMethod> method = ResolveKvMethod(*parsed, 16, 3);
  ASSERT_TRUE(method.ok()) << method.status();
  auto codec = NewKvCodec(*method);
  ASSERT_TRUE(codec.ok()) << codec.status();
  ASSERT_TRUE((*codec)->keys_pre_rope());
  torch::manual_seed(2);
  torch::Tensor ids = torch::randint(3, 96, {2, 64}, torch::kLong);
  const torch::Tensor none = (*m)->Forward(ids, nullptr);
  EXPECT_TRUE(torch::equal((*m)->Forward(ids, codec->get()), none));
  // Every layer under the full-attention RoPE: not the model transformers runs.
  auto j = ReadJsonFile(path + "/config.json");
  ASSERT_TRUE(j.ok());
  (*j)["rope_parameters"]["sliding_attention"] = (*j)["rope_parameters"]["full_attention"];
  const std::string dir = ::testing::TempDir() + "/kvsweep_gemma3_one_rope";
  ::mkdir(dir.c_str(), 0755);
  ASSERT_TRUE(WriteFileAtomic(dir + "/config.json", j->dump()).ok());
  ::unlink((dir + "/model.safetensors").c_str());
  ASSERT_EQ(::symlink((path + "/model.safetensors").c_str(), (dir + "/model.safetensors").c_str()),
            0);
  auto one = Model::Load(dir, ModelOptions{});
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_GT(((*one)->Logits((*one)->Forward(ids, nullptr)) - (*m)->Logits(none))
                .abs()
                .max()
                .item<double>(),
            1e-3);
}

TEST(ModelTest, CausalityFutureTokensDoNotChangeThePast) {
  auto m = Model::Load(std::string(KVSWEEP_FIXTURES) + "/tiny_models/tiny-mistral", ModelOptions{});
  ASSERT_TRUE(m.ok());
  torch::Tensor ids = torch::randint(0, 96, {1, 30}, torch::kLong);
  torch::Tensor ids2 = ids.clone();
  ids2[0][20] = (ids[0][20].item<int64_t>() + 1) % 96;
  torch::Tensor a = (*m)->Forward(ids, nullptr), b = (*m)->Forward(ids2, nullptr);
  EXPECT_TRUE(torch::equal(a.slice(1, 0, 20), b.slice(1, 0, 20)));
  EXPECT_FALSE(torch::equal(a.slice(1, 20, 21), b.slice(1, 20, 21)));
}

}  // namespace
}  // namespace kvsweep::engine

namespace kvsweep::engine {
namespace {

// The assets README: greedy decoding from BOS + "Once upon a time" continues with this text.
TEST(Stories260KTest, GreedyContinuationMatchesTheReadme) {
  const std::string dir = AssetsDir() + "/models/stories260K";
  auto m = Model::Load(dir + "/stories260K.bin", ModelOptions{});
  ASSERT_TRUE(m.ok()) << m.status();
  auto tok = LoadTokenizer(dir + "/tok512.bin");
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto ids = (*tok)->Encode("Once upon a time");
  ASSERT_TRUE(ids.ok());
  std::vector<int32_t> prompt = {1};
  prompt.insert(prompt.end(), ids->begin(), ids->end());
  auto out = GreedyGenerate(**m, nullptr, prompt, 40, -1);
  ASSERT_TRUE(out.ok()) << out.status();
  const std::string text = (*tok)->Decode(*out);
  const std::string expected =
      ", there was a little girl named Lily. She loved to play outside in the park.";
  EXPECT_EQ(text.substr(0, expected.size()), expected) << "got: " << text;
}

}  // namespace
}  // namespace kvsweep::engine

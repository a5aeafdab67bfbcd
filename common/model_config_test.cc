#include "common/model_config.h"

#include <cstdlib>

#include "gtest/gtest.h"
#include "spec/job_spec.h"

namespace kvsweep {
namespace {

using nlohmann::json;

std::string Asset(const std::string& rel) { return AssetsDir() + "/" + rel; }

TEST(ModelConfigTest, RefModels) {
  auto g = ReadModelConfig(Asset("models/ref-gpt2"));
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->arch, Arch::kGpt2);
  EXPECT_EQ(g->head_dim, 64);
  EXPECT_EQ(g->num_kv_heads, 4);
  EXPECT_EQ(g->max_positions, 1024);
  EXPECT_EQ(g->intermediate_size, 1024);
  EXPECT_TRUE(g->tie_word_embeddings);
  auto l = ReadModelConfig(Asset("models/ref-llama"));
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(l->arch, Arch::kLlama);
  EXPECT_EQ(l->num_heads, 4);
  EXPECT_EQ(l->num_kv_heads, 2);
  EXPECT_EQ(l->head_dim, 64);
  EXPECT_DOUBLE_EQ(l->rope.theta, 10000.0);  // from rope_parameters
  EXPECT_TRUE(l->tie_word_embeddings);
  auto s = ReadModelConfig(Asset("models/stories260K/stories260K.bin"));
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->arch, Arch::kLlama2c);
  EXPECT_EQ(s->hidden_size, 64);
  EXPECT_EQ(s->num_kv_heads, 4);
  EXPECT_EQ(s->head_dim, 8);
  EXPECT_EQ(s->vocab_size, 512);
}

json Llama() {
  return {{"model_type", "llama"},    {"vocab_size", 100},        {"hidden_size", 64},
          {"num_hidden_layers", 2},   {"num_attention_heads", 4}, {"num_key_value_heads", 2},
          {"intermediate_size", 128}, {"rope_theta", 500000.0}};
}

TEST(ModelConfigTest, RopeThetaTopLevelOrInParameters) {
  auto a = ParseHfConfig(Llama(), "c");
  ASSERT_TRUE(a.ok());
  EXPECT_DOUBLE_EQ(a->rope.theta, 500000.0);
  json j = Llama();
  j.erase("rope_theta");
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1e6}};
  auto b = ParseHfConfig(j, "c");
  ASSERT_TRUE(b.ok());
  EXPECT_DOUBLE_EQ(b->rope.theta, 1e6);
  j["rope_parameters"] = {{"rope_type", "llama3"},   {"rope_theta", 5e5},
                          {"factor", 32.0},          {"low_freq_factor", 1.0},
                          {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  auto c = ParseHfConfig(j, "c");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope.scaling, RopeScaling::kLlama3);
  EXPECT_FALSE(c->rope_sliding.has_value());
  j["rope_parameters"]["rope_type"] = "yarn";
  auto d = ParseHfConfig(j, "c");
  EXPECT_EQ(d.status().code(), absl::StatusCode::kUnimplemented);
}

TEST(ModelConfigTest, SlidingWindows) {
  json m = Llama();
  m["model_type"] = "mistral";
  m["sliding_window"] = 16;
  auto a = ParseHfConfig(m, "c");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->sliding_window, (std::vector<int>{16, 16}));
  m["sliding_window"] = nullptr;
  EXPECT_EQ(ParseHfConfig(m, "c")->sliding_window, (std::vector<int>{0, 0}));
  m.erase("sliding_window");  // MistralConfig default
  EXPECT_EQ(ParseHfConfig(m, "c")->sliding_window, (std::vector<int>{4096, 4096}));
  json q = Llama();
  q["model_type"] = "qwen2";
  q["sliding_window"] = 8;
  q["layer_types"] = {"full_attention", "sliding_attention"};
  auto b = ParseHfConfig(q, "c");
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_TRUE(b->qkv_bias);
  EXPECT_EQ(b->sliding_window, (std::vector<int>{0, 8}));
}

void ExpectBad(json j, absl::StatusCode code, const std::string& fragment) {
  auto c = ParseHfConfig(j, "config.json");
  ASSERT_FALSE(c.ok()) << j.dump();
  EXPECT_EQ(c.status().code(), code) << c.status();
  EXPECT_NE(c.status().message().find(fragment), std::string::npos) << c.status().message();
}

// The keys of tests/fixtures/tiny_models/tiny-gemma3/config.json (transformers 5.17's spelling)
// that matter: RoPE per layer type, windows from layer_types, no soft-capping.
TEST(ModelConfigTest, Gemma3TextRopePerLayerType) {
  const json j = {{"model_type", "gemma3_text"},
                  {"_sliding_window_pattern", 6},
                  {"attn_logit_softcapping", nullptr},
                  {"final_logit_softcapping", nullptr},
                  {"head_dim", 16},
                  {"hidden_activation", "gelu_pytorch_tanh"},
                  {"hidden_size", 64},
                  {"intermediate_size", 96},
                  {"layer_types", {"sliding_attention", "sliding_attention", "full_attention"}},
                  {"max_position_embeddings", 64},
                  {"num_attention_heads", 4},
                  {"num_hidden_layers", 3},
                  {"num_key_value_heads", 2},
                  {"query_pre_attn_scalar", 16},
                  {"rms_norm_eps", 1e-06},
                  {"rope_parameters",
                   {{"full_attention", {{"rope_theta", 1000000.0}, {"rope_type", "default"}}},
                    {"sliding_attention", {{"rope_theta", 10000.0}, {"rope_type", "default"}}}}},
                  {"sliding_window", 8},
                  {"tie_word_embeddings", true},
                  {"use_bidirectional_attention", false},
                  {"vocab_size", 96}};
  auto g = ParseHfConfig(j, "c");
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(g->arch, Arch::kGemma3);
  EXPECT_STREQ(ArchName(g->arch), "gemma3_text");
  EXPECT_TRUE(g->gemma);
  EXPECT_EQ(g->qk_norm, QkNorm::kPerHead);
  EXPECT_EQ(g->sliding_window, (std::vector<int>{8, 8, 0}));
  EXPECT_DOUBLE_EQ(g->rope.theta, 1e6);
  ASSERT_TRUE(g->rope_sliding.has_value());
  EXPECT_DOUBLE_EQ(g->rope_sliding->theta, 1e4);
  EXPECT_DOUBLE_EQ(g->RopeOf(0).theta, 1e4);
  EXPECT_DOUBLE_EQ(g->RopeOf(2).theta, 1e6);
  EXPECT_DOUBLE_EQ(g->query_pre_attn_scalar, 16);
  EXPECT_EQ(g->attn_softcap, 0);
  EXPECT_EQ(g->final_softcap, 0);
  EXPECT_TRUE(g->tie_word_embeddings);
  EXPECT_EQ(g->activation, "gelu_pytorch_tanh");
}

json Gemma3Old() {
  // Gemma 3 1B's config.json before transformers 5: rope_theta + rope_local_base_freq, a
  // sliding_window_pattern instead of layer_types.
  return {{"model_type", "gemma3_text"},
          {"vocab_size", 100},
          {"hidden_size", 64},
          {"num_hidden_layers", 7},
          {"num_attention_heads", 4},
          {"num_key_value_heads", 1},
          {"head_dim", 16},
          {"intermediate_size", 128},
          {"rope_theta", 1e6},
          {"rope_local_base_freq", 1e4},
          {"rope_scaling", nullptr},
          {"sliding_window", 512},
          {"sliding_window_pattern", 6},
          {"attn_logit_softcapping", nullptr},
          {"final_logit_softcapping", nullptr}};
}

TEST(ModelConfigTest, Gemma3TextOlderSpellings) {
  auto a = ParseHfConfig(Gemma3Old(), "c");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->sliding_window, (std::vector<int>{512, 512, 512, 512, 512, 0, 512}));
  EXPECT_DOUBLE_EQ(a->RopeOf(0).theta, 1e4);
  EXPECT_DOUBLE_EQ(a->RopeOf(5).theta, 1e6);
  EXPECT_DOUBLE_EQ(a->query_pre_attn_scalar, 256);  // Gemma3TextConfig's default
  // rope_scaling (the 4B+ models' linear factor 8) applies to the full-attention layers only.
  json j = Gemma3Old();
  j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 8.0}};
  j["_sliding_window_pattern"] = 2;
  j["attn_logit_softcapping"] = 50.0;  // honoured when set
  auto b = ParseHfConfig(j, "c");
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->sliding_window, (std::vector<int>{512, 0, 512, 0, 512, 0, 512}));
  EXPECT_EQ(b->RopeOf(1).scaling, RopeScaling::kLinear);
  EXPECT_DOUBLE_EQ(b->RopeOf(1).factor, 8.0);
  EXPECT_EQ(b->RopeOf(0).scaling, RopeScaling::kNone);
  EXPECT_DOUBLE_EQ(b->attn_softcap, 50.0);
  // transformers 5's per-layer-type rope_parameters, linear on full attention.
  j = Gemma3Old();
  j["rope_parameters"] = {
      {"full_attention", {{"rope_type", "linear"}, {"factor", 8.0}, {"rope_theta", 2e6}}},
      {"sliding_attention", {{"rope_type", "default"}, {"rope_theta", 5e3}}}};
  auto c = ParseHfConfig(j, "c");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_DOUBLE_EQ(c->RopeOf(5).theta, 2e6);
  EXPECT_EQ(c->RopeOf(5).scaling, RopeScaling::kLinear);
  EXPECT_DOUBLE_EQ(c->RopeOf(0).theta, 5e3);
}

TEST(ModelConfigTest, Gemma3Refusals) {
  json j = Gemma3Old();
  j["rope_parameters"] = {{"full_attention", {{"rope_type", "default"}, {"rope_theta", 1e6}}}};
  ExpectBad(j, absl::StatusCode::kInvalidArgument, "rope_parameters has no 'sliding_attention'");
  j["rope_parameters"]["sliding_attention"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  ExpectBad(j, absl::StatusCode::kUnimplemented,
            "rope_parameters.sliding_attention rope type 'yarn' is not supported");
  j = Gemma3Old();
  j["rope_scaling"] = {{"rope_type", "dynamic"}, {"factor", 2.0}};
  ExpectBad(j, absl::StatusCode::kUnimplemented, "rope_scaling rope type 'dynamic'");
  j = Gemma3Old();
  j["use_bidirectional_attention"] = true;
  ExpectBad(j, absl::StatusCode::kUnimplemented, "use_bidirectional_attention");
  j = Gemma3Old();
  j["sliding_window"] = 0;
  ExpectBad(j, absl::StatusCode::kInvalidArgument, "'sliding_window' = 0 out of range");
  // The multimodal Gemma3ForConditionalGeneration: one line naming what is read.
  j = {{"model_type", "gemma3"},
       {"architectures", {"Gemma3ForConditionalGeneration"}},
       {"text_config", Gemma3Old()}};
  ExpectBad(j, absl::StatusCode::kInvalidArgument,
            "unknown architecture 'gemma3' (the multimodal Gemma 3; kvsweep reads its text-only "
            "form, gemma3_text) (supported: gemma2, gemma3_text, gpt2, llama, mistral, mixtral, "
            "olmo2, phi3, qwen2, qwen3)");
}

TEST(ModelConfigTest, BadConfigs) {
  json j = Llama();
  j["model_type"] = "bert";
  ExpectBad(j, absl::StatusCode::kInvalidArgument, "unknown architecture 'bert'");
  j = Llama();
  j.erase("model_type");
  ExpectBad(j, absl::StatusCode::kInvalidArgument, "missing 'model_type'");
  j = Llama();
  j["num_hidden_layers"] = 0;
  ExpectBad(j, absl::StatusCode::kInvalidArgument, "'num_hidden_layers' = 0 out of range");
  j = Llama();
  j["hidden_size"] = -64;
  ExpectBad(j, absl::StatusCode::kInvalidArgument, "'hidden_size' = -64 out of range");
  j = Llama();
  j["num_key_value_heads"] = 3;
  ExpectBad(j, absl::StatusCode::kInvalidArgument, "not divisible by num_key_value_heads=3");
  j = Llama();
  j["vocab_size"] = "many";
  ExpectBad(j, absl::StatusCode::kInvalidArgument, "'vocab_size' must be an integer");
  j = Llama();
  j["rms_norm_eps"] = -1;
  ExpectBad(j, absl::StatusCode::kInvalidArgument, "'rms_norm_eps' = -1 out of range");
  j = Llama();
  j["hidden_act"] = "swish2";
  ExpectBad(j, absl::StatusCode::kInvalidArgument, "activation 'swish2'");
  j = Llama();
  j.erase("vocab_size");
  ExpectBad(j, absl::StatusCode::kInvalidArgument, "missing required key 'vocab_size'");
  ExpectBad(json::array(), absl::StatusCode::kInvalidArgument, "not a JSON object");
}

TEST(ModelConfigTest, Llama2cHeaderValidation) {
  int32_t h[7] = {64, 172, 5, 8, 4, 512, 512};
  EXPECT_TRUE(ParseLlama2cHeader(h, sizeof(h), "x").ok());
  EXPECT_FALSE(ParseLlama2cHeader(h, 10, "x").ok());
  h[3] = 7;  // 64 % 7 != 0
  auto r = ParseLlama2cHeader(h, sizeof(h), "x");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("inconsistent"), std::string::npos);
  h[3] = 8;
  h[2] = -1;
  EXPECT_NE(ParseLlama2cHeader(h, sizeof(h), "x").status().message().find("n_layers = -1"),
            std::string::npos);
}

TEST(ModelConfigTest, MissingDirIsNotFound) {
  auto c = ReadModelConfig("/nonexistent/model");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
TEST(ModelConfigTest, BadValuesAreDescribedNotEchoed) {
  // A config.json may be any file a path names: its strings never appear in an error.
  nlohmann::json j = {{"model_type", "llama"},  {"hidden_size", "SECRET-7f3a"},
                      {"num_hidden_layers", 2}, {"num_attention_heads", 2},
                      {"vocab_size", 32},       {"max_position_embeddings", 64},
                      {"intermediate_size", 16}};
  absl::StatusOr<ModelConfig> c = ParseHfConfig(j, "config.json");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(std::string(c.status().message()).find("SECRET"), std::string::npos) << c.status();
  EXPECT_NE(std::string(c.status().message()).find("a string of 11 characters"), std::string::npos)
      << c.status();
}

}  // namespace kvsweep

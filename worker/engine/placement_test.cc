// The pipeline placement planner on synthetic shapes (a Llama-3-70B-like model across 1, 2, 4
// and 8 H200-sized devices), and a real asset model split across two CPU "devices" against the
// same model on one.
#include "worker/engine/placement.h"

#include <cstdlib>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/engine/model.h"

namespace kvsweep::engine {
namespace {

using ::testing::HasSubstr;

// Llama-3-70B's shapes (config.json of meta-llama/Meta-Llama-3-70B): 80 layers, hidden 8192,
// 64 query / 8 KV heads of 128, MLP 28672, vocabulary 128256, untied head.
ModelConfig Llama70B() {
  ModelConfig c;
  c.arch = Arch::kLlama;
  c.vocab_size = 128256;
  c.hidden_size = 8192;
  c.num_layers = 80;
  c.num_heads = 64;
  c.num_kv_heads = 8;
  c.head_dim = 128;
  c.intermediate_size = 28672;
  c.max_positions = 8192;
  c.tie_word_embeddings = false;
  return c;
}

constexpr int64_t kH200 = 141000000000;  // "141 GB"

PlacementRequest Request(int devices, int64_t free_each = kH200) {
  PlacementRequest r;
  r.model = ModelBytesOf(Llama70B(), /*bf16*/ 2);
  for (int d = 0; d < devices; ++d) {
    r.device_names.push_back("cuda:" + std::to_string(d));
    r.free_bytes.push_back(free_each);
  }
  r.reserve_bytes = DefaultReserveBytes(free_each);
  return r;
}

// Each device one contiguous, non-empty range, in order, covering every layer; bytes add up.
void ExpectWellFormed(const PlacementRequest& r, const Placement& p) {
  const int D = static_cast<int>(r.free_bytes.size());
  ASSERT_EQ(p.layer_device.size(), r.model.layers.size());
  ASSERT_EQ(p.first_layer.size(), static_cast<size_t>(D));
  EXPECT_EQ(p.first_layer[0], 0);
  int64_t sum = 0;
  for (int d = 0; d < D; ++d) {
    const int end = d + 1 < D ? p.first_layer[d + 1] : static_cast<int>(p.layer_device.size());
    EXPECT_LT(p.first_layer[d], end) << "device " << d << " has no layer";
    for (int l = p.first_layer[d]; l < end; ++l) EXPECT_EQ(p.layer_device[l], d);
    EXPECT_LE(p.device_bytes[d], r.free_bytes[d] - r.reserve_bytes) << "device " << d;
    sum += p.device_bytes[d];
  }
  EXPECT_EQ(sum, r.model.total());
}

TEST(ModelBytesTest, Llama70BInBf16) {
  const ModelBytes b = ModelBytesOf(Llama70B(), 2);
  // Per layer: q and o 8192x8192, k and v 1024x8192, gate/up/down 28672x8192, two norms.
  const int64_t layer = (2 * 8192LL * 8192 + 2 * 1024LL * 8192 + 3 * 28672LL * 8192 + 2 * 8192) * 2;
  ASSERT_EQ(b.layers.size(), 80u);
  EXPECT_EQ(b.layers[0], layer);
  EXPECT_EQ(b.first, 128256LL * 8192 * 2);
  EXPECT_EQ(b.last, (8192 + 128256LL * 8192) * 2);
  EXPECT_EQ(b.total(), 70553706496LL * 2);  // Meta-Llama-3-70B: 70,553,706,496 parameters
}

TEST(ModelBytesTest, TiedHeadAndKvPooling) {
  ModelConfig c = Llama70B();
  c.tie_word_embeddings = true;
  const ModelBytes tied = ModelBytesOf(c, 2);
  EXPECT_EQ(tied.last, 8192 * 2);  // the final norm only: the head is the embedding
  const ModelBytes pooled = ModelBytesOf(c, 2, /*kv_heads=*/2);
  EXPECT_EQ(tied.layers[0] - pooled.layers[0], 2 * (8 - 2) * 128LL * 8192 * 2);
}

TEST(PlanPlacementTest, Llama70BDoesNotFitOneH200) {
  absl::StatusOr<Placement> p = PlanPlacement(Request(1));
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(p.status().message(), HasSubstr("(141.1 GB: embeddings 2.1 GB, 80 layers 136.9 GB"));
  EXPECT_THAT(p.status().message(), HasSubstr("do not fit 1 device(s) with 126.9 GB usable"));
  EXPECT_THAT(p.status().message(), HasSubstr("fills its fullest device to 112%"));
}

TEST(PlanPlacementTest, Llama70BOnTwoH200sIsSplitInHalves) {
  const PlacementRequest r = Request(2);
  absl::StatusOr<Placement> p = PlanPlacement(r);
  ASSERT_TRUE(p.ok()) << p.status();
  ExpectWellFormed(r, *p);
  // Embeddings and head weigh the same: 40 layers each.
  EXPECT_EQ(p->first_layer, (std::vector<int>{0, 40}));
  EXPECT_EQ(p->Describe(r.device_names),
            "cuda:0 layers 0-39 (70.6 GB), cuda:1 layers 40-79 (70.6 GB)");
}

TEST(PlanPlacementTest, Llama70BOnFourAndEightH200sGivesTheEndsFewerLayers) {
  for (int devices : {4, 8}) {
    const PlacementRequest r = Request(devices);
    absl::StatusOr<Placement> p = PlanPlacement(r);
    ASSERT_TRUE(p.ok()) << p.status();
    ExpectWellFormed(r, *p);
    // The first device also holds the embeddings, the last the head: each has fewer layers
    // than any device between them, and no device holds more than an even split plus one
    // layer's worth of bytes.
    const int D = devices;
    auto layers_on = [&](int d) {
      return (d + 1 < D ? p->first_layer[d + 1] : 80) - p->first_layer[d];
    };
    for (int d = 1; d + 1 < D; ++d) {
      EXPECT_LT(layers_on(0), layers_on(d)) << devices;
      EXPECT_LT(layers_on(D - 1), layers_on(d)) << devices;
    }
    const int64_t even = r.model.total() / D;
    for (int d = 0; d < D; ++d) EXPECT_LE(p->device_bytes[d], even + r.model.layers[0]);
  }
  // Four devices: 19 | 21 | 21 | 19 layers.
  absl::StatusOr<Placement> four = PlanPlacement(Request(4));
  ASSERT_TRUE(four.ok());
  EXPECT_EQ(four->first_layer, (std::vector<int>{0, 19, 40, 61}));
}

TEST(PlanPlacementTest, UnevenFreeMemoryGivesTheFullerDeviceFewerLayers) {
  PlacementRequest r = Request(2);
  r.free_bytes = {kH200 / 2 + 20000000000, kH200};  // cuda:0 already holds 50 GB
  r.reserve_bytes = DefaultReserveBytes(kH200);
  absl::StatusOr<Placement> p = PlanPlacement(r);
  ASSERT_TRUE(p.ok()) << p.status();
  ExpectWellFormed(r, *p);
  EXPECT_LT(p->first_layer[1], 40);
}

TEST(PlanPlacementTest, RefusalsSayWhy) {
  PlacementRequest few = Request(2);
  few.model.layers.resize(1);
  absl::StatusOr<Placement> p = PlanPlacement(few);
  EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(p.status().message(), HasSubstr("a model of 1 layers cannot be split over 2"));

  PlacementRequest full = Request(2);
  full.free_bytes[1] = full.reserve_bytes;
  p = PlanPlacement(full);
  EXPECT_EQ(p.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(p.status().message(),
              HasSubstr("cuda:1 has 14.1 GB free, not more than the 14.1 GB"));

  EXPECT_EQ(PlanPlacement(PlacementRequest{}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(PlanPlacementTest, UnknownFreeMemoryBalancesBytes) {
  PlacementRequest r = Request(3, /*free_each=*/-1);
  absl::StatusOr<Placement> p = PlanPlacement(r);
  ASSERT_TRUE(p.ok()) << p.status();
  int64_t most = 0, least = r.model.total();
  for (int64_t b : p->device_bytes) {
    most = std::max(most, b);
    least = std::min(least, b);
  }
  EXPECT_LE(most - least, 2 * r.model.layers[0]);
}

// --- A real model split across two CPU "devices" ---------------------------------------------

std::string Assets() {
  const char* a = std::getenv("KVSWEEP_ASSETS");
  return a == nullptr ? "" : a;
}

torch::Tensor SomeTokens(int64_t vocab) {
  return torch::arange(0, 2 * 24, torch::kLong).mul(7919).remainder(vocab).reshape({2, 24});
}

class PipelineModelTest : public ::testing::TestWithParam<std::string> {};

TEST_P(PipelineModelTest, TwoCpuDevicesGiveBitwiseTheSameHiddenStatesAndLogits) {
  if (Assets().empty()) GTEST_SKIP() << "KVSWEEP_ASSETS is not set";
  const std::string path = Assets() + "/models/" + GetParam();
  absl::StatusOr<std::unique_ptr<Model>> one = Model::Load(path, ModelOptions{});
  ASSERT_TRUE(one.ok()) << one.status();
  ModelOptions split;
  split.pipeline = {torch::Device(torch::kCPU), torch::Device(torch::kCPU)};
  absl::StatusOr<std::unique_ptr<Model>> two = Model::Load(path, split);
  ASSERT_TRUE(two.ok()) << two.status();
  // The split is real: both devices have layers.
  const int L = (*two)->config().num_layers;
  ASSERT_EQ((*two)->placement().layer_device.size(), static_cast<size_t>(L));
  EXPECT_EQ((*two)->placement().layer_device.front(), 0);
  EXPECT_EQ((*two)->placement().layer_device.back(), 1);
  EXPECT_TRUE((*one)->placement().layer_device.empty());

  const torch::Tensor tokens = SomeTokens((*one)->config().vocab_size);
  const torch::Tensor h1 = (*one)->Forward(tokens, nullptr);
  const torch::Tensor h2 = (*two)->Forward(tokens, nullptr);
  EXPECT_TRUE(torch::equal(h1, h2));
  const torch::Tensor l1 = (*one)->Logits(h1), l2 = (*two)->Logits(h2);
  EXPECT_TRUE(torch::equal(l1, l2));
  // Log-likelihood of each next token, as the scorer sums it.
  auto loglik = [&](const torch::Tensor& logits) {
    torch::Tensor lp = torch::log_softmax(logits.slice(1, 0, -1).to(torch::kFloat64), -1);
    return lp.gather(2, tokens.slice(1, 1).unsqueeze(-1)).sum().item<double>();
  };
  EXPECT_EQ(loglik(l1), loglik(l2));
}

INSTANTIATE_TEST_SUITE_P(Assets, PipelineModelTest,
                         ::testing::Values("ref-llama", "ref-gpt2", "stories260K/stories260K.bin"),
                         [](const ::testing::TestParamInfo<std::string>& i) {
                           std::string n = i.param.substr(0, i.param.find('/'));
                           for (char& c : n) {
                             if (c == '-') c = '_';
                           }
                           return n;
                         });

}  // namespace
}  // namespace kvsweep::engine

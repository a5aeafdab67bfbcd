#include <cmath>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "stats/bootstrap.h"
#include "stats/eval_units.h"

namespace kvsweep {
namespace {

using ::testing::HasSubstr;

TEST(SplitMix64Test, MatchesTheReferenceSequence) {
  // The published SplitMix64 outputs for seed 0.
  SplitMix64 r(0);
  EXPECT_EQ(r.Next(), 0xE220A8397B1DCDAFull);
  EXPECT_EQ(r.Next(), 0x6E789E6AA1B965F4ull);
  EXPECT_EQ(r.Next(), 0x06C45D188009454Full);
}

TEST(StatsTest, StderrAndQuantileAsNumpyDefinesThem) {
  // numpy: np.std([0,1,1,0], ddof=1) / 2 = 0.28867513459481287
  EXPECT_NEAR(MeanStderr({0, 1, 1, 0}), 0.28867513459481287, 1e-15);
  // np.quantile([3, 1, 2, 10], [0.025, 0.5, 0.975]) = [1.075, 2.5, 9.475]
  EXPECT_NEAR(Quantile({3, 1, 2, 10}, 0.025), 1.075, 1e-12);
  EXPECT_NEAR(Quantile({3, 1, 2, 10}, 0.5), 2.5, 1e-12);
  EXPECT_NEAR(Quantile({3, 1, 2, 10}, 0.975), 9.475, 1e-12);
  EXPECT_EQ(Quantile({7}, 0.3), 7);
}

EvalUnits Docs(std::vector<double> ll, std::vector<uint8_t> greedy) {
  EvalUnits u;
  u.kind = "document";
  u.loglik = std::move(ll);
  u.greedy = std::move(greedy);
  u.tokens.assign(u.loglik.size(), 1);
  return u;
}

TEST(EvalUnitsTest, RoundTripsThroughJsonAndGivesTheTaskMetrics) {
  EvalUnits w;
  w.kind = "window";
  w.loglik = {-10.0, -20.0, -5.5};
  w.tokens = {5, 10, 3};
  w.total_words = 9;
  w.total_bytes = 40;
  absl::StatusOr<EvalUnits> back = EvalUnits::FromJson(w.ToJson());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->loglik, w.loglik);
  EXPECT_EQ(back->tokens, w.tokens);
  EXPECT_EQ(back->total_words, 9);
  EXPECT_DOUBLE_EQ(*UnitMetric(w, "token_ppl", nullptr), std::exp(35.5 / 18));
  EXPECT_DOUBLE_EQ(*UnitMetric(w, "word_ppl", nullptr), std::exp(35.5 / 9));
  EXPECT_DOUBLE_EQ(*UnitMetric(w, "bits_per_byte", nullptr), 35.5 / (40 * std::log(2.0)));
  EXPECT_FALSE(UnitMetric(w, "acc", nullptr).has_value());
  EvalUnits d = Docs({-1, -2, -3}, {1, 0, 1});
  EXPECT_DOUBLE_EQ(*UnitMetric(d, "acc", nullptr), 2.0 / 3);
  EXPECT_DOUBLE_EQ(*UnitMetric(d, "ppl", nullptr), std::exp(2.0));
  nlohmann::json bad = d.ToJson();
  bad["n"] = 4;
  EXPECT_THAT(std::string(EvalUnits::FromJson(bad).status().message()),
              HasSubstr("different lengths"));
  bad = d.ToJson();
  bad["loglik_f64"] = "!!";
  EXPECT_FALSE(EvalUnits::FromJson(bad).ok());
}

// wikitext documents: lm-eval's weighted perplexities, over the documents of a resample.
TEST(EvalUnitsTest, TextDocumentsWeighByTheirOwnWordsAndBytes) {
  EvalUnits u;
  u.kind = "document";
  u.loglik = {-10.0, -20.0, -5.5};
  u.tokens = {5, 10, 3};
  u.words = {4, 7, 2};
  u.bytes = {20, 30, 9};
  u.total_words = 13;
  u.total_bytes = 59;
  absl::StatusOr<EvalUnits> back = EvalUnits::FromJson(u.ToJson());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->words, u.words);
  EXPECT_EQ(back->bytes, u.bytes);
  EXPECT_DOUBLE_EQ(*UnitMetric(u, "word_ppl", nullptr), std::exp(35.5 / 13));
  EXPECT_DOUBLE_EQ(*UnitMetric(u, "byte_ppl", nullptr), std::exp(35.5 / 59));
  EXPECT_DOUBLE_EQ(*UnitMetric(u, "bits_per_byte", nullptr), 35.5 / (59 * std::log(2.0)));
  EXPECT_DOUBLE_EQ(*UnitMetric(u, "token_ppl", nullptr), std::exp(35.5 / 18));
  EXPECT_FALSE(UnitMetric(u, "ppl", nullptr).has_value());  // LAMBADA's, not a text task's
  const std::vector<uint32_t> idx = {1, 1, 2};
  EXPECT_DOUBLE_EQ(*UnitMetric(u, "word_ppl", &idx), std::exp(45.5 / 16));
  EXPECT_DOUBLE_EQ(*UnitMetric(u, "bits_per_byte", &idx), 45.5 / (69 * std::log(2.0)));
  nlohmann::json bad = u.ToJson();
  bad["words_i32"] = nlohmann::json("AAAAAA==");  // one value for three documents
  EXPECT_EQ(EvalUnits::FromJson(bad).status().message(), "units: arrays of different lengths");
}

TEST(PairedBootstrapTest, SameUnitsGiveAZeroDifferenceAndAShiftIsSignificant) {
  std::vector<double> ll;
  std::vector<uint8_t> g;
  for (int i = 0; i < 200; ++i) {
    ll.push_back(-1.0 - (i % 7) * 0.3);
    g.push_back(i % 3 == 0);
  }
  EvalUnits base = Docs(ll, g);
  auto same = PairedBootstrap(base, base, "ppl");
  ASSERT_TRUE(same.ok());
  EXPECT_EQ(same->diff, 0);
  EXPECT_EQ(same->diff_ci.lo, 0);
  EXPECT_EQ(same->diff_ci.hi, 0);
  EXPECT_FALSE(same->significant);
  EvalUnits worse = base;
  for (double& v : worse.loglik) v -= 0.05;  // every document a little less likely
  auto c = PairedBootstrap(worse, base, "ppl");
  ASSERT_TRUE(c.ok());
  EXPECT_GT(c->diff, 0);
  EXPECT_TRUE(c->significant);
  // Paired: the per-document shift is constant, so the ratio is exactly exp(0.05).
  EXPECT_NEAR(c->ratio_ci.lo, std::exp(0.05), 1e-12);
  EXPECT_NEAR(c->ratio_ci.hi, std::exp(0.05), 1e-12);
  // Reproducible: the same seed gives the same interval.
  auto again = PairedBootstrap(worse, base, "ppl");
  EXPECT_EQ(again->diff_ci.lo, c->diff_ci.lo);
  EXPECT_EQ(again->diff_ci.hi, c->diff_ci.hi);
  EvalUnits fewer = Docs({-1, -2}, {1, 0});
  EXPECT_THAT(std::string(PairedBootstrap(fewer, base, "acc").status().message()),
              HasSubstr("not the same documents"));
  EXPECT_FALSE(PairedBootstrap(worse, base, "token_ppl_x").ok());
}

TEST(PairedBootstrapTest, BootstrapStderrIsTheSpreadOfTheResampledMetric) {
  std::vector<double> ll(100);
  for (int i = 0; i < 100; ++i) ll[i] = -0.5 * (i % 10);
  EvalUnits u = Docs(ll, std::vector<uint8_t>(100, 1));
  std::optional<double> se = BootstrapStderr(u, "ppl");
  ASSERT_TRUE(se.has_value());
  EXPECT_GT(*se, 0);
  EXPECT_EQ(*BootstrapStderr(u, "acc"), 0);  // every document a hit: nothing varies
}

}  // namespace
}  // namespace kvsweep

// The report's verdicts on results built here (per-document log-likelihoods chosen so that each
// comparison's answer is known): holds, does not hold, cannot tell, and what is missing.
#include "client/report.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "spec/method_spec.h"
#include "stats/eval_units.h"

namespace kvsweep {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr int kDocs = 60;

// A LAMBADA result: document i has log-likelihood base + wiggle(i); greedy hits where `hit(i)`.
TableInput Job(const std::string& model, const std::string& method, double budget, double base,
               const std::function<bool(int)>& hit, int kv_heads = 2,
               const nlohmann::json& diagnostics = nullptr) {
  EvalUnits u;
  u.kind = "document";
  double sum = 0;
  int hits = 0;
  for (int i = 0; i < kDocs; ++i) {
    const double ll = base + 0.3 * std::sin(i * 1.7);  // the same wiggle in every job: paired
    u.loglik.push_back(ll);
    u.tokens.push_back(2);
    u.greedy.push_back(hit(i) ? 1 : 0);
    sum += ll;
    hits += hit(i);
  }
  // As a stored result: no spec (the canonical method is a label), metrics keyed by the task.
  nlohmann::json r = {
      {"ledger", {{"fraction_payload", budget}, {"kv_heads", kv_heads}, {"native_kv_heads", 2}}},
      {"metrics",
       {{"lambada_openai",
         {{"ppl", std::exp(-sum / kDocs)},
          {"acc", static_cast<double>(hits) / kDocs},
          {"units", u.ToJson()}}}}}};
  if (!diagnostics.is_null()) r["diagnostics"] = diagnostics;
  TableInput in;
  in.labels = {{"model", model},       {"task", "lambada"},
               {"method", method},     {"dtype", "fp32"},
               {"kv_heads", kv_heads}, {"method_spec", *CanonicalKvMethod(method, 64, 6)}};
  in.result = *JobResult::FromJson(r);
  return in;
}

bool All(int) { return true; }
bool Half(int i) { return i % 2 == 0; }
bool Few(int i) { return i % 20 == 0; }

const Claim& Find(const Report& r, const std::string& id) {
  for (const Claim& c : r.claims) {
    if (c.id == id) return c;
  }
  static Claim none;
  ADD_FAILURE() << "no claim " << id;
  return none;
}

nlohmann::json Diagnostics(int bits, double ratio_over_predicted, double flip) {
  const double predicted = 3.0 * std::pow(4.0, bits);
  nlohmann::json layers = nlohmann::json::array();
  for (int l = 0; l < 6; ++l) {
    layers.push_back({{"layer", l},
                      {"damage_ratio", predicted * ratio_over_predicted * (1 + 0.05 * (l % 3))},
                      {"flip_rate", flip + 0.01 * (l % 2)}});
  }
  return {{"damage_bits", bits}, {"predicted_ratio", predicted}, {"layers", layers}};
}

TEST(ReportTest, VerdictsFollowTheIntervals) {
  std::vector<TableInput> in = {
      Job("m", "none", 1.0, -2.0, Half),
      // 0.25: INT4 close to none, rank far worse (quant wins; INT4 costs little).
      Job("m", "quant:bits=4", 0.25, -2.01, Half, 2, Diagnostics(4, 0.05, 0.10)),
      Job("m", "rank:r=16", 0.25, -3.0, Few, 2, Diagnostics(4, 0.05, 0.40)),
      Job("m", "rank:r=16,basis=random", 0.25, -3.6, Few),
      // 0.125: rank better than quant (the claim does not hold there).
      Job("m", "quant:bits=2", 0.125, -3.5, Few),
      Job("m", "rank:r=8", 0.125, -3.2, Few),
      // Pooled heads: left out.
      Job("m", "none", 0.5, -5.0, Few, 1),
  };
  absl::StatusOr<Report> r = BuildReport("s", in, ReportOptions{});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->jobs, 7);
  EXPECT_EQ(r->jobs_used, 6);
  ASSERT_EQ(r->notes.size(), 1u);
  EXPECT_THAT(r->notes[0], HasSubstr("left out (pooled KV heads"));

  const Claim& beats = Find(*r, "quant-beats-rank");
  ASSERT_EQ(beats.checks.size(), 2u);
  EXPECT_EQ(beats.checks[0].verdict, Verdict::kHolds) << beats.checks[0].measured;
  EXPECT_THAT(beats.checks[0].where, HasSubstr("budget 0.25"));
  EXPECT_THAT(beats.checks[0].compared, HasSubstr("INT4 g64 vs rank 16 pca"));  // the best rank
  EXPECT_EQ(beats.checks[1].verdict, Verdict::kDoesNotHold) << beats.checks[1].measured;
  EXPECT_EQ(beats.overall(), Verdict::kCannotTell);
  EXPECT_EQ(beats.Summary(), "holds in 1, does not hold in 1 of 2 checks");

  // quant/rank ratio: below 1 at 0.25, above at 0.125: the gap shrinks, not grows.
  const Claim& margin = Find(*r, "margin-by-budget");
  ASSERT_EQ(margin.checks.size(), 1u);
  EXPECT_EQ(margin.checks[0].verdict, Verdict::kDoesNotHold) << margin.checks[0].measured;

  const Claim& joint = Find(*r, "joint-int4-cost");
  ASSERT_EQ(joint.checks.size(), 1u);
  EXPECT_EQ(joint.checks[0].verdict, Verdict::kHolds) << joint.checks[0].measured;

  // INT4's accuracy equals none's (same hits); rank's is a tenth of it.
  const Claim& collapse = Find(*r, "rank-collapse");
  ASSERT_EQ(collapse.checks.size(), 1u);
  EXPECT_EQ(collapse.checks[0].verdict, Verdict::kHolds) << collapse.checks[0].measured;

  // pca vs random at r 16: 0.6 nats per document apart, far beyond 10% in perplexity.
  const Claim& spread = Find(*r, "basis-spread");
  ASSERT_EQ(spread.checks.size(), 1u);
  EXPECT_EQ(spread.checks[0].verdict, Verdict::kDoesNotHold) << spread.checks[0].measured;

  // Measured damage ratios at a twentieth of 3·4^4: far below the prediction.
  const Claim& damage = Find(*r, "damage-ratio");
  ASSERT_EQ(damage.checks.size(), 1u);
  EXPECT_EQ(damage.checks[0].verdict, Verdict::kDoesNotHold) << damage.checks[0].measured;

  const Claim& flips = Find(*r, "top1-flips");
  ASSERT_EQ(flips.checks.size(), 1u);
  EXPECT_EQ(flips.checks[0].verdict, Verdict::kHolds) << flips.checks[0].measured;

  const std::string md = RenderReportMarkdown(*r, ReportOptions{}, {{"s-quality.svg", "caption"}});
  EXPECT_THAT(md, HasSubstr("| claim | verdict |"));
  EXPECT_THAT(md, HasSubstr("## quant-beats-rank: cannot tell"));
  EXPECT_THAT(md, HasSubstr("![caption](s-quality.svg)"));
  EXPECT_THAT(md, HasSubstr("seed 20240601"));
  // The results every claim was read from: INT4 at 0.25 with its ratio to none (e^0.01).
  EXPECT_THAT(md, HasSubstr("### m, lambada, kv_heads 2, fp32"));
  EXPECT_THAT(md, HasSubstr("| quant:bits=4 | INT4 g64 | 0.25 |"));
  EXPECT_THAT(md, HasSubstr("| 1.01 [1.01, 1.01] *"));
}

TEST(ReportTest, EqualJobsCannotTellAndMissingJobsAreNamed) {
  // Same numbers for quant and rank: the interval of the difference is [0, 0]... contains 0.
  std::vector<TableInput> in = {Job("m", "quant:bits=4", 0.25, -2.0, Half),
                                Job("m", "rank:r=16", 0.25, -2.0, Half)};
  absl::StatusOr<Report> r = BuildReport("s", in, ReportOptions{});
  ASSERT_TRUE(r.ok()) << r.status();
  const Claim& beats = Find(*r, "quant-beats-rank");
  ASSERT_EQ(beats.checks.size(), 1u);
  EXPECT_EQ(beats.checks[0].verdict, Verdict::kCannotTell);
  const Claim& damage = Find(*r, "damage-ratio");
  EXPECT_TRUE(damage.checks.empty());
  EXPECT_EQ(damage.Summary(), "no check: the sweep needs jobs run with diagnostics: true");
  const std::string md = RenderReportMarkdown(*r, ReportOptions{}, {});
  EXPECT_THAT(md, HasSubstr("No check could be made: the sweep needs jobs run with diagnostics"));
}

// Results of the fake evaluator: the report says so first, on the page's top, and counts them.
TEST(ReportTest, PlaceholderResultsAreSaidSoFirst) {
  std::vector<TableInput> in = {Job("m", "quant:bits=4", 0.25, -2.0, Half),
                                Job("m", "rank:r=16", 0.25, -2.0, Half)};
  absl::StatusOr<Report> measured = BuildReport("s", in, ReportOptions{});
  ASSERT_TRUE(measured.ok()) << measured.status();
  EXPECT_EQ(measured->placeholders, 0);
  EXPECT_THAT(RenderReportMarkdown(*measured, ReportOptions{}, {}), Not(HasSubstr("PLACEHOLDERS")));
  nlohmann::json fake = in[0].result->json();
  fake["provenance"] = {{"evaluator", "fake"}};
  in[0].result = *JobResult::FromJson(fake);
  absl::StatusOr<Report> r = BuildReport("s", in, ReportOptions{});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->placeholders, 1);
  ASSERT_FALSE(r->notes.empty());
  EXPECT_EQ(r->notes.front(), PlaceholderNote(1, 2));
  const std::string md = RenderReportMarkdown(*r, ReportOptions{}, {});
  EXPECT_THAT(md, HasSubstr("**PLACEHOLDERS: 1 of the 2 results"));
  EXPECT_LT(md.find("PLACEHOLDERS"), md.find("## "));  // above the first section
}

TEST(ReportTest, ASweepWithoutResultsIsAnError) {
  TableInput pending;
  pending.labels = {{"model", "m"}};
  absl::StatusOr<Report> r = BuildReport("s", {pending}, ReportOptions{});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "report: sweep 's' has no finished job yet");
}

}  // namespace
}  // namespace kvsweep

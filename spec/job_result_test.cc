#include "spec/job_result.h"

#include "common/json_util.h"
#include "gtest/gtest.h"

namespace kvsweep {
namespace {

const char kLambada[] =
    R"({"job_id":"abc","ledger":{"fraction_payload":0.25,"fraction_total":0.2578125,"kv_heads":2},)"
    R"("metrics":{"lambada_openai":{"acc":0.5,"n":4,"ppl":3.25,"ppl_stderr":0.5}},)"
    R"("timing":{"tokens_per_s":1000.5,"wall_s":1.5},"diagnostics":{"mean":{"flip_rate":0.125}}})";

TEST(JobResultTest, SerializeGivesBackTheStoredTextByteForByte) {
  absl::StatusOr<JobResult> r = JobResult::Parse(kLambada);
  ASSERT_TRUE(r.ok()) << r.status();
  // The worker sends CanonicalJson (keys sorted): that text re-serializes to the same bytes.
  const std::string once = r->Serialize();
  EXPECT_EQ(once, CanonicalJson(nlohmann::json::parse(kLambada)));
  absl::StatusOr<JobResult> again = JobResult::Parse(once);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->Serialize(), once);
  // Text that is not UTF-8 is replaced, never thrown on.
  absl::StatusOr<JobResult> odd = JobResult::Parse("{\"metrics\":{\"t\":{\"note\":\"\xff\"}}}");
  ASSERT_FALSE(odd.ok());  // the parser refuses invalid UTF-8 in the text itself
  nlohmann::json j = {{"metrics", {{"t", {{"note", std::string("\xff")}}}}}};
  EXPECT_EQ(JobResult::FromJson(j)->Serialize(), CanonicalJson(j));
}

TEST(JobResultTest, PlaceholderIsTheFakeEvaluatorsProvenance) {
  auto parsed = [](const nlohmann::json& provenance) {
    nlohmann::json j = nlohmann::json::parse(kLambada);
    if (!provenance.is_null()) j["provenance"] = provenance;
    return JobResult::FromJson(j).value();
  };
  EXPECT_FALSE(parsed(nullptr).IsPlaceholder());
  EXPECT_FALSE(parsed({{"engine_version", "1"}}).IsPlaceholder());
  EXPECT_FALSE(parsed({{"evaluator", "engine"}}).IsPlaceholder());
  EXPECT_FALSE(parsed({{"evaluator", 7}}).IsPlaceholder());
  EXPECT_FALSE(parsed("fake").IsPlaceholder());  // not an object
  EXPECT_TRUE(parsed({{"evaluator", "fake"}, {"note", "placeholder"}}).IsPlaceholder());
}

TEST(JobResultTest, NumbersComeFromMetricsLedgerTimingDiagnosticsInThatOrder) {
  JobResult r = *JobResult::Parse(kLambada);
  EXPECT_EQ(r.job_id(), "abc");
  EXPECT_EQ(r.task(), "lambada_openai");
  EXPECT_EQ(r.tasks(), std::vector<std::string>{"lambada_openai"});
  EXPECT_EQ(r.Number("ppl"), 3.25);
  EXPECT_EQ(r.Number("ppl_stderr"), 0.5);
  EXPECT_EQ(r.Number("fraction_total"), 0.2578125);
  EXPECT_EQ(r.Number("wall_s"), 1.5);
  EXPECT_EQ(r.Number("flip_rate"), 0.125);
  EXPECT_EQ(r.Number("auto"), 3.25);
  EXPECT_EQ(r.QualityMetric(), "ppl");
  EXPECT_FALSE(r.Number("token_ppl").has_value());
  EXPECT_EQ(r.TaskInteger("n"), 4);
  EXPECT_EQ(r.LedgerInteger("kv_heads"), 2);
  EXPECT_FALSE(r.Units().has_value());
  EXPECT_TRUE(r.spec().empty());
  const std::map<std::string, std::string> cols = r.Columns();
  EXPECT_EQ(cols.at("lambada_openai.ppl"), "3.25");
  EXPECT_EQ(cols.at("ledger.kv_heads"), "2");
  EXPECT_EQ(cols.at("timing.wall_s"), "1.5");
  EXPECT_EQ(cols.count("diagnostics.mean.flip_rate"), 0u);

  JobResult wiki = *JobResult::Parse(R"({"metrics":{"wikitext":{"token_ppl":12.5,"tokens":10}}})");
  EXPECT_EQ(wiki.QualityMetric(), "token_ppl");
  EXPECT_EQ(wiki.Number("auto"), 12.5);
  EXPECT_TRUE(wiki.ledger().empty());
  EXPECT_FALSE(wiki.LedgerNumber("fraction_total").has_value());
}

TEST(JobResultTest, MalformedResultsAreRefusedNamingTheField) {
  const std::pair<const char*, const char*> cases[] = {
      {"[1]", "result:  is not a JSON object"},
      {"{}", "result: metrics is missing or not a non-empty object"},
      {R"({"metrics": {}})", "result: metrics is missing or not a non-empty object"},
      {R"({"metrics": {"t": 1}})", "result: metrics.t is not an object"},
      {R"({"metrics": {"t": {"ppl": "high"}}})", "result: metrics.t.ppl is not a number"},
      {R"({"metrics": {"t": {"n": 1.5}}})", "result: metrics.t.n is not an integer"},
      {R"({"metrics": {"t": {"ppl": 1e999}}})", "a number is out of range"},
      {R"({"metrics": {"t": {}}, "job_id": 7})", "result: job_id is not a string"},
      {R"({"metrics": {"t": {}}, "ledger": []})", "result: ledger is not an object"},
      {R"({"metrics": {"t": {}}, "ledger": {"kv_heads": 1.5}})",
       "result: ledger.kv_heads is not an integer"},
      {R"({"metrics": {"t": {}}, "timing": {"wall_s": "x"}})",
       "result: timing.wall_s is not a number"},
      {"{not json", "result"},
  };
  for (const auto& [text, want] : cases) {
    absl::StatusOr<JobResult> r = JobResult::Parse(text);
    ASSERT_FALSE(r.ok()) << text;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_NE(r.status().message().find(want), std::string::npos)
        << text << " -> " << r.status().message();
  }
}

}  // namespace
}  // namespace kvsweep

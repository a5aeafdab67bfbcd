#include "client/table.h"

#include <cmath>

#include "client/progress.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvsweep {
namespace {

using ::testing::HasSubstr;

TableInput In(const std::string& model, const std::string& method, int kv, double ppl,
              bool done = true) {
  TableInput t;
  t.labels = {{"model", model}, {"method", method}, {"kv_heads", kv}, {"budget", nullptr}};
  if (done) {
    t.result = *JobResult::FromJson(
        nlohmann::json{{"metrics", {{"lambada_openai", {{"ppl", ppl}, {"acc", 0.5}}}}},
                       {"ledger", {{"fraction_total", 0.25}}}});
  }
  return t;
}

std::vector<TableInput> Inputs() {
  return {In("llama", "none", 2, 100), In("llama", "int4", 2, 101.5), In("gpt2", "none", 4, 50),
          In("gpt2", "int4", 4, 0, /*done=*/false)};
}

TEST(TableTest, PivotsInFirstSeenOrder) {
  auto t = BuildTable(Inputs(), TableSpec());
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->rows, (std::vector<std::string>{"llama", "gpt2"}));
  EXPECT_EQ(t->cols, (std::vector<std::string>{"none", "int4"}));
  EXPECT_EQ(*t->cells[0][1], 101.5);
  EXPECT_FALSE(t->cells[1][1].has_value());  // not done yet
  // Columns aligned: names left, numbers right.
  EXPECT_EQ(*FormatTable(*t, "md"),
            "| model \\ method | none |  int4 |\n"
            "| -------------- | ---: | ----: |\n"
            "| llama          |  100 | 101.5 |\n"
            "| gpt2           |   50 |       |\n\nppl\n");
  EXPECT_EQ(*FormatTable(*t, "csv"), "model \\ method,none,int4\nllama,100,101.5\ngpt2,50,\n");
}

// Results of the fake evaluator are said to be placeholders in the table's notes (its caption),
// counted among the results shown; measured results alone carry no such note.
TEST(TableTest, PlaceholderResultsAreSaidSo) {
  std::vector<TableInput> in = Inputs();
  auto plain = BuildTable(in, TableSpec());
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_TRUE(plain->notes.empty());
  nlohmann::json fake = in[1].result->json();
  fake["provenance"] = {{"evaluator", "fake"}};
  in[1].result = *JobResult::FromJson(fake);
  auto t = BuildTable(in, TableSpec());
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_FALSE(t->notes.empty());
  EXPECT_EQ(t->notes[0], PlaceholderNote(1, 3));
  EXPECT_EQ(t->placeholders, 1);
  EXPECT_THAT(t->notes[0], HasSubstr("PLACEHOLDERS: 1 of the 3 results"));
  EXPECT_THAT(*FormatTable(*t, "md"), HasSubstr("PLACEHOLDERS"));
  // Filtered out by --where: not among the results shown.
  TableSpec only_none;
  only_none.where = {{"method", "none"}};
  auto none = BuildTable(in, only_none);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_TRUE(none->notes.empty());
}

TEST(TableTest, DeltaAgainstAColumn) {
  TableSpec s;
  s.delta = "none";
  auto t = BuildTable(Inputs(), s);
  ASSERT_TRUE(t.ok());
  EXPECT_DOUBLE_EQ(*t->cells[0][1], 1.5);
  EXPECT_EQ(*t->cells[0][0], 100);
  std::string md = *FormatTable(*t, "md");
  EXPECT_THAT(md, HasSubstr("| llama          |  100 | +1.5 |"));
  EXPECT_THAT(md, HasSubstr("no interval where a result has no per-unit values"));
  EXPECT_THAT(md, HasSubstr("ppl (difference from none)"));
  s.delta = "fp8";
  EXPECT_THAT(std::string(BuildTable(Inputs(), s).status().message()),
              HasSubstr("--delta fp8: no method 'fp8' (method: none, int4)"));
}

TEST(TableTest, LatexAndJson) {
  auto t = BuildTable(Inputs(), TableSpec());
  std::string tex = *FormatTable(*t, "latex");
  EXPECT_THAT(tex, HasSubstr("\\begin{tabular}{lrr}"));
  EXPECT_THAT(tex, HasSubstr("gpt2 & 50 & -- \\\\"));
  nlohmann::json j = nlohmann::json::parse(*FormatTable(*t, "json"));
  EXPECT_EQ(j["cells"][0][1], 101.5);
  EXPECT_TRUE(j["cells"][1][1].is_null());
  EXPECT_EQ(j["cols"][1], "int4");
  EXPECT_EQ(FormatTable(*t, "xlsx").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TableTest, HtmlHasTheMdCellsEscaped) {
  std::vector<TableInput> in = {In("llama", "none", 2, 100),
                                In("llama", "<b>\"q&a'</b>", 2, 101.5)};
  TableSpec spec;
  spec.delta = "none";
  auto t = BuildTable(in, spec);
  ASSERT_TRUE(t.ok()) << t.status();
  const std::string html = *FormatTable(*t, "html");
  EXPECT_THAT(html, HasSubstr("<table class=\"comparison\">"));
  EXPECT_THAT(html, HasSubstr("<th scope=\"col\">model \\ method</th>"));
  EXPECT_THAT(html, HasSubstr("<th scope=\"col\">&lt;b&gt;&quot;q&amp;a&#39;&lt;/b&gt;</th>"));
  EXPECT_THAT(html, HasSubstr("<th scope=\"row\">llama</th><td class=\"value\">100</td>"
                              "<td class=\"delta\">+1.5</td>"));
  // The caption, a line per note.
  EXPECT_THAT(html, HasSubstr("<p class=\"caption\">ppl (difference from none)<br>no interval "));
  EXPECT_EQ(html.find("<b>"), std::string::npos);
}

TEST(TableTest, AmbiguousCellsNameTheDifferingLabel) {
  std::vector<TableInput> in = Inputs();
  in.push_back(In("llama", "none", 1, 120));
  auto t = BuildTable(in, TableSpec());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(t.status().message()),
              HasSubstr("the cell (model=llama, method=none) has 2 jobs that differ in kv_heads"));
  TableSpec s;
  s.where = {{"kv_heads", "2"}};
  auto filtered = BuildTable(in, s);
  ASSERT_TRUE(filtered.ok()) << filtered.status();
  EXPECT_EQ(filtered->rows, std::vector<std::string>{"llama"});
}

// Two jobs with every label the same (another task limit or window): no "--where ...=VALUE",
// but what differs and how to see it.
TEST(TableTest, CellsOfJobsWithTheSameLabelsSayHowToTellThemApart) {
  std::vector<TableInput> in = Inputs();
  in.push_back(In("llama", "none", 2, 120));
  for (TableInput& t : in) t.labels["sweep"] = "s1";
  auto t = BuildTable(in, TableSpec());
  EXPECT_EQ(t.status(),
            absl::InvalidArgumentError(
                "table: the cell (model=llama, method=none) has 2 jobs with the same labels: they "
                "differ in fields that are not labels (e.g. the task's limit or window, or the "
                "model's files); `kvsweep export s1 --include-spec` shows each job's spec; give "
                "them different names in the sweep file (e.g. of the task) to tell them apart "
                "here"));
  EXPECT_THAT(std::string(t.status().message()), ::testing::Not(HasSubstr("...")));
}

TEST(TableTest, BadSpecs) {
  TableSpec s;
  s.rows = "colour";
  EXPECT_THAT(std::string(BuildTable(Inputs(), s).status().message()),
              HasSubstr("unknown dimension 'colour'"));
  s = TableSpec();
  s.cols = "model";
  EXPECT_THAT(std::string(BuildTable(Inputs(), s).status().message()), HasSubstr("must differ"));
  s = TableSpec();
  s.metric = "bleu";
  EXPECT_THAT(std::string(BuildTable(Inputs(), s).status().message()),
              HasSubstr("no result has a metric 'bleu'"));
  s = TableSpec();
  s.where = {{"model", "mistral"}};
  EXPECT_THAT(std::string(BuildTable(Inputs(), s).status().message()), HasSubstr("no jobs match"));
}

TEST(TableTest, MetricsComeFromTasksLedgerAndTiming) {
  nlohmann::json r = {{"metrics", {{"wikitext", {{"token_ppl", 12.5}}}}},
                      {"ledger", {{"fraction_payload", 0.25}}},
                      {"timing", {{"wall_s", 3.0}}}};
  JobResult res = *JobResult::FromJson(r);
  EXPECT_EQ(*res.Number("token_ppl"), 12.5);
  EXPECT_EQ(*res.Number("fraction_payload"), 0.25);
  EXPECT_EQ(*res.Number("wall_s"), 3.0);
  EXPECT_FALSE(res.Number("acc").has_value());
  r["diagnostics"] = {{"layers", {{{"flip_rate", 0.5}}}}, {"mean", {{"flip_rate", 0.125}}}};
  EXPECT_EQ(*JobResult::FromJson(r)->Number("flip_rate"), 0.125);  // the mean over layers
  EXPECT_EQ(CsvField("a,b"), "\"a,b\"");
  EXPECT_EQ(CsvField("say \"hi\""), "\"say \"\"hi\"\"\"");
}

TEST(ProgressTest, RendersCountsAndEta) {
  ProgressCounts c;
  c.total = 10;
  c.done = 5;
  c.leased = 2;
  c.queued = 2;
  c.failed = 1;
  EXPECT_EQ(ProgressBar::Render(c, 83, 10),
            "[#####x....] 5/10 done, 2 running, 2 queued, 1 failed, ETA 1m23s");
}

// Jobs that ended without a result are not drawn as done: a sweep whose every job failed is
// not a full bar of '#'.
TEST(ProgressTest, FailedJobsAreNotDrawnAsDone) {
  ProgressCounts c;
  c.total = 3;
  c.failed = 3;
  EXPECT_EQ(ProgressBar::Render(c, NAN, 6), "[xxxxxx] 0/3 done, 0 running, 0 queued, 3 failed");
  c.failed = 1;
  c.quarantined = 1;
  c.done = 1;
  EXPECT_EQ(ProgressBar::Render(c, NAN, 6),
            "[##xxxx] 1/3 done, 0 running, 0 queued, 1 failed, 1 quarantined");
  c = ProgressCounts();
  c.total = 4;
  c.done = 4;
  EXPECT_EQ(ProgressBar::Render(c, NAN, 4), "[####] 4/4 done, 0 running, 0 queued");
}

TEST(ProgressTest, RunningJobsFillTheBarAndGiveTheEta) {
  ProgressCounts c;
  c.total = 4;
  c.done = 1;
  c.leased = 2;
  c.queued = 1;
  c.running = {{"a1b2c3d4e5f60000", "w1", 0.5, 0.01}, {"f6e5d4c3b2a10000", "w2", 0.25, 0}};
  // Work left: 1 queued + 0.5 + 0.75; only w1's job has a rate (0.01/s).
  EXPECT_DOUBLE_EQ(EtaFromRunningJobs(c), 225);
  EXPECT_EQ(ProgressBar::Render(c, EtaFromRunningJobs(c), 8),
            "[####....] 1/4 done, 2 running (50%, 25%), 1 queued, ETA 3m45s");
  EXPECT_EQ(RunningJobsText(c),
            "  job a1b2c3d4e5f6 on w1: 50.0% done, ETA 50s\n"
            "  job f6e5d4c3b2a1 on w2: 25.0% done, ETA ?\n"
            "  ETA 3m45s\n");
  nlohmann::json j = nlohmann::json::object();
  AddRunningJson(c, &j);
  EXPECT_EQ(j["eta_s"], 225);
  EXPECT_EQ(j["running"][0]["eta_s"], 50);
  EXPECT_TRUE(j["running"][1]["eta_s"].is_null());
  c.running[0].per_s = 0;  // no rate known: no ETA from the running jobs
  EXPECT_TRUE(std::isnan(EtaFromRunningJobs(c)));
  EXPECT_EQ(RunningJobsText(ProgressCounts()), "");
}

}  // namespace
EvalUnits Docs(double shift, int n) {
  EvalUnits u;
  u.kind = "document";
  for (int i = 0; i < n; ++i) {
    u.loglik.push_back(-1.0 - (i % 5) * 0.4 + shift);
    u.greedy.push_back(i % 4 == 0);
    u.tokens.push_back(1 + i % 3);
  }
  return u;
}

TableInput WithUnits(const std::string& model, const std::string& method, const EvalUnits& u,
                     const std::string& seed = "") {
  TableInput t;
  t.labels = {{"model", model}, {"method", method}, {"kv_heads", 2}};
  if (!seed.empty()) t.labels["seed"] = seed;
  nlohmann::json m = {{"ppl", *UnitMetric(u, "ppl", nullptr)},
                      {"acc", *UnitMetric(u, "acc", nullptr)},
                      {"units", u.ToJson()}};
  t.result = *JobResult::FromJson(nlohmann::json{{"metrics", {{"lambada_openai", m}}}});
  return t;
}

// Differences from the baseline column carry a paired-bootstrap interval and ratio when both
// results have per-document values; a clear shift is marked significant, no shift is not.
TEST(TableTest, DeltaCellsCarryPairedBootstrapIntervals) {
  std::vector<TableInput> in = {WithUnits("llama", "none", Docs(0, 300)),
                                WithUnits("llama", "int4", Docs(-0.02, 300)),
                                WithUnits("llama", "same", Docs(0, 300))};
  TableSpec s;
  s.delta = "none";
  auto t = BuildTable(in, s);
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_TRUE(t->compared[0][1].has_value());
  const PairedComparison& c = *t->compared[0][1];
  EXPECT_GT(c.diff, 0);
  EXPECT_TRUE(c.significant);
  EXPECT_LE(c.diff_ci.lo, c.diff);
  EXPECT_GE(c.diff_ci.hi, c.diff);
  EXPECT_NEAR(c.ratio, std::exp(0.02), 1e-9);
  ASSERT_TRUE(t->compared[0][2].has_value());
  EXPECT_FALSE(t->compared[0][2]->significant);
  EXPECT_FALSE(t->compared[0][0].has_value());  // the baseline itself
  const std::string md = *FormatTable(*t, "md");
  EXPECT_THAT(md, HasSubstr(" *"));
  EXPECT_THAT(md, HasSubstr("95% paired-bootstrap interval"));
  nlohmann::json j = nlohmann::json::parse(*FormatTable(*t, "json"));
  EXPECT_TRUE(j["details"][0][1]["significant"].get<bool>());
  EXPECT_EQ(j["details"][0][1]["resamples"], 1000);
  // The same seed gives the same interval; another seed another one.
  auto again = BuildTable(in, s);
  EXPECT_EQ(again->compared[0][1]->diff_ci.lo, c.diff_ci.lo);
  s.seed = 7;
  auto other = BuildTable(in, s);
  EXPECT_NE(other->compared[0][1]->diff_ci.lo, c.diff_ci.lo);
  // Different documents: no interval, and the table says why.
  in.push_back(WithUnits("gpt2", "none", Docs(0, 300)));
  in.push_back(WithUnits("gpt2", "int4", Docs(0, 200)));
  s.seed = kDefaultSeed;
  auto mixed = BuildTable(in, s);
  ASSERT_TRUE(mixed.ok());
  EXPECT_FALSE(mixed->compared[1][1].has_value());
  EXPECT_THAT(*FormatTable(*mixed, "md"), HasSubstr("not the same documents (200 vs 300)"));
}

TEST(TableTest, SeedsAggregateAndAutoLayoutWorksOnAnySweep) {
  std::vector<TableInput> in = {WithUnits("llama", "rank", Docs(0, 50), "1"),
                                WithUnits("llama", "rank", Docs(-0.1, 50), "2"),
                                WithUnits("llama", "none", Docs(0, 50))};
  TableInput wiki;
  wiki.labels = {{"model", "llama"}, {"method", "none"}, {"kv_heads", 2}, {"task", "wikitext"}};
  wiki.result =
      *JobResult::FromJson(nlohmann::json{{"metrics", {{"wikitext", {{"token_ppl", 30.0}}}}}});
  in.push_back(wiki);
  for (auto& i : in) {
    if (!i.labels.contains("task")) i.labels["task"] = "lambada_openai";
  }
  TableSpec s;
  s.rows = "auto";
  s.metric = "auto";
  auto t = BuildTable(in, s);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->row_dim, "task");
  EXPECT_EQ(t->rows, (std::vector<std::string>{"lambada_openai", "wikitext"}));
  EXPECT_EQ(t->seeds[0][0], 2);
  ASSERT_TRUE(t->seed_sd[0][0].has_value());
  EXPECT_GT(*t->seed_sd[0][0], 0);
  EXPECT_EQ(*t->cells[1][1], 30.0);  // token_ppl for the text task
  EXPECT_THAT(*FormatTable(*t, "md"), HasSubstr("(2 seeds)"));
}

}  // namespace kvsweep

#include "client/table.h"

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
    t.result = nlohmann::json{{"metrics", {{"lambada_openai", {{"ppl", ppl}, {"acc", 0.5}}}}},
                              {"ledger", {{"fraction_total", 0.25}}}};
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
  EXPECT_EQ(*FormatTable(*t, "md"),
            "| model \\ method | none | int4 |\n|---|---:|---:|\n| llama | 100 | 101.5 |\n"
            "| gpt2 | 50 |  |\n\nppl\n");
  EXPECT_EQ(*FormatTable(*t, "csv"), "model \\ method,none,int4\nllama,100,101.5\ngpt2,50,\n");
}

TEST(TableTest, DeltaAgainstAColumn) {
  TableSpec s;
  s.delta = "none";
  auto t = BuildTable(Inputs(), s);
  ASSERT_TRUE(t.ok());
  EXPECT_DOUBLE_EQ(*t->cells[0][1], 1.5);
  EXPECT_EQ(*t->cells[0][0], 100);
  std::string md = *FormatTable(*t, "md");
  EXPECT_THAT(md, HasSubstr("| llama | 100 | +1.5 |"));
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
  EXPECT_EQ(*MetricValue(r, "token_ppl"), 12.5);
  EXPECT_EQ(*MetricValue(r, "fraction_payload"), 0.25);
  EXPECT_EQ(*MetricValue(r, "wall_s"), 3.0);
  EXPECT_FALSE(MetricValue(r, "acc").has_value());
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
            "[######....] 5/10 done, 2 running, 2 queued, 1 failed, ETA 1m23s");
}

}  // namespace
}  // namespace kvsweep

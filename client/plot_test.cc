#include "client/plot.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <map>
#include <regex>
#include <set>

#include "absl/strings/str_format.h"
#include "common/file_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvsweep {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

struct JobArgs {
  std::string model = "llama", task = "lambada", family = "quant", method = "quant@0.25";
  std::string spec = "quant:bits=4,group=64";
  int kv_heads = 2;
  double fraction = 0.25, ppl = 20;
  std::optional<double> ppl_stderr = 1.5;
  std::optional<int> seed;
  bool done = true;
};

TableInput Job(const JobArgs& a) {
  TableInput t;
  t.labels = {{"model", a.model},   {"task", a.task},        {"family", a.family},
              {"method", a.method}, {"method_spec", a.spec}, {"kv_heads", a.kv_heads},
              {"dtype", "fp32"},    {"budget", nullptr},     {"seed", nullptr}};
  if (a.seed) t.labels["seed"] = *a.seed;
  if (!a.done) return t;
  const std::string task_key = a.task == "wiki" ? "wikitext" : "lambada_openai";
  const std::string metric = a.task == "wiki" ? "token_ppl" : "ppl";
  nlohmann::json m = {{metric, a.ppl}, {"acc", 0.5}};
  if (a.ppl_stderr) m[metric + "_stderr"] = *a.ppl_stderr;
  t.result = *JobResult::FromJson(
      nlohmann::json{{"metrics", {{task_key, m}}}, {"ledger", {{"fraction_total", a.fraction}}}});
  return t;
}

// The study's shape: none at 1.0, quant at two budgets, rank at one, on two models.
std::vector<TableInput> Sweep() {
  std::vector<TableInput> in;
  for (const std::string model : {"llama", "gpt2"}) {
    JobArgs a;
    a.model = model;
    a.family = a.method = a.spec = "none";
    a.fraction = 1.0;
    a.ppl = 10;
    in.push_back(Job(a));
    a.family = "quant";
    a.method = "quant@0.25";
    a.spec = "quant:bits=4,group=64";
    a.fraction = 0.27;
    a.ppl = 11;
    in.push_back(Job(a));
    a.method = "quant@0.125";
    a.spec = "quant:bits=2,group=64";
    a.fraction = 0.14;
    a.ppl = 30;
    in.push_back(Job(a));
    a.family = "rank";
    a.method = "rank@0.25";
    a.spec = "rank:r=16,basis=svd";
    a.fraction = 0.25;
    a.ppl = 50;
    a.ppl_stderr.reset();  // an older result without a standard error: no bar
    in.push_back(Job(a));
  }
  return in;
}

std::vector<std::string> Names(const std::vector<SeriesStyle>& legend) {
  std::vector<std::string> names;
  for (const SeriesStyle& s : legend) names.push_back(s.name);
  return names;
}

size_t Count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t p = text.find(what); p != std::string::npos; p = text.find(what, p + 1)) ++n;
  return n;
}

// A small well-formedness check: every tag closes in order, attribute values are quoted, and
// text holds no raw '<' and no '&' outside an entity.
::testing::AssertionResult WellFormedXml(const std::string& xml) {
  std::vector<std::string> stack;
  size_t i = xml.rfind("?>", 100);
  i = i == std::string::npos ? 0 : i + 2;
  static const std::regex tag(R"re(^<(/?)([A-Za-z][\w:-]*)((\s+[\w:-]+="[^"<]*")*)\s*(/?)>)re");
  static const std::regex entity(R"(^&(amp|lt|gt|quot|apos|#[0-9]+);)");
  while (i < xml.size()) {
    if (xml[i] == '<') {
      std::smatch m;
      const std::string rest = xml.substr(i, 2000);
      if (!std::regex_search(rest, m, tag)) {
        return ::testing::AssertionFailure() << "bad tag at " << i << ": " << rest.substr(0, 80);
      }
      if (m[1] == "/") {
        if (stack.empty() || stack.back() != m[2]) {
          return ::testing::AssertionFailure() << "unbalanced </" << m[2] << "> at " << i;
        }
        stack.pop_back();
      } else if (m[5] != "/") {
        stack.push_back(m[2]);
      }
      i += m.length(0);
    } else if (xml[i] == '&') {
      std::smatch m;
      const std::string rest = xml.substr(i, 16);
      if (!std::regex_search(rest, m, entity)) {
        return ::testing::AssertionFailure() << "raw & at " << i;
      }
      i += m.length(0);
    } else if (xml[i] == '>') {
      return ::testing::AssertionFailure() << "raw > in text at " << i;
    } else {
      ++i;
    }
  }
  if (!stack.empty()) return ::testing::AssertionFailure() << "<" << stack.back() << "> not closed";
  return ::testing::AssertionSuccess();
}

// The body of the element <g class="panel" ...> number `n`.
std::string Panel(const std::string& svg, size_t n) {
  size_t p = 0;
  for (size_t k = 0; k <= n; ++k) {
    p = svg.find("<g class=\"panel\"", k == 0 ? 0 : p + 1);
    if (p == std::string::npos) return "";
  }
  const size_t end = svg.find("<g class=\"panel\"", p + 1);
  return svg.substr(p, (end == std::string::npos ? svg.find("<g class=\"legend\"") : end) - p);
}

TEST(PlotTest, OnePanelPerModelOneLinePerFamilyInXOrder) {
  absl::StatusOr<Plot> p = BuildPlot(Sweep(), PlotSpec());
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ(p->panels.size(), 2u);
  EXPECT_EQ(p->panels[0].title, "llama");
  EXPECT_EQ(p->panels[1].title, "gpt2");
  EXPECT_EQ(p->panels[0].y_label, "ppl");  // auto: ppl for LAMBADA
  EXPECT_THAT(Names(p->legend), ElementsAre("none", "quant", "rank"));
  const PlotSeries& quant = p->panels[0].series[1];
  EXPECT_EQ(quant.name, "quant");
  ASSERT_EQ(quant.points.size(), 2u);
  EXPECT_EQ(quant.points[0].x, 0.14);  // sorted by x, whatever the sweep's order
  EXPECT_EQ(quant.points[0].y, 30);
  EXPECT_EQ(*quant.points[0].stderr_y, 1.5);
  EXPECT_FALSE(p->panels[0].series[2].points[0].stderr_y.has_value());
  EXPECT_EQ(p->title, "ppl vs fraction_total");
  EXPECT_THAT(p->notes, ElementsAre(HasSubstr("± one standard error as stored with each result "
                                              "(ppl_stderr)")));
}

TEST(PlotTest, PlaceholderResultsAreSaidSoFirst) {
  std::vector<TableInput> in = Sweep();
  int done = 0;
  for (const TableInput& t : in) done += t.result.has_value();
  for (TableInput& t : in) {
    if (!t.result) continue;
    nlohmann::json fake = t.result->json();
    fake["provenance"] = {{"evaluator", "fake"}};
    t.result = *JobResult::FromJson(fake);
    break;
  }
  absl::StatusOr<Plot> p = BuildPlot(in, PlotSpec());
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_FALSE(p->notes.empty());
  EXPECT_EQ(p->notes.front(), PlaceholderNote(1, done));
}

TEST(PlotTest, SvgHasOneLinePerFamilyPerPanelErrorBarsAxesAndLegend) {
  absl::StatusOr<Plot> p = BuildPlot(Sweep(), PlotSpec());
  ASSERT_TRUE(p.ok()) << p.status();
  const std::string svg = RenderSvg(*p);
  EXPECT_TRUE(WellFormedXml(svg));
  const SvgSize size = PlotSize(*p);
  EXPECT_THAT(svg,
              HasSubstr(absl::StrCat("width=\"", size.width, "\" height=\"", size.height, "\"")));
  EXPECT_EQ(Count(svg, "<g class=\"panel\""), 2u);
  for (size_t i = 0; i < 2; ++i) {
    const std::string panel = Panel(svg, i);
    EXPECT_EQ(Count(panel, "<path class=\"line\""), 3u) << panel;
    EXPECT_EQ(Count(panel, "class=\"marker\""), 4u);
    EXPECT_EQ(Count(panel, "<path class=\"errorbar\""), 3u);  // rank has no stored stderr
    EXPECT_EQ(Count(panel, "class=\"axis-label x-label\""), 1u);
    EXPECT_THAT(panel, HasSubstr(">fraction_total</text>"));
    EXPECT_THAT(panel, HasSubstr(">ppl</text>"));
    EXPECT_GE(Count(panel, "<g class=\"x-tick\""), 3u);
    EXPECT_GE(Count(panel, "<g class=\"y-tick\""), 3u);
  }
  EXPECT_THAT(Panel(svg, 0), HasSubstr("data-panel=\"llama\""));
  EXPECT_EQ(Count(svg, "<g class=\"legend-entry\""), 3u);
  // The same family has the same colour in every panel.
  const std::regex quant_color(
      "data-series=\"quant\">\\n<path class=\"errorbar\" d=\"[^\"]*\" "
      "stroke=\"(#[0-9A-F]{6})\"");
  std::smatch m0, m1;
  const std::string p0 = Panel(svg, 0), p1 = Panel(svg, 1);
  ASSERT_TRUE(std::regex_search(p0, m0, quant_color)) << p0;
  ASSERT_TRUE(std::regex_search(p1, m1, quant_color));
  EXPECT_EQ(m0[1], m1[1]);
}

TEST(PlotTest, LabelsFromTheSweepFileAreEscaped) {
  std::vector<TableInput> in = Sweep();
  in[1].labels["family"] = "q<&>\"'";
  PlotSpec s;
  s.title = "a < b & c > d";
  absl::StatusOr<Plot> p = BuildPlot(in, s);
  ASSERT_TRUE(p.ok()) << p.status();
  const std::string svg = RenderSvg(*p);
  EXPECT_TRUE(WellFormedXml(svg));
  EXPECT_THAT(svg, HasSubstr("data-series=\"q&lt;&amp;&gt;&quot;&#39;\""));
  EXPECT_THAT(svg, HasSubstr(">q&lt;&amp;&gt;&quot;&#39;</text>"));  // the legend
  EXPECT_THAT(svg, HasSubstr("<title>a &lt; b &amp; c &gt; d</title>"));
  EXPECT_THAT(svg, Not(HasSubstr("q<&>")));
  EXPECT_EQ(XmlEscape(std::string("a\x01z\tb", 5)), "a?z\tb");
}

TEST(PlotTest, SeveralTasksMakePanelsAndKvHeadsSplitLines) {
  std::vector<TableInput> in;
  for (const std::string task : {"lambada", "wiki"}) {
    for (int kv : {2, 1}) {
      JobArgs a;
      a.task = task;
      a.kv_heads = kv;
      a.ppl = 10 * kv;
      in.push_back(Job(a));
    }
  }
  absl::StatusOr<Plot> p = BuildPlot(in, PlotSpec());
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ(p->panels.size(), 2u);
  EXPECT_EQ(p->panels[0].title, "llama, lambada");
  EXPECT_EQ(p->panels[1].title, "llama, wiki");
  EXPECT_EQ(p->panels[1].y_label, "token_ppl");  // auto: token_ppl for the perplexity tasks
  EXPECT_THAT(Names(p->legend), ElementsAre("quant, kv_heads=2", "quant, kv_heads=1"));
  // One family, one colour; the KV-head counts differ in dash and marker.
  EXPECT_EQ(p->legend[0].color, p->legend[1].color);
  EXPECT_NE(p->legend[0].dash, p->legend[1].dash);
  const std::string svg = RenderSvg(*p);
  EXPECT_TRUE(WellFormedXml(svg));
  EXPECT_EQ(Count(svg, "stroke-dasharray=\"6 3\""), 3u);  // two panels' lines and the legend's
  EXPECT_EQ(p->title, "ppl / token_ppl vs fraction_total");
}

TEST(PlotTest, ModelsByTasksIsAGridAndNativeKvHeadsDoNotSplitLines) {
  std::vector<TableInput> in;
  for (const std::string model : {"llama", "gpt2"}) {
    for (const std::string task : {"lambada", "wiki"}) {
      JobArgs a;
      a.model = model;
      a.task = task;
      a.kv_heads = model == "llama" ? 2 : 4;  // each model at its own native count
      in.push_back(Job(a));
    }
  }
  std::swap(in[1], in[2]);  // the sweep's order: llama/lambada, gpt2/lambada, llama/wiki, ...
  absl::StatusOr<Plot> p = BuildPlot(in, PlotSpec());
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ(p->panels.size(), 4u);
  EXPECT_EQ(p->columns, 2);
  EXPECT_EQ(p->panels[0].title, "llama, lambada");
  EXPECT_EQ(p->panels[1].title, "llama, wiki");
  EXPECT_EQ(p->panels[2].title, "gpt2, lambada");
  EXPECT_EQ(p->panels[3].title, "gpt2, wiki");
  EXPECT_THAT(Names(p->legend), ElementsAre("quant"));
  const std::string svg = RenderSvg(*p);
  EXPECT_TRUE(WellFormedXml(svg));
  // Two columns of frames.
  std::set<std::string> frame_x;
  const std::regex frame(R"re(class="frame" x="(\d+)")re");
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), frame); it != std::sregex_iterator();
       ++it) {
    frame_x.insert((*it)[1]);
  }
  EXPECT_EQ(frame_x.size(), 2u);
}

TEST(PlotTest, SeedsAreOnePointTheirMean) {
  std::vector<TableInput> in;
  for (int seed : {0, 1}) {
    JobArgs a;
    a.seed = seed;
    a.ppl = 10 + 2 * seed;
    a.ppl_stderr = 1 + seed;
    in.push_back(Job(a));
  }
  absl::StatusOr<Plot> p = BuildPlot(in, PlotSpec());
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ(p->panels[0].series[0].points.size(), 1u);
  const PlotPoint& pt = p->panels[0].series[0].points[0];
  EXPECT_EQ(pt.y, 11);
  EXPECT_EQ(*pt.stderr_y, 1.5);
  EXPECT_EQ(pt.seeds, 2);
}

TEST(PlotTest, BitsAxisFromTheMethodSpec) {
  std::vector<TableInput> in = Sweep();
  PlotSpec s;
  s.x = "bits";
  s.y = "acc";
  s.where = {{"model", "llama"}};
  absl::StatusOr<Plot> p = BuildPlot(in, s);
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ(p->panels.size(), 1u);
  ASSERT_EQ(p->panels[0].series.size(), 2u);          // rank has no bits per code
  EXPECT_EQ(p->panels[0].series[0].points[0].x, 16);  // none: the uncompressed cache
  EXPECT_EQ(p->panels[0].series[1].points[0].x, 2);
  EXPECT_EQ(p->panels[0].series[1].points[1].x, 4);
  EXPECT_THAT(p->notes, ::testing::Contains(
                            HasSubstr("left out: 1 result without bits (rank: no bits per code)")));
  EXPECT_THAT(p->notes, ::testing::Contains(HasSubstr("no error bars")));
}

TEST(PlotTest, BitsOfKAndVApartAreTheKeys) {
  JobArgs a;
  a.family = "quant";
  a.method = "kivi2";
  a.spec = "k=quant:bits=2,axis=channel,group=32;v=quant:bits=4";
  std::vector<TableInput> in = {Job(a)};
  a.method = a.spec = "v=quant:bits=3";  // keys uncompressed: the values' spec
  in.push_back(Job(a));
  PlotSpec s;
  s.x = "bits";
  absl::StatusOr<Plot> p = BuildPlot(in, s);
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ(p->panels[0].series[0].points.size(), 2u);
  EXPECT_EQ(p->panels[0].series[0].points[0].x, 2);
  EXPECT_EQ(p->panels[0].series[0].points[1].x, 3);
}

TEST(PlotTest, FlipRateFromTheDiagnostics) {
  std::vector<TableInput> in = Sweep();
  for (TableInput& t : in) {
    nlohmann::json j = t.result->json();
    j["diagnostics"] = {{"mean", {{"flip_rate", 0.01}}}};
    t.result = *JobResult::FromJson(j);
  }
  PlotSpec s;
  s.x = "bits";
  s.y = "flip_rate";
  absl::StatusOr<Plot> p = BuildPlot(in, s);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->panels[0].y_label, "flip_rate");
  EXPECT_EQ(p->panels[0].series[1].points[1].y, 0.01);
}

TEST(PlotTest, ErrorsAreOneLineAndSayWhatToChange) {
  auto error = [](const std::vector<TableInput>& in, const PlotSpec& s) {
    absl::StatusOr<Plot> p = BuildPlot(in, s);
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
    const std::string m(p.status().message());
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
    return m;
  };
  PlotSpec s;
  s.y = "bleu";
  EXPECT_THAT(error(Sweep(), s), HasSubstr("no result has a metric 'bleu'"));
  s = PlotSpec();
  s.x = "colour";
  EXPECT_THAT(error(Sweep(), s), HasSubstr("no result has an x value 'colour'"));
  s = PlotSpec();
  s.series = "colour";
  EXPECT_THAT(error(Sweep(), s), HasSubstr("unknown --series 'colour'"));
  s = PlotSpec();
  s.where = {{"model", "mistral"}};
  EXPECT_THAT(error(Sweep(), s), HasSubstr("no jobs match"));
  JobArgs pending;
  pending.done = false;
  EXPECT_THAT(error({Job(pending), Job(pending)}, PlotSpec()),
              HasSubstr("no results yet (2 jobs, none done)"));
  EXPECT_THAT(error({}, PlotSpec()), HasSubstr("the sweep has no jobs"));
  s = PlotSpec();
  s.y = "acc";
  s.log_y = true;
  std::vector<TableInput> zero = Sweep();
  nlohmann::json z = zero[0].result->json();
  z["metrics"]["lambada_openai"]["acc"] = 0;
  zero[0].result = *JobResult::FromJson(z);
  EXPECT_THAT(error(zero, s), HasSubstr("--log-y needs positive values, but acc is 0 for 'none'"));
  // Two methods of one family at the same storage: which label to pick.
  std::vector<TableInput> clash = Sweep();
  JobArgs a;
  a.method = "kivi2";
  a.spec = "quant:bits=2,axis=channel,group=32";
  a.fraction = 0.27;
  clash.push_back(Job(a));
  EXPECT_THAT(error(clash, PlotSpec()),
              HasSubstr("the series 'quant' in panel 'llama' has 2 jobs at fraction_total=0.27 "
                        "that differ in method, method_spec; add --where method=VALUE or "
                        "--series method"));
  PlotSpec by_method;
  by_method.series = "method";
  EXPECT_TRUE(BuildPlot(clash, by_method).ok());
  // The same labels (another task limit, say): no "--where ...=VALUE", but how to see them.
  std::vector<TableInput> same = Sweep();
  same.push_back(same[1]);
  EXPECT_THAT(error(same, PlotSpec()),
              HasSubstr("the series 'quant' in panel 'llama' has 2 jobs at fraction_total=0.27 "
                        "with the same labels: they differ in fields that are not labels"));
  EXPECT_THAT(error(same, PlotSpec()), HasSubstr("`kvsweep export <sweep> --include-spec`"));
  EXPECT_THAT(error(same, PlotSpec()), Not(HasSubstr("...")));
}

// `plot -o`, `report -o`, `export -o`: the error names the user's path, not path.tmp.PID.N.
TEST(PlotTest, WriteErrorsNameTheUsersPath) {
  absl::Status w = WriteUserFile("/nonexistent-dir/x.svg", "<svg/>");
  EXPECT_EQ(
      w, absl::NotFoundError("cannot write '/nonexistent-dir/x.svg': No such file or directory"));
  PlotOptions o;
  o.out = "/nonexistent-dir/x.svg";
  std::vector<std::string> notes;
  EXPECT_EQ(WritePlot("s", Sweep(), o, &notes).status(), w);
}

TEST(PlotTest, PendingJobsAreANote) {
  std::vector<TableInput> in = Sweep();
  JobArgs pending;
  pending.done = false;
  in.push_back(Job(pending));
  absl::StatusOr<Plot> p = BuildPlot(in, PlotSpec());
  ASSERT_TRUE(p.ok());
  EXPECT_THAT(p->notes, ::testing::Contains("1 job without a result yet"));
}

TEST(PlotTest, LogAxisKeepsBarsThatReachZeroInside) {
  std::vector<TableInput> in = Sweep();
  nlohmann::json wide = in[1].result->json();
  wide["metrics"]["lambada_openai"]["ppl_stderr"] = 40.0;  // 11 ± 40
  in[1].result = *JobResult::FromJson(wide);
  PlotSpec s;
  s.log_y = true;
  absl::StatusOr<Plot> p = BuildPlot(in, s);
  ASSERT_TRUE(p.ok());
  const std::string svg = RenderSvg(*p);
  EXPECT_TRUE(WellFormedXml(svg));
  EXPECT_THAT(svg, HasSubstr(">ppl (log scale)</text>"));
  EXPECT_FALSE(std::regex_search(svg, std::regex(R"re([ "MLVh-](nan|inf))re"))) << svg;
  // Every bar's ends lie inside the frame (both panels are one row: the same frame top/bottom).
  std::smatch frame;
  ASSERT_TRUE(std::regex_search(
      svg, frame, std::regex(R"re(class="frame" x="\d+" y="(\d+)" width="\d+" height="(\d+)")re")));
  const double top = std::stod(frame[1]), bottom = top + std::stod(frame[2]);
  const std::regex bar(R"re(class="errorbar" d="M[0-9.]+ ([0-9.]+)V([0-9.]+))re");
  int bars = 0;
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), bar); it != std::sregex_iterator();
       ++it, ++bars) {
    for (int end : {1, 2}) {
      const double y = std::stod((*it)[end]);
      EXPECT_GE(y, top - 0.01) << (*it)[0];
      EXPECT_LE(y, bottom + 0.01) << (*it)[0];
    }
  }
  EXPECT_EQ(bars, 6);
  // The bar that reaches below zero ends at the frame's bottom, without a cap there.
  EXPECT_THAT(svg, HasSubstr(absl::StrFormat(" %.2fV", bottom)));
}

TEST(PlotTest, Ticks) {
  EXPECT_THAT(NiceTicks(0.14, 1.0), ElementsAre(0, 0.25, 0.5, 0.75, 1.0));
  EXPECT_THAT(NiceTicks(3, 97), ElementsAre(0, 25, 50, 75, 100));
  EXPECT_THAT(NiceTicks(0.5, 3.7), ElementsAre(0, 1, 2, 3, 4));
  std::vector<double> one = NiceTicks(5, 5);
  EXPECT_LT(one.front(), 5);
  EXPECT_GT(one.back(), 5);
  EXPECT_THAT(LogTicks(6525, 124701), ElementsAre(1e3, 1e4, 1e5, 1e6));
  EXPECT_THAT(LogTicks(12, 45), ElementsAre(10, 20, 50));
  EXPECT_EQ(TickLabel(0.25), "0.25");
  EXPECT_EQ(TickLabel(1e6), "1e6");
  EXPECT_EQ(TickLabel(2.5e5), "2.5e5");
  EXPECT_EQ(TickLabel(0.0001), "1e-4");
  EXPECT_EQ(TickLabel(20000), "2e4");
  EXPECT_EQ(TickLabel(5000), "5000");
  EXPECT_EQ(TickLabel(0), "0");
}

class PngTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/plot_test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    svg_ = dir_ + "/p.svg";
    ASSERT_TRUE(WriteFileAtomic(svg_, "<svg xmlns=\"http://www.w3.org/2000/svg\"/>").ok());
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  // A stand-in for Chromium: a shell script that writes `bytes` where --screenshot= says.
  std::string FakeChromium(const std::string& bytes_printf) {
    const std::string path = dir_ + "/fake-chromium";
    EXPECT_TRUE(WriteFileAtomic(
                    path, absl::StrCat("#!/bin/sh\nfor a; do case $a in "
                                       "--screenshot=*) printf '",
                                       bytes_printf, "' > \"${a#--screenshot=}\";; esac; done\n"))
                    .ok());
    ::chmod(path.c_str(), 0755);
    return path;
  }
  std::string dir_, svg_;
};

TEST_F(PngTest, NoChromiumSaysWhatToInstall) {
  absl::Status s = RenderPng("", svg_, dir_ + "/p.png", {10, 10});
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), HasSubstr("install chromium"));
}

TEST_F(PngTest, WhatTheRendererWroteIsCheckedAndMovedIntoPlace) {
  const std::string png = dir_ + "/out.png";
  ASSERT_TRUE(RenderPng(FakeChromium("\\211PNG\\r\\n\\032\\n0123456789abcdefghijklmnop"), svg_, png,
                        {10, 10})
                  .ok());
  EXPECT_EQ(ReadFile(png).value_or("").substr(1, 3), "PNG");
  absl::Status s = RenderPng(FakeChromium("not a png"), svg_, dir_ + "/bad.png", {10, 10});
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(std::string(s.message()), HasSubstr("wrote no PNG"));
  EXPECT_FALSE(PathExists(dir_ + "/bad.png"));
}

}  // namespace
}  // namespace kvsweep

// `kvsweep plot` on real sweeps: the demo's sweep (`kvsweep demo --keep`, ref-llama, LAMBADA)
// plotted from its database file as the study's main figure and rendered to PNG by headless
// Chromium; and a sweep with attention diagnostics on two models, plotted through the
// coordinator as flip rate against bits. The SVGs are checked by an independent XML parser
// (Python's), their structure by counting elements; the PNG by its header and size.
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>

#include "absl/strings/str_cat.h"
#include "client/plot.h"
#include "common/file_util.h"
#include "common/subprocess.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "spec/job_spec.h"
#include "tests/harness.h"

namespace kvsweep {
namespace testing {
namespace {

using ::testing::HasSubstr;

size_t Count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t p = text.find(what); p != std::string::npos; p = text.find(what, p + 1)) ++n;
  return n;
}

// Python's XML parser accepts the file (skipped where there is no python3).
void ExpectParsesAsXml(const std::string& path) {
  if (std::system("command -v python3 >/dev/null 2>&1") != 0) return;
  const std::string cmd = absl::StrCat(
      "python3 -c 'import sys, xml.etree.ElementTree as E; "
      "r = E.parse(sys.argv[1]).getroot(); sys.exit(r.tag != "
      "\"{http://www.w3.org/2000/svg}svg\")' ",
      path);
  EXPECT_EQ(std::system(cmd.c_str()), 0) << path << " is not a well-formed SVG document";
}

int SvgAttr(const std::string& svg, const std::string& name) {
  std::smatch m;
  if (!std::regex_search(svg, m, std::regex(absl::StrCat("<svg [^>]*", name, "=\"(\\d+)\"")))) {
    return -1;
  }
  return std::stoi(m[1]);
}

// One `kvsweep demo --keep` for the suite: its database is what the tests plot.
class DemoPlotTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(MakeTempDir("plot_e2e"));
    Subprocess::Options o;
    o.stdout_path = absl::StrCat(*dir_, "/demo.out");
    o.stderr_path = absl::StrCat(*dir_, "/demo.err");
    std::vector<std::string> argv = {KVSWEEP_CLI_BIN, "demo", "--keep", *dir_ + "/kept"};
    // Without the engine the demo runs its whole pipeline on placeholder numbers.
    if (!kEngine) argv.insert(argv.end(), {"--evaluator", "fake", "--workers", "2"});
    auto p = Subprocess::Spawn(argv, o);
    if (!p.ok()) return;
    std::optional<int> st = (*p)->Wait(std::chrono::seconds(300));
    if (st && WIFEXITED(*st) && WEXITSTATUS(*st) == 0) ok_ = true;
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  void SetUp() override {
    ASSERT_TRUE(ok_) << "kvsweep demo failed: " << ReadFile(*dir_ + "/demo.err").value_or("");
  }
  static std::string Db() { return *dir_ + "/kept/demo.db"; }
  // The CLI on the kept database.
  static CommandResult Plot(const std::vector<std::string>& args,
                            const std::map<std::string, std::string>& env = {}) {
    std::vector<std::string> argv = {KVSWEEP_CLI_BIN, "plot"};
    argv.insert(argv.end(), args.begin(), args.end());
    argv.insert(argv.end(), {"--db", Db()});
    Subprocess::Options o;
    o.stdout_path = absl::StrCat(*dir_, "/plot.out");
    o.stderr_path = absl::StrCat(*dir_, "/plot.err");
    o.env = env;
    std::remove(o.stdout_path.c_str());  // the child appends
    std::remove(o.stderr_path.c_str());
    CommandResult r;
    auto p = Subprocess::Spawn(argv, o);
    if (!p.ok()) return r;
    std::optional<int> st = (*p)->Wait(std::chrono::seconds(180));
    if (st && WIFEXITED(*st)) r.exit_code = WEXITSTATUS(*st);
    r.out = ReadFile(o.stdout_path).value_or("");
    r.err = ReadFile(o.stderr_path).value_or("");
    return r;
  }
  static std::string* dir_;
  static bool ok_;
};
std::string* DemoPlotTest::dir_ = nullptr;
bool DemoPlotTest::ok_ = false;

TEST_F(DemoPlotTest, QualityAgainstStorageOneLinePerFamily) {
  const std::string svg_path = *dir_ + "/main.svg";
  CommandResult r = Plot({"demo", "--x", "fraction_total", "--y", "ppl", "--log-y", "--out",
                          svg_path, "--title", "ref-llama <demo> & LAMBADA"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("(1 panel, 6 lines, 8 points)"));
  const std::string svg = ReadFile(svg_path).value_or("");
  ExpectParsesAsXml(svg_path);
  // The demo: ref-llama, none / quant at two budgets / rank, at kv_heads 2 and 1: one panel,
  // three families, each split by the KV-head count.
  EXPECT_EQ(Count(svg, "<g class=\"panel\""), 1u);
  EXPECT_THAT(svg, HasSubstr("data-panel=\"ref-llama\""));
  EXPECT_EQ(Count(svg, "<path class=\"line\""), 6u);
  EXPECT_EQ(Count(svg, "class=\"marker\""), 8u);
  EXPECT_EQ(Count(svg, "<g class=\"legend-entry\""), 6u);
  for (const char* s :
       {"data-series=\"none, kv_heads=2\"", "data-series=\"quant, kv_heads=1\"",
        "data-series=\"rank, kv_heads=2\"", ">fraction_total</text>", ">ppl (log scale)</text>",
        "<title>ref-llama &lt;demo&gt; &amp; LAMBADA</title>"}) {
    EXPECT_THAT(svg, HasSubstr(s));
  }
  if (kEngine) {
    // Every engine result stores ppl_stderr: one bar per point.
    EXPECT_EQ(Count(svg, "<path class=\"errorbar\""), 8u);
    EXPECT_THAT(svg, HasSubstr("(ppl_stderr)"));
  } else {
    EXPECT_THAT(r.err, HasSubstr("no error bars"));
  }
}

TEST_F(DemoPlotTest, OneLineErrors) {
  struct Case {
    std::vector<std::string> args;
    std::string message;
  } cases[] = {
      {{"nosuch"}, "kvsweep: no sweep named 'nosuch'"},
      {{"demo", "--y", "bleu"}, "kvsweep: plot: no result has a metric 'bleu'"},
      {{"demo", "--x", "colour"}, "kvsweep: plot: no result has an x value 'colour'"},
      {{"demo", "--series", "colour"}, "kvsweep: plot: unknown --series 'colour'"},
      {{"demo", "--where", "model=mistral"}, "kvsweep: plot: no jobs match"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> args = c.args;
    args.insert(args.end(), {"--out", *dir_ + "/err.svg"});
    CommandResult r = Plot(args);
    EXPECT_EQ(r.exit_code, 1) << c.message;
    EXPECT_THAT(r.err, HasSubstr(c.message));
    EXPECT_EQ(Count(r.err, "\n"), 1u) << r.err;
  }
  EXPECT_FALSE(PathExists(*dir_ + "/err.svg"));
  // --png without a renderer: the SVG is written, the PNG is an error that says what to install.
  CommandResult r = Plot({"demo", "--out", *dir_ + "/nopng.svg", "--png", *dir_ + "/nopng.png"},
                         {{"KVSWEEP_CHROMIUM", *dir_ + "/no-such-chromium"}});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("--png needs headless Chromium"));
  EXPECT_THAT(r.err, HasSubstr("install chromium"));
  EXPECT_TRUE(PathExists(*dir_ + "/nopng.svg"));
  EXPECT_FALSE(PathExists(*dir_ + "/nopng.png"));
}

TEST_F(DemoPlotTest, RendersToPngWithHeadlessChromium) {
  const std::string chromium = FindChromium();
  if (chromium.empty()) {
    if (std::getenv("CI") != nullptr && std::string(std::getenv("CI")) == "true") {
      FAIL() << "CI=true but no chromium: deploy/setup-debian.sh installs it";
    }
    GTEST_SKIP() << "no headless Chromium (chromium on PATH or KVSWEEP_CHROMIUM): the PNG "
                    "rendering is not checked; install chromium (deploy/setup-debian.sh)";
  }
  const std::string svg_path = *dir_ + "/png.svg", png_path = *dir_ + "/main.png";
  CommandResult r = Plot({"demo", "--log-y", "--out", svg_path, "--png", png_path});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("and " + png_path));
  const std::string svg = ReadFile(svg_path).value_or("");
  const std::string png = ReadFile(png_path).value_or("");
  ASSERT_GE(png.size(), 24u);
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  EXPECT_EQ(png.substr(12, 4), "IHDR");
  auto be32 = [&](size_t at) {
    return (uint32_t(uint8_t(png[at])) << 24) | (uint32_t(uint8_t(png[at + 1])) << 16) |
           (uint32_t(uint8_t(png[at + 2])) << 8) | uint32_t(uint8_t(png[at + 3]));
  };
  // The window is the SVG's size; the page scale may be more than 1 on some displays, so the
  // PNG is a whole multiple of it.
  const uint32_t w = be32(16), h = be32(20);
  const int sw = SvgAttr(svg, "width"), sh = SvgAttr(svg, "height");
  ASSERT_GT(sw, 0);
  ASSERT_GT(sh, 0);
  EXPECT_EQ(w % sw, 0u) << w << " x " << h << " for an SVG of " << sw << " x " << sh;
  EXPECT_EQ(h % sh, 0u);
  EXPECT_EQ(w / sw, h / sh);
  EXPECT_GT(png.size(), 5000u) << "a plot with text and lines compresses to more than this";
}

// Sweeps with `diagnostics: true` store each job's attention flip rate (the mean over layers);
// `plot --x bits --y flip_rate` draws it against the method's bits per code, one panel per
// model, through the coordinator's Export.
TEST(DiagnosticsPlotTest, FlipRateAgainstBitsOnTwoModels) {
  if (!kEngine) GTEST_SKIP() << "attention diagnostics need the libtorch engine";
  Harness h("plot_flip");
  Harness::CoordinatorFlags cf;
  cf.lease_ttl_ms = 30000;
  h.StartCoordinator(cf);
  const std::string assets = AssetsDir();
  const std::string yaml = h.WriteFile(
      "flip.yaml",
      absl::StrCat("name: flip\nmodels:\n  - {name: ref-llama, path: ", assets,
                   "/models/ref-llama}\n  - {name: ref-gpt2, path: ", assets,
                   "/models/ref-gpt2}\ntasks:\n  - {task: lambada_openai, data: ", assets,
                   "/data/lambada_openai/lambada_test.jsonl, limit: 8}\n",
                   "methods: [none, \"quant:bits=8\", \"quant:bits=4\", \"quant:bits=2\", ",
                   "\"rank:r=16,basis=svd\"]\ndiagnostics: true\n"));
  h.Submit(yaml);
  h.StartWorker();
  h.StartWorker();
  ASSERT_TRUE(h.WaitFinished("flip", std::chrono::seconds(600)));
  ASSERT_EQ(h.Sweep("flip").count(JobState::kDone), 10);
  const std::string svg_path = h.dir() + "/flip.svg";
  CommandResult r = h.Cli({"plot", "flip", "--x", "bits", "--y", "flip_rate", "--out", svg_path});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("(2 panels, 4 lines, 8 points)"));
  // Rank has no bits per code; the flip rate has no stored standard error.
  EXPECT_THAT(r.err, HasSubstr("left out: 2 results without bits"));
  EXPECT_THAT(r.err, HasSubstr("no error bars"));
  const std::string svg = ReadFile(svg_path).value_or("");
  ExpectParsesAsXml(svg_path);
  EXPECT_EQ(Count(svg, "<g class=\"panel\""), 2u);
  EXPECT_THAT(svg, HasSubstr("data-panel=\"ref-llama\""));
  EXPECT_THAT(svg, HasSubstr("data-panel=\"ref-gpt2\""));
  EXPECT_EQ(Count(svg, "<path class=\"errorbar\""), 0u);
  EXPECT_EQ(Count(svg, ">flip_rate</text>"), 2u);
  EXPECT_EQ(Count(svg, ">bits</text>"), 2u);
  // The flip rate falls as bits rise: none (16 bits) flips nothing, 2 bits flips the most.
  auto flip = [&](const std::string& model, const std::string& method) {
    auto rows = h.SqlRows(absl::StrCat(
        "SELECT json_extract(result_json, '$.diagnostics.mean.flip_rate') FROM sweep_results "
        "WHERE sweep = 'flip' AND model_label = '",
        model, "' AND method_label = '", method, "'"));
    EXPECT_EQ(rows.size(), 1u) << model << " " << method;
    return rows.empty() ? -1.0 : std::stod(rows[0][0]);
  };
  for (const char* model : {"ref-llama", "ref-gpt2"}) {
    EXPECT_EQ(flip(model, "none"), 0) << model;
    EXPECT_LT(flip(model, "quant:bits=8"), flip(model, "quant:bits=2")) << model;
  }
}

// `kvsweep demo --keep DIR` after a `--evaluator fake` run in DIR reuses its jobs: the tables say
// their numbers are placeholders, and the demo says where they came from.
TEST(DemoKeepTest, AnEarlierFakeRunsResultsAreSaidToBePlaceholders) {
  if (!kEngine) GTEST_SKIP() << "the second run needs the libtorch engine";
  const std::string dir = MakeTempDir("demo_keep");
  auto demo = [&](const std::vector<std::string>& extra, const std::string& name) {
    std::vector<std::string> argv = {KVSWEEP_CLI_BIN, "demo",    "--keep",
                                     dir + "/kept",   "--limit", "4"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    Subprocess::Options o;
    o.stdout_path = absl::StrCat(dir, "/", name, ".out");
    o.stderr_path = absl::StrCat(dir, "/", name, ".err");
    CommandResult r;
    auto p = Subprocess::Spawn(argv, o);
    if (!p.ok()) return r;
    std::optional<int> st = (*p)->Wait(std::chrono::seconds(300));
    if (st && WIFEXITED(*st)) r.exit_code = WEXITSTATUS(*st);
    r.out = ReadFile(o.stdout_path).value_or("");
    r.err = ReadFile(o.stderr_path).value_or("");
    return r;
  };
  CommandResult fake = demo({"--evaluator", "fake", "--workers", "2"}, "fake");
  ASSERT_EQ(fake.exit_code, 0) << fake.err;
  EXPECT_THAT(fake.out, HasSubstr("PLACEHOLDERS: 8 of the 8 results"));
  CommandResult engine = demo({}, "engine");
  ASSERT_EQ(engine.exit_code, 0) << engine.err;
  EXPECT_THAT(engine.out, HasSubstr("PLACEHOLDERS: 8 of the 8 results"));
  EXPECT_THAT(engine.err,
              HasSubstr("holds placeholder results of an earlier --evaluator=fake run"));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace testing
}  // namespace kvsweep

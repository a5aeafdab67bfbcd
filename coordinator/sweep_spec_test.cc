#include "coordinator/sweep_spec.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/file_util.h"
#include "common/path_policy.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvsweep {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

ExpandOptions Opts() {
  ExpandOptions o;
  o.base_dir = AssetsDir();
  o.source_name = "sweep.yaml";
  return o;
}

// A sweep over the assets' two reference models; $EXTRA is spliced in at the end.
std::string Yaml(const std::string& methods, const std::string& extra = "") {
  return absl::StrCat(R"(name: test-sweep
models:
  - name: llama
    path: models/ref-llama
    kv_heads: [1, native]
  - name: gpt2
    path: models/ref-gpt2
    kv_heads: [1, 2, 4]
tasks:
  - name: lambada
    task: lambada_openai
    data: data/lambada_openai/lambada_test.jsonl
    limit: 5
methods:
)",
                      methods, extra);
}

TEST(SweepSpecTest, ProductOverModelsMethodsAndKvHeads) {
  auto s = ExpandSweep(Yaml("  - none\n  - quant:bits=4\n  - {family: rank, budgets: [0.25]}\n"),
                       Opts());
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->name, "test-sweep");
  EXPECT_EQ(s->combinations, 3 * 2 + 3 * 3);
  EXPECT_EQ(s->jobs.size(), 15u);
  EXPECT_EQ(s->excluded, 0);
  std::set<std::string> ids;
  for (const SweepJob& j : s->jobs) {
    ids.insert(j.job_id);
    EXPECT_EQ(j.job_id, j.spec.JobId());
    EXPECT_EQ(j.spec.limit, 5);
  }
  EXPECT_EQ(ids.size(), 15u);
  // Expansion order: model, task, method, kv_heads.
  EXPECT_EQ(s->jobs[0].labels["model"], "llama");
  EXPECT_EQ(s->jobs[0].labels["method"], "none");
  EXPECT_EQ(s->jobs[0].labels["kv_heads"], 1);
  EXPECT_EQ(s->jobs[1].labels["kv_heads"], 2);  // native on ref-llama
  const SweepJob& rank = s->jobs[4];
  EXPECT_EQ(rank.labels["method"], "rank@0.25");
  EXPECT_EQ(rank.labels["family"], "rank");
  EXPECT_EQ(rank.labels["budget"], 0.25);
  EXPECT_THAT(rank.spec.method, StartsWith("rank:r=16,"));  // d/4 on head_dim 64
  EXPECT_EQ(s->jobs[14].labels["model"], "gpt2");
  EXPECT_EQ(s->jobs[14].labels["kv_heads"], 4);
}

TEST(SweepSpecTest, TwoSpellingsOfOneMethodAreOneJob) {
  auto s = ExpandSweep(Yaml("  - quant:bits=4\n  - quant:group=64,bits=4\n"), Opts());
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->combinations, 10);
  EXPECT_EQ(s->jobs.size(), 5u);
  EXPECT_EQ(s->merged, 5);
  // The family × budget solver's INT4 at 25% is the same job again.
  auto t = ExpandSweep(Yaml("  - quant:bits=4\n  - {family: quant, budgets: [0.25]}\n"), Opts());
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->jobs.size(), 5u);
}

TEST(SweepSpecTest, ZipPairsListsElementwise) {
  const std::string yaml = R"(name: zipped
mode: zip
models: [models/ref-llama, models/ref-gpt2]
tasks:
  - {task: lambada_openai, data: data/lambada_openai/lambada_test.jsonl, limit: 3}
methods: [none, "quant:bits=2"]
kv_heads: [1, 4]
)";
  auto s = ExpandSweep(yaml, Opts());
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_EQ(s->jobs.size(), 2u);
  EXPECT_EQ(s->jobs[0].labels["model"], "ref-llama");
  EXPECT_EQ(s->jobs[0].labels["method"], "none");
  EXPECT_EQ(s->jobs[0].labels["kv_heads"], 1);
  EXPECT_EQ(s->jobs[1].labels["model"], "ref-gpt2");
  EXPECT_EQ(s->jobs[1].labels["method"], "quant:bits=2");
  EXPECT_EQ(s->jobs[1].labels["kv_heads"], 4);
}

TEST(SweepSpecTest, ConstraintsAndExcludeDropCombinations) {
  auto s = ExpandSweep(Yaml("  - none\n  - rank:r=32,basis=svd\n  - rank:r=128,basis=svd\n",
                            "constraints: [\"r <= head_dim\", \"r <= head_dim/2\"]\n"
                            "exclude:\n  - {model: gpt2, method: none}\n"),
                       Opts());
  ASSERT_TRUE(s.ok()) << s.status();
  // r=128 > 64 everywhere (5 combinations), gpt2's none (3 combinations).
  EXPECT_EQ(s->combinations, 15);
  EXPECT_EQ(s->excluded, 8);
  EXPECT_EQ(s->jobs.size(), 7u);
  for (const SweepJob& j : s->jobs) {
    EXPECT_FALSE(j.labels["model"] == "gpt2" && j.labels["method"] == "none");
    EXPECT_NE(j.labels["method"], "rank:r=128,basis=svd");
  }
  // Without the constraint, r=128 is an error that names the combination.
  auto bad = ExpandSweep(Yaml("  - rank:r=128,basis=svd\n"), Opts());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.status().message()),
              HasSubstr("model 'llama', task 'lambada', method 'rank:r=128,basis=svd'"));
}

TEST(SweepSpecTest, SeedsApplyOnlyToRandomBases) {
  auto s = ExpandSweep(Yaml("  - none\n  - rank:r=8,basis=random\n", "seeds: [1, 2]\n"), Opts());
  ASSERT_TRUE(s.ok()) << s.status();
  // none: one job per (model, kv_heads) whatever the seed; random basis: one per seed.
  EXPECT_EQ(s->jobs.size(), 5u + 10u);
  int seeded = 0;
  for (const SweepJob& j : s->jobs) {
    if (j.labels["family"] == "rank") {
      ++seeded;
      EXPECT_THAT(j.labels["method"].get<std::string>(), HasSubstr("/seed="));
      EXPECT_THAT(j.spec.method, HasSubstr(absl::StrCat("seed=", j.labels["seed"].get<int>())));
    } else {
      EXPECT_TRUE(j.labels["seed"].is_null());
    }
  }
  EXPECT_EQ(seeded, 10);
}

struct BadCase {
  std::string name;
  std::string yaml;
  std::string fragment;
};

std::string Replace(const std::string& s, const std::string& from, const std::string& to) {
  return absl::StrReplaceAll(s, {{from, to}});
}

TEST(SweepSpecTest, BadSweepsAreInvalidArgumentNamingTheProblem) {
  const std::string good = Yaml("  - none\n");
  const std::vector<BadCase> cases = {
      {"malformed", "name: x\nmodels: [\n", "sweep.yaml:3: malformed YAML"},
      {"empty", "", "sweep.yaml: the sweep is empty"},
      {"not a map", "- a\n- b\n", "sweep: must be a mapping"},
      {"unknown top key", good + "modles: []\n", "sweep.yaml:16: sweep: unknown key 'modles'"},
      {"unknown model key", Replace(good, "path: models/ref-gpt2", "pth: models/ref-gpt2"),
       "models[1]: unknown key 'pth'"},
      {"unknown task key", Replace(good, "limit: 5", "limt: 5"), "tasks[0]: unknown key 'limt'"},
      {"duplicate key", good + "name: again\n", "duplicate key 'name'"},
      {"missing name", Replace(good, "name: test-sweep\n", ""), "missing required key 'name'"},
      {"bad name", Replace(good, "name: test-sweep", "name: \"no spaces\""),
       "'no spaces' is not a valid sweep name"},
      {"unknown method", Yaml("  - foo:x=1\n"),
       "sweep.yaml:15: methods[0]: method 'foo:x=1': unknown family 'foo'"},
      {"unknown family", Yaml("  - {family: prune, budgets: [0.5]}\n"),
       "unknown method family 'prune'"},
      {"budget too big", Yaml("  - {family: quant, budgets: [1.5]}\n"),
       "methods[0].budgets[0]: budget 1.5 is out of range (0, 1]"},
      {"budget zero", Yaml("  - {family: rank, budgets: [0]}\n"), "budget 0 is out of range"},
      {"budget not a number", Yaml("  - {family: rank, budgets: [lots]}\n"),
       "expected a finite number"},
      {"unreachable budget", Yaml("  - {family: quant, budgets: [0.3]}\n"),
       "cannot be met by family quant"},
      {"impossible kv_heads", Replace(good, "kv_heads: [1, native]", "kv_heads: [3]"),
       "kv_heads: 3 does not divide the model's 2 KV heads"},
      {"bad kv_heads", Replace(good, "kv_heads: [1, native]", "kv_heads: [zero]"),
       "'zero' is not 'native' or a positive integer"},
      {"duplicate model", Replace(good, "name: gpt2", "name: llama"),
       "duplicate model name 'llama'"},
      {"duplicate method label", Yaml("  - none\n  - none\n"), "duplicate method label 'none'"},
      {"duplicate task",
       Replace(good, "    limit: 5\n",
               "    limit: 5\n  - name: lambada\n    task: lambada_openai\n"
               "    data: data/lambada_openai/lambada_test.jsonl\n"),
       "duplicate task name 'lambada'"},
      {"missing model path", Replace(good, "models/ref-gpt2", "models/nope"),
       "models[1].path: model path '"},
      {"missing data", Replace(good, "lambada_test.jsonl", "missing.jsonl"),
       "tasks[0].data: data file '"},
      {"unknown task", Replace(good, "task: lambada_openai", "task: hellaswag"),
       "unknown task 'hellaswag'"},
      {"negative limit", Replace(good, "limit: 5", "limit: -1"), "-1 is out of range"},
      {"exclude unknown model", good + "exclude:\n  - {model: mistral}\n",
       "exclude[0].model: no model named 'mistral'"},
      {"constraint field", good + "constraints: [\"rnk <= 3\"]\n", "unknown field 'rnk'"},
      {"constraint syntax", good + "constraints: [\"r is small\"]\n", "expected '<a> <op> <b>'"},
      {"zip per-model kv_heads", Replace(good, "name: test-sweep", "name: z\nmode: zip"),
       "per-model kv_heads lists are only allowed with mode: product"},
      {"zip lengths",
       "name: z\nmode: zip\nmodels: [models/ref-llama, models/ref-gpt2]\n"
       "tasks: [{task: lambada_openai, data: data/lambada_openai/lambada_test.jsonl}]\n"
       "methods: [none, \"quant:bits=4\", \"quant:bits=2\"]\n",
       "mode zip: models has 2 entries; every list must have 3"},
      {"bad mode", Replace(good, "name: test-sweep", "name: z\nmode: grid"),
       "'grid' is not product or zip"},
      {"all excluded", good + "constraints: [\"head_dim < 8\"]\n",
       "the sweep has no jobs left after exclude/constraints"},
  };
  for (const BadCase& c : cases) {
    auto s = ExpandSweep(c.yaml, Opts());
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument)
        << c.name << ": " << s.status();
    EXPECT_THAT(std::string(s.status().message()), HasSubstr(c.fragment)) << c.name;
    // One line: the CLI prints it as is.
    EXPECT_EQ(std::string(s.status().message()).find('\n'), std::string::npos) << c.name;
  }
}

// Labels reach tables, CSV and SQL views: a NUL cut them short there and bidi controls reorder
// what is shown. Names and labels with control or bidi characters are refused where they are
// written, and user text quoted in any error is escaped, so the message stays one line.
TEST(SweepSpecTest, LabelsWithControlOrBidiCharactersAreRefused) {
  const std::string good = Yaml("  - none\n");
  const std::vector<BadCase> cases = {
      {"NUL and RLO in a method label",
       Yaml("  - {spec: \"quant:bits=4\", label: \"<script>\\u0000x\\u202e\"}\n"),
       "sweep.yaml:15: methods[0].label: contains the control character U+0000"},
      {"RLO in a method label", Yaml("  - {spec: \"quant:bits=4\", label: \"a\\u202eb\"}\n"),
       "sweep.yaml:15: methods[0].label: contains the Unicode bidi control U+202E"},
      {"LRE", Yaml("  - {spec: none, label: \"\\u202a\"}\n"), "bidi control U+202A"},
      {"FSI", Yaml("  - {spec: none, label: \"x\\u2068\"}\n"), "bidi control U+2068"},
      {"PDI", Yaml("  - {spec: none, label: \"x\\u2069\"}\n"), "bidi control U+2069"},
      {"LRM", Yaml("  - {spec: none, label: \"x\\u200e\"}\n"), "bidi control U+200E"},
      {"RLM", Yaml("  - {spec: none, label: \"x\\u200f\"}\n"), "bidi control U+200F"},
      {"newline", Yaml("  - {spec: none, label: \"a\\nb\"}\n"), "control character U+000A"},
      {"tab", Yaml("  - {spec: none, label: \"a\\tb\"}\n"), "control character U+0009"},
      {"DEL", Yaml("  - {spec: none, label: \"a\\x7fb\"}\n"), "control character U+007F"},
      {"C1 NEL", Yaml("  - {spec: none, label: \"a\\x85b\"}\n"), "control character U+0085"},
      {"C1 CSI", Yaml("  - {spec: none, label: \"a\\u009bb\"}\n"), "control character U+009B"},
      {"model name", Replace(good, "name: gpt2", "name: \"gp\\u202et2\""),
       "sweep.yaml:6: models[1].name: contains the Unicode bidi control U+202E"},
      {"task name", Replace(good, "name: lambada", "name: \"lam\\u0000bada\""),
       "sweep.yaml:10: tasks[0].name: contains the control character U+0000"},
      {"budget as written", Yaml("  - {family: rank, budgets: [\"0.25\\t\"]}\n"),
       "sweep.yaml:15: methods[0].budgets[0]: the method label contains the control character "
       "U+0009"},
      {"exclude value", good + "exclude:\n  - {model: \"llama\\u0000\"}\n",
       "sweep.yaml:17: exclude[0].model: contains the control character U+0000"},
      // Quoted in another error: escaped.
      {"quoted spec", Yaml("  - \"foo\\u202e:x=1\\u0000\"\n"),
       "sweep.yaml:15: methods[0]: method 'foo\\u202E:x=1\\u0000': unknown family "
       "'foo\\u202E'"},
  };
  for (const BadCase& c : cases) {
    auto s = ExpandSweep(c.yaml, Opts());
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument)
        << c.name << ": " << s.status();
    const std::string msg(s.status().message());
    EXPECT_THAT(msg, HasSubstr(c.fragment)) << c.name;
    for (unsigned char ch : msg) {
      EXPECT_TRUE(ch >= 0x20 && ch != 0x7f) << c.name << ": raw control character in " << msg;
    }
    EXPECT_EQ(msg.find("\xe2\x80\xae"), std::string::npos) << c.name;  // U+202E
  }
  // Printable Unicode is fine.
  auto s = ExpandSweep(
      Yaml("  - {spec: \"quant:bits=4\", label: \"4 bits \u2713 gr\u00f6\u00dfe\"}\n"), Opts());
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->jobs[0].labels["method"], "4 bits \u2713 gr\u00f6\u00dfe");
}

// `path: org/name` names a model in the Hugging Face hub cache (here a snapshot that links to
// the assets' ref-llama); its label is the repo id. `dtype: auto` is each model's own dtype
// (both assets' models are stored in float16), transformers' spellings are accepted, and an
// exclude rule on a dtype matches however the dtype was spelled.
TEST(SweepSpecTest, RepoIdsAndTransformersDtypes) {
  namespace fs = std::filesystem;
  const std::string hub = absl::StrCat(::testing::TempDir(), "/kvsweep_sweep_hub_", ::getpid());
  const std::string commit = "89abcdef0123456789abcdef0123456789abcdef";
  fs::create_directories(hub + "/models--acme--llama/refs");
  fs::create_directories(hub + "/models--acme--llama/snapshots");
  std::ofstream(hub + "/models--acme--llama/refs/main") << commit << "\n";
  fs::create_directory_symlink(AssetsDir() + "/models/ref-llama",
                               hub + "/models--acme--llama/snapshots/" + commit);
  ::setenv("HF_HUB_CACHE", hub.c_str(), 1);
  ExpandOptions o = Opts();
  o.allowed_roots = SweepPathRoots({}, o.base_dir);  // the hub cache is among the defaults
  auto s = ExpandSweep(R"(name: hub
models: [acme/llama, models/ref-gpt2]
tasks: [{task: lambada_openai, data: data/lambada_openai/lambada_test.jsonl, limit: 2}]
methods: [none]
dtype: [auto, bfloat16, torch.float32]
exclude: [{model: ref-gpt2, dtype: float16}]
)",
                       o);
  auto missing = ExpandSweep(R"(name: hub
models: [acme/other]
tasks: [{task: lambada_openai, data: data/lambada_openai/lambada_test.jsonl, limit: 2}]
methods: [none]
)",
                             o);
  auto bad_dtype = ExpandSweep(Yaml("  - none\n", "dtype: [int8]\n"), o);
  ::unsetenv("HF_HUB_CACHE");
  fs::remove_all(hub);
  ASSERT_TRUE(s.ok()) << s.status();
  std::multiset<std::string> got;
  for (const SweepJob& j : s->jobs) {
    got.insert(absl::StrCat(j.labels["model"].get<std::string>(), " ",
                            j.labels["dtype"].get<std::string>()));
  }
  EXPECT_EQ(got, (std::multiset<std::string>{"acme/llama fp16", "acme/llama bf16",
                                             "acme/llama fp32", "ref-gpt2 bf16", "ref-gpt2 fp32"}));
  EXPECT_EQ(s->excluded, 1);
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("models[0].path: model path '"));
  EXPECT_THAT(std::string(missing.status().message()),
              HasSubstr("does not exist, and model 'acme/other' is not in the Hugging Face cache"));
  ASSERT_FALSE(bad_dtype.ok());
  EXPECT_THAT(std::string(bad_dtype.status().message()),
              HasSubstr("dtype: 'int8' is not fp32, bf16, fp16"));
}

// K and V apart: an explicit spec, and a family × budget whose K and V get their own keys (the
// solver picks one bit width for both); labels say which part got what.
TEST(SweepSpecTest, KAndVApartExplicitAndSolved) {
  auto s = ExpandSweep(R"(name: kivi
models: [models/ref-llama]
tasks: [{task: lambada_openai, data: data/lambada_openai/lambada_test.jsonl, limit: 2}]
methods:
  - "k=quant:bits=2,axis=channel,group=32;v=quant:bits=2"
  - {family: quant, budgets: [0.25], k: "axis=channel,group=32,sym=1", v: "axis=token"}
  - "quant:bits=2;layers=0:none"
  - "k=quant:bits=4;v=quant:bits=4"
  - quant:bits=4
)",
                       Opts());
  ASSERT_TRUE(s.ok()) << s.status();
  // The last two are one job.
  EXPECT_EQ(s->jobs.size(), 4u);
  EXPECT_EQ(s->merged, 1);
  std::map<std::string, std::pair<std::string, std::string>> by_label;
  for (const SweepJob& j : s->jobs) {
    by_label[j.labels["method"].get<std::string>()] = {j.labels["family"].get<std::string>(),
                                                       j.spec.method};
  }
  const auto& kivi = by_label.at("k=quant:bits=2,axis=channel,group=32;v=quant:bits=2");
  EXPECT_EQ(kivi.first, "quant");
  EXPECT_THAT(kivi.second, StartsWith("k=quant:bits=2,group=32,axis=channel"));
  const auto& solved = by_label.at("quant@0.25[k:axis=channel,group=32,sym=1][v:axis=token]");
  EXPECT_EQ(solved.first, "quant");
  EXPECT_THAT(solved.second, StartsWith("k=quant:bits=4,group=32,axis=channel,sym=1,target=k"));
  EXPECT_THAT(solved.second, HasSubstr(";v=quant:bits=4,group=64,axis=token,sym=0,target=v"));
  EXPECT_EQ(by_label.at("quant:bits=2;layers=0:none").first, "quant+layers");

  auto bad =
      ExpandSweep(Yaml("  - {family: quant, budgets: [0.25], k: \"axis=diagonal\"}\n"), Opts());
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(
      std::string(bad.status().message()),
      HasSubstr("methods[0].k: method 'quant:bits=4,axis=diagonal': axis=diagonal is not one of"));
  auto beyond = ExpandSweep(Yaml("  - \"quant:bits=2;layers=0-9:none\"\n"), Opts());
  ASSERT_FALSE(beyond.ok());
  EXPECT_THAT(std::string(beyond.status().message()), HasSubstr("beyond the model's 6 layers"));
}

// A family's extra keys are checked against that family with its required keys filled in: a
// hybrid budget with a basis works (hybrid requires r and bits, which the solver sets), a key
// the family does not have is refused naming the family.
TEST(SweepSpecTest, ExtraKeysAreCheckedAgainstTheirFamily) {
  auto s =
      ExpandSweep(Yaml("  - {family: hybrid, budgets: [0.25], extra: \"basis=svd\"}\n"), Opts());
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_FALSE(s->jobs.empty());
  for (const SweepJob& j : s->jobs) {
    EXPECT_THAT(j.spec.method, StartsWith("hybrid:r=")) << j.spec.method;
    EXPECT_THAT(j.spec.method, HasSubstr(",bits=8,")) << j.spec.method;
    EXPECT_THAT(j.spec.method, HasSubstr("basis=svd")) << j.spec.method;
  }
  auto bad = ExpandSweep(Yaml("  - {family: rank, budgets: [0.25], extra: \"bits=4\"}\n"), Opts());
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()),
              HasSubstr("methods[0].extra: method 'rank:r=1,bits=4': unknown key 'bits' for rank"));
  auto none = ExpandSweep(Yaml("  - {family: none, budgets: [1], extra: \"bits=4\"}\n"), Opts());
  ASSERT_FALSE(none.ok());
  EXPECT_THAT(std::string(none.status().message()), HasSubstr("family 'none' takes no keys"));
}

TEST(SweepSpecTest, RefusesSweepsBeyondTheJobLimit) {
  ExpandOptions o = Opts();
  o.max_jobs = 10;
  EXPECT_TRUE(ExpandSweep(Yaml("  - none\n  - quant:bits=4\n"), o).ok());
  o.max_jobs = 9;
  auto s = ExpandSweep(Yaml("  - none\n  - quant:bits=4\n"), o);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("expands to 10 combinations (limit 9)"));
}

TEST(SweepSpecTest, ZipIsHeldToTheJobLimitBeforeAnyJobIsResolved) {
  // rank:r=128 cannot be resolved on head_dim 64: had any job been resolved, that would be the
  // error instead of the count.
  const std::string yaml = R"(name: zipped
mode: zip
models: [models/ref-llama]
tasks:
  - {task: lambada_openai, data: data/lambada_openai/lambada_test.jsonl, limit: 3}
methods: [none, "quant:bits=2", "rank:r=128,basis=svd"]
)";
  ExpandOptions o = Opts();
  o.max_jobs = 2;
  auto s = ExpandSweep(yaml, o);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << s.status();
  EXPECT_THAT(std::string(s.status().message()),
              HasSubstr("sweep.yaml: the sweep expands to 3 combinations (limit 2)"));
  o.max_jobs = 3;
  s = ExpandSweep(yaml, o);
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("method 'rank:r=128,basis=svd'"));

  // The default limit, reached through one long list (seeds apply to none of the methods, so
  // without the limit these would all be resolved and merged into one job).
  std::string seeds = "seeds: [0";
  for (int i = 1; i <= 200000; ++i) absl::StrAppend(&seeds, ",", i);
  seeds += "]\n";
  s = ExpandSweep(absl::StrCat(R"(name: zipped
mode: zip
models: [models/ref-llama]
tasks:
  - {task: lambada_openai, data: data/lambada_openai/lambada_test.jsonl, limit: 3}
methods: [none]
)",
                               seeds),
                  Opts());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << s.status();
  EXPECT_THAT(std::string(s.status().message()),
              HasSubstr("the sweep expands to 200001 combinations (limit 200000)"));
}

constexpr std::chrono::seconds kHangGuard(60);

template <typename T>
bool Ready(std::future<T>& f, std::chrono::milliseconds wait) {
  return f.wait_for(wait) == std::future_status::ready;
}

// Opens each FIFO for writing (and closes it again) until `done`: any open() blocked waiting for
// a writer returns, so a test of code that blocks still ends.
void ReleaseFifoReaders(const std::vector<std::string>& fifos, const std::function<bool()>& done) {
  while (!done()) {
    for (const std::string& p : fifos) {
      int fd = ::open(p.c_str(), O_WRONLY | O_NONBLOCK);
      if (fd >= 0) ::close(fd);
    }
  }
}

class NonRegularFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = JoinPath(::testing::TempDir(), absl::StrCat("kvsweep_sweep_fifo_", ::getpid()));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Fifo(const std::string& name) {
    const std::string p = JoinPath(dir_, name);
    EXPECT_EQ(::mkfifo(p.c_str(), 0600), 0) << p;
    return p;
  }
  // ref-llama with its weights replaced by `weights` (config and tokenizer are links).
  std::string ModelWithWeights(const std::string& weights) {
    const std::string d = JoinPath(dir_, "model");
    std::filesystem::create_directories(d);
    for (const char* f : {"config.json", "tokenizer.json", "tokenizer_config.json"}) {
      std::filesystem::create_symlink(AssetsDir() + "/models/ref-llama/" + f, JoinPath(d, f));
    }
    std::filesystem::create_symlink(weights, JoinPath(d, "model.safetensors"));
    return d;
  }
  static std::string OneModel(const std::string& model, const std::string& data) {
    return absl::StrCat("name: odd-files\nmodels: [", model,
                        "]\ntasks:\n  - {task: wikitext, data: ", data, "}\nmethods: [none]\n");
  }
  static void ExpectRefused(const absl::StatusOr<ExpandedSweep>& s, const std::string& path) {
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << s.status();
    const std::string m(s.status().message());
    EXPECT_THAT(m, HasSubstr(absl::StrCat("'", path, "': not a regular file")));
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
  }

  std::string dir_;
};

// A FIFO (data file or model weights) is refused at once, and a normal sweep is not held up
// meanwhile: no expansion waits on a FIFO, under a lock or otherwise. The waits are hang guards.
TEST_F(NonRegularFileTest, FifoIsRefusedAndBlocksNoOtherSweep) {
  const std::string data_fifo = Fifo("data.fifo");
  const std::string weights_fifo = Fifo("weights.fifo");
  const std::string model = ModelWithWeights(weights_fifo);
  const std::string llama = AssetsDir() + "/models/ref-llama";
  const std::string wiki = AssetsDir() + "/data/wikitext-2/wiki.test.raw";
  auto data = std::async(std::launch::async,
                         [=] { return ExpandSweep(OneModel(llama, data_fifo), Opts()); });
  EXPECT_TRUE(Ready(data, kHangGuard)) << "a sweep whose data is a FIFO: still blocked";
  auto weights =
      std::async(std::launch::async, [=] { return ExpandSweep(OneModel(model, wiki), Opts()); });
  EXPECT_TRUE(Ready(weights, kHangGuard)) << "a sweep whose weights are a FIFO: still blocked";
  // Whether or not those are stuck, a normal sweep expands.
  auto normal =
      std::async(std::launch::async, [] { return ExpandSweep(Yaml("  - none\n"), Opts()); });
  EXPECT_TRUE(Ready(normal, kHangGuard)) << "a normal sweep: held up by the FIFO sweeps";
  ReleaseFifoReaders({data_fifo, weights_fifo}, [&] {
    return Ready(data, std::chrono::milliseconds(50)) &&
           Ready(weights, std::chrono::milliseconds(0)) &&
           Ready(normal, std::chrono::milliseconds(0));
  });
  auto d = data.get();
  ExpectRefused(d, data_fifo);
  EXPECT_THAT(std::string(d.status().message()), HasSubstr("sweep.yaml:4: tasks[0].data: "));
  ExpectRefused(weights.get(), JoinPath(model, "model.safetensors"));
  auto n = normal.get();
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(n->jobs.size(), 5u);
}

// Character devices: /dev/zero used to hash as an empty file.
TEST_F(NonRegularFileTest, DevZeroIsRefused) {
  const std::string wiki = AssetsDir() + "/data/wikitext-2/wiki.test.raw";
  ExpectRefused(ExpandSweep(OneModel(AssetsDir() + "/models/ref-llama", "/dev/zero"), Opts()),
                "/dev/zero");
  const std::string model = ModelWithWeights("/dev/zero");
  ExpectRefused(ExpandSweep(OneModel(model, wiki), Opts()), JoinPath(model, "model.safetensors"));
  ExpectRefused(ExpandSweep(OneModel("/dev/zero", wiki), Opts()), "/dev/zero");
}

}  // namespace
}  // namespace kvsweep

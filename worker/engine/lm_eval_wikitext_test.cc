// lm-evaluation-harness's `wikitext` against an independent implementation of its definitions
// (tools/reference/lm_eval_wikitext.py: Python's re and str, transformers' GPT-2 in fp32 on the
// accelerator, TF32 off), whose output for ref-gpt2 on wiki.test.raw is
// tests/fixtures/lm_eval_wikitext_ref-gpt2.json.
//
// Quick: the detokenizer and the document split on small strings (expected values printed by the
// Python reference), then the whole file's 62 documents, their detokenized texts, token ids
// (ref-gpt2's tokenizer), words and bytes, all exact; the --format lm-eval shape; the engine's
// refusal of a wikitext spec of the stream definition.
// Slow (labels slow, reference): `kvsweep-worker eval --task wikitext --format lm-eval` on
// ref-gpt2 over the whole file: the total loglik, bits_per_byte, word_perplexity and
// byte_perplexity, and every document's loglik, within 1e-6 relative.
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/hash.h"
#include "common/json_util.h"
#include "gtest/gtest.h"
#include "spec/job_spec.h"
#include "stats/eval_units.h"
#include "worker/engine/eval.h"
#include "worker/engine/lm_eval_format.h"
#include "worker/engine/tasks/task.h"
#include "worker/engine/tasks/wikitext_documents.h"
#include "worker/engine/tokenizer/tokenizer.h"

namespace kvsweep::engine {
namespace {

// fp32 kvsweep on the CPU against fp32 transformers on the H200. The reference's own rounding is
// far below the bound (its fp64 rerun differs by < 1e-7 per document). The engine's logits are
// fp32 and its log-sum-exp normaliser fp64 (an fp32 one over 50,257 terms raised every token's
// log-probability by 2.4e-6 to 6.6e-6 nats, which word_perplexity magnifies by ln(1170) = 7 to
// 4e-6 relative). On the development box the largest difference is 1e-7 (one document) and 7e-8
// (word_perplexity): the bound leaves a CPU with other vector lanes ten times that.
constexpr double kRelTol = 1e-6;

const nlohmann::json& Fixture() {
  static const nlohmann::json* f = [] {
    auto j = ReadJsonFile(std::string(KVSWEEP_FIXTURES) + "/lm_eval_wikitext_ref-gpt2.json");
    EXPECT_TRUE(j.ok()) << j.status();
    return new nlohmann::json(j.ok() ? *j : nlohmann::json::object());
  }();
  return *f;
}

std::string WikiTestRaw() { return AssetsDir() + "/data/wikitext-2/wiki.test.raw"; }

double Rel(double got, double want) { return std::fabs(got - want) / std::fabs(want); }

TEST(WikitextDocumentsTest, DetokenizerAsPython) {
  // Inputs and outputs from lm_eval_wikitext.py's wikitext_detokenizer (Python's re and str).
  const std::pair<std::string, std::string> cases[] = {
      {"The dog 's bone , and the cats ' toys @-@ 1 @,@ 000 @.@ 5 : a ; b . c ! d ? e",
       "The dog's bone, and the cats' toys-1,000.5: a; b. c! d? e"},
      {"( a b ) [ c ] { d } \" e \" ' f ' ( unclosed", "(a b) [c] {d} \"e\" 'f' ( unclosed"},
      {"x = = y = = = z = = = = w 5 \xC2\xB0 C N \n next \n",
       "x == y === z ==== w 5\xC2\xB0"
       "C N\nnext\n"},
      // U+00A0 is whitespace to Python's \s.
      {"a '  b\xC2\xA0' c ' d", "a 'b' c ' d"},
      // The replacement is the literal text "/'[0-9]/".
      {"/' 3/ and /' x/", "/'[0-9]/ and /' x/"},
      {"( \xE2\x80\x83inner\xE2\x80\x83 )", "(inner)"},
      {"it 's ( one ( two ) three )", "it's (one ( two) three )"},
  };
  for (const auto& [in, want] : cases) EXPECT_EQ(WikitextDetokenize(in), want) << in;
}

TEST(WikitextDocumentsTest, WordsAsPythonReSplit) {
  // len(re.split(r"\s+", s)).
  EXPECT_EQ(CountWordsLmEval(""), 1);
  EXPECT_EQ(CountWordsLmEval(" "), 2);
  EXPECT_EQ(CountWordsLmEval("a b"), 2);
  EXPECT_EQ(CountWordsLmEval(" a  b \n"), 4);
  EXPECT_EQ(CountWordsLmEval("a\xC2\xA0"
                             "b\xE3\x80\x80"
                             "c"),
            3);  // U+00A0, U+3000
  EXPECT_EQ(CountWordsLmEval("a\xE2\x80\x8B"
                             "b"),
            1);  // U+200B is not whitespace
}

TEST(WikitextDocumentsTest, SplitAsTheDatasetBuilder) {
  using V = std::vector<std::string>;
  EXPECT_EQ(SplitWikitextDocuments(" \n = A = \n x \n = = B = = \n y \n = C = \n\n = D =\n"),
            (V{" = A = \n x \n = = B = = \n y ", " = C = \n", " = D =\n"}));
  EXPECT_EQ(SplitWikitextDocuments("no headings\nhere\n"), (V{"no headings\nhere\n"}));
  EXPECT_EQ(SplitWikitextDocuments(""), (V{""}));
  EXPECT_EQ(TranslateNewlines("a\r\nb\rc\n"), "a\nb\nc\n");
}

// Every document of wiki.test.raw as the reference has it: page and detokenized text (sha256),
// ref-gpt2 token ids (sha256 of the comma-joined ids), words and bytes.
TEST(WikitextDocumentsTest, WholeFileDocumentsMatchTheReference) {
  absl::StatusOr<std::string> raw = ReadFile(WikiTestRaw());
  ASSERT_TRUE(raw.ok()) << raw.status();
  EXPECT_EQ(Sha256Hex(*raw), Fixture()["data_sha256"]);
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = LoadTokenizer(AssetsDir() + "/models/ref-gpt2");
  ASSERT_TRUE(tok.ok()) << tok.status();
  const std::vector<std::string> pages = SplitWikitextDocuments(TranslateNewlines(*raw));
  const nlohmann::json& docs = Fixture()["documents"];
  ASSERT_EQ(pages.size(), docs.size());
  for (size_t i = 0; i < pages.size(); ++i) {
    const nlohmann::json& d = docs[i];
    const std::string text = WikitextDetokenize(pages[i]);
    absl::StatusOr<std::vector<int32_t>> ids = (*tok)->Encode(text);
    ASSERT_TRUE(ids.ok()) << ids.status();
    EXPECT_EQ(Sha256Hex(pages[i]), d["page_sha256"]) << "document " << i << " " << d["title"];
    EXPECT_EQ(Sha256Hex(text), d["target_sha256"]) << "document " << i << " " << d["title"];
    EXPECT_EQ(Sha256Hex(absl::StrJoin(*ids, ",")), d["ids_sha256"]) << "document " << i;
    EXPECT_EQ(static_cast<int64_t>(ids->size()), d["tokens"]) << "document " << i;
    EXPECT_EQ(CountWordsLmEval(pages[i]), d["words"]) << "document " << i;
    EXPECT_EQ(static_cast<int64_t>(pages[i].size()), d["bytes"]) << "document " << i;
    EXPECT_EQ(
        static_cast<int64_t>(RollingWindows(*ids, 0, Fixture()["max_length"].get<int>(), 1).size()),
        d["windows"])
        << "document " << i;
  }
}

TEST(LmEvalFormatTest, KeysAsLmEvalWritesThem) {
  nlohmann::json wiki = {
      {"spec",
       {{"task", {{"name", "wikitext"}, {"limit", 0}, {"window", 1024}}}, {"method", "none"}}},
      {"metrics",
       {{"wikitext",
         {{"word_ppl", 10.0},
          {"byte_ppl", 1.5},
          {"bits_per_byte", 0.58},
          {"word_ppl_stderr", 0.1},
          {"documents", 62}}}}}};
  nlohmann::json out = LmEvalOutput(wiki);
  const nlohmann::json& r = out["results"]["wikitext"];
  EXPECT_EQ(r["alias"], "wikitext");
  EXPECT_EQ(r["word_perplexity,none"], 10.0);
  EXPECT_EQ(r["byte_perplexity,none"], 1.5);
  EXPECT_EQ(r["bits_per_byte,none"], 0.58);
  EXPECT_EQ(r["word_perplexity_stderr,none"], "N/A");  // lm-eval has none for these
  EXPECT_EQ(out["versions"]["wikitext"], 2.0);
  EXPECT_EQ(out["n-samples"]["wikitext"]["effective"], 62);
  EXPECT_EQ(out["higher_is_better"]["wikitext"]["word_perplexity"], false);
  EXPECT_EQ(out["kvsweep"], wiki);

  nlohmann::json lam = {
      {"spec", {{"task", {{"name", "lambada_openai"}, {"limit", 8}, {"window", 1024}}}}},
      {"metrics",
       {{"lambada_openai",
         {{"acc", 0.5}, {"acc_stderr", 0.18}, {"ppl", 20.0}, {"ppl_stderr", 3.0}, {"n", 8}}}}}};
  out = LmEvalOutput(lam);
  EXPECT_EQ(out["results"]["lambada_openai"], (nlohmann::json{{"alias", "lambada_openai"},
                                                              {"acc,none", 0.5},
                                                              {"acc_stderr,none", 0.18},
                                                              {"perplexity,none", 20.0},
                                                              {"perplexity_stderr,none", 3.0}}));
  EXPECT_EQ(out["versions"]["lambada_openai"], 1.0);
  EXPECT_EQ(out["config"]["limit"], 8);
  EXPECT_EQ(out["n-samples"]["lambada_openai"], (nlohmann::json{{"effective", 8}}));
}

// A `wikitext` spec resolved when the name meant the stream (no task.definition) is refused,
// not evaluated under its old job id; resolved again, it runs.
TEST(LmEvalWikitextIdentity, EngineRefusesASpecOfTheEarlierDefinition) {
  JobRequest r;
  r.model_path = AssetsDir() + "/models/ref-gpt2";
  r.task = "wikitext";
  r.data_path = WikiTestRaw();
  r.limit = 1;
  r.window = 64;
  absl::StatusOr<JobSpec> spec = ResolveJob(r);
  ASSERT_TRUE(spec.ok()) << spec.status();
  JobSpec old = *spec;
  old.task_definition.clear();
  Engine engine{EngineOptions{}};
  absl::StatusOr<nlohmann::json> refused = engine.Run(old, nullptr);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.status().message().find("defines task 'wikitext' as ''"), std::string::npos)
      << refused.status();
  absl::StatusOr<nlohmann::json> ok = engine.Run(*spec, nullptr);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ((*ok)["metrics"]["wikitext"]["documents"], 1);
  EXPECT_EQ((*ok)["spec"]["task"]["definition"], "lm-eval-documents");
}

// The task as a user runs it: `kvsweep-worker eval --task wikitext --format lm-eval` on ref-gpt2
// over the whole of wiki.test.raw (CPU, fp32).
TEST(LmEvalWikitextReference, RefGpt2WholeFileMatchesTheIndependentImplementation) {
  const std::string out =
      ::testing::TempDir() + "/lm_eval_wikitext_" + std::to_string(::getpid()) + ".json";
  const std::string cmd = absl::StrCat("'", KVSWEEP_WORKER_BIN, "' eval --model '", AssetsDir(),
                                       "/models/ref-gpt2' --task wikitext --data '", WikiTestRaw(),
                                       "' --dtype fp32 --format lm-eval > '", out, "'");
  const int rc = std::system(cmd.c_str());
  ASSERT_TRUE(WIFEXITED(rc) && WEXITSTATUS(rc) == 0) << cmd;
  absl::StatusOr<nlohmann::json> j = ReadJsonFile(out);
  ASSERT_TRUE(j.ok()) << j.status();
  const nlohmann::json& f = Fixture();

  // Aggregates, under lm-eval's key names.
  const nlohmann::json& r = (*j)["results"]["wikitext"];
  for (const char* k : {"word_perplexity", "byte_perplexity", "bits_per_byte"}) {
    const double got = r[absl::StrCat(k, ",none")].get<double>(),
                 want = f["results"][k].get<double>();
    const double rel = Rel(got, want);
    EXPECT_LE(rel, kRelTol) << k << ": " << got << " vs reference " << want;
    std::printf("%s: kvsweep %.10g, reference %.10g, rel diff %.3g\n", k, got, want, rel);
  }
  const nlohmann::json& m = (*j)["kvsweep"]["metrics"]["wikitext"];
  for (const char* k : {"documents", "tokens", "words", "bytes", "windows"}) {
    EXPECT_EQ(m[k], f["totals"][k]) << k;
  }
  const double total_rel = Rel(m["loglik_sum"].get<double>(), f["totals"]["loglik"].get<double>());
  EXPECT_LE(total_rel, kRelTol);
  std::printf("total loglik: rel diff %.3g\n", total_rel);

  // Per document: one unit each, in file order.
  absl::StatusOr<EvalUnits> units = EvalUnits::FromJson(m["units"]);
  ASSERT_TRUE(units.ok()) << units.status();
  ASSERT_EQ(units->size(), f["documents"].size());
  EXPECT_EQ(units->kind, "document");
  double worst = 0;
  for (size_t i = 0; i < units->size(); ++i) {
    const nlohmann::json& d = f["documents"][i];
    const double rel = Rel(units->loglik[i], d["loglik"].get<double>());
    worst = std::max(worst, rel);
    EXPECT_LE(rel, kRelTol) << "document " << i << " " << d["title"] << ": " << units->loglik[i]
                            << " vs reference " << d["loglik"];
    EXPECT_EQ(units->tokens[i], d["tokens"]) << "document " << i;
    EXPECT_EQ(units->words[i], d["words"]) << "document " << i;
    EXPECT_EQ(units->bytes[i], d["bytes"]) << "document " << i;
  }
  std::printf("largest per-document relative loglik difference: %.3g\n", worst);
}

}  // namespace
}  // namespace kvsweep::engine

// `kvsweep-worker eval` as a user runs it: a real process, its stdout, stderr and exit status.
// Every bad input must be exactly one line on stderr ("error: ..."), nothing on stdout, a
// non-zero exit (2 for bad input), and no crash.
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "spec/job_spec.h"

namespace kvsweep {
namespace {

namespace fs = std::filesystem;

struct ProcResult {
  int status = -1;
  std::string out, err;
};

std::string Quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// ctest runs each test as its own process, several at once: every scratch path carries the pid.
std::string Scratch(const std::string& name) {
  return ::testing::TempDir() + "/kvsweep_cli_" + std::to_string(::getpid()) + "_" + name;
}

ProcResult Exec(const std::vector<std::string>& args) {
  const std::string out = Scratch("out.txt"), err = Scratch("err.txt");
  std::string cmd = Quote(KVSWEEP_WORKER_BIN);
  for (const auto& a : args) cmd += " " + Quote(a);
  cmd += " >" + out + " 2>" + err;
  int rc = std::system(cmd.c_str());
  ProcResult r;
  r.status = WIFEXITED(rc) ? WEXITSTATUS(rc) : 128 + WTERMSIG(rc);
  r.out = ReadFile(out).value_or("");
  r.err = ReadFile(err).value_or("");
  return r;
}

std::string A(const std::string& rel) { return AssetsDir() + "/" + rel; }
const std::string kLambada = "data/lambada_openai/lambada_test.jsonl";

std::vector<std::string> Eval(const std::string& model, const std::string& task,
                              const std::string& data, std::vector<std::string> extra = {}) {
  std::vector<std::string> a = {"eval",   "--model", model,      "--task", task,
                                "--data", data,      "--format", "json"};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

std::string TempFile(const std::string& name, const std::string& content) {
  const std::string p = Scratch(name);
  EXPECT_TRUE(WriteFileAtomic(p, content).ok());
  return p;
}

void ExpectOneLineError(const std::vector<std::string>& args, const std::string& fragment,
                        int code = 2) {
  ProcResult r = Exec(args);
  EXPECT_EQ(r.status, code) << absl::StrJoin(args, " ") << "\nstderr: " << r.err;
  EXPECT_TRUE(r.out.empty()) << "stdout: " << r.out;
  std::vector<std::string> lines = absl::StrSplit(r.err, '\n', absl::SkipEmpty());
  // Log lines (I/W ...) may precede; the error itself is one line starting with "error:".
  ASSERT_FALSE(lines.empty());
  EXPECT_EQ(lines.back().rfind("error: ", 0), 0u) << r.err;
  EXPECT_NE(lines.back().find(fragment), std::string::npos)
      << "expected '" << fragment << "' in: " << lines.back();
  int errors = 0;
  for (const auto& l : lines) errors += l.rfind("error:", 0) == 0;
  EXPECT_EQ(errors, 1) << r.err;
}

TEST(EvalCliTest, JsonContract) {
  ProcResult r = Exec(Eval(A("models/ref-llama"), "lambada_openai", A(kLambada), {"--limit", "8"}));
  ASSERT_EQ(r.status, 0) << r.err;
  // Exactly one JSON object on stdout.
  auto j = nlohmann::json::parse(r.out);
  for (const char* k : {"spec", "metrics", "ledger", "timing", "provenance"})
    EXPECT_TRUE(j.contains(k)) << k;
  for (const char* k : {"acc", "ppl", "loglik_sum", "n"})
    EXPECT_TRUE(j["metrics"]["lambada_openai"].contains(k)) << k;
  EXPECT_EQ(j["metrics"]["lambada_openai"]["n"], 8);
  for (const char* k : {"k", "v", "fraction_payload", "fraction_total", "kv_heads"})
    EXPECT_TRUE(j["ledger"].contains(k)) << k;
  for (const char* k : {"wall_s", "tokens_per_s"}) EXPECT_TRUE(j["timing"].contains(k)) << k;
  EXPECT_EQ(j["spec"]["method"], "none");
  EXPECT_EQ(j["spec"]["job_id"].get<std::string>().size(), 64u);
  EXPECT_EQ(r.out.find('\n'), r.out.size() - 1);  // one line
}

// `--model org/name` evaluates the snapshot the Hugging Face hub cache holds for it (here one
// that links to the assets' ref-llama), labelled with the repo id, with transformers' dtype
// names; the numbers equal the same job named by its directory. `--dtype auto` is the
// checkpoint's own dtype (float16), which libtorch 1.13 cannot compute in on the CPU: a clear
// error then, not a failure inside a matmul.
TEST(EvalCliTest, RepoIdFromTheHubCacheAndAutoDtype) {
  const std::string hub = Scratch("hub");
  const std::string commit = "0123456789abcdef0123456789abcdef01234567";
  fs::create_directories(hub + "/models--acme--llama/refs");
  fs::create_directories(hub + "/models--acme--llama/snapshots");
  std::ofstream(hub + "/models--acme--llama/refs/main") << commit;
  fs::create_directory_symlink(A("models/ref-llama"),
                               hub + "/models--acme--llama/snapshots/" + commit);
  ::setenv("HF_HUB_CACHE", hub.c_str(), 1);  // the worker inherits it
  ProcResult by_id = Exec(Eval("acme/llama", "lambada_openai", A(kLambada),
                               {"--limit", "3", "--dtype", "torch.float32"}));
  ProcResult missing = Exec(Eval("acme/absent", "lambada_openai", A(kLambada), {"--limit", "3"}));
  ProcResult autod =
      Exec(Eval("acme/llama", "lambada_openai", A(kLambada), {"--limit", "3", "--dtype", "auto"}));
  ::unsetenv("HF_HUB_CACHE");
  ProcResult by_path = Exec(Eval(A("models/ref-llama"), "lambada_openai", A(kLambada),
                                 {"--limit", "3", "--dtype", "fp32"}));
  fs::remove_all(hub);
  ASSERT_EQ(by_id.status, 0) << by_id.err;
  ASSERT_EQ(by_path.status, 0) << by_path.err;
  auto a = nlohmann::json::parse(by_id.out), b = nlohmann::json::parse(by_path.out);
  EXPECT_EQ(a["spec"]["model_name"], "acme/llama");
  EXPECT_EQ(b["spec"]["model_name"], "ref-llama");
  EXPECT_EQ(a["spec"]["dtype"], "fp32");
  EXPECT_EQ(a["spec"]["job_id"], b["spec"]["job_id"]);
  EXPECT_EQ(a["metrics"], b["metrics"]);
  if (autod.status == 0) {  // a libtorch with fp16 on the CPU
    EXPECT_EQ(nlohmann::json::parse(autod.out)["spec"]["dtype"], "fp16");
  } else {
    EXPECT_EQ(autod.status, 2) << autod.err;
    EXPECT_NE(autod.err.find("error: fp16 is not supported on cpu by this libtorch"),
              std::string::npos)
        << autod.err;
  }
  EXPECT_EQ(missing.status, 2) << missing.err;
  EXPECT_NE(missing.err.find("model 'acme/absent' is not in the Hugging Face cache " + hub),
            std::string::npos)
      << missing.err;
}

// --format text: the summary read from the result (spec/job_result.h): the job, every metric of
// the task, the ledger's fractions, the timing. --help lists the tasks of spec/task.h.
TEST(EvalCliTest, TextSummaryAndTaskHelp) {
  std::vector<std::string> args =
      Eval(A("models/ref-llama"), "lambada_openai", A(kLambada), {"--limit", "2"});
  args[std::find(args.begin(), args.end(), "json") - args.begin()] = "text";
  ProcResult r = Exec(args);
  ASSERT_EQ(r.status, 0) << r.err;
  for (const char* k :
       {"task lambada_openai  method none  kv_heads 2", "  acc ", "  ppl ", "  loglik_sum ", "  n ",
        "  units ", "  kv fraction ", "(payload 1)", "  wall "}) {
    EXPECT_NE(r.out.find(k), std::string::npos) << k << "\n" << r.out;
  }
  ProcResult help = Exec({"eval", "--help"});
  ASSERT_EQ(help.status, 0) << help.err;
  EXPECT_NE(help.out.find("wikitext_stream | ptb | text"), std::string::npos) << help.out;
}

// `kvsweep-worker generate` (the worker binary's command; the engine does the math): stories260K
// continues "Once upon a time" as the assets' README quotes; bad input is one line, exit 2.
TEST(EvalCliTest, GenerateContinuesThePrompt) {
  ProcResult r = Exec({"generate", "--model", A("models/stories260K/stories260K.bin"),
                       "--tokenizer", A("models/stories260K/tok512.bin"), "--prompt",
                       "Once upon a time", "--max-new-tokens", "16"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("there was a little girl named Lily"), std::string::npos) << r.out;
  ExpectOneLineError({"generate", "--model", "/nonexistent/model", "--prompt", "x"},
                     "/nonexistent/model");
  ExpectOneLineError(
      {"generate", "--model", A("models/ref-llama"), "--prompt", "x", "--method", "zip:r=1"},
      "unknown family 'zip'");
}

// KVSWEEP_LOG_FORMAT=json: every log line on stderr is one JSON object; stdout is unchanged.
TEST(EvalCliTest, JsonLogs) {
  ::setenv("KVSWEEP_LOG_FORMAT", "json", 1);
  ProcResult r = Exec(Eval(A("models/ref-llama"), "lambada_openai", A(kLambada), {"--limit", "2"}));
  ::unsetenv("KVSWEEP_LOG_FORMAT");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(nlohmann::json::parse(r.out).contains("metrics"));
  int logs = 0;
  for (absl::string_view line : absl::StrSplit(r.err, '\n', absl::SkipEmpty())) {
    if (line.rfind("{", 0) != 0) continue;  // the progress bar, not a log line
    const nlohmann::json j = nlohmann::json::parse(line);
    EXPECT_TRUE(j.contains("ts") && j.contains("level") && j.contains("src") && j.contains("msg"))
        << line;
    ++logs;
  }
  EXPECT_GT(logs, 0) << r.err;
  EXPECT_EQ(r.err.find("] loaded"), std::string::npos) << "a text log line: " << r.err;
}

TEST(EvalCliTest, WikitextJsonFields) {
  const std::string text =
      TempFile("tiny.txt",
               "The quick brown fox jumps over the lazy dog.\nAnd again: the quick brown fox.\n");
  ProcResult r = Exec(Eval(A("models/ref-gpt2"), "wikitext_stream", text, {"--window", "16"}));
  ASSERT_EQ(r.status, 0) << r.err;
  auto m = nlohmann::json::parse(r.out)["metrics"]["wikitext_stream"];
  for (const char* k : {"token_ppl", "word_ppl", "byte_ppl", "bits_per_byte", "loglik_sum",
                        "tokens", "words", "bytes"}) {
    EXPECT_TRUE(m.contains(k)) << k;
  }
  EXPECT_EQ(m["words"], 15);
  EXPECT_EQ(m["bytes"], 77);
  // PTB or any file: the same protocol, named for the metrics.
  ProcResult p = Exec(Eval(A("models/ref-gpt2"), "ptb", text, {"--window", "16"}));
  ASSERT_EQ(p.status, 0) << p.err;
  auto pm = nlohmann::json::parse(p.out)["metrics"]["ptb"];
  EXPECT_EQ(pm["loglik_sum"], m["loglik_sum"]);
  // lm-eval's wikitext: a text without headings is one document; the detokenizer leaves this one
  // as it is, so the loglik is the stream's, but words count as lm-eval counts them
  // (len(re.split(r"\s+", text)): the trailing newline makes a 16th).
  ProcResult w = Exec(Eval(A("models/ref-gpt2"), "wikitext", text, {"--window", "16"}));
  ASSERT_EQ(w.status, 0) << w.err;
  auto wm = nlohmann::json::parse(w.out)["metrics"]["wikitext"];
  EXPECT_EQ(wm["loglik_sum"], m["loglik_sum"]);
  EXPECT_EQ(wm["words"], 16);
  EXPECT_EQ(wm["bytes"], 77);
  EXPECT_EQ(wm["documents"], 1);
  EXPECT_EQ(wm["units"]["kind"], "document");
}

// --format lm-eval: lm-evaluation-harness's results file, its metric keys "<name>,none".
TEST(EvalCliTest, LmEvalFormat) {
  ProcResult l = Exec({"eval", "--model", A("models/ref-gpt2"), "--task", "lambada_openai",
                       "--data", A(kLambada), "--limit", "8", "--format", "lm-eval"});
  ASSERT_EQ(l.status, 0) << l.err;
  auto lj = nlohmann::json::parse(l.out);
  const auto& lr = lj["results"]["lambada_openai"];
  for (const char* k :
       {"acc,none", "acc_stderr,none", "perplexity,none", "perplexity_stderr,none"}) {
    EXPECT_TRUE(lr[k].is_number()) << k << " in " << lr.dump();
  }
  const auto& lm = lj["kvsweep"]["metrics"]["lambada_openai"];
  EXPECT_EQ(lr["acc,none"], lm["acc"]);
  EXPECT_EQ(lr["perplexity,none"], lm["ppl"]);
  EXPECT_EQ(lj["n-samples"]["lambada_openai"]["effective"], 8);

  // The first two documents of wiki.test.raw.
  ProcResult w = Exec({"eval", "--model", A("models/ref-gpt2"), "--task", "wikitext", "--data",
                       A("data/wikitext-2/wiki.test.raw"), "--limit", "2", "--window", "128",
                       "--format", "lm-eval"});
  ASSERT_EQ(w.status, 0) << w.err;
  auto wj = nlohmann::json::parse(w.out);
  const auto& wr = wj["results"]["wikitext"];
  const auto& wm = wj["kvsweep"]["metrics"]["wikitext"];
  EXPECT_EQ(wr["word_perplexity,none"], wm["word_ppl"]);
  EXPECT_EQ(wr["byte_perplexity,none"], wm["byte_ppl"]);
  EXPECT_EQ(wr["bits_per_byte,none"], wm["bits_per_byte"]);
  EXPECT_EQ(wr["bits_per_byte_stderr,none"], "N/A");
  EXPECT_EQ(wm["documents"], 2);
  EXPECT_EQ(wm["words"], 1093 + 4751);  // tests/fixtures/lm_eval_wikitext_ref-gpt2.json
}

// Runs `git -C <source dir> ARGS` and returns its stdout without the trailing newline; nullopt
// when git fails (no git, not a checkout).
std::optional<std::string> Git(const std::string& args) {
  const std::string cmd = "git -C " + Quote(KVSWEEP_SOURCE_DIR) + " " + args + " 2>/dev/null";
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return std::nullopt;
  std::string out;
  char buf[256];
  while (size_t n = std::fread(buf, 1, sizeof(buf), p)) out.append(buf, n);
  if (::pclose(p) != 0) return std::nullopt;
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}

// Seconds since the epoch of a file's last modification; 0 when it cannot be read.
int64_t MtimeS(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 ? static_cast<int64_t>(st.st_mtime) : 0;
}

// provenance.git_commit is the commit the worker was built from (`git rev-parse HEAD`, "-dirty"
// when tracked files differed), read at build time, so it follows new commits without a
// re-configure. Skipped when the source directory is not a git checkout of its own.
TEST(EvalCliTest, ProvenanceRecordsTheGitCommit) {
  const std::optional<std::string> top = Git("rev-parse --show-toplevel");
  std::error_code ec1, ec2;
  if (!top || fs::canonical(*top, ec1) != fs::canonical(KVSWEEP_SOURCE_DIR, ec2) || ec1 || ec2) {
    GTEST_SKIP() << KVSWEEP_SOURCE_DIR << " is not a git checkout: provenance says \"unknown\"";
  }
  const std::optional<std::string> head = Git("rev-parse HEAD");
  ASSERT_TRUE(head.has_value());
  const std::string text = TempFile("commit.txt", "The quick brown fox jumps over the lazy dog.\n");
  ProcResult r = Exec(Eval(A("models/ref-gpt2"), "wikitext", text, {"--window", "16"}));
  ASSERT_EQ(r.status, 0) << r.err;
  const std::string commit =
      nlohmann::json::parse(r.out)["provenance"]["git_commit"].get<std::string>();
  const std::string hash = commit.substr(0, commit.find('-'));
  const std::string suffix = commit.substr(hash.size());
  EXPECT_EQ(hash.find_first_not_of("0123456789abcdef"), std::string::npos) << commit;
  EXPECT_TRUE(suffix.empty() || suffix == "-dirty") << commit;
  if (hash != *head) {
    // HEAD may have moved (a commit, a checkout) after this worker was built: the provenance is
    // then true of the build, only older than the tree. The reflog of HEAD says when it moved.
    const std::optional<std::string> log =
        Git("rev-parse --path-format=absolute --git-path logs/HEAD");
    int64_t moved = log ? MtimeS(*log) : 0;
    if (moved == 0) moved = std::atoll(Git("log -1 --format=%ct HEAD").value_or("0").c_str());
    if (moved > MtimeS(KVSWEEP_WORKER_BIN)) {
      GTEST_SKIP() << "HEAD (" << *head << ") moved after kvsweep-worker was built from " << commit
                   << "; rebuild to check";
    }
  }
  EXPECT_EQ(hash, *head) << "provenance.git_commit " << commit << ", git rev-parse HEAD " << *head;
}

// The worker refuses at start what would fail every job it leases or lose its journal: one line
// on stderr, exit 2, before it calls any coordinator (none listens at 127.0.0.1:1; `timeout`
// bounds a worker that would wrongly start retrying it).
TEST(WorkerCliTest, RefusesAnUnusableDeviceOrJournalAtStart) {
  const std::string dir = Scratch("journal_dir");
  fs::create_directories(dir);
  auto run = [](const std::vector<std::string>& extra) {
    std::vector<std::string> args = {"--coordinator", "127.0.0.1:1", "--spool-dir", ""};
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  };
  struct Case {
    std::vector<std::string> args;
    std::string fragment;
  };
  const std::vector<Case> cases = {
      // No machine has 100 CUDA devices; one without CUDA says so instead. Both name it.
      {run({"--device", "cuda:99"}), "--device: device 'cuda:99'"},
      {run({"--device", "cuda:0,cuda:0"}), "--device: device 'cuda:0"},
      {run({"--journal", "/nonexistent_dir/journal"}),
       "--journal: cannot open '/nonexistent_dir/journal': No such file or directory"},
      {run({"--journal", dir}), "--journal: cannot open '" + dir + "': Is a directory"},
      // gRPC would keep the port's low 16 bits and dial 127.0.0.1:1.
      {{"--coordinator", "127.0.0.1:65537"},
       "--coordinator: bad port in address '127.0.0.1:65537'"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> args = {"timeout", "60", KVSWEEP_WORKER_BIN};
    args.insert(args.end(), c.args.begin(), c.args.end());
    std::string cmd;
    for (const auto& a : args) cmd += Quote(a) + " ";
    const std::string err = Scratch("worker_err.txt");
    const int rc = std::system((cmd + "> /dev/null 2>" + err).c_str());
    const std::string text = ReadFile(err).value_or("");
    EXPECT_TRUE(WIFEXITED(rc) && WEXITSTATUS(rc) == 2) << cmd << "\n" << text;
    std::vector<std::string> lines = absl::StrSplit(text, '\n', absl::SkipEmpty());
    ASSERT_EQ(lines.size(), 1u) << cmd << "\n" << text;
    EXPECT_NE(lines[0].find(c.fragment), std::string::npos) << lines[0];
  }
  fs::remove_all(dir);
}

TEST(EvalCliTest, BadFlagsAndFiles) {
  const std::string llama = A("models/ref-llama"), lam = A(kLambada);
  ExpectOneLineError({"eval", "--task", "wikitext", "--data", lam}, "--model is required");
  ExpectOneLineError(Eval("/nonexistent/model", "lambada_openai", lam), "/nonexistent/model");
  ExpectOneLineError(Eval(llama, "lambada_openai", "/nonexistent/data.jsonl"),
                     "/nonexistent/data.jsonl");
  ExpectOneLineError(Eval(llama, "hellaswag", lam), "unknown task 'hellaswag'");
  ExpectOneLineError(Eval(llama, "lambada_openai", lam, {"--method", "quant:bits=17"}),
                     "out of range [1, 8]");
  ExpectOneLineError(Eval(llama, "lambada_openai", lam, {"--method", "zip:r=1"}),
                     "unknown family 'zip'");
  ExpectOneLineError(Eval(llama, "lambada_openai", lam, {"--dtype", "int8"}), "dtype");
  ExpectOneLineError(Eval(llama, "lambada_openai", lam, {"--kv-heads", "3"}), "does not divide");
  ExpectOneLineError(Eval(llama, "lambada_openai", lam, {"--limit", "-1"}),
                     "limit: -1 is negative");
  ExpectOneLineError(Eval(llama, "lambada_openai", lam, {"--limit", "100000"}),
                     "limit 100000 out of range");
  ExpectOneLineError(Eval(llama, "lambada_openai", lam, {"--window", "4096"}),
                     "exceeds the model's max positions 2048");
  ExpectOneLineError(Eval(llama, "lambada_openai", lam, {"--window", "1"}),
                     "window: 1 is too small");
  ExpectOneLineError(Eval(llama, "wikitext", lam, {"--window", "64", "--context", "65"}),
                     "context: 65 out of range");
  ExpectOneLineError(Eval(llama, "wikitext", lam, {"--context", "0"}), "context: 0 out of range");
  ExpectOneLineError(Eval(llama, "wikitext_stream", lam, {"--limit", "5"}),
                     "limit applies to lambada_openai and wikitext only");
  ExpectOneLineError(Eval(llama, "wikitext", lam, {"--limit", "5"}), "limit 5 out of range");
  ExpectOneLineError(Eval(llama, "lambada_openai", lam, {"--device", "cuda"}), "cuda");
  ExpectOneLineError(Eval(llama, "lambada_openai", lam, {"--device", "tpu"}),
                     "is not cpu|cuda|cuda:N");
  ExpectOneLineError(Eval(llama, "lambada_openai", lam, {"--limit", "abc"}), "limit");
}

// A checkpoint whose weights are NaN scores to a non-finite loglik_sum: an error in every output
// format (one line, exit 2), never a result with null metrics and exit 0.
TEST(EvalCliTest, NonFiniteResultIsAnErrorInEveryFormat) {
  const std::string llama = A("models/ref-llama");
  const std::string d = Scratch("nan_model");
  fs::remove_all(d);
  fs::create_directories(d);
  const std::string shard = "model-00002-of-00002.safetensors";
  for (const auto& e : fs::directory_iterator(llama)) {
    if (e.path().filename() != shard)
      fs::create_symlink(e.path(), fs::path(d) / e.path().filename());
  }
  // The shard's header as it is, every data byte pair after it 0x7fff (NaN in fp16 and bf16).
  std::string bytes = ReadFile(llama + "/" + shard).value();
  ASSERT_GT(bytes.size(), 8u);
  uint64_t header = 0;
  for (int i = 7; i >= 0; --i) header = header << 8 | static_cast<unsigned char>(bytes[i]);
  ASSERT_LT(8 + header, bytes.size());
  for (size_t i = 8 + header; i + 1 < bytes.size(); i += 2) {
    bytes[i] = static_cast<char>(0xff);
    bytes[i + 1] = 0x7f;
  }
  ASSERT_TRUE(WriteFileAtomic(d + "/" + shard, bytes).ok());
  for (const char* format : {"json", "lm-eval", "text"}) {
    ExpectOneLineError({"eval", "--model", d, "--task", "lambada_openai", "--data", A(kLambada),
                        "--limit", "2", "--format", format},
                       "loglik_sum is not finite");
  }
  fs::remove_all(d);
}

TEST(EvalCliTest, BadDataFiles) {
  const std::string llama = A("models/ref-llama");
  ExpectOneLineError(Eval(llama, "wikitext", TempFile("empty.txt", "")), "data file is empty");
  ExpectOneLineError(Eval(llama, "wikitext", TempFile("bad_utf8.txt", "hello \xff\xfe world")),
                     "not valid UTF-8 at byte 6");
  ExpectOneLineError(Eval(llama, "lambada_openai", TempFile("empty.jsonl", "\n\n")),
                     "no documents");
  ExpectOneLineError(
      Eval(llama, "lambada_openai", TempFile("broken.jsonl", "{\"text\": \"a b\"}\n{\"text\": \n")),
      "broken.jsonl:2: invalid JSON");
  ExpectOneLineError(
      Eval(llama, "lambada_openai", TempFile("notext.jsonl", "{\"body\": \"a b\"}\n")),
      "notext.jsonl:1: expected an object with a string \"text\"");
  ExpectOneLineError(Eval(llama, "lambada_openai", TempFile("nums.jsonl", "{\"text\": 5}\n")),
                     "expected an object");
}

// Files that are not regular files: devices have no end (or no size) and a FIFO blocks its
// reader; each is refused by name, before anything reads it.
TEST(EvalCliTest, FilesThatAreNotRegularFiles) {
  const std::string llama = A("models/ref-llama");
  ExpectOneLineError(Eval(llama, "wikitext", "/dev/zero"), "'/dev/zero': not a regular file");
  ExpectOneLineError(Eval(llama, "lambada_openai", "/dev/zero"), "'/dev/zero': not a regular file");
  ExpectOneLineError(Eval("/dev/zero", "wikitext", A("data/wikitext-2/wiki.test.raw")),
                     "'/dev/zero': not a regular file");
  // ref-llama with one of its files replaced by a link to /dev/zero.
  for (const char* f : {"config.json", "tokenizer.json", "model-00002-of-00002.safetensors"}) {
    const std::string d = Scratch(absl::StrCat("devzero_", f));
    fs::remove_all(d);
    fs::create_directories(d);
    for (const auto& e : fs::directory_iterator(llama)) {
      const std::string name = e.path().filename().string();
      fs::create_symlink(name == f ? fs::path("/dev/zero") : e.path(), fs::path(d) / name);
    }
    ExpectOneLineError(Eval(d, "wikitext", A("data/wikitext-2/wiki.test.raw")),
                       absl::StrCat("'", d, "/", f, "': not a regular file"));
    fs::remove_all(d);
  }
}

// An error quotes no bytes of a file: a path may name a file that is none of the user's business.
TEST(EvalCliTest, ErrorsDoNotEchoFileContent) {
  ProcResult r = Exec(Eval(A("models/ref-llama"), "lambada_openai",
                           TempFile("secret.jsonl", "{\"text\": \"SECRET-5f1d hunter2\n")));
  EXPECT_EQ(r.status, 2) << r.err;
  EXPECT_NE(r.err.find("secret.jsonl:1: invalid JSON at byte "), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("SECRET"), std::string::npos) << r.err;
}

// A copy of a model directory that a test may damage.
std::string CopyModel(const std::string& src, const std::string& name) {
  const std::string dst = Scratch(name);
  fs::remove_all(dst);
  fs::copy(src, dst, fs::copy_options::recursive);
  return dst;
}

TEST(EvalCliTest, BadModels) {
  const std::string lam = A(kLambada);
  std::string d = CopyModel(std::string(KVSWEEP_FIXTURES) + "/tiny_models/tiny-gpt2", "truncated");
  std::string w = *ReadFile(d + "/model.safetensors");
  ASSERT_TRUE(WriteFileAtomic(d + "/model.safetensors", w.substr(0, w.size() - 1000)).ok());
  fs::copy(A("models/ref-gpt2/tokenizer.json"), d + "/tokenizer.json");
  ExpectOneLineError(Eval(d, "lambada_openai", lam, {"--limit", "2"}),
                     "fall outside the data block");
  // A header that lies about a dtype.
  d = CopyModel(std::string(KVSWEEP_FIXTURES) + "/tiny_models/tiny-gpt2", "lying");
  w = *ReadFile(d + "/model.safetensors");
  size_t at = w.find("\"F32\"");
  ASSERT_NE(at, std::string::npos);
  w.replace(at, 5, "\"F16\"");
  ASSERT_TRUE(WriteFileAtomic(d + "/model.safetensors", w).ok());
  fs::copy(A("models/ref-gpt2/tokenizer.json"), d + "/tokenizer.json");
  ExpectOneLineError(Eval(d, "lambada_openai", lam, {"--limit", "2"}), "invalid safetensors");
  // Config values out of range / unknown architecture.
  d = CopyModel(A("models/ref-llama"), "badcfg");
  std::string cfg = *ReadFile(d + "/config.json");
  cfg.replace(cfg.find("\"num_hidden_layers\": 6"), 22, "\"num_hidden_layers\": -6");
  ASSERT_TRUE(WriteFileAtomic(d + "/config.json", cfg).ok());
  ExpectOneLineError(Eval(d, "lambada_openai", lam), "'num_hidden_layers' = -6 out of range");
  d = CopyModel(A("models/ref-llama"), "bert");
  cfg = *ReadFile(d + "/config.json");
  cfg.replace(cfg.find("\"model_type\": \"llama\""), 21, "\"model_type\": \"bert\"");
  ASSERT_TRUE(WriteFileAtomic(d + "/config.json", cfg).ok());
  ExpectOneLineError(Eval(d, "lambada_openai", lam), "unknown architecture 'bert'");
  // Tokenizer that does not belong to the model (GPT-2's 50257 tokens > Llama's 32000).
  ExpectOneLineError(Eval(A("models/ref-llama"), "lambada_openai", lam,
                          {"--tokenizer", A("tokenizers/gpt2/vocab.json"), "--limit", "2"}),
                     "do not belong together");
  // No tokenizer at all.
  d = CopyModel(A("models/ref-llama"), "notok");
  fs::remove(d + "/tokenizer.json");
  ExpectOneLineError(Eval(d, "lambada_openai", lam), "no tokenizer in");
  // Malformed tokenizer.json.
  d = CopyModel(A("models/ref-llama"), "badtok");
  ASSERT_TRUE(WriteFileAtomic(d + "/tokenizer.json", "{\"model\": ").ok());
  ExpectOneLineError(Eval(d, "lambada_openai", lam, {"--limit", "2"}), "tokenizer.json");
  // llama2.c model without its tokenizer.
  ExpectOneLineError(Eval(A("models/stories260K/stories260K.bin"), "lambada_openai", lam),
                     "needs --tokenizer");
}

}  // namespace
}  // namespace kvsweep

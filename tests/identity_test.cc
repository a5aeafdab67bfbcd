// Content identity at run time, with real processes: a job whose input changed after submit
// fails with "input changed since submit: PATH" and leaves no result; the engine's loaders read
// exactly the files job identity hashes. Models are modified only in copies under the test dir.
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/fingerprint.h"
#include "common/input_files.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "spec/job_spec.h"
#include "tests/harness.h"
#ifdef KVSWEEP_TEST_ENGINE
#include "worker/engine/model.h"
#include "worker/engine/tokenizer/tokenizer.h"
#endif

namespace kvsweep {
namespace testing {
namespace {

namespace fs = std::filesystem;
using ::testing::AnyOf;
using ::testing::HasSubstr;

std::string CopyLines(const std::string& from, const std::string& to, int n) {
  std::ifstream in(from);
  std::ofstream out(to);
  std::string line;
  for (int i = 0; i < n && std::getline(in, line); ++i) out << line << "\n";
  return to;
}

void Append(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::app) << text;
}

// Submit, then change an input before any worker runs: the job fails permanently naming the
// file, and nothing is recorded (nor reusable by a later sweep).
TEST(IdentityTest, InputChangedAfterSubmitFailsTheJobWithoutAResult) {
  if (!kEngine) GTEST_SKIP() << "the check is the engine's (the fake evaluator reads no input)";
  Harness h("identity_changed");
  Harness::CoordinatorFlags cf;
  cf.lease_ttl_ms = 30000;
  h.StartCoordinator(cf);
  const std::string assets = AssetsDir();
  const std::string data = CopyLines(assets + "/data/lambada_openai/lambada_test.jsonl",
                                     JoinPath(h.dir(), "lambada.jsonl"), 6);
  const std::string model = JoinPath(h.dir(), "ref-llama");
  fs::copy(assets + "/models/ref-llama", model, fs::copy_options::recursive);
  const std::string yaml =
      h.WriteFile("s.yaml", absl::StrCat(R"(name: changed
models:
  - {name: copy, path: )",
                                         model, R"(}
tasks:
  - {name: data, task: lambada_openai, data: )",
                                         data, R"(, limit: 2}
  - {name: tok, task: lambada_openai, data: )",
                                         assets,
                                         R"(/data/lambada_openai/lambada_test.jsonl, limit: 1}
methods: [none]
mode: zip
)"));
  h.Submit(yaml);
  ASSERT_EQ(h.SqlInt("SELECT count(*) FROM jobs"), 2);
  // Job 1's data file gets a line; both jobs see the copied model's tokenizer_config.json
  // changed (BOS, the prefix token).
  Append(data, "{\"text\": \"one more line\"}\n");
  const std::string tok_cfg = JoinPath(model, "tokenizer_config.json");
  std::string cfg = *ReadFile(tok_cfg);
  cfg.replace(cfg.find("\"bos_token\": \"<s>\""), 18, "\"bos_token\": \"</s>\"");
  ASSERT_TRUE(WriteFileAtomic(tok_cfg, cfg).ok());

  h.StartWorker();
  ASSERT_TRUE(h.WaitFinished("changed", std::chrono::seconds(300)));
  EXPECT_EQ(h.SqlInt("SELECT count(*) FROM results"), 0);
  EXPECT_EQ(h.SqlInt("SELECT count(*) FROM jobs WHERE state = 'failed'"), 2);
  // One attempt each: a permanent failure, not retried.
  EXPECT_EQ(h.SqlInt("SELECT count(*) FROM attempts"), 2);
  const auto errors = h.SqlRows("SELECT last_error FROM jobs ORDER BY last_error");
  ASSERT_EQ(errors.size(), 2u);
  // Each names a changed input of its job: the tokenizer config for both, or for the job whose
  // data file changed too, either of them (which one a worker checks first is its business: with
  // --stage auto it stages the files that differ, and the coordinator refuses to serve them).
  // The coordinator names files by their real paths.
  const std::string changed_cfg = absl::StrCat("input changed since submit: ", RealPath(tok_cfg));
  const std::string changed_data = absl::StrCat("input changed since submit: ", RealPath(data));
  int naming_cfg = 0;
  for (const auto& e : errors) {
    EXPECT_THAT(e[0], AnyOf(HasSubstr(changed_cfg), HasSubstr(changed_data)));
    naming_cfg += e[0].find(changed_cfg) != std::string::npos;
  }
  EXPECT_GE(naming_cfg, 1);  // the job whose data did not change

  // Restore the tokenizer config: job 1 now fails on its data, job 2's inputs are as submitted
  // again and it runs.
  cfg.replace(cfg.find("\"bos_token\": \"</s>\""), 19, "\"bos_token\": \"<s>\"");
  ASSERT_TRUE(WriteFileAtomic(tok_cfg, cfg).ok());
  CommandResult retry = h.Cli({"retry", "changed", "--failed"});
  ASSERT_EQ(retry.exit_code, 0) << retry.err;
  ASSERT_TRUE(h.WaitFinished("changed", std::chrono::seconds(300)));
  EXPECT_EQ(h.SqlInt("SELECT count(*) FROM results"), 1);
  const auto failed = h.SqlRows("SELECT last_error FROM jobs WHERE state = 'failed'");
  ASSERT_EQ(failed.size(), 1u);
  EXPECT_THAT(failed[0][0],
              HasSubstr(absl::StrCat("input changed since submit: ", RealPath(data))));
  EXPECT_EQ(h.SqlInt("SELECT n FROM results"), 1);  // job 2 (limit 1), not job 1
}

// Changing tokenizer_config.json of a model directory changes the ids of its jobs (it sets
// BOS, the prefix token), so a result computed with the old one is never reused for the new.
TEST(IdentityTest, TokenizerConfigChangesTheJobId) {
  const std::string dir = MakeTempDir("identity_tokcfg");
  const std::string model = JoinPath(dir, "ref-llama");
  fs::copy(AssetsDir() + "/models/ref-llama", model, fs::copy_options::recursive);
  JobRequest r;
  r.model_path = model;
  r.task = "lambada_openai";
  r.data_path = AssetsDir() + "/data/lambada_openai/lambada_test.jsonl";
  r.limit = 1;
  absl::StatusOr<JobSpec> a = ResolveJob(r);
  ASSERT_TRUE(a.ok()) << a.status();
  Append(JoinPath(model, "tokenizer_config.json"), "\n");
  absl::StatusOr<JobSpec> b = ResolveJob(r);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_NE(a->JobId(), b->JobId());
  fs::remove_all(dir);
}

// Hashing a model the coordinator has not seen takes about a second per GiB; it runs apart from
// the submit call, so a call deadline shorter than the hashing does not fail the submit: the
// CLI follows the pending submission to its answer. (When hashing ran inside the call, this
// submit ended in Deadline Exceeded.) The shard is large enough that hashing it outlasts the
// call's deadline on any current CPU (a few GB/s at most).
TEST(IdentityTest, SubmitOutlivesTheCallDeadlineWhileHashing) {
  Harness h("identity_slow_hash");
  const std::string cache = JoinPath(h.dir(), "hash-cache");
  ::setenv("KVSWEEP_CACHE_DIR", cache.c_str(), 1);  // the coordinator inherits it
  h.StartCoordinator();
  const std::string model = JoinPath(h.dir(), "big-llama");
  fs::copy(AssetsDir() + "/models/ref-llama", model, fs::copy_options::recursive);
  fs::permissions(model, fs::perms::owner_all, fs::perm_options::add);
  // A 4 GiB shard (sparse: no disk used; hashing still reads every byte).
  const std::string shard = JoinPath(model, "model-00002-of-00002.safetensors");
  fs::remove(shard);
  { std::ofstream(shard).put('\0'); }
  fs::resize_file(shard, uint64_t{4} << 30);
  const std::string yaml = h.WriteFile(
      "s.yaml", absl::StrCat(R"(name: slowhash
models:
  - {name: big, path: )",
                             model, R"(}
tasks:
  - {task: lambada_openai, data: )",
                             AssetsDir(), R"(/data/lambada_openai/lambada_test.jsonl, limit: 1}
methods: [none, "quant:bits=4"]
)"));
  CommandResult r = h.Cli({"--timeout-ms", "1000", "submit", yaml});
  ::unsetenv("KVSWEEP_CACHE_DIR");
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_THAT(r.out,
              HasSubstr("sweep 'slowhash': 2 jobs (2 combinations, 0 excluded); 2 enqueued"));
  EXPECT_EQ(h.SqlInt("SELECT count(*) FROM jobs"), 2);
  // Submitting again finds the hashes cached: the same answer, nothing new.
  CommandResult again = h.Cli({"--timeout-ms", "1000", "submit", yaml});
  ASSERT_EQ(again.exit_code, 0) << again.out << again.err;
  EXPECT_THAT(again.out, HasSubstr("2 jobs (2 combinations, 0 excluded); 0 enqueued, 0 already "
                                   "done, 2 already pending"));
  // A dry run from a reader's point of view goes the same way.
  CommandResult dry = h.Cli({"--timeout-ms", "1000", "submit", "--dry-run", yaml});
  ASSERT_EQ(dry.exit_code, 0) << dry.err;
  EXPECT_THAT(dry.out, HasSubstr("(dry run): 2 jobs"));
  fs::remove(shard);
}

#ifdef KVSWEEP_TEST_ENGINE
// The loaders open the resolver's list and nothing else: a file beside the model that the list
// leaves out is neither hashed nor read (garbage there changes nothing and breaks nothing), and
// every tokenizer's files() is exactly its identity list.
TEST(IdentityTest, LoadersReadExactlyTheIdentityFiles) {
  const std::string dir = MakeTempDir("identity_loader");
  const std::string model = JoinPath(dir, "ref-llama");
  fs::copy(AssetsDir() + "/models/ref-llama", model, fs::copy_options::recursive);
  absl::StatusOr<ModelFiles> before = ResolveModelFiles(model);
  ASSERT_TRUE(before.ok()) << before.status();
  absl::StatusOr<std::string> h0 = FilesFingerprint(before->All());
  ASSERT_TRUE(h0.ok()) << h0.status();
  // Not safetensors at all: a loader that opened them would fail.
  Append(JoinPath(model, "model-00003-of-00002.safetensors"), "garbage");
  Append(JoinPath(model, "model.safetensors"), "garbage");
  absl::StatusOr<ModelFiles> after = ResolveModelFiles(model);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->All(), before->All());
  absl::StatusOr<std::string> h1 = FilesFingerprint(after->All());
  ASSERT_TRUE(h1.ok()) << h1.status();
  EXPECT_EQ(*h0, *h1);
  absl::StatusOr<std::unique_ptr<engine::Model>> m = engine::Model::Load(model, {});
  EXPECT_TRUE(m.ok()) << m.status();

  for (const std::string& path :
       {model, AssetsDir() + "/models/ref-gpt2", AssetsDir() + "/models/ref-gpt2/tokenizer.json",
        AssetsDir() + "/tokenizers/gpt2/vocab.json", AssetsDir() + "/tokenizers/gpt2/merges.txt"}) {
    absl::StatusOr<TokenizerFiles> files = ResolveTokenizerFiles(path);
    ASSERT_TRUE(files.ok()) << path << ": " << files.status();
    absl::StatusOr<std::unique_ptr<engine::Tokenizer>> t = engine::LoadTokenizer(path);
    ASSERT_TRUE(t.ok()) << path << ": " << t.status();
    EXPECT_EQ((*t)->files(), files->All()) << path;
  }
  absl::StatusOr<TokenizerFiles> llama = ResolveTokenizerFiles(model);
  ASSERT_TRUE(llama.ok());
  EXPECT_EQ(llama->config, JoinPath(model, "tokenizer_config.json"));
  fs::remove_all(dir);
}
#endif

}  // namespace
}  // namespace testing
}  // namespace kvsweep

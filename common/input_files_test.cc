// The identity resolver (which files of a model/tokenizer job ids hash), the path policy, and
// the worker-side check that inputs still hash to what the spec says. Files are modified only in
// copies of the assets' ref-llama under the test temp dir.
#include "common/input_files.h"

#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/fingerprint.h"
#include "common/path_policy.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "spec/job_spec.h"

namespace kvsweep {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

class InputFilesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = JoinPath(::testing::TempDir(),
                    absl::StrCat("kvsweep_input_files_",
                                 ::testing::UnitTest::GetInstance()->current_test_info()->name(),
                                 "_", ::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    // Per-test hash cache: never the user's.
    ::setenv("KVSWEEP_CACHE_DIR", JoinPath(dir_, "cache").c_str(), 1);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // A copy of the assets' ref-llama (the assets are never modified).
  std::string CopyModel(const std::string& name = "model") {
    const std::string d = JoinPath(dir_, name);
    fs::copy(JoinPath(AssetsDir(), "models/ref-llama"), d, fs::copy_options::recursive);
    return d;
  }
  std::string CopyData() {
    const std::string p = JoinPath(dir_, "lambada.jsonl");
    std::ifstream in(JoinPath(AssetsDir(), "data/lambada_openai/lambada_test.jsonl"));
    std::ofstream out(p);
    std::string line;
    for (int i = 0; i < 4 && std::getline(in, line); ++i) out << line << "\n";
    return p;
  }
  static void Append(const std::string& path, const std::string& text) {
    std::ofstream(path, std::ios::app) << text;
  }
  JobRequest Request(const std::string& model, const std::string& data) {
    JobRequest r;
    r.model_path = model;
    r.task = "lambada_openai";
    r.data_path = data;
    r.limit = 2;
    return r;
  }
  std::string dir_;
};

TEST_F(InputFilesTest, ModelFilesAreConfigIndexAndTheShardsItNames) {
  const std::string d = CopyModel();
  // Files the loader never reads: a stray shard, generation_config.json, a README.
  Append(JoinPath(d, "model-00003-of-00002.safetensors"), "not a shard");
  Append(JoinPath(d, "stray.safetensors"), "junk");
  absl::StatusOr<ModelFiles> m = ResolveModelFiles(d);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_THAT(m->All(), ElementsAre(JoinPath(d, "config.json"),
                                    JoinPath(d, "model-00001-of-00002.safetensors"),
                                    JoinPath(d, "model-00002-of-00002.safetensors"),
                                    JoinPath(d, "model.safetensors.index.json")));
}

// The model fingerprint keeps the file order it had before the resolver existed: existing
// checkpoints keep their model_sha256 (only tokenizer_sha256 gained tokenizer_config.json).
TEST_F(InputFilesTest, ModelHashOfExistingCheckpointsIsUnchanged) {
  absl::StatusOr<ModelFiles> m = ResolveModelFiles(JoinPath(AssetsDir(), "models/ref-gpt2"));
  ASSERT_TRUE(m.ok()) << m.status();
  absl::StatusOr<std::string> h = FilesFingerprint(m->All());
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(*h, "9a8b63e2c935404cd9ec80cf5c7d40ac960adc2c583687a44d296660867a9731");
}

TEST_F(InputFilesTest, UnlistedFilesAreNotHashed) {
  const std::string d = CopyModel();
  const std::string data = CopyData();
  absl::StatusOr<JobSpec> a = ResolveJob(Request(d, data));
  ASSERT_TRUE(a.ok()) << a.status();
  Append(JoinPath(d, "stray.safetensors"), "junk");
  Append(JoinPath(d, "generation_config.json"), " ");
  absl::StatusOr<JobSpec> b = ResolveJob(Request(d, data));
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(a->model_sha256, b->model_sha256);
  EXPECT_EQ(a->JobId(), b->JobId());
  EXPECT_EQ(b->input_sha256.count(JoinPath(d, "stray.safetensors")), 0u);
  EXPECT_TRUE(VerifyJobInputs(*a).ok());
}

TEST_F(InputFilesTest, TokenizerConfigIsPartOfTheIdentity) {
  const std::string d = CopyModel();
  absl::StatusOr<TokenizerFiles> t = ResolveTokenizerFiles(d);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->format, TokenizerFormat::kHfJson);
  EXPECT_THAT(t->All(),
              ElementsAre(JoinPath(d, "tokenizer.json"), JoinPath(d, "tokenizer_config.json")));

  const std::string data = CopyData();
  absl::StatusOr<JobSpec> a = ResolveJob(Request(d, data));
  ASSERT_TRUE(a.ok()) << a.status();
  // tokenizer_config.json names BOS, the prefix token of every scored sequence.
  const std::string cfg = JoinPath(d, "tokenizer_config.json");
  std::string text = *ReadFile(cfg);
  text.replace(text.find("\"bos_token\": \"<s>\""), 18, "\"bos_token\": \"</s>\"");
  ASSERT_TRUE(WriteFileAtomic(cfg, text).ok());
  absl::StatusOr<JobSpec> b = ResolveJob(Request(d, data));
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_NE(a->tokenizer_sha256, b->tokenizer_sha256);
  EXPECT_NE(a->JobId(), b->JobId());
  EXPECT_EQ(a->model_sha256, b->model_sha256);
}

TEST_F(InputFilesTest, VerifyNamesTheChangedFile) {
  const std::string d = CopyModel();
  const std::string data = CopyData();
  absl::StatusOr<JobSpec> spec = ResolveJob(Request(d, data));
  ASSERT_TRUE(spec.ok()) << spec.status();
  ASSERT_TRUE(VerifyJobInputs(*spec).ok());

  Append(data, "{\"text\": \"one more line\"}\n");
  absl::Status s = VerifyJobInputs(*spec);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_EQ(s.message(), absl::StrCat("input changed since submit: ", data));

  spec = ResolveJob(Request(d, data));
  ASSERT_TRUE(spec.ok()) << spec.status();
  Append(JoinPath(d, "tokenizer_config.json"), "\n");
  s = VerifyJobInputs(*spec);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_EQ(s.message(),
            absl::StrCat("input changed since submit: ", JoinPath(d, "tokenizer_config.json")));

  // A spec from before per-file hashes were recorded: the aggregate still catches it.
  spec = ResolveJob(Request(d, data));
  ASSERT_TRUE(spec.ok()) << spec.status();
  spec->input_sha256.clear();
  Append(JoinPath(d, "config.json"), "\n");
  s = VerifyJobInputs(*spec);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(std::string(s.message()), HasSubstr("input changed since submit: "));

  // A file that vanished.
  spec = ResolveJob(Request(d, data));
  ASSERT_TRUE(spec.ok()) << spec.status();
  fs::remove(JoinPath(d, "model-00002-of-00002.safetensors"));
  s = VerifyJobInputs(*spec);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_EQ(s.message(), absl::StrCat("input changed since submit: ", d));
}

TEST_F(InputFilesTest, SpecRoundTripsItsInputHashes) {
  const std::string d = CopyModel();
  absl::StatusOr<JobSpec> spec = ResolveJob(Request(d, CopyData()));
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->input_sha256.size(), 7u);  // config, index, 2 shards, 2 tokenizer, data
  absl::StatusOr<JobSpec> back = JobSpec::FromJson(spec->ToJson());
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->input_sha256, spec->input_sha256);
  EXPECT_EQ(back->JobId(), spec->JobId());
}

TEST_F(InputFilesTest, PathPolicyResolvesSymlinksAndNamesTheRoots) {
  const std::string root = JoinPath(dir_, "root");
  fs::create_directories(root);
  Append(JoinPath(root, "ok.txt"), "x");
  fs::create_symlink("/etc/passwd", JoinPath(root, "link"));
  PathPolicy p({root});
  EXPECT_TRUE(p.Check(JoinPath(root, "ok.txt")).ok());
  EXPECT_TRUE(p.Check(JoinPath(root, "not-yet")).ok());
  absl::Status s = p.Check("/etc/passwd");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(),
            absl::StrCat("'/etc/passwd' is outside the allowed paths (", RealPath(root),
                         "); start the coordinator with --allow-path"));
  s = p.Check(JoinPath(root, "link"));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("(resolves to '/etc/passwd')"));
  EXPECT_EQ(p.Check(JoinPath(root, "../outside")).code(), absl::StatusCode::kInvalidArgument);
  // A root that is a prefix of a name is not its parent.
  EXPECT_EQ(p.Check(root + "2/x").code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(InputFilesTest, PolicyIsCheckedForEveryModelFile) {
  const std::string root = JoinPath(dir_, "root");
  fs::create_directories(root);
  const std::string d = CopyModel("root/model");
  PathPolicy p({root});
  ASSERT_TRUE(ResolveModelFiles(d, &p).ok());
  // A shard that is a symlink out of the root is refused before it is opened.
  const std::string shard = JoinPath(d, "model-00002-of-00002.safetensors");
  fs::rename(shard, JoinPath(dir_, "outside.safetensors"));
  fs::create_symlink(JoinPath(dir_, "outside.safetensors"), shard);
  absl::StatusOr<ModelFiles> m = ResolveModelFiles(d, &p);
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(m.status().message()), HasSubstr("is outside the allowed paths"));
  JobRequest r = Request(d, CopyData());
  r.path_policy = &p;
  EXPECT_EQ(ResolveJob(r).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvsweep

// Not a check: measures FileSha256Cached on $KVSWEEP_HASH_TIMING_FILE (skipped without it).
// Run it twice with the same $KVSWEEP_HASH_TIMING_CACHE: the second process finds the hash in
// the disk cache.
TEST(HashTiming, FileSha256Cached) {
  const char* file = std::getenv("KVSWEEP_HASH_TIMING_FILE");
  const char* cache = std::getenv("KVSWEEP_HASH_TIMING_CACHE");
  if (file == nullptr || cache == nullptr) GTEST_SKIP() << "set KVSWEEP_HASH_TIMING_FILE/_CACHE";
  ::setenv("KVSWEEP_CACHE_DIR", cache, 1);
  for (const char* what : {"first call in this process", "second call (in-process memo)"}) {
    const auto t0 = std::chrono::steady_clock::now();
    absl::StatusOr<std::string> h = kvsweep::FileSha256Cached(file);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ASSERT_TRUE(h.ok()) << h.status();
    std::cerr << "[ timing ] " << what << ": " << s << " s (" << *h << ")\n";
  }
}

// Models named by Hugging Face repo id, resolved through a hub cache laid out as huggingface_hub
// lays it out (refs/, snapshots/ with symlinks into blobs/), built here from the assets'
// ref-llama; and dtypes as transformers names them.
#include "common/hf_hub.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/model_config.h"
#include "gtest/gtest.h"
#include "spec/job_spec.h"

namespace kvsweep {
namespace {

namespace fs = std::filesystem;

constexpr char kCommit[] = "0123456789abcdef0123456789abcdef01234567";

// HUB/models--acme--tiny-llama: refs/main -> kCommit, snapshots/kCommit/* -> ../../blobs/*.
class HubTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = absl::StrCat(::testing::TempDir(), "/kvsweep_hub_", ::getpid());
    hub_ = root_ + "/hub";
    const std::string repo = hub_ + "/models--acme--tiny-llama";
    fs::create_directories(repo + "/refs");
    fs::create_directories(repo + "/blobs");
    fs::create_directories(repo + "/snapshots/" + kCommit);
    std::ofstream(repo + "/refs/main") << kCommit;  // no newline, as huggingface_hub writes it
    std::ofstream(repo + "/refs/v1") << "ffffffffffffffffffffffffffffffffffffffff\n";
    for (const auto& f : fs::directory_iterator(AssetsDir() + "/models/ref-llama")) {
      const std::string name = f.path().filename();
      const std::string blob = repo + "/blobs/" + name + ".blob";
      fs::copy_file(f.path(), blob);
      fs::create_symlink("../../blobs/" + name + ".blob",
                         repo + "/snapshots/" + kCommit + "/" + name);
    }
    snapshot_ = repo + "/snapshots/" + kCommit;
    for (const char* v : {"HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"}) {
      if (const char* old = std::getenv(v)) saved_.emplace_back(v, old);
      ::unsetenv(v);
    }
    ::setenv("HF_HUB_CACHE", hub_.c_str(), 1);
  }
  void TearDown() override {
    ::unsetenv("HF_HUB_CACHE");
    for (const auto& [k, v] : saved_) ::setenv(k.c_str(), v.c_str(), 1);
    fs::remove_all(root_);
  }
  std::string root_, hub_, snapshot_;
  std::vector<std::pair<std::string, std::string>> saved_;
};

TEST(HfRepoIdTest, TellsRepoIdsFromPaths) {
  for (const char* ok :
       {"meta-llama/Llama-3.1-8B", "Qwen/Qwen2.5-0.5B", "a/b", "org/name@main",
        "org/name@refs/pr/1", "org_1/x.y@0123456789abcdef0123456789abcdef01234567"}) {
    EXPECT_TRUE(IsHfRepoId(ok)) << ok;
  }
  for (const char* bad : {"", "gpt2", "/abs/path", "./rel/x", "../up/x", "a/b/c", "a//b", "org/",
                          "/name", "-org/x", "org/x-", "org/a--b", "org/a..b", ".org/x",
                          "org/na me", "org/name@", "org/name@../x", "org/name@/x"}) {
    EXPECT_FALSE(IsHfRepoId(bad)) << bad;
  }
  EXPECT_FALSE(IsHfRepoId(absl::StrCat("org/", std::string(97, 'x'))));
}

TEST(HfHubCacheDirTest, FollowsHuggingFaceHubsVariables) {
  std::vector<std::pair<std::string, std::string>> saved;
  for (const char* v :
       {"HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "HOME"}) {
    if (const char* old = std::getenv(v)) saved.emplace_back(v, old);
    ::unsetenv(v);
  }
  EXPECT_EQ(HfHubCacheDir(), "");
  ::setenv("HOME", "/home/u", 1);
  EXPECT_EQ(HfHubCacheDir(), "/home/u/.cache/huggingface/hub");
  ::setenv("XDG_CACHE_HOME", "/xdg", 1);
  EXPECT_EQ(HfHubCacheDir(), "/xdg/huggingface/hub");
  ::setenv("HF_HOME", "/hf", 1);
  EXPECT_EQ(HfHubCacheDir(), "/hf/hub");
  ::setenv("HUGGINGFACE_HUB_CACHE", "/legacy", 1);
  EXPECT_EQ(HfHubCacheDir(), "/legacy");
  ::setenv("HF_HUB_CACHE", "/hub", 1);
  EXPECT_EQ(HfHubCacheDir(), "/hub");
  for (const char* v :
       {"HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "HOME"}) {
    ::unsetenv(v);
  }
  for (const auto& [k, v] : saved) ::setenv(k.c_str(), v.c_str(), 1);
}

TEST_F(HubTest, ResolvesARepoIdToItsSnapshot) {
  absl::StatusOr<HfModel> m = ResolveHfModel("acme/tiny-llama");
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->repo_id, "acme/tiny-llama");
  EXPECT_EQ(m->revision, "main");
  EXPECT_EQ(m->commit, kCommit);
  EXPECT_EQ(m->path, snapshot_);
  // A commit given directly, without a ref.
  absl::StatusOr<HfModel> by_commit = ResolveHfModel(absl::StrCat("acme/tiny-llama@", kCommit));
  ASSERT_TRUE(by_commit.ok()) << by_commit.status();
  EXPECT_EQ(by_commit->path, snapshot_);
}

TEST_F(HubTest, WhatIsMissingIsNamedWithTheCacheAndTheRemedy) {
  struct Case {
    std::string id;
    absl::StatusCode code;
    std::string says;
  };
  for (const Case& c : std::vector<Case>{
           {"acme/absent", absl::StatusCode::kNotFound,
            absl::StrCat("model 'acme/absent' is not in the Hugging Face cache ", hub_,
                         " (download it there first, e.g. `huggingface-cli download acme/absent`")},
           {"acme/tiny-llama@dev", absl::StatusCode::kNotFound, "revision 'dev' is not in"},
           {"acme/tiny-llama@v1", absl::StatusCode::kNotFound,
            "snapshot ffffffffffffffffffffffffffffffffffffffff is missing"},
           {"not-a-repo", absl::StatusCode::kInvalidArgument, "is not a Hugging Face repo id"}}) {
    absl::StatusOr<HfModel> m = ResolveHfModel(c.id);
    ASSERT_FALSE(m.ok()) << c.id;
    EXPECT_EQ(m.status().code(), c.code) << c.id << ": " << m.status();
    EXPECT_NE(m.status().message().find(c.says), std::string::npos) << m.status();
    EXPECT_EQ(m.status().message().find('\n'), std::string::npos);
  }
  std::ofstream(hub_ + "/models--acme--tiny-llama/refs/broken") << "not a hash";
  absl::StatusOr<HfModel> broken = ResolveHfModel("acme/tiny-llama@broken");
  ASSERT_FALSE(broken.ok());
  EXPECT_EQ(broken.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(broken.status().message().find("does not hold a commit hash"), std::string::npos);
  // The ref's content is not echoed.
  EXPECT_EQ(broken.status().message().find("not a hash"), std::string::npos);
}

TEST_F(HubTest, AnExistingPathWinsOverARepoIdOfTheSameSpelling) {
  std::string label;
  absl::StatusOr<std::string> p = ResolveModelReference("acme/tiny-llama", "", &label);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(*p, snapshot_);
  EXPECT_EQ(label, "acme/tiny-llama");
  // A directory of that name under the base directory is a path, not the repo.
  fs::create_directories(root_ + "/base/acme/tiny-llama");
  label.clear();
  p = ResolveModelReference("acme/tiny-llama", root_ + "/base", &label);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(*p, root_ + "/base/acme/tiny-llama");
  EXPECT_EQ(label, "");
  // Neither a path nor a repo id.
  p = ResolveModelReference("no/such/dir", root_, &label);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().message(),
            absl::StrCat("model path '", root_, "/no/such/dir' does not exist"));
}

TEST_F(HubTest, AJobOnARepoIdIsTheJobOnItsSnapshotNamedByTheRepoId) {
  JobRequest r;
  r.model_path = "acme/tiny-llama";
  r.task = "lambada_openai";
  r.data_path = AssetsDir() + "/data/lambada_openai/lambada_test.jsonl";
  r.limit = 1;
  absl::StatusOr<JobSpec> by_id = ResolveJob(r);
  ASSERT_TRUE(by_id.ok()) << by_id.status();
  EXPECT_EQ(by_id->model_path, snapshot_);
  EXPECT_EQ(by_id->model_name, "acme/tiny-llama");
  // Same content as the assets' directory: the same job.
  r.model_path = AssetsDir() + "/models/ref-llama";
  absl::StatusOr<JobSpec> by_path = ResolveJob(r);
  ASSERT_TRUE(by_path.ok()) << by_path.status();
  EXPECT_EQ(by_path->JobId(), by_id->JobId());
  EXPECT_EQ(by_path->model_name, "ref-llama");
}

TEST(DtypeTest, TransformersSpellingsAndAuto) {
  for (const auto& [in, want] :
       std::vector<std::pair<std::string, std::string>>{{"fp32", "fp32"},
                                                        {"float32", "fp32"},
                                                        {"torch.float32", "fp32"},
                                                        {"bf16", "bf16"},
                                                        {"bfloat16", "bf16"},
                                                        {"torch.bfloat16", "bf16"},
                                                        {"fp16", "fp16"},
                                                        {"float16", "fp16"},
                                                        {"auto", "auto"}}) {
    absl::StatusOr<std::string> d = DtypeName(in);
    ASSERT_TRUE(d.ok()) << in;
    EXPECT_EQ(*d, want) << in;
  }
  for (const char* bad : {"", "int8", "fp8", "Float16", "torch.int8", "bfloat"}) {
    absl::StatusOr<std::string> d = DtypeName(bad);
    ASSERT_FALSE(d.ok()) << bad;
    EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
  }
  ModelConfig c;
  c.torch_dtype = "bfloat16";
  EXPECT_EQ(ResolveDtype("auto", c).value_or(""), "bf16");
  EXPECT_EQ(ResolveDtype("float32", c).value_or(""), "fp32");  // asked for: not the model's
  c.torch_dtype = "";
  EXPECT_NE(ResolveDtype("auto", c).status().message().find("names no dtype"), std::string::npos);
  c.torch_dtype = "int8";
  EXPECT_NE(
      ResolveDtype("auto", c).status().message().find("'int8' is not one kvsweep computes in"),
      std::string::npos);
  // The assets' models are stored in float16: `auto` is fp16, in a job spec too.
  JobRequest r;
  r.model_path = AssetsDir() + "/models/ref-gpt2";
  r.task = "lambada_openai";
  r.data_path = AssetsDir() + "/data/lambada_openai/lambada_test.jsonl";
  r.limit = 1;
  r.dtype = "auto";
  absl::StatusOr<JobSpec> s = ResolveJob(r);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->dtype, "fp16");
  r.dtype = "float16";
  absl::StatusOr<JobSpec> same = ResolveJob(r);
  ASSERT_TRUE(same.ok()) << same.status();
  EXPECT_EQ(same->JobId(), s->JobId());
  r.dtype = "int8";
  absl::StatusOr<JobSpec> bad = ResolveJob(r);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("dtype"), std::string::npos) << bad.status();
}

}  // namespace
}  // namespace kvsweep

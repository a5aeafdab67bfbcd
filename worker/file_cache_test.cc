// FileCache and FileStager against an in-memory FileSource that can corrupt, lie about sizes
// and offsets, or break off a transfer; the stager also on a real model's spec (ref-gpt2, from
// KVSWEEP_ASSETS; skipped without it): --stage auto with a local copy whose content differs,
// and the views' removal when a job ends, when another holder still uses them, and after a
// worker process crashed.
#include "worker/file_cache.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <map>
#include <optional>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/fingerprint.h"
#include "common/hash.h"
#include "common/path_policy.h"
#include "gtest/gtest.h"
#include "spec/job_spec.h"
#include "worker/file_stager.h"

namespace kvsweep {
namespace {

std::string TempDir() {
  char tmpl[] = "/tmp/kvsweep_file_cache_XXXXXX";
  const char* d = ::mkdtemp(tmpl);
  EXPECT_NE(d, nullptr);
  return d;
}

std::string Bytes(size_t n, uint32_t seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) {
    seed = seed * 1664525u + 1013904223u;
    s[i] = static_cast<char>(seed >> 24);
  }
  return s;
}

// Files by sha256, sent in chunks of `chunk` bytes. Faults: flip a byte, send a wrong size, skip
// an offset, or fail with kUnavailable after `break_after` bytes of the first call.
class FakeSource final : public FileSource {
 public:
  std::string Add(const std::string& bytes) {
    const std::string sha = Sha256Hex(bytes);
    files_[sha] = bytes;
    return sha;
  }
  absl::Status Fetch(const std::string& sha, int64_t offset, const ChunkSink& sink) override {
    ++calls;
    offsets.push_back(offset);
    auto it = files_.find(sha);
    if (it == files_.end()) return absl::NotFoundError("no such file");
    std::string data = serve_instead.empty() ? it->second : serve_instead;
    if (flip_byte >= 0 && flip_byte < static_cast<int64_t>(data.size())) data[flip_byte] ^= 1;
    const int64_t size = static_cast<int64_t>(data.size()) + size_lie;
    int64_t sent = 0;
    for (int64_t pos = offset; pos < static_cast<int64_t>(data.size()) || pos == offset;) {
      const int64_t n = std::min<int64_t>(chunk, static_cast<int64_t>(data.size()) - pos);
      if (break_after >= 0 && calls == 1 && sent >= break_after) {
        return absl::UnavailableError("connection reset");
      }
      const int64_t at = pos + (skip_offset && pos > offset ? 1 : 0);
      if (absl::Status s = sink(size, at, absl::string_view(data).substr(pos, n)); !s.ok()) {
        return s;
      }
      sent += n;
      pos += n;
      if (n == 0) break;
    }
    return absl::OkStatus();
  }

  int calls = 0;
  std::vector<int64_t> offsets;
  int64_t chunk = 1000;
  int64_t flip_byte = -1;
  int64_t size_lie = 0;
  bool skip_offset = false;
  int64_t break_after = -1;
  std::string serve_instead;

 private:
  std::map<std::string, std::string> files_;
};

FetchFn From(FakeSource* src, const std::string& sha) {
  return
      [src, sha](int64_t offset, const ChunkSink& sink) { return src->Fetch(sha, offset, sink); };
}

int CountEntries(const std::string& dir) {
  int n = 0;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (struct dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      if (name != "." && name != ".." && name.find(".lock") == std::string::npos) ++n;
    }
    ::closedir(d);
  }
  return n;
}

void SetAtime(const std::string& path, int64_t sec) {
  const struct timespec t[2] = {{sec, 0}, {0, UTIME_OMIT}};
  ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), t, 0), 0) << path;
}

TEST(FileCacheTest, FetchesVerifiesAndReusesABlob) {
  const std::string dir = TempDir();
  auto cache = FileCache::Open(dir, 1 << 20);
  ASSERT_TRUE(cache.ok()) << cache.status();
  FakeSource src;
  const std::string bytes = Bytes(4500, 1);
  const std::string sha = src.Add(bytes);
  CacheGetStats st;
  absl::StatusOr<FileCache::Pin> pin = (*cache)->Get(sha, From(&src, sha), nullptr, &st);
  ASSERT_TRUE(pin.ok()) << pin.status();
  EXPECT_FALSE(st.hit);
  EXPECT_EQ(st.bytes_fetched, 4500);
  EXPECT_EQ(pin->path(), (*cache)->BlobPath(sha));
  EXPECT_EQ(*ReadFile(pin->path()), bytes);
  struct stat s;
  ASSERT_EQ(::stat(pin->path().c_str(), &s), 0);
  EXPECT_EQ(s.st_mode & 0222, 0u) << "blobs are read-only";
  EXPECT_EQ(CountEntries(JoinPath(dir, "tmp")), 0) << "no partial file left";

  CacheGetStats again;
  ASSERT_TRUE((*cache)->Get(sha, From(&src, sha), nullptr, &again).ok());
  EXPECT_TRUE(again.hit);
  EXPECT_EQ(src.calls, 1) << "a cached file is not fetched again";
  EXPECT_EQ(*(*cache)->UsedBytes(), 4500);
}

TEST(FileCacheTest, AnEmptyFileIsCachedToo) {
  auto cache = FileCache::Open(TempDir(), 1 << 20);
  FakeSource src;
  const std::string sha = src.Add("");
  absl::StatusOr<FileCache::Pin> pin = (*cache)->Get(sha, From(&src, sha));
  ASSERT_TRUE(pin.ok()) << pin.status();
  EXPECT_EQ(pin->size(), 0);
}

TEST(FileCacheTest, BytesThatDoNotHashAsNamedAreDiscarded) {
  const std::string dir = TempDir();
  auto cache = FileCache::Open(dir, 1 << 20);
  FakeSource src;
  const std::string sha = src.Add(Bytes(3000, 2));
  src.flip_byte = 2500;
  absl::StatusOr<FileCache::Pin> pin = (*cache)->Get(sha, From(&src, sha));
  ASSERT_EQ(pin.status().code(), absl::StatusCode::kDataLoss) << pin.status();
  EXPECT_NE(pin.status().message().find("hash to"), std::string::npos) << pin.status();
  EXPECT_EQ(src.calls, 1) << "a wrong hash is not retried";
  EXPECT_FALSE(PathExists((*cache)->BlobPath(sha)));
  EXPECT_EQ(CountEntries(JoinPath(dir, "tmp")), 0);
  EXPECT_EQ(*(*cache)->UsedBytes(), 0);

  // The same cache then takes the true bytes.
  src.flip_byte = -1;
  ASSERT_TRUE((*cache)->Get(sha, From(&src, sha)).ok());
}

TEST(FileCacheTest, ASourceThatLiesAboutSizeOrOffsetsIsRefused) {
  const std::string dir = TempDir();
  auto cache = FileCache::Open(dir, 1 << 20);
  FakeSource src;
  const std::string sha = src.Add(Bytes(2500, 3));
  src.size_lie = -100;  // more bytes than the size it announces
  EXPECT_EQ((*cache)->Get(sha, From(&src, sha)).status().code(), absl::StatusCode::kDataLoss);
  src.size_lie = 0;
  src.skip_offset = true;  // a gap between chunks
  EXPECT_EQ((*cache)->Get(sha, From(&src, sha)).status().code(), absl::StatusCode::kDataLoss);
  src.skip_offset = false;
  src.size_lie = 100;  // announces more than it sends: the transfer ends early, then lies on
  // (kept for a resume, which a retry would attempt: stop at the first retry)
  absl::StatusOr<FileCache::Pin> short_pin =
      (*cache)->Get(sha, From(&src, sha), [] { return false; });
  EXPECT_FALSE(short_pin.ok());
  EXPECT_FALSE(PathExists((*cache)->BlobPath(sha)));
  src.serve_instead = Bytes(2500, 4);  // another file's bytes under this hash
  src.size_lie = 0;
  EXPECT_EQ((*cache)->Get(sha, From(&src, sha)).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_FALSE(PathExists((*cache)->BlobPath(sha)));
  EXPECT_EQ(CountEntries(JoinPath(dir, "blobs")), 0);
}

TEST(FileCacheTest, AnInterruptedTransferResumesWhereItStopped) {
  auto cache = FileCache::Open(TempDir(), 1 << 20);
  FakeSource src;
  const std::string bytes = Bytes(5500, 5);
  const std::string sha = src.Add(bytes);
  src.break_after = 3000;
  CacheGetStats st;
  absl::StatusOr<FileCache::Pin> pin = (*cache)->Get(sha, From(&src, sha), nullptr, &st);
  ASSERT_TRUE(pin.ok()) << pin.status();
  ASSERT_EQ(src.offsets.size(), 2u);
  EXPECT_EQ(src.offsets[0], 0);
  EXPECT_EQ(src.offsets[1], 3000) << "the second call asks for the rest only";
  EXPECT_EQ(st.bytes_fetched, 5500);
  EXPECT_EQ(st.attempts, 2);
  EXPECT_EQ(*ReadFile(pin->path()), bytes);
}

TEST(FileCacheTest, APartialFileOfAnEarlierProcessIsResumed) {
  const std::string dir = TempDir();
  FakeSource src;
  const std::string bytes = Bytes(4000, 6);
  const std::string sha = src.Add(bytes);
  {
    auto first = FileCache::Open(dir, 1 << 20);
    src.break_after = 2000;
    // Stop at the first retry, as a worker that dies would.
    absl::StatusOr<FileCache::Pin> pin = (*first)->Get(sha, From(&src, sha), [] { return false; });
    EXPECT_EQ(pin.status().code(), absl::StatusCode::kCancelled) << pin.status();
    EXPECT_EQ(*(*first)->UsedBytes(), 4000) << "the partial file reserves its declared size";
  }
  auto second = FileCache::Open(dir, 1 << 20);
  src.break_after = -1;
  CacheGetStats st;
  absl::StatusOr<FileCache::Pin> pin = (*second)->Get(sha, From(&src, sha), nullptr, &st);
  ASSERT_TRUE(pin.ok()) << pin.status();
  EXPECT_EQ(src.offsets.back(), 2000);
  EXPECT_EQ(st.bytes_fetched, 2000);
  EXPECT_EQ(*ReadFile(pin->path()), bytes);
}

TEST(FileCacheTest, EvictsLeastRecentlyUsedFilesThatAreNotInUse) {
  const std::string dir = TempDir();
  auto cache = FileCache::Open(dir, 3000);
  FakeSource src;
  const std::string a = src.Add(Bytes(1000, 10)), b = src.Add(Bytes(1000, 11)),
                    c = src.Add(Bytes(1000, 12)), d = src.Add(Bytes(1000, 13)),
                    e = src.Add(Bytes(2500, 14));
  for (const std::string& s : {a, b, c}) ASSERT_TRUE((*cache)->Get(s, From(&src, s)).ok());
  // Last uses: c oldest, then a, then b (set explicitly: filesystems' clocks are coarse).
  SetAtime((*cache)->BlobPath(c), 1000);
  SetAtime((*cache)->BlobPath(a), 2000);
  SetAtime((*cache)->BlobPath(b), 3000);
  {
    absl::StatusOr<FileCache::Pin> pin_c = (*cache)->Get(c, From(&src, c));  // in use
    ASSERT_TRUE(pin_c.ok());
    SetAtime((*cache)->BlobPath(c), 1000);
    ASSERT_TRUE((*cache)->Get(d, From(&src, d)).ok());
    EXPECT_TRUE(PathExists((*cache)->BlobPath(c))) << "pinned: never evicted";
    EXPECT_FALSE(PathExists((*cache)->BlobPath(a))) << "least recently used of the others";
    EXPECT_TRUE(PathExists((*cache)->BlobPath(b)));
    EXPECT_TRUE(PathExists((*cache)->BlobPath(d)));
    EXPECT_LE(*(*cache)->UsedBytes(), 3000);
    // 2500 bytes fit only by evicting c, which is in use.
    absl::StatusOr<FileCache::Pin> too_big = (*cache)->Get(e, From(&src, e));
    EXPECT_EQ(too_big.status().code(), absl::StatusCode::kResourceExhausted) << too_big.status();
    EXPECT_NE(too_big.status().message().find("in use"), std::string::npos);
    EXPECT_TRUE(PathExists((*cache)->BlobPath(c)));
    EXPECT_TRUE(PathExists((*cache)->BlobPath(b))) << "nothing evicted when it cannot help";
    EXPECT_TRUE(PathExists((*cache)->BlobPath(d)));
  }
  // Released: now it may go.
  ASSERT_TRUE((*cache)->Get(e, From(&src, e)).ok());
  EXPECT_LE(*(*cache)->UsedBytes(), 3000);
  // A file larger than the whole cache is refused before any byte is stored.
  const std::string huge = src.Add(Bytes(3001, 15));
  EXPECT_EQ((*cache)->Get(huge, From(&src, huge)).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(CountEntries(JoinPath(dir, "tmp")), 0);
}

TEST(FileCacheTest, ProcessesSharingADirectoryFetchEachFileOnce) {
  const std::string dir = TempDir();
  FakeSource src;
  const std::string bytes = Bytes(200000, 20);
  const std::string sha = src.Add(bytes);
  std::mutex mu;
  // Two cache objects on one directory: separate descriptors, as two processes have.
  auto one = FileCache::Open(dir, 1 << 20), two = FileCache::Open(dir, 1 << 20);
  FetchFn fetch = [&](int64_t offset, const ChunkSink& sink) {
    std::lock_guard<std::mutex> l(mu);
    return src.Fetch(sha, offset, sink);
  };
  absl::StatusOr<FileCache::Pin> p1, p2;
  CacheGetStats s1, s2;
  std::thread t1([&] { p1 = (*one)->Get(sha, fetch, nullptr, &s1); });
  std::thread t2([&] { p2 = (*two)->Get(sha, fetch, nullptr, &s2); });
  t1.join();
  t2.join();
  ASSERT_TRUE(p1.ok()) << p1.status();
  ASSERT_TRUE(p2.ok()) << p2.status();
  EXPECT_EQ(src.calls, 1);
  EXPECT_NE(s1.hit, s2.hit) << "one fetched, the other used its blob";
  EXPECT_EQ(s1.bytes_fetched + s2.bytes_fetched, 200000);
  EXPECT_EQ(*ReadFile(p1->path()), bytes);
}

TEST(ParseByteSizeTest, SuffixesAndErrors) {
  EXPECT_EQ(*ParseByteSize("20G"), int64_t{20} << 30);
  EXPECT_EQ(*ParseByteSize("512m"), int64_t{512} << 20);
  EXPECT_EQ(*ParseByteSize("1048576"), 1048576);
  EXPECT_EQ(*ParseByteSize("2TB"), int64_t{2} << 40);
  for (const char* bad : {"", "0", "-1G", "12X", "G", "1.5G"}) {
    EXPECT_FALSE(ParseByteSize(bad).ok()) << bad;
  }
}

// ---- FileStager on a real model's spec --------------------------------------------------------

// Serves the original files of a spec by hash, as the coordinator does.
class SpecSource final : public FileSource {
 public:
  explicit SpecSource(const JobSpec& spec) {
    for (const auto& [path, sha] : spec.input_sha256) by_sha_[sha] = path;
  }
  absl::Status Fetch(const std::string& sha, int64_t offset, const ChunkSink& sink) override {
    ++calls;
    auto it = by_sha_.find(lie_with.empty() ? sha : lie_with);
    if (it == by_sha_.end()) return absl::NotFoundError("not an input");
    absl::StatusOr<std::string> bytes = ReadFile(it->second, int64_t{1} << 30);
    if (!bytes.ok()) return bytes.status();
    const int64_t size = static_cast<int64_t>(bytes->size());
    for (int64_t pos = offset; pos < size || pos == offset;) {
      const int64_t n = std::min<int64_t>(1 << 20, size - pos);
      if (absl::Status s = sink(size, pos, absl::string_view(*bytes).substr(pos, n)); !s.ok()) {
        return s;
      }
      pos += n;
      if (n == 0) break;
    }
    return absl::OkStatus();
  }
  // Serves `sha` from `path` instead (the coordinator's copy of a file changed here).
  void ServeFrom(const std::string& sha, const std::string& path) { by_sha_[sha] = path; }
  int calls = 0;
  std::string lie_with;  // serve this hash's file whatever is asked

 private:
  std::map<std::string, std::string> by_sha_;
};

absl::StatusOr<JobSpec> RefGpt2Spec(const std::string& data_path = "") {
  JobRequest r;
  r.model_path = JoinPath(AssetsDir(), "models/ref-gpt2");
  r.task = "text";
  r.data_path =
      data_path.empty() ? JoinPath(AssetsDir(), "data/wikitext-2/wiki.valid.tokens") : data_path;
  r.window = 64;
  return ResolveJob(r);
}

TEST(FileStagerTest, StagesAModelDirectoryThatVerifiesAgainstTheSpec) {
  absl::StatusOr<JobSpec> spec = RefGpt2Spec();
  if (!spec.ok()) GTEST_SKIP() << "ref-gpt2 not available: " << spec.status();
  auto cache = FileCache::Open(TempDir(), int64_t{1} << 30);
  ASSERT_TRUE(cache.ok());
  FileStager stager(cache->get());
  EXPECT_TRUE(NeedsStaging(StageMode::kAlways, *spec));
  EXPECT_FALSE(NeedsStaging(StageMode::kAuto, *spec)) << "every path exists here";
  EXPECT_FALSE(NeedsStaging(StageMode::kNever, *spec));
  JobSpec missing = *spec;
  missing.data_path = "/nonexistent/wiki.valid.tokens";
  EXPECT_TRUE(NeedsStaging(StageMode::kAuto, missing));
  EXPECT_FALSE(NeedsStaging(StageMode::kNever, missing));

  SpecSource src(*spec);
  absl::StatusOr<StagedJob> staged = stager.Stage(*spec, &src);
  ASSERT_TRUE(staged.ok()) << staged.status();
  EXPECT_EQ(staged->files, static_cast<int>(spec->input_sha256.size()));
  EXPECT_EQ(staged->files_fetched, staged->files);
  EXPECT_EQ(staged->spec.JobId(), spec->JobId());
  EXPECT_EQ(staged->spec.model_sha256, spec->model_sha256);
  EXPECT_EQ(staged->spec.model_path.rfind((*cache)->dir(), 0), 0u) << staged->spec.model_path;
  EXPECT_EQ(BaseName(staged->spec.model_path), "ref-gpt2");
  EXPECT_TRUE(PathExists(JoinPath(staged->spec.model_path, "config.json")));
  EXPECT_EQ(staged->spec.data_path.rfind((*cache)->dir(), 0), 0u);
  EXPECT_TRUE(VerifyJobInputs(staged->spec).ok());
  int64_t total = 0;
  for (const auto& [path, sha] : spec->input_sha256) {
    EXPECT_TRUE(PathExists((*cache)->BlobPath(sha))) << path;
    struct stat st;
    ASSERT_EQ(::stat(path.c_str(), &st), 0) << path;
    total += st.st_size;
  }
  EXPECT_EQ(staged->bytes_fetched, total);

  // A second job on the same inputs: no transfer, same paths.
  const int calls = src.calls;
  absl::StatusOr<StagedJob> again = stager.Stage(*spec, &src);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(src.calls, calls);
  EXPECT_EQ(again->files_fetched, 0);
  EXPECT_EQ(again->bytes_fetched, 0);
  EXPECT_EQ(again->spec.model_path, staged->spec.model_path);
}

TEST(FileStagerTest, ALyingSourceFailsTheJobAndPoisonsNothing) {
  absl::StatusOr<JobSpec> spec = RefGpt2Spec();
  if (!spec.ok()) GTEST_SKIP() << "ref-gpt2 not available: " << spec.status();
  const std::string dir = TempDir();
  auto cache = FileCache::Open(dir, int64_t{1} << 30);
  FileStager stager(cache->get());
  SpecSource src(*spec);
  src.lie_with = spec->data_sha256;  // the data file's bytes for every hash
  absl::StatusOr<StagedJob> staged = stager.Stage(*spec, &src);
  ASSERT_EQ(staged.status().code(), absl::StatusCode::kDataLoss) << staged.status();
  EXPECT_NE(staged.status().message().find("staging "), std::string::npos);
  for (const auto& [path, sha] : spec->input_sha256) {
    if (sha != spec->data_sha256) {
      EXPECT_FALSE(PathExists((*cache)->BlobPath(sha))) << path;
    }
  }
  EXPECT_EQ(CountEntries(JoinPath(dir, "tmp")), 0);

  JobSpec old = *spec;
  old.input_sha256.clear();
  EXPECT_EQ(stager.Stage(old, &src).status().code(), absl::StatusCode::kFailedPrecondition);
}

// --stage auto on a worker whose copy of the data file differs from what the job recorded: the
// job used to fail with "input changed since submit"; now that file alone is fetched, the model
// files that match are used where they are (linked from the view), and none of them is hashed
// again.
TEST(FileStagerTest, AutoFetchesALocalFileWhoseContentDiffersAndUsesTheMatchingOnes) {
  absl::StatusOr<JobSpec> genuine = RefGpt2Spec();
  if (!genuine.ok()) GTEST_SKIP() << "ref-gpt2 not available: " << genuine.status();
  const std::string dir = TempDir();
  const std::string data = JoinPath(dir, "data/wiki.valid.tokens");
  ASSERT_EQ(::mkdir(JoinPath(dir, "data").c_str(), 0755), 0);
  absl::StatusOr<std::string> bytes = ReadFile(genuine->data_path, int64_t{1} << 30);
  ASSERT_TRUE(bytes.ok());
  ASSERT_TRUE(WriteFileAtomic(data, *bytes).ok());
  absl::StatusOr<JobSpec> spec = RefGpt2Spec(data);
  ASSERT_TRUE(spec.ok()) << spec.status();
  ASSERT_EQ(spec->data_sha256, genuine->data_sha256);

  StagingPlan plan = PlanStaging(StageMode::kAuto, *spec);
  EXPECT_FALSE(plan.stage) << "every file here is as recorded";
  EXPECT_EQ(plan.local.size(), spec->input_sha256.size());

  // This worker's copy changes (same name, other bytes).
  ASSERT_TRUE(WriteFileAtomic(data, *bytes + "a local edit\n").ok());
  EXPECT_EQ(VerifyJobInputs(*spec).message(), "input changed since submit: " + data)
      << "the job on the spec's paths as they are";
  EXPECT_TRUE(NeedsStaging(StageMode::kAuto, *spec));
  EXPECT_FALSE(NeedsStaging(StageMode::kNever, *spec));
  plan = PlanStaging(StageMode::kAuto, *spec);
  ASSERT_TRUE(plan.stage);
  EXPECT_EQ(plan.local.size(), spec->input_sha256.size() - 1);
  EXPECT_EQ(plan.local.count(data), 0u);
  EXPECT_TRUE(PlanStaging(StageMode::kAlways, *spec).local.empty());

  auto cache = FileCache::Open(JoinPath(dir, "cache"), int64_t{1} << 30);
  ASSERT_TRUE(cache.ok());
  FileStager stager(cache->get());
  SpecSource src(*spec);
  src.ServeFrom(spec->data_sha256, genuine->data_path);  // the coordinator has the recorded bytes
  HashMonitor monitor;
  absl::StatusOr<StagedJob> staged;
  {
    ScopedHashMonitor scope(&monitor);
    staged = stager.Stage(*spec, &src, nullptr, plan.local);
    ASSERT_TRUE(staged.ok()) << staged.status();
    // What the evaluator checks before it runs: every hash is cached by now.
    const int64_t before = monitor.bytes_hashed.load();
    EXPECT_TRUE(VerifyJobInputs(staged->spec).ok());
    EXPECT_EQ(monitor.bytes_hashed.load(), before);
  }
  // Hashed through the hash cache: the fetched file's blob alone, once (the local model files
  // were hashed when the spec was resolved, and are not again).
  EXPECT_EQ(monitor.bytes_hashed.load(), static_cast<int64_t>(bytes->size()));
  EXPECT_EQ(src.calls, 1);
  EXPECT_EQ(staged->files, static_cast<int>(spec->input_sha256.size()));
  EXPECT_EQ(staged->files_fetched, 1);
  EXPECT_EQ(staged->files_local, staged->files - 1);
  EXPECT_EQ(staged->bytes_fetched, static_cast<int64_t>(bytes->size()));
  EXPECT_EQ(staged->spec.JobId(), spec->JobId());
  EXPECT_EQ(*ReadFile(staged->spec.data_path, int64_t{1} << 30), *bytes);
  EXPECT_EQ(RealPath(staged->spec.data_path), (*cache)->BlobPath(spec->data_sha256));
  const std::string config = JoinPath(staged->spec.model_path, "config.json");
  EXPECT_EQ(RealPath(config), RealPath(JoinPath(spec->model_path, "config.json")));
  for (const auto& [path, sha] : spec->input_sha256) {
    EXPECT_EQ(PathExists((*cache)->BlobPath(sha)), path == data) << path;
  }
}

// Every recorded file matches here, but the directory holds one more that the engine would
// read (a tokenizer_config.json the job did not record): the files are not what the job hashed
// as a whole, so auto stages a view holding exactly the recorded files, every one linked to
// where it is, and fetches nothing.
TEST(FileStagerTest, AutoStagesWhenTheLocalDirectoryResolvesToOtherFiles) {
  const std::string model = JoinPath(AssetsDir(), "models/ref-gpt2");
  if (!PathExists(JoinPath(model, "config.json"))) GTEST_SKIP() << "ref-gpt2 not available";
  const std::string dir = TempDir();
  const std::string local = JoinPath(dir, "ref-gpt2");
  ASSERT_EQ(::mkdir(local.c_str(), 0755), 0);
  for (const char* f :
       {"config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors", "tokenizer.json"}) {
    ASSERT_EQ(::symlink(JoinPath(model, f).c_str(), JoinPath(local, f).c_str()), 0) << f;
  }
  JobRequest r;
  r.model_path = local;
  r.task = "text";
  r.data_path = JoinPath(AssetsDir(), "data/wikitext-2/wiki.valid.tokens");
  r.window = 64;
  absl::StatusOr<JobSpec> spec = ResolveJob(r);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_FALSE(PlanStaging(StageMode::kAuto, *spec).stage);

  const std::string extra = JoinPath(local, "tokenizer_config.json");
  ASSERT_EQ(::symlink(JoinPath(model, "tokenizer_config.json").c_str(), extra.c_str()), 0);
  ASSERT_FALSE(VerifyJobInputs(*spec).ok());
  const StagingPlan plan = PlanStaging(StageMode::kAuto, *spec);
  ASSERT_TRUE(plan.stage);
  EXPECT_EQ(plan.local.size(), spec->input_sha256.size());

  auto cache = FileCache::Open(JoinPath(dir, "cache"), int64_t{1} << 30);
  ASSERT_TRUE(cache.ok());
  FileStager stager(cache->get());
  SpecSource src(*spec);
  absl::StatusOr<StagedJob> staged = stager.Stage(*spec, &src, nullptr, plan.local);
  ASSERT_TRUE(staged.ok()) << staged.status();
  EXPECT_EQ(src.calls, 0);
  EXPECT_EQ(staged->files_local, staged->files);
  EXPECT_TRUE(staged->pins.empty());
  EXPECT_FALSE(PathExists(JoinPath(staged->spec.model_path, "tokenizer_config.json")));
  EXPECT_TRUE(VerifyJobInputs(staged->spec).ok());
  EXPECT_EQ(staged->spec.JobId(), spec->JobId());
}

// Lists `dir` (without . and ..); empty if it does not exist.
std::vector<std::string> Entries(const std::string& dir) {
  std::vector<std::string> out;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (struct dirent* e = ::readdir(d)) {
      const std::string n = e->d_name;
      if (n != "." && n != "..") out.push_back(n);
    }
    ::closedir(d);
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string Joined(const std::vector<std::string>& v) {
  std::string s;
  for (const std::string& e : v) absl::StrAppend(&s, e, " ");
  return s;
}

TEST(FileStagerTest, AJobsViewsAreRemovedWhenItEndsUnlessAnotherHolderUsesThem) {
  absl::StatusOr<JobSpec> spec = RefGpt2Spec();
  if (!spec.ok()) GTEST_SKIP() << "ref-gpt2 not available: " << spec.status();
  const std::string dir = TempDir();
  const std::string views = JoinPath(dir, "views");
  // Two caches on one directory: two workers, as far as flock can tell.
  auto one = FileCache::Open(dir, int64_t{1} << 30);
  auto two = FileCache::Open(dir, int64_t{1} << 30);
  ASSERT_TRUE(one.ok() && two.ok());
  FileStager first(one->get()), second(two->get());
  SpecSource src(*spec);

  std::optional<StagedJob> a = *first.Stage(*spec, &src);
  ASSERT_EQ(a->views.size(), 2u) << "the model's directory and the data's";
  const std::string model_view = a->views[0].path();
  EXPECT_TRUE(IsDirectory(model_view));
  EXPECT_EQ(Entries(views).size(), 4u)
      << "two views and their lock files: " << Joined(Entries(views));
  a.reset();  // the job ended
  EXPECT_TRUE(Entries(views).empty()) << Joined(Entries(views));
  for (const auto& [path, sha] : spec->input_sha256) {
    EXPECT_TRUE(PathExists((*one)->BlobPath(sha))) << "blobs stay: " << path;
  }

  a = *first.Stage(*spec, &src);
  std::optional<StagedJob> b = *second.Stage(*spec, &src);
  EXPECT_EQ(a->spec.model_path, b->spec.model_path) << "the same inputs, the same paths";
  absl::StatusOr<int> stale = RemoveStaleViews(dir);
  ASSERT_TRUE(stale.ok()) << stale.status();
  EXPECT_EQ(*stale, 0) << "views in use are not stale";
  a.reset();
  EXPECT_TRUE(IsDirectory(b->spec.model_path)) << "the other job still runs on it";
  EXPECT_TRUE(VerifyJobInputs(b->spec).ok());
  b.reset();
  EXPECT_TRUE(Entries(views).empty()) << Joined(Entries(views));
}

// A worker killed mid-job leaves its views (a kill runs no destructor); the next worker on the
// cache removes them, and what a live worker holds is left alone.
TEST(FileStagerTest, RemoveStaleViewsRemovesWhatACrashedWorkerLeftAndNothingInUse) {
  absl::StatusOr<JobSpec> spec = RefGpt2Spec();
  if (!spec.ok()) GTEST_SKIP() << "ref-gpt2 not available: " << spec.status();
  const std::string dir = TempDir();
  const std::string views = JoinPath(dir, "views");
  EXPECT_EQ(*RemoveStaleViews(dir), 0) << "no views directory yet";
  int ready[2], go[2];
  ASSERT_EQ(::pipe(ready), 0);
  ASSERT_EQ(::pipe(go), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {  // the worker: stages a job and keeps running it until killed
    auto cache = FileCache::Open(dir, int64_t{1} << 30);
    if (!cache.ok()) ::_exit(1);
    FileStager stager(cache->get());
    SpecSource src(*spec);
    absl::StatusOr<StagedJob> staged = stager.Stage(*spec, &src);
    if (!staged.ok()) ::_exit(2);
    char c = 'x';
    if (::write(ready[1], &c, 1) != 1) ::_exit(3);
    (void)::read(go[0], &c, 1);  // until killed
    ::_exit(4);
  }
  char c = 0;
  ASSERT_EQ(::read(ready[0], &c, 1), 1) << "the child could not stage";
  const std::vector<std::string> held = Entries(views);
  EXPECT_EQ(held.size(), 4u) << Joined(held);
  // A half-built copy of a crashed builder and a view without a lock file (an older worker's).
  const std::string key_a(64, 'a'), key_b(64, 'b');
  ASSERT_EQ(::mkdir(JoinPath(views, ".tmp-" + key_a + "-1-0-0").c_str(), 0755), 0);
  ASSERT_EQ(::mkdir(JoinPath(views, key_b).c_str(), 0755), 0);
  ASSERT_EQ(::mkdir(JoinPath(views, key_b + "/ref-gpt2").c_str(), 0755), 0);
  ASSERT_EQ(::symlink("/nonexistent", JoinPath(views, key_b + "/ref-gpt2/config.json").c_str()), 0);

  absl::StatusOr<int> removed = RemoveStaleViews(dir);
  ASSERT_TRUE(removed.ok()) << removed.status();
  EXPECT_EQ(*removed, 1) << "the unheld view only";
  EXPECT_EQ(Entries(views), held) << "the live worker's views and locks stay";

  ::kill(child, SIGKILL);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFSIGNALED(status));
  EXPECT_EQ(Entries(views), held) << "a crash leaves the views";
  removed = RemoveStaleViews(dir);
  ASSERT_TRUE(removed.ok()) << removed.status();
  EXPECT_EQ(*removed, 2);
  EXPECT_TRUE(Entries(views).empty()) << Joined(Entries(views));
  for (const auto& [path, sha] : spec->input_sha256) {
    EXPECT_TRUE(PathExists(JoinPath(dir, "blobs/" + sha))) << "blobs stay: " << path;
  }
  for (int fd : {ready[0], ready[1], go[0], go[1]}) ::close(fd);
}

}  // namespace
}  // namespace kvsweep

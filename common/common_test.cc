#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/fingerprint.h"
#include "common/hash.h"
#include "common/json_util.h"
#include "common/latency_histogram.h"
#include "common/log.h"
#include "common/signals.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace kvsweep {
namespace {

TEST(HashTest, KnownVectors) {
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(LatencyHistogramTest, PercentilesAreTightUpperBounds) {
  LatencyHistogram h;
  EXPECT_EQ(h.Count(), 0);
  EXPECT_EQ(h.Percentile(0.99), 0);
  for (int i = 1; i <= 1000; ++i) h.Record(i * 0.1);  // 0.1 .. 100 ms
  h.Record(-1);                                       // clock went backwards: bucket 0
  h.Record(1e9);                                      // beyond the last bucket: clamped
  EXPECT_EQ(h.Count(), 1002);
  for (double p : {0.5, 0.9, 0.99}) {
    const double exact = std::ceil(p * 1002 - 1) * 0.1;  // rank ceil(p n), counting the -1 sample
    EXPECT_GE(h.Percentile(p), exact * 0.999) << p;
    EXPECT_LE(h.Percentile(p), exact * 1.051) << p;
  }
  EXPECT_GT(h.Percentile(1.0), 1e5);
  EXPECT_NE(h.Summary().find("n 1002, p50 "), std::string::npos);
}

TEST(JsonTest, CanonicalIsKeySortedAndCompact) {
  nlohmann::json j = {{"b", 1}, {"a", {{"z", true}, {"y", "s"}}}};
  EXPECT_EQ(CanonicalJson(j), R"({"a":{"y":"s","z":true},"b":1})");
}

TEST(JsonTest, MalformedNamesWhat) {
  auto j = ParseJson("{\"a\": ", "config.json");
  ASSERT_FALSE(j.ok());
  EXPECT_EQ(j.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(j.status().message().find("config.json: invalid JSON"), std::string::npos);
}

// Whatever file a path names, a parse error gives its position, never its bytes.
TEST(JsonTest, ParseErrorsGiveTheByteNotTheContent) {
  const std::string path = absl::StrCat(::testing::TempDir(), "/kvsweep_secret_", ::getpid());
  ASSERT_TRUE(WriteFileAtomic(path, "\"SECRET-5f1d hunter2\nroot:x:0:0\n").ok());
  auto j = ReadJsonFile(path);
  ASSERT_FALSE(j.ok());
  EXPECT_EQ(j.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string m(j.status().message());
  EXPECT_NE(m.find(absl::StrCat(path, ": invalid JSON at byte ")), std::string::npos) << m;
  EXPECT_EQ(m.find("SECRET"), std::string::npos) << m;
  EXPECT_EQ(m.find("hunter2"), std::string::npos) << m;
  auto p = ParseJson("{\"token\": \"SECRET-5f1d", "result");
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(std::string(p.status().message()).find("SECRET"), std::string::npos) << p.status();
  // The offset is that of the first byte the parser could not take.
  EXPECT_EQ(ParseJson("{\"a\" 1}", "x").status().message(), "x: invalid JSON at byte 5");
  EXPECT_EQ(ParseJson("[1,2", "x").status().message(), "x: invalid JSON at byte 4 (end of input)");
  EXPECT_EQ(ParseJson("", "x").status().message(), "x: invalid JSON at byte 0 (end of input)");
  std::remove(path.c_str());
}

TEST(FileTest, MissingFileIsNotFound) {
  auto s = ReadFile("/nonexistent/kvsweep/file");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(s.status().message().find("/nonexistent/kvsweep/file"), std::string::npos);
}

TEST(FileTest, DirectoryIsFailedPrecondition) {
  auto s = ReadFile("/tmp");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition);
}

constexpr std::chrono::seconds kHangGuard(60);

template <typename T>
bool Ready(std::future<T>& f, std::chrono::milliseconds wait) {
  return f.wait_for(wait) == std::future_status::ready;
}

// Opens `fifo` for writing (and closes it again) until `done`: any open() blocked waiting for a
// writer returns, so a test of code that blocks still ends.
void ReleaseFifoReaders(const std::string& fifo, const std::function<bool()>& done) {
  while (!done()) {
    int fd = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK);
    if (fd >= 0) ::close(fd);
  }
}

// Runs `fn` on a thread of its own and waits for it; the wait is only a hang guard (code that
// opens a FIFO for reading without O_NONBLOCK waits for a writer forever).
template <typename F>
auto GuardedRun(const std::string& what, const std::string& fifo, F fn) -> decltype(fn()) {
  auto f = std::async(std::launch::async, fn);
  if (!Ready(f, kHangGuard)) {
    ADD_FAILURE() << what << ": still blocked after " << kHangGuard.count() << " s";
    ReleaseFifoReaders(fifo, [&] { return Ready(f, std::chrono::milliseconds(50)); });
  }
  return f.get();
}

template <typename T>
void ExpectNotRegular(const absl::StatusOr<T>& r, const std::string& path, const char* what) {
  ASSERT_FALSE(r.ok()) << what << " accepted " << path;
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << what << ": " << r.status();
  EXPECT_NE(r.status().message().find(absl::StrCat("'", path, "': not a regular file")),
            std::string::npos)
      << what << ": " << r.status();
}

// A FIFO is refused on its opened descriptor, without waiting for a writer.
TEST(FileTest, FifoIsRefusedWithoutBlocking) {
  const std::string fifo = absl::StrCat(::testing::TempDir(), "/kvsweep_fifo_", ::getpid());
  std::remove(fifo.c_str());
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  ExpectNotRegular(GuardedRun("ReadFile", fifo, [&] { return ReadFile(fifo); }), fifo, "ReadFile");
  ExpectNotRegular(GuardedRun("ReadJsonFile", fifo, [&] { return ReadJsonFile(fifo); }), fifo,
                   "ReadJsonFile");
  ExpectNotRegular(GuardedRun("MappedFile", fifo, [&] { return MappedFile::Open(fifo); }), fifo,
                   "MappedFile::Open");
  ExpectNotRegular(GuardedRun("Sha256File", fifo, [&] { return Sha256File(fifo); }), fifo,
                   "Sha256File");
  std::remove(fifo.c_str());
}

// Hashing a FIFO neither waits for a writer nor, were it to block, holds up other hashes: the
// memo's lock is not held while a file is opened or read.
TEST(FingerprintTest, AFifoHoldsUpNoOtherHash) {
  const std::string fifo = absl::StrCat(::testing::TempDir(), "/kvsweep_hfifo_", ::getpid());
  std::remove(fifo.c_str());
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  const std::string regular = absl::StrCat(::testing::TempDir(), "/kvsweep_regular_", ::getpid());
  ASSERT_TRUE(WriteFileAtomic(regular, "abc").ok());
  auto fifo_hash = std::async(std::launch::async, [&] { return FileSha256Cached(fifo); });
  EXPECT_TRUE(Ready(fifo_hash, kHangGuard)) << "hashing a FIFO: still blocked";
  // Whether or not that one is stuck, another file hashes.
  auto other = std::async(std::launch::async, [&] { return FileSha256Cached(regular); });
  EXPECT_TRUE(Ready(other, kHangGuard)) << "hashing a regular file: held up by the FIFO's hash";
  ReleaseFifoReaders(fifo, [&] {
    return Ready(fifo_hash, std::chrono::milliseconds(50)) &&
           Ready(other, std::chrono::milliseconds(0));
  });
  ExpectNotRegular(fifo_hash.get(), fifo, "FileSha256Cached");
  auto h = other.get();
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(*h, Sha256Hex("abc"));
  std::remove(regular.c_str());
  std::remove(fifo.c_str());
}

// Devices have no end (/dev/zero) or no size (both fstat as 0 bytes): they used to map and hash
// as an empty file, and be read until memory ran out.
TEST(FileTest, DevicesAreRefused) {
  for (const std::string dev : {"/dev/zero", "/dev/null"}) {
    ExpectNotRegular(MappedFile::Open(dev), dev, "MappedFile::Open");
    ExpectNotRegular(Sha256File(dev), dev, "Sha256File");
    ExpectNotRegular(FileSha256Cached(dev), dev, "FileSha256Cached");
    ExpectNotRegular(FilesFingerprint({dev}), dev, "FilesFingerprint");
    ExpectNotRegular(ReadFile(dev), dev, "ReadFile");
    ExpectNotRegular(ReadJsonFile(dev), dev, "ReadJsonFile");
  }
}

TEST(FileTest, ReadsAreBoundedBySize) {
  const std::string path = absl::StrCat(::testing::TempDir(), "/kvsweep_limit_", ::getpid());
  ASSERT_TRUE(WriteFileAtomic(path, "hello").ok());
  auto r = ReadFile(path, /*max_bytes=*/5);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, "hello");
  r = ReadFile(path, /*max_bytes=*/4);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(
      r.status().message().find(absl::StrCat("'", path, "': 5 bytes is over the limit of 4 bytes")),
      std::string::npos)
      << r.status();
  EXPECT_TRUE(CheckRegularFile(path).ok());
  ExpectNotRegular(absl::StatusOr<int>(CheckRegularFile(::testing::TempDir())),
                   ::testing::TempDir(), "CheckRegularFile");
  std::remove(path.c_str());
}

TEST(FileTest, BaseNameAndDirName) {
  EXPECT_EQ(BaseName("a/b/c.json"), "c.json");
  EXPECT_EQ(BaseName("models/ref-llama/"), "ref-llama");
  EXPECT_EQ(BaseName("c.json"), "c.json");
  EXPECT_EQ(BaseName("/"), "/");
  EXPECT_EQ(DirName("a/b/c"), "a/b");
  EXPECT_EQ(DirName("a/b/c/"), "a/b");
  EXPECT_EQ(DirName("c"), ".");
  EXPECT_EQ(DirName("/c"), "/");
}

TEST(FileTest, AtomicWriteThenMapRoundTrips) {
  std::string path = ::testing::TempDir() + "/kvsweep_file_test.bin";
  ASSERT_TRUE(WriteFileAtomic(path, "hello").ok());
  auto m = MappedFile::Open(path);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ((*m)->view(), "hello");
  auto h = Sha256File(path);
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(*h, Sha256Hex("hello"));
  std::remove(path.c_str());
}

TEST(FingerprintTest, InProcessMemoFollowsFileChanges) {
  std::string path = ::testing::TempDir() + "/kvsweep_memo_test.txt";
  ASSERT_TRUE(WriteFileAtomic(path, "first").ok());
  auto a = FileSha256Cached(path);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(*a, Sha256Hex("first"));
  EXPECT_EQ(*FileSha256Cached(path), *a);  // memoized
  // A new size (and mtime) is a new key: the memo must not serve the old digest.
  ASSERT_TRUE(WriteFileAtomic(path, "second!").ok());
  auto b = FileSha256Cached(path);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(*b, Sha256Hex("second!"));
  std::remove(path.c_str());
}

// A file of `bytes` (sparse: no disk used) whose last byte is 1.
std::string SparseFile(const std::string& name, int64_t bytes) {
  const std::string path = absl::StrCat(::testing::TempDir(), "/", name, "_", ::getpid());
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  EXPECT_GE(fd, 0);
  EXPECT_EQ(::pwrite(fd, "\1", 1, bytes - 1), 1);
  ::close(fd);
  return path;
}

TEST(FingerprintTest, AMonitorSeesTheBytesHashedAndCanCancel) {
  const std::string cache = absl::StrCat(::testing::TempDir(), "/kvsweep_cache_", ::getpid());
  ::setenv("KVSWEEP_CACHE_DIR", cache.c_str(), 1);
  const int64_t size = (int64_t{150} << 20) + 7;  // three slices, the last one short
  const std::string path = SparseFile("kvsweep_monitored", size);
  Sha256 direct;
  {
    auto m = MappedFile::Open(path);
    ASSERT_TRUE(m.ok());
    direct.Update((*m)->data(), (*m)->size());
  }
  const std::string want = direct.HexDigest();

  HashMonitor cancelled;
  cancelled.cancelled = true;
  {
    ScopedHashMonitor scoped(&cancelled);
    absl::StatusOr<std::string> h = FileSha256Cached(path);
    ASSERT_FALSE(h.ok());
    EXPECT_EQ(h.status().code(), absl::StatusCode::kCancelled);
    EXPECT_EQ(h.status().message(), absl::StrCat("hashing '", path, "' was cancelled"));
  }
  EXPECT_EQ(cancelled.current().path, "");

  HashMonitor monitor;
  {
    ScopedHashMonitor scoped(&monitor);
    absl::StatusOr<std::string> h =
        FileSha256Cached(path);  // not cached: the cancel stored nothing
    ASSERT_TRUE(h.ok()) << h.status();
    EXPECT_EQ(*h, want);
    EXPECT_EQ(monitor.bytes_hashed.load(), size);
    // Memoized now: a second call hashes nothing.
    ASSERT_TRUE(FileSha256Cached(path).ok());
    EXPECT_EQ(monitor.bytes_hashed.load(), size);
  }
  // Without a monitor nothing is reported (the scope ended).
  const std::string other = SparseFile("kvsweep_unmonitored", 1 << 20);
  ASSERT_TRUE(FileSha256Cached(other).ok());
  EXPECT_EQ(monitor.bytes_hashed.load(), size);
  std::remove(path.c_str());
  std::remove(other.c_str());
  std::remove((cache + "/sha256-cache.json").c_str());
  ::rmdir(cache.c_str());
  ::unsetenv("KVSWEEP_CACHE_DIR");
}

TEST(LogTest, LinesAreDatedAndJsonIsOneObjectPerLine) {
  const int64_t ms = int64_t{1796196026678};  // 2026-12-02T07:20:26.678Z
  EXPECT_EQ(FormatLogLine(LogFormat::kText, LogLevel::kInfo, ms, "worker-3", "/src/model.cc", 138,
                          "loaded"),
            "I 2026-12-02T07:20:26.678Z [worker-3] model.cc:138] loaded\n");
  EXPECT_EQ(FormatLogLine(LogFormat::kText, LogLevel::kError, ms + 5, "", "x.cc", 1, "bad"),
            "E 2026-12-02T07:20:26.683Z x.cc:1] bad\n");
  const std::string j = FormatLogLine(LogFormat::kJson, LogLevel::kWarning, ms, "", "a/b/c.cc", 7,
                                      "quote \" and\nnewline \xff");
  ASSERT_EQ(j.back(), '\n');
  EXPECT_EQ(j.find('\n'), j.size() - 1);  // one line: the message's newline is escaped
  const nlohmann::json parsed = nlohmann::json::parse(j);
  EXPECT_EQ(parsed["ts"], "2026-12-02T07:20:26.678Z");
  EXPECT_EQ(parsed["level"], "warning");
  EXPECT_EQ(parsed["src"], "c.cc:7");
  EXPECT_FALSE(parsed.contains("tag"));
  EXPECT_EQ(parsed["msg"], "quote \" and\nnewline \xef\xbf\xbd");  // invalid UTF-8 replaced
  SetLogFormat(LogFormat::kJson);
  EXPECT_EQ(GetLogFormat(), LogFormat::kJson);
  SetLogFormat(LogFormat::kText);
}

TEST(SignalsTest, SigtermBecomesACallbackWhateverThreadGetsIt) {
  std::atomic<int> calls{0};
  std::atomic<int> last{0};
  auto s = ShutdownSignals::Install([&](int sig) {
    last = sig;
    ++calls;
  });
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(ShutdownSignals::Install([](int) {}).status().code(),
            absl::StatusCode::kFailedPrecondition);
  // From another thread, as when a library thread receives it.
  std::thread([] { ::kill(::getpid(), SIGTERM); }).join();
  for (int i = 0; i < 500 && calls < 1; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(last, SIGTERM);
  ::raise(SIGINT);
  for (int i = 0; i < 500 && calls < 2; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(last, SIGINT);
  s->reset();
  EXPECT_TRUE(ShutdownSignals::Install([](int) {}).ok());  // installable again
}

}  // namespace
}  // namespace kvsweep

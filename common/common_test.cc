#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <chrono>
#include <cstdio>
#include <thread>
#include <string>

#include "common/file_util.h"
#include "common/fingerprint.h"
#include "common/signals.h"
#include "common/hash.h"
#include "common/json_util.h"
#include "common/latency_histogram.h"
#include "gtest/gtest.h"

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
  h.Record(-1);                                        // clock went backwards: bucket 0
  h.Record(1e9);                                       // beyond the last bucket: clamped
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
  for (int i = 0; i < 500 && calls < 1; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(last, SIGTERM);
  ::raise(SIGINT);
  for (int i = 0; i < 500 && calls < 2; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(last, SIGINT);
  s->reset();
  EXPECT_TRUE(ShutdownSignals::Install([](int) {}).ok());  // installable again
}

}  // namespace
}  // namespace kvsweep

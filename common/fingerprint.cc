#include "common/fingerprint.h"

#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <map>
#include <mutex>
#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/hash.h"
#include "common/json_util.h"
#include "common/log.h"

namespace kvsweep {
namespace {

std::string CacheDir() {
  if (const char* d = std::getenv("KVSWEEP_CACHE_DIR")) return d;
  if (const char* x = std::getenv("XDG_CACHE_HOME")) return JoinPath(x, "kvsweep");
  if (const char* h = std::getenv("HOME")) return JoinPath(JoinPath(h, ".cache"), "kvsweep");
  return "";
}

// In-process memo keyed like the disk cache: expanding a sweep resolves thousands of jobs over
// the same few model, tokenizer and data files, and each must not re-hash them. The mutex guards
// the map only: no file is opened or read while it is held (two threads may hash one file at
// once; both store the same digest).
std::mutex& MemoMutex() {
  static std::mutex mu;
  return mu;
}
std::map<std::string, std::string>& Memo() {
  static std::map<std::string, std::string> memo;
  return memo;
}

std::optional<std::string> MemoGet(const std::string& key) {
  std::lock_guard<std::mutex> lock(MemoMutex());
  auto it = Memo().find(key);
  if (it == Memo().end()) return std::nullopt;
  return it->second;
}

void MemoPut(const std::string& key, const std::string& digest) {
  std::lock_guard<std::mutex> lock(MemoMutex());
  Memo()[key] = digest;
}

thread_local HashMonitor* t_monitor = nullptr;

// Hashes in slices so that a monitor sees progress and a cancellation takes effect within one
// slice (tens of milliseconds).
absl::StatusOr<std::string> HashMapped(const std::string& path, const MappedFile& f) {
  constexpr size_t kSlice = size_t{64} << 20;
  Sha256 h;
  HashMonitor* m = t_monitor;
  const auto* p = static_cast<const unsigned char*>(f.data());
  const size_t n = f.size();
  if (m != nullptr) m->set_current({path, static_cast<int64_t>(n), 0});
  for (size_t off = 0; off < n; off += kSlice) {
    if (m != nullptr && m->cancelled.load()) {
      m->set_current({});
      return absl::CancelledError(absl::StrCat("hashing '", path, "' was cancelled"));
    }
    const size_t len = std::min(kSlice, n - off);
    h.Update(p + off, len);
    if (m != nullptr) {
      m->bytes_hashed.fetch_add(static_cast<int64_t>(len));
      m->set_current({path, static_cast<int64_t>(n), static_cast<int64_t>(off + len)});
    }
  }
  if (m != nullptr) m->set_current({});
  return h.HexDigest();
}

}  // namespace

ScopedHashMonitor::ScopedHashMonitor(HashMonitor* monitor) : previous_(t_monitor) {
  t_monitor = monitor;
}

ScopedHashMonitor::~ScopedHashMonitor() { t_monitor = previous_; }

absl::StatusOr<std::string> FileSha256Cached(const std::string& path) {
  // The key and the bytes hashed come from one open of one regular file (MappedFile::Open
  // refuses anything else without blocking on it); mapping reads nothing yet.
  absl::StatusOr<std::unique_ptr<MappedFile>> f = MappedFile::Open(path);
  if (!f.ok()) return f.status();
  const std::string key =
      absl::StrCat(RealPath(path), "|", (*f)->size(), "|", (*f)->mtime_ns() / 1000000000, ".",
                   (*f)->mtime_ns() % 1000000000);
  if (std::optional<std::string> m = MemoGet(key)) return *m;
  const std::string dir = CacheDir();
  const std::string cache_file = dir.empty() ? "" : JoinPath(dir, "sha256-cache.json");
  // Small files are cheaper to hash than to look up.
  const bool use_cache = !cache_file.empty() && (*f)->size() > (8 << 20);
  nlohmann::json cache = nlohmann::json::object();
  if (use_cache && PathExists(cache_file)) {
    absl::StatusOr<nlohmann::json> c = ReadJsonFile(cache_file);
    if (c.ok() && c->is_object()) cache = *c;
    auto it = cache.find(key);
    if (it != cache.end() && it->is_string()) {
      MemoPut(key, it->get<std::string>());
      return it->get<std::string>();
    }
  }
  // Hashing runs at a few hundred MiB/s: a multi-GiB shard takes many seconds on first sight,
  // so say so (a coordinator expanding a sweep, a worker verifying its inputs).
  const bool large = (*f)->size() >= (int64_t{1} << 30);
  const auto t0 = std::chrono::steady_clock::now();
  if (large) {
    KV_LOG(INFO) << "hashing " << path << " (" << (*f)->size() / double(1 << 30)
                 << " GiB, first time at this size and mtime)";
  }
  absl::StatusOr<std::string> hashed = HashMapped(path, **f);
  if (!hashed.ok()) return hashed.status();
  const std::string digest = *hashed;
  if (large) {
    KV_LOG(INFO) << "hashed " << path << " in "
                 << std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()
                 << " s";
  }
  MemoPut(key, digest);
  if (use_cache) {
    // Concurrent writers (threads or processes) may drop each other's entries: that only costs
    // a re-hash later.
    ::mkdir(dir.c_str(), 0755);
    cache[key] = digest;
    absl::Status w = WriteFileAtomic(cache_file, cache.dump());
    if (!w.ok()) KV_LOG(DEBUG) << "hash cache not written: " << w.message();
  }
  return digest;
}

std::string KvsweepCacheDir() { return CacheDir(); }

absl::StatusOr<std::string> FilesFingerprint(const std::vector<std::string>& files) {
  Sha256 h;
  for (const std::string& f : files) {
    absl::StatusOr<std::string> fh = FileSha256Cached(f);
    if (!fh.ok()) return fh.status();
    h.Update(BaseName(f));
    h.Update(std::string(1, '\0'));
    h.Update(*fh);
    h.Update("\n");
  }
  return h.HexDigest();
}

}  // namespace kvsweep

// Content fingerprints that go into job identity: a model's config and weights, its tokenizer
// files, data files (which files: common/input_files.h). Whole-file sha256 of multi-GiB weights is
// cached on disk keyed by (real path, size, mtime), so resubmitting a sweep does not re-hash
// models.
#ifndef KVSWEEP_COMMON_FINGERPRINT_H_
#define KVSWEEP_COMMON_FINGERPRINT_H_

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace kvsweep {

// What the hashing done on one thread reports and obeys while a ScopedHashMonitor installs it:
// a coordinator preparing a submission shows the client its progress, and stops hashing when it
// shuts down. Hashing without a monitor neither reports nor stops.
struct HashMonitor {
  std::atomic<int64_t> bytes_hashed{0};  // summed over every file hashed (not cache hits)
  std::atomic<bool> cancelled{false};    // set: the hashing in progress stops with kCancelled

  // The file being hashed now ("" when none) and its progress.
  struct Current {
    std::string path;
    int64_t size = 0;
    int64_t hashed = 0;
  };
  Current current() const {
    std::lock_guard<std::mutex> lock(mu);
    return current_;
  }
  void set_current(Current c) {
    std::lock_guard<std::mutex> lock(mu);
    current_ = std::move(c);
  }

 private:
  mutable std::mutex mu;
  Current current_;  // guarded by mu
};

// Installs `monitor` for the hashing done on this thread until destroyed (nesting restores the
// previous one).
class ScopedHashMonitor {
 public:
  explicit ScopedHashMonitor(HashMonitor* monitor);
  ~ScopedHashMonitor();
  ScopedHashMonitor(const ScopedHashMonitor&) = delete;
  ScopedHashMonitor& operator=(const ScopedHashMonitor&) = delete;

 private:
  HashMonitor* previous_;
};

// sha256 of the file's bytes, through the cache in $KVSWEEP_CACHE_DIR (default
// $XDG_CACHE_HOME/kvsweep or ~/.cache/kvsweep; cache failures only cost a re-hash) and an
// in-process memo. Regular files only: anything else (FIFO, device, directory) is
// kFailedPrecondition "cannot read 'PATH': not a regular file (KIND)", found without blocking
// (MappedFile::Open). Thread-safe; no lock is held while a file is opened or hashed. Under a
// cancelled HashMonitor: kCancelled "hashing 'PATH' was cancelled".
absl::StatusOr<std::string> FileSha256Cached(const std::string& path);

// kvsweep's cache directory: $KVSWEEP_CACHE_DIR, else $XDG_CACHE_HOME/kvsweep, else
// ~/.cache/kvsweep ("" without HOME). The hash cache lives here.
std::string KvsweepCacheDir();

// sha256 over "<basename>\0<file sha256>\n" for each file in order.
absl::StatusOr<std::string> FilesFingerprint(const std::vector<std::string>& files);

}  // namespace kvsweep

#endif  // KVSWEEP_COMMON_FINGERPRINT_H_

// The worker's content-addressed file cache: input files fetched from the coordinator, stored
// under their sha256 (docs/deploy.md, "Without a shared filesystem").
//
// Layout of the directory:
//   blobs/<sha256>          verified files, read-only, never modified or replaced once there
//   tmp/<sha256>.lock       taken (flock) by the process fetching that file
//   tmp/<sha256>-<size>.partial  a fetch in progress or interrupted (resumed from its length)
//   lock                    taken while space is made and reserved
//
// Guarantees:
// - A blob is only ever created by link(2) of a fully written file whose sha256 was computed
//   over its bytes and equals its name; a fetch that fails or lies leaves no blob (a wrong hash
//   deletes the partial file).
// - Size limit: blobs plus the declared sizes of partial files stay within max_bytes; room is
//   made by deleting, least recently used first, abandoned partial files and then blobs no
//   process uses. A blob in use is pinned (a shared flock on it, held by Pin): it is never
//   evicted, by this process or another.
// - Several processes may share one directory (flock and link/rename semantics; one fetch per
//   file at a time, the others wait for it and then use its blob).
#ifndef KVSWEEP_WORKER_FILE_CACHE_H_
#define KVSWEEP_WORKER_FILE_CACHE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kvsweep {

// Where the bytes of a file come from: calls `sink` with consecutive chunks of the file from
// `offset` to its end (each with the whole file's size), and returns OK once the file is sent.
// A non-OK return of `sink` must end the fetch with that status.
using ChunkSink = std::function<absl::Status(int64_t size, int64_t offset, absl::string_view data)>;
using FetchFn = std::function<absl::Status(int64_t offset, const ChunkSink& sink)>;

// What one Get did.
struct CacheGetStats {
  bool hit = false;           // the blob was there (or another process fetched it meanwhile)
  int64_t bytes_fetched = 0;  // bytes received (a resumed fetch counts only the rest)
  int attempts = 0;           // fetch calls made (retries after transient errors included)
};

class FileCache {
 public:
  // A blob held in use (not evictable while the Pin lives). Move-only.
  class Pin {
   public:
    Pin() = default;
    Pin(Pin&& o) noexcept;
    Pin& operator=(Pin&& o) noexcept;
    ~Pin();
    const std::string& path() const { return path_; }
    int64_t size() const { return size_; }

   private:
    friend class FileCache;
    int fd_ = -1;
    std::string path_;
    int64_t size_ = 0;
  };

  // Creates the directory (and its subdirectories) if needed. kInvalidArgument for
  // max_bytes <= 0; the errno's status when the directory cannot be made or written.
  static absl::StatusOr<std::unique_ptr<FileCache>> Open(const std::string& dir, int64_t max_bytes);

  // The blob of `sha256` (64 lower-case hex digits), fetched through `fetch` if it is not
  // there. Transient fetch errors (kUnavailable, kDeadlineExceeded, kResourceExhausted,
  // kAborted, kInternal, or a stream that ends early) are retried, resuming from what arrived,
  // up to 5 attempts while `keep_going` (may be empty) holds. Errors: kDataLoss (the bytes do
  // not hash to `sha256`, or disagree on the size or offsets: nothing is kept), kResourceExhausted
  // (the file does not fit beside the blobs in use), kCancelled (keep_going turned false), the
  // fetch's last error, or the errno's status of a local I/O error.
  absl::StatusOr<Pin> Get(const std::string& sha256, const FetchFn& fetch,
                          const std::function<bool()>& keep_going = nullptr,
                          CacheGetStats* stats = nullptr);

  const std::string& dir() const { return dir_; }
  int64_t max_bytes() const { return max_bytes_; }
  std::string BlobPath(const std::string& sha256) const;
  // Bytes the cache counts against max_bytes now: blobs plus declared sizes of partial files.
  absl::StatusOr<int64_t> UsedBytes() const;

 private:
  FileCache(std::string dir, int64_t max_bytes) : dir_(std::move(dir)), max_bytes_(max_bytes) {}
  // The blob pinned, or kNotFound if there is none.
  absl::StatusOr<Pin> TryPin(const std::string& sha256) const;
  // Under the cache lock: evicts until `need` more bytes fit, then creates the partial file
  // (its declared size reserves the room). Returns its descriptor.
  absl::StatusOr<int> Reserve(const std::string& sha256, int64_t size);
  // One fetch attempt into the partial file of `sha256` (created or resumed). *local: the error
  // is this machine's (no room, a failed write), not the source's.
  absl::Status FetchOnce(const std::string& sha256, const FetchFn& fetch, CacheGetStats* stats,
                         bool* local);

  const std::string dir_;
  const int64_t max_bytes_;
};

// flock(2) on `fd`, retried when a signal interrupts it (the cache's and the stager's locks).
int FlockRetry(int fd, int op);

// "20G", "512M", "1T", "1048576": bytes (K, M, G, T are powers of 1024). kInvalidArgument for
// anything else, zero or negative.
absl::StatusOr<int64_t> ParseByteSize(const std::string& text);

}  // namespace kvsweep

#endif  // KVSWEEP_WORKER_FILE_CACHE_H_

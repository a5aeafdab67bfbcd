#include "worker/file_cache.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/hash.h"
#include "common/log.h"

namespace kvsweep {
namespace {

constexpr int kMaxAttempts = 5;

absl::Status Errno(absl::string_view what, const std::string& path) {
  return ErrnoToStatus(errno, what, path);
}

absl::Status MakeDir(const std::string& path) {
  if (::mkdir(path.c_str(), 0755) != 0 && errno != EEXIST) return Errno("mkdir", path);
  if (!IsDirectory(path)) {
    return absl::FailedPreconditionError(absl::StrCat(path, " exists and is not a directory"));
  }
  return absl::OkStatus();
}

absl::Status MakeDirs(const std::string& path) {
  if (path.empty() || path == "/" || path == "." || IsDirectory(path)) return absl::OkStatus();
  if (absl::Status s = MakeDirs(DirName(path)); !s.ok()) return s;
  return MakeDir(path);
}

void FsyncDir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

// An flock held on a file until destroyed.
class LockFile {
 public:
  // Blocks until the lock is held (`nonblocking`: kUnavailable when another holds it).
  static absl::StatusOr<LockFile> Take(const std::string& path, bool nonblocking = false) {
    LockFile l;
    l.fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (l.fd_ < 0) return Errno("open", path);
    if (FlockRetry(l.fd_, LOCK_EX | (nonblocking ? LOCK_NB : 0)) != 0) {
      if (errno == EWOULDBLOCK) return absl::UnavailableError(absl::StrCat(path, " is locked"));
      return Errno("flock", path);
    }
    return l;
  }
  LockFile() = default;
  LockFile(LockFile&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  LockFile& operator=(LockFile&& o) noexcept {
    std::swap(fd_, o.fd_);
    return *this;
  }
  ~LockFile() {
    if (fd_ >= 0) ::close(fd_);
  }

 private:
  int fd_ = -1;
};

struct Partial {
  std::string path;
  std::string sha256;
  int64_t declared = 0;
};

// tmp/<sha256>-<size>.partial files.
std::vector<Partial> ListPartials(const std::string& tmp_dir) {
  std::vector<Partial> out;
  DIR* d = ::opendir(tmp_dir.c_str());
  if (d == nullptr) return out;
  while (struct dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (!absl::EndsWith(name, ".partial") || name.size() < 66 || name[64] != '-') continue;
    Partial p;
    p.sha256 = name.substr(0, 64);
    if (!IsLowerHex(p.sha256, 64) ||
        !absl::SimpleAtoi(name.substr(65, name.size() - 65 - 8), &p.declared) || p.declared < 0) {
      continue;
    }
    p.path = JoinPath(tmp_dir, name);
    out.push_back(std::move(p));
  }
  ::closedir(d);
  return out;
}

struct Blob {
  std::string path;
  int64_t size = 0;
  int64_t atime_ns = 0;
};

std::vector<Blob> ListBlobs(const std::string& blob_dir) {
  std::vector<Blob> out;
  DIR* d = ::opendir(blob_dir.c_str());
  if (d == nullptr) return out;
  while (struct dirent* e = ::readdir(d)) {
    if (!IsLowerHex(e->d_name, 64)) continue;
    Blob b;
    b.path = JoinPath(blob_dir, e->d_name);
    struct stat st;
    if (::stat(b.path.c_str(), &st) != 0) continue;
    b.size = st.st_size;
    b.atime_ns = int64_t{st.st_atim.tv_sec} * 1000000000 + st.st_atim.tv_nsec;
    out.push_back(std::move(b));
  }
  ::closedir(d);
  return out;
}

bool Transient(const absl::Status& s) {
  switch (s.code()) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kAborted:
    case absl::StatusCode::kInternal:
    case absl::StatusCode::kUnknown:
      return true;
    default:
      return false;
  }
}

}  // namespace

FileCache::Pin::Pin(Pin&& o) noexcept : fd_(o.fd_), path_(std::move(o.path_)), size_(o.size_) {
  o.fd_ = -1;
}

FileCache::Pin& FileCache::Pin::operator=(Pin&& o) noexcept {
  std::swap(fd_, o.fd_);
  std::swap(path_, o.path_);
  std::swap(size_, o.size_);
  return *this;
}

FileCache::Pin::~Pin() {
  if (fd_ >= 0) ::close(fd_);
}

absl::StatusOr<std::unique_ptr<FileCache>> FileCache::Open(const std::string& dir,
                                                           int64_t max_bytes) {
  if (dir.empty()) return absl::InvalidArgumentError("--cache-dir: empty");
  if (max_bytes <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--cache-max-bytes: ", max_bytes, " is not positive"));
  }
  for (const std::string& d : {dir, JoinPath(dir, "blobs"), JoinPath(dir, "tmp")}) {
    if (absl::Status s = MakeDirs(d); !s.ok()) return s;
  }
  absl::StatusOr<LockFile> probe = LockFile::Take(JoinPath(dir, "lock"));
  if (!probe.ok()) return probe.status();
  return std::unique_ptr<FileCache>(new FileCache(RealPath(dir), max_bytes));
}

std::string FileCache::BlobPath(const std::string& sha256) const {
  return JoinPath(JoinPath(dir_, "blobs"), sha256);
}

absl::StatusOr<int64_t> FileCache::UsedBytes() const {
  int64_t used = 0;
  for (const Blob& b : ListBlobs(JoinPath(dir_, "blobs"))) used += b.size;
  for (const Partial& p : ListPartials(JoinPath(dir_, "tmp"))) used += p.declared;
  return used;
}

absl::StatusOr<FileCache::Pin> FileCache::TryPin(const std::string& sha256) const {
  const std::string path = BlobPath(sha256);
  Pin pin;
  pin.fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (pin.fd_ < 0) {
    if (errno == ENOENT) return absl::NotFoundError(path);
    return Errno("open", path);
  }
  // An evictor holds LOCK_EX only while it unlinks: after it, the inode may be gone from the
  // directory, so the path is checked to still name the inode locked.
  if (FlockRetry(pin.fd_, LOCK_SH) != 0) return Errno("flock", path);
  struct stat held, named;
  if (::fstat(pin.fd_, &held) != 0) return Errno("stat", path);
  if (::stat(path.c_str(), &named) != 0 || named.st_ino != held.st_ino ||
      named.st_dev != held.st_dev) {
    return absl::NotFoundError(path);
  }
  // Recently used: the access time orders eviction (set explicitly: mounts may not update it).
  const struct timespec times[2] = {{0, UTIME_NOW}, {0, UTIME_OMIT}};
  ::futimens(pin.fd_, times);
  pin.path_ = path;
  pin.size_ = held.st_size;
  return pin;
}

absl::StatusOr<int> FileCache::Reserve(const std::string& sha256, int64_t size) {
  if (size > max_bytes_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "file ", sha256.substr(0, 12), " of ", size,
        " bytes is larger than the cache's limit (--cache-max-bytes ", max_bytes_, ")"));
  }
  absl::StatusOr<LockFile> lock = LockFile::Take(JoinPath(dir_, "lock"));
  if (!lock.ok()) return lock.status();
  const std::string tmp = JoinPath(dir_, "tmp");
  std::vector<Blob> blobs = ListBlobs(JoinPath(dir_, "blobs"));
  std::vector<Partial> partials = ListPartials(tmp);
  int64_t used = 0;
  for (const Blob& b : blobs) used += b.size;
  for (const Partial& p : partials) used += p.declared;
  // Abandoned partial files first (no process fetches them), then blobs by last use.
  for (const Partial& p : partials) {
    if (used + size <= max_bytes_) break;
    absl::StatusOr<LockFile> l =
        LockFile::Take(JoinPath(tmp, absl::StrCat(p.sha256, ".lock")), /*nonblocking=*/true);
    if (!l.ok()) continue;
    if (::unlink(p.path.c_str()) == 0) used -= p.declared;
  }
  std::sort(blobs.begin(), blobs.end(),
            [](const Blob& a, const Blob& b) { return a.atime_ns < b.atime_ns; });
  // Blobs no process has pinned, locked so none can pin them meanwhile; evicted only if
  // evicting them makes room (else nothing is lost for nothing).
  std::vector<std::pair<const Blob*, int>> evictable;
  int64_t evictable_bytes = 0;
  if (used + size > max_bytes_) {
    for (const Blob& b : blobs) {
      const int fd = ::open(b.path.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) continue;
      if (FlockRetry(fd, LOCK_EX | LOCK_NB) != 0) {
        ::close(fd);
        continue;
      }
      evictable.emplace_back(&b, fd);
      evictable_bytes += b.size;
    }
  }
  const bool enough = used - evictable_bytes + size <= max_bytes_;
  for (const auto& [b, fd] : evictable) {
    if (enough && used + size > max_bytes_ && ::unlink(b->path.c_str()) == 0) {
      used -= b->size;
      KV_LOG(INFO) << "file cache: evicted " << b->path << " (" << b->size << " bytes)";
    }
    ::close(fd);
  }
  if (used + size > max_bytes_) {
    return absl::ResourceExhaustedError(absl::StrCat("file cache ", dir_, ": no room for ", size,
                                                     " bytes; ", used, " of its --cache-max-bytes ",
                                                     max_bytes_, " are held by files in use"));
  }
  const std::string path = JoinPath(tmp, absl::StrCat(sha256, "-", size, ".partial"));
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return Errno("open", path);
  return fd;
}

absl::Status FileCache::FetchOnce(const std::string& sha256, const FetchFn& fetch,
                                  CacheGetStats* stats, bool* local) {
  *local = false;
  const std::string tmp = JoinPath(dir_, "tmp");
  int fd = -1;
  std::string partial;
  int64_t size = -1, have = 0;
  Sha256 hasher;
  auto discard = [&] {
    if (fd >= 0) ::close(fd);
    fd = -1;
    if (!partial.empty()) ::unlink(partial.c_str());
  };
  // Resume what an earlier attempt (of this process or a dead one) left.
  for (const Partial& p : ListPartials(tmp)) {
    if (p.sha256 != sha256) continue;
    if (fd >= 0) {  // several: keep the first, drop the others
      ::unlink(p.path.c_str());
      continue;
    }
    fd = ::open(p.path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) continue;
    partial = p.path;
    size = p.declared;
    struct stat st;
    if (::fstat(fd, &st) != 0 || st.st_size > size) {
      discard();
      size = -1;
      partial.clear();
      continue;
    }
    std::string buf(1 << 20, '\0');
    while (have < st.st_size) {
      const ssize_t n = ::pread(fd, buf.data(), buf.size(), have);
      if (n <= 0) {
        if (n < 0 && errno == EINTR) continue;
        break;
      }
      hasher.Update(buf.data(), static_cast<size_t>(n));
      have += n;
    }
    if (have != st.st_size) {
      discard();
      return absl::InternalError(absl::StrCat("cannot read the partial file ", p.path));
    }
  }
  auto close_fd = [&] {
    if (fd >= 0) ::close(fd);
    fd = -1;
  };
  const ChunkSink sink = [&](int64_t total, int64_t offset, absl::string_view data) {
    if (total < 0) return absl::DataLossError(absl::StrCat("the source sent a size of ", total));
    if (size < 0) {
      absl::StatusOr<int> r = Reserve(sha256, total);
      if (!r.ok()) {
        *local = true;  // no room here: another try would not find more
        return r.status();
      }
      fd = *r;
      size = total;
      partial = JoinPath(tmp, absl::StrCat(sha256, "-", size, ".partial"));
    } else if (total != size) {
      return absl::DataLossError(absl::StrCat("the source's size of file ", sha256.substr(0, 12),
                                              " changed from ", size, " to ", total, " bytes"));
    }
    if (offset != have) {
      return absl::DataLossError(
          absl::StrCat("the source sent bytes at offset ", offset, " where ", have, " was next"));
    }
    if (static_cast<int64_t>(data.size()) > size - have) {
      return absl::DataLossError(
          absl::StrCat("the source sent more than the file's ", size, " bytes"));
    }
    size_t done = 0;
    while (done < data.size()) {
      const ssize_t n = ::pwrite(fd, data.data() + done, data.size() - done, have + done);
      if (n < 0) {
        if (errno == EINTR) continue;
        *local = true;
        return Errno("write", partial);
      }
      done += static_cast<size_t>(n);
    }
    hasher.Update(data);
    have += static_cast<int64_t>(data.size());
    if (stats != nullptr) stats->bytes_fetched += static_cast<int64_t>(data.size());
    return absl::OkStatus();
  };
  if (stats != nullptr) ++stats->attempts;
  absl::Status s = fetch(have, sink);
  if (!s.ok()) {
    // Bytes that disagree are not kept; anything else stays for the next attempt to resume.
    if (absl::IsDataLoss(s)) {
      discard();
    } else {
      close_fd();
    }
    return s;
  }
  if (size < 0) {
    discard();
    return absl::DataLossError("the source ended the transfer without sending the file's size");
  }
  if (have != size) {
    close_fd();
    return absl::UnavailableError(absl::StrCat("the transfer ended at byte ", have, " of ", size));
  }
  const std::string digest = hasher.HexDigest();
  if (digest != sha256) {
    discard();
    return absl::DataLossError(
        absl::StrCat("the bytes received for file ", sha256, " hash to ", digest, "; discarded"));
  }
  if (::fsync(fd) != 0 || ::fchmod(fd, 0444) != 0) {
    const absl::Status e = Errno("fsync", partial);
    discard();
    return e;
  }
  close_fd();
  const std::string blob = BlobPath(sha256);
  // link, not rename: an existing blob (another process's) is never replaced under its pins.
  if (::link(partial.c_str(), blob.c_str()) != 0 && errno != EEXIST) {
    const absl::Status e = Errno("link", blob);
    discard();
    return e;
  }
  ::unlink(partial.c_str());
  FsyncDir(JoinPath(dir_, "blobs"));
  return absl::OkStatus();
}

absl::StatusOr<FileCache::Pin> FileCache::Get(const std::string& sha256, const FetchFn& fetch,
                                              const std::function<bool()>& keep_going,
                                              CacheGetStats* stats) {
  if (!IsLowerHex(sha256, 64)) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", sha256.substr(0, 80), "' is not a sha256 (64 lower-case hex)"));
  }
  CacheGetStats unused;
  if (stats == nullptr) stats = &unused;
  absl::StatusOr<Pin> pin = TryPin(sha256);
  if (pin.ok()) {
    stats->hit = true;
    return pin;
  }
  if (!absl::IsNotFound(pin.status())) return pin.status();
  absl::Status last;
  bool local = false;
  for (int attempt = 1; attempt <= kMaxAttempts; ++attempt) {
    {
      // One fetch per file at a time, across processes; who waited finds the blob after.
      absl::StatusOr<LockFile> lock =
          LockFile::Take(JoinPath(JoinPath(dir_, "tmp"), absl::StrCat(sha256, ".lock")));
      if (!lock.ok()) return lock.status();
      pin = TryPin(sha256);
      if (pin.ok()) {
        stats->hit = stats->attempts == 0;  // another process fetched it while this one waited
        return pin;
      }
      last = FetchOnce(sha256, fetch, stats, &local);
    }
    if (last.ok()) {
      pin = TryPin(sha256);
      if (pin.ok() || !absl::IsNotFound(pin.status())) return pin;
      last = absl::InternalError(absl::StrCat("blob ", sha256, " vanished right after its fetch"));
    }
    if (local || !Transient(last) || attempt == kMaxAttempts) break;
    KV_LOG(WARNING) << "file cache: fetching " << sha256.substr(0, 12) << " (attempt " << attempt
                    << "): " << last << "; resuming";
    const auto until = std::chrono::steady_clock::now() +
                       std::chrono::milliseconds(std::min(250 << attempt, 4000));
    while (std::chrono::steady_clock::now() < until) {
      if (keep_going && !keep_going()) return absl::CancelledError("stopped while fetching");
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  return last;
}

int FlockRetry(int fd, int op) {
  int r;
  do {
    r = ::flock(fd, op);
  } while (r != 0 && errno == EINTR);
  return r;
}

absl::StatusOr<int64_t> ParseByteSize(const std::string& text) {
  std::string t = absl::AsciiStrToUpper(absl::StripAsciiWhitespace(text));
  int shift = 0;
  if (!t.empty() && (t.back() == 'B')) t.pop_back();
  if (!t.empty()) {
    switch (t.back()) {
      case 'K':
        shift = 10;
        break;
      case 'M':
        shift = 20;
        break;
      case 'G':
        shift = 30;
        break;
      case 'T':
        shift = 40;
        break;
      default:
        break;
    }
    if (shift != 0) t.pop_back();
  }
  int64_t n = 0;
  if (!absl::SimpleAtoi(t, &n) || n <= 0 || n > (int64_t{1} << (62 - shift))) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", text, "' is not a size in bytes (e.g. 20G, 512M, 1048576)"));
  }
  return n << shift;
}

}  // namespace kvsweep

#include "common/file_util.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <utility>

#include "absl/strings/str_cat.h"

namespace kvsweep {

absl::Status ErrnoToStatus(int err, absl::string_view what, const std::string& path) {
  std::string msg = absl::StrCat("cannot ", what, " '", path, "': ", std::strerror(err));
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return absl::NotFoundError(msg);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(msg);
    case EISDIR:
      return absl::FailedPreconditionError(msg);
    default:
      return absl::InternalError(msg);
  }
}

namespace {

const char* FileKind(mode_t mode) {
  if (S_ISDIR(mode)) return "directory";
  if (S_ISFIFO(mode)) return "FIFO";
  if (S_ISCHR(mode)) return "character device";
  if (S_ISBLK(mode)) return "block device";
  if (S_ISSOCK(mode)) return "socket";
  return "special file";
}

// Owns a descriptor (move-only); closes it on destruction.
class ScopedFd {
 public:
  explicit ScopedFd(int fd) : fd_(fd) {}
  ScopedFd(ScopedFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  ScopedFd& operator=(ScopedFd&&) = delete;
  ~ScopedFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

// Opens `path` read-only and checks on the descriptor that it is a regular file. O_NONBLOCK
// keeps the open of a FIFO from waiting for a writer; it is cleared again once the file is known
// to be regular (where it means nothing anyway).
absl::StatusOr<ScopedFd> OpenRegular(const std::string& path, struct stat* st) {
  ScopedFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (fd.get() < 0) return ErrnoToStatus(errno, "open", path);
  if (::fstat(fd.get(), st) != 0) return ErrnoToStatus(errno, "stat", path);
  if (!S_ISREG(st->st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot read '", path, "': not a regular file (", FileKind(st->st_mode), ")"));
  }
  const int flags = ::fcntl(fd.get(), F_GETFL);
  if (flags < 0 || ::fcntl(fd.get(), F_SETFL, flags & ~O_NONBLOCK) != 0) {
    return ErrnoToStatus(errno, "open", path);
  }
  return fd;
}

absl::Status TooLarge(const std::string& path, int64_t size, int64_t max_bytes) {
  return absl::FailedPreconditionError(absl::StrCat("cannot read '", path, "': ", size,
                                                    " bytes is over the limit of ", max_bytes,
                                                    " bytes for this kind of file"));
}

}  // namespace

absl::StatusOr<std::string> ReadFile(const std::string& path, int64_t max_bytes) {
  struct stat st;
  absl::StatusOr<ScopedFd> fd = OpenRegular(path, &st);
  if (!fd.ok()) return fd.status();
  if (st.st_size > max_bytes) return TooLarge(path, st.st_size, max_bytes);
  std::string out;
  out.reserve(static_cast<size_t>(st.st_size));
  char buf[1 << 16];
  while (true) {
    ssize_t n = ::read(fd->get(), buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoToStatus(errno, "read", path);
    }
    if (n == 0) break;
    // A regular file still ends, but it may be growing while we read it.
    if (static_cast<int64_t>(out.size()) + n > max_bytes) {
      return TooLarge(path, static_cast<int64_t>(out.size()) + n, max_bytes);
    }
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

absl::Status CheckRegularFile(const std::string& path) {
  struct stat st;
  return OpenRegular(path, &st).status();
}

absl::Status WriteFileAtomic(const std::string& path, absl::string_view data) {
  static std::atomic<uint64_t> calls{0};
  std::string tmp = absl::StrCat(path, ".tmp.", ::getpid(), ".", calls.fetch_add(1));
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoToStatus(errno, "create", tmp);
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      return ErrnoToStatus(err, "write", tmp);
    }
    off += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    return ErrnoToStatus(err, "sync", tmp);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    return ErrnoToStatus(err, "rename to", path);
  }
  return absl::OkStatus();
}

bool PathExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

bool IsDirectory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::string JoinPath(absl::string_view a, absl::string_view b) {
  if (a.empty()) return std::string(b);
  if (b.empty()) return std::string(a);
  while (!a.empty() && a.back() == '/') a.remove_suffix(1);
  while (!b.empty() && b.front() == '/') b.remove_prefix(1);
  return absl::StrCat(a, "/", b);
}

namespace {
std::string WithoutTrailingSlashes(absl::string_view path) {
  std::string p(path);
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}
}  // namespace

std::string BaseName(absl::string_view path) {
  const std::string p = WithoutTrailingSlashes(path);
  if (p == "/") return p;
  return std::filesystem::path(p).filename().string();
}

std::string DirName(absl::string_view path) {
  const std::string parent =
      std::filesystem::path(WithoutTrailingSlashes(path)).parent_path().string();
  return parent.empty() ? "." : parent;
}

std::string RealPath(const std::string& path) {
  char buf[PATH_MAX];
  if (::realpath(path.c_str(), buf) == nullptr) return path;
  return std::string(buf);
}

absl::StatusOr<std::unique_ptr<MappedFile>> MappedFile::Open(const std::string& path) {
  struct stat st;
  absl::StatusOr<ScopedFd> fd = OpenRegular(path, &st);
  if (!fd.ok()) return fd.status();
  const size_t size = static_cast<size_t>(st.st_size);
  const uint8_t* data = nullptr;
  if (size > 0) {
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd->get(), 0);
    if (p == MAP_FAILED) return ErrnoToStatus(errno, "mmap", path);
    data = static_cast<const uint8_t*>(p);
  }
  // The mapping stays valid after the descriptor is closed.
  const int64_t mtime_ns =
      static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  return std::unique_ptr<MappedFile>(new MappedFile(path, data, size, mtime_ns));
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
}

}  // namespace kvsweep

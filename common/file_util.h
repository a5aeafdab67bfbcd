// File helpers: whole-file reads and read-only memory maps, with errors as absl::Status.
// Error codes: kNotFound (missing path), kPermissionDenied, kFailedPrecondition (not a regular
// file, or over a size limit), kInternal (other I/O errors). Messages are one line and name the
// path; none quotes the file's content.
//
// Reads and maps accept regular files only, checked on the opened descriptor: the open does not
// block (O_NONBLOCK, so a FIFO without a writer cannot hang it), and a FIFO, device, socket or
// directory is refused with "cannot read 'PATH': not a regular file (KIND)". Devices such as
// /dev/zero have no end and fstat as 0 bytes; a reader that trusted either would hash them as
// empty or read until killed for memory.
#ifndef KVSWEEP_COMMON_FILE_UTIL_H_
#define KVSWEEP_COMMON_FILE_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kvsweep {

// Limits on whole-file reads, by kind of file.
// JSON, configs, tokenizer files, sweep files, keys: the largest real ones are tens of MiB.
inline constexpr int64_t kMaxTextFileBytes = int64_t{256} << 20;
// Task data and calibration text, read whole and tokenized.
inline constexpr int64_t kMaxDataFileBytes = int64_t{4} << 30;

// Reads the whole regular file at `path`; kFailedPrecondition if it is not a regular file or is
// larger than `max_bytes` (also when it grows past it while being read).
absl::StatusOr<std::string> ReadFile(const std::string& path,
                                     int64_t max_bytes = kMaxTextFileBytes);

// OK if `path` is a regular file (opened as ReadFile opens it); the errors of ReadFile otherwise.
absl::Status CheckRegularFile(const std::string& path);

// Writes `data` to `path` atomically (write to a temporary beside it, fsync, rename). The
// temporary's name is unique to the call, so concurrent writers of one path do not mix their
// bytes; the last rename wins.
absl::Status WriteFileAtomic(const std::string& path, absl::string_view data);

bool PathExists(const std::string& path);
bool IsDirectory(const std::string& path);
// Joins two path pieces with exactly one '/'.
std::string JoinPath(absl::string_view a, absl::string_view b);
// The last component of `path`, trailing slashes ignored ("a/b/c.json" -> "c.json",
// "models/ref-llama/" -> "ref-llama", "/" -> "/"); std::filesystem's filename().
std::string BaseName(absl::string_view path);
// Everything before the last component ("a/b/c" -> "a/b", "c" -> ".", "/c" -> "/");
// std::filesystem's parent_path(), "." when there is none.
std::string DirName(absl::string_view path);
// Absolute, symlink-free path; returns `path` unchanged if it cannot be resolved.
std::string RealPath(const std::string& path);

// A read-only memory map of a whole regular file, sized by fstat of the opened descriptor (no
// size limit: weights are mapped, not read). Copying is deleted; the mapping lives as long as
// the object. An empty file maps to data() == nullptr, size() == 0.
class MappedFile {
 public:
  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }
  // Modification time from the same fstat as size(), in nanoseconds since the epoch.
  int64_t mtime_ns() const { return mtime_ns_; }
  absl::string_view view() const {
    return absl::string_view(reinterpret_cast<const char*>(data_), size_);
  }

 private:
  MappedFile(std::string path, const uint8_t* data, size_t size, int64_t mtime_ns)
      : path_(std::move(path)), data_(data), size_(size), mtime_ns_(mtime_ns) {}
  std::string path_;
  const uint8_t* data_;
  size_t size_;
  int64_t mtime_ns_;
};

// Maps errno from a failed open/stat to a Status naming `path`.
absl::Status ErrnoToStatus(int err, absl::string_view what, const std::string& path);

}  // namespace kvsweep

#endif  // KVSWEEP_COMMON_FILE_UTIL_H_

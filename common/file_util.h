// File helpers: whole-file reads and read-only memory maps, with errors as absl::Status.
// Error codes: kNotFound (missing path), kPermissionDenied, kFailedPrecondition (a directory
// where a file was expected), kInternal (other I/O errors). Messages name the path.
#ifndef KVSWEEP_COMMON_FILE_UTIL_H_
#define KVSWEEP_COMMON_FILE_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kvsweep {

// Reads the whole file at `path`.
absl::StatusOr<std::string> ReadFile(const std::string& path);

// Writes `data` to `path` atomically (write to a temporary beside it, fsync, rename).
absl::Status WriteFileAtomic(const std::string& path, absl::string_view data);

bool PathExists(const std::string& path);
bool IsDirectory(const std::string& path);
// Joins two path pieces with exactly one '/'.
std::string JoinPath(absl::string_view a, absl::string_view b);
// Absolute, symlink-free path; returns `path` unchanged if it cannot be resolved.
std::string RealPath(const std::string& path);

// A read-only memory map of a whole file. Copying is deleted; the mapping lives as long as the
// object. An empty file maps to data() == nullptr, size() == 0.
class MappedFile {
 public:
  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }
  absl::string_view view() const {
    return absl::string_view(reinterpret_cast<const char*>(data_), size_);
  }

 private:
  MappedFile(std::string path, const uint8_t* data, size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}
  std::string path_;
  const uint8_t* data_;
  size_t size_;
};

// Maps errno from a failed open/stat to a Status naming `path`.
absl::Status ErrnoToStatus(int err, absl::string_view what, const std::string& path);

}  // namespace kvsweep

#endif  // KVSWEEP_COMMON_FILE_UTIL_H_

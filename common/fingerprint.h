// Content fingerprints that go into job identity: a model's config and weights, its tokenizer
// files, data files (which files: common/input_files.h). Whole-file sha256 of multi-GiB weights is cached on disk keyed by
// (real path, size, mtime), so resubmitting a sweep does not re-hash models.
#ifndef KVSWEEP_COMMON_FINGERPRINT_H_
#define KVSWEEP_COMMON_FINGERPRINT_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace kvsweep {

// sha256 of the file's bytes, through the cache in $KVSWEEP_CACHE_DIR (default
// $XDG_CACHE_HOME/kvsweep or ~/.cache/kvsweep; cache failures only cost a re-hash) and an
// in-process memo. Regular files only: anything else (FIFO, device, directory) is
// kFailedPrecondition "cannot read 'PATH': not a regular file (KIND)", found without blocking
// (MappedFile::Open). Thread-safe; no lock is held while a file is opened or hashed.
absl::StatusOr<std::string> FileSha256Cached(const std::string& path);

// sha256 over "<basename>\0<file sha256>\n" for each file in order.
absl::StatusOr<std::string> FilesFingerprint(const std::vector<std::string>& files);

}  // namespace kvsweep

#endif  // KVSWEEP_COMMON_FINGERPRINT_H_

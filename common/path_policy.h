// Which files a coordinator may open on behalf of a submitted sweep: those whose real path
// (symlinks resolved) lies under one of a set of root directories.
//
// The coordinator runs with its own privileges and hashes or parses whatever a sweep names, so a
// sweep naming /etc/shadow, or a symlink inside an allowed directory pointing out of it, must be
// refused before the file is opened. Check() only resolves and compares paths (realpath, stat);
// it never opens a file, and its messages name paths, never content.
#ifndef KVSWEEP_COMMON_PATH_POLICY_H_
#define KVSWEEP_COMMON_PATH_POLICY_H_

#include <string>
#include <vector>

#include "absl/status/status.h"

namespace kvsweep {

class PathPolicy {
 public:
  // `roots` are realpath'd; roots that do not exist are dropped (they can contain nothing).
  explicit PathPolicy(const std::vector<std::string>& roots);

  // OK if `path` resolves (realpath; for a path that does not exist, its lexically normalized
  // absolute form) to a root or something under one. Otherwise kInvalidArgument:
  // "'PATH' is outside the allowed paths (ROOT, ...); start the coordinator with --allow-path"
  // (with " (resolves to 'REAL')" after 'PATH' when a symlink led out).
  absl::Status Check(const std::string& path) const;

  const std::vector<std::string>& roots() const { return roots_; }

 private:
  std::vector<std::string> roots_;
};

// The roots the coordinator applies to one submitted sweep: `configured` (--allow-path) if any,
// else the sweep file's directory `base_dir` (when not empty); plus, always, the assets directory
// (AssetsDir(): $KVSWEEP_ASSETS or ../shared/assets) and the Hugging Face hub cache
// (HfHubCacheDir(), where models named by repo id live).
std::vector<std::string> SweepPathRoots(const std::vector<std::string>& configured,
                                        const std::string& base_dir);

// The assets folder: $KVSWEEP_ASSETS or "../shared/assets" (always an allowed root).
std::string AssetsDir();

}  // namespace kvsweep

#endif  // KVSWEEP_COMMON_PATH_POLICY_H_

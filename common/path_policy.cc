#include "common/path_policy.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "common/hf_hub.h"

namespace kvsweep {
namespace {

// Absolute, with "." and ".." folded lexically (for paths realpath cannot resolve).
std::string Normalize(const std::string& path) {
  std::string abs = path;
  if (abs.empty() || abs[0] != '/') {
    char buf[4096];
    abs = JoinPath(::getcwd(buf, sizeof(buf)) != nullptr ? buf : "/", path);
  }
  std::vector<std::string> parts;
  for (absl::string_view p : absl::StrSplit(abs, '/', absl::SkipEmpty())) {
    if (p == ".") continue;
    if (p == "..") {
      if (!parts.empty()) parts.pop_back();
      continue;
    }
    parts.emplace_back(p);
  }
  return absl::StrCat("/", absl::StrJoin(parts, "/"));
}

// The real path of `path`, or of its longest existing ancestor with the rest appended.
std::string Resolve(const std::string& path) {
  if (PathExists(path)) return RealPath(path);
  const std::string n = Normalize(path);
  size_t cut = n.size();
  while (true) {
    cut = n.find_last_of('/', cut == 0 ? 0 : cut - 1);
    if (cut == std::string::npos || cut == 0) return n;
    const std::string head = n.substr(0, cut);
    if (PathExists(head)) return JoinPath(RealPath(head), n.substr(cut + 1));
  }
}

bool Under(const std::string& path, const std::string& root) {
  if (root == "/") return true;
  return path == root || (path.size() > root.size() && path.compare(0, root.size(), root) == 0 &&
                          path[root.size()] == '/');
}

}  // namespace

PathPolicy::PathPolicy(const std::vector<std::string>& roots) {
  for (const std::string& r : roots) {
    if (r.empty() || !IsDirectory(r)) continue;
    const std::string real = RealPath(r);
    if (std::find(roots_.begin(), roots_.end(), real) == roots_.end()) roots_.push_back(real);
  }
}

absl::Status PathPolicy::Check(const std::string& path) const {
  const std::string real = Resolve(path);
  for (const std::string& r : roots_) {
    if (Under(real, r)) return absl::OkStatus();
  }
  const std::string shown = Normalize(path);
  return absl::InvalidArgumentError(absl::StrCat(
      "'", path, "'", real == shown ? "" : absl::StrCat(" (resolves to '", real, "')"),
      " is outside the allowed paths (", roots_.empty() ? "none" : absl::StrJoin(roots_, ", "),
      "); start the coordinator with --allow-path"));
}

std::string AssetsDir() {
  const char* a = std::getenv("KVSWEEP_ASSETS");
  return (a != nullptr && *a != '\0') ? a : "../shared/assets";
}

std::vector<std::string> SweepPathRoots(const std::vector<std::string>& configured,
                                        const std::string& base_dir) {
  std::vector<std::string> roots = configured;
  if (roots.empty() && !base_dir.empty()) roots.push_back(base_dir);
  roots.push_back(AssetsDir());
  // Models named by repo id live there (common/hf_hub.h); it holds only what was downloaded.
  if (const std::string hub = HfHubCacheDir(); !hub.empty()) roots.push_back(hub);
  return roots;
}

}  // namespace kvsweep

#include "common/hf_hub.h"

#include <cstdlib>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/file_util.h"
#include "common/hash.h"

namespace kvsweep {
namespace {

bool IsNamePart(absl::string_view p) {
  if (p.empty() || p.size() > 96) return false;
  if (p.front() == '.' || p.front() == '-' || p.back() == '.' || p.back() == '-') return false;
  if (absl::StrContains(p, "..") || absl::StrContains(p, "--")) return false;
  for (char c : p) {
    if (!absl::ascii_isalnum(c) && c != '.' && c != '_' && c != '-') return false;
  }
  return true;
}

bool IsRevision(absl::string_view r) {
  if (r.empty() || r.size() > 128 || r.front() == '/' || r.front() == '.' ||
      absl::StrContains(r, "..")) {
    return false;
  }
  for (char c : r) {
    if (!absl::ascii_isalnum(c) && c != '.' && c != '_' && c != '-' && c != '/') return false;
  }
  return true;
}

bool IsCommitHash(absl::string_view s) { return IsLowerHex(s, 40); }

}  // namespace

std::string HfHubCacheDir() {
  for (const char* var : {"HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"}) {
    if (const char* d = std::getenv(var); d != nullptr && *d != '\0') return d;
  }
  if (const char* h = std::getenv("HF_HOME"); h != nullptr && *h != '\0') {
    return JoinPath(h, "hub");
  }
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x != nullptr && *x != '\0') {
    return JoinPath(JoinPath(x, "huggingface"), "hub");
  }
  if (const char* home = std::getenv("HOME"); home != nullptr && *home != '\0') {
    return JoinPath(JoinPath(JoinPath(home, ".cache"), "huggingface"), "hub");
  }
  return "";
}

bool IsHfRepoId(absl::string_view s) {
  absl::string_view id = s;
  const size_t at = s.find('@');
  if (at != absl::string_view::npos) {
    if (!IsRevision(s.substr(at + 1))) return false;
    id = s.substr(0, at);
  }
  const size_t slash = id.find('/');
  if (slash == absl::string_view::npos) return false;
  return IsNamePart(id.substr(0, slash)) && IsNamePart(id.substr(slash + 1));
}

absl::StatusOr<HfModel> ResolveHfModel(absl::string_view repo_id) {
  if (!IsHfRepoId(repo_id)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "'", repo_id.substr(0, 200), "' is not a Hugging Face repo id (org/name[@revision])"));
  }
  HfModel m;
  const size_t at = repo_id.find('@');
  m.repo_id = std::string(repo_id.substr(0, at));
  m.revision = at == absl::string_view::npos ? "main" : std::string(repo_id.substr(at + 1));
  const std::string hub = HfHubCacheDir();
  const std::string how = absl::StrCat(
      " (download it there first, e.g. `huggingface-cli download ", m.repo_id,
      "`, set HF_HUB_CACHE or HF_HOME to the cache that has it, or give the model's directory)");
  if (hub.empty()) {
    return absl::NotFoundError(absl::StrCat("model '", m.repo_id,
                                            "': no Hugging Face cache (HF_HUB_CACHE, HF_HOME and "
                                            "HOME are unset)",
                                            how));
  }
  const std::string repo_dir =
      JoinPath(hub, absl::StrCat("models--", absl::StrReplaceAll(m.repo_id, {{"/", "--"}})));
  if (!PathExists(repo_dir)) {
    return absl::NotFoundError(
        absl::StrCat("model '", m.repo_id, "' is not in the Hugging Face cache ", hub, how));
  }
  const std::string ref = JoinPath(JoinPath(repo_dir, "refs"), m.revision);
  if (PathExists(ref)) {
    absl::StatusOr<std::string> text = ReadFile(ref, 4096);
    if (!text.ok()) return text.status();
    const std::string commit(absl::StripAsciiWhitespace(*text));
    if (!IsCommitHash(commit)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Hugging Face cache ref '", ref, "' does not hold a commit hash (40 hex digits)"));
    }
    m.commit = commit;
  } else if (IsCommitHash(m.revision)) {
    m.commit = m.revision;
  } else {
    return absl::NotFoundError(absl::StrCat("model '", m.repo_id, "': revision '", m.revision,
                                            "' is not in the Hugging Face cache ", hub, how));
  }
  m.path = JoinPath(JoinPath(repo_dir, "snapshots"), m.commit);
  if (!PathExists(m.path)) {
    return absl::NotFoundError(absl::StrCat("model '", m.repo_id, "' revision '", m.revision,
                                            "': snapshot ", m.commit,
                                            " is missing from the Hugging Face cache ", hub, how));
  }
  return m;
}

absl::StatusOr<std::string> ResolveModelReference(const std::string& reference,
                                                  const std::string& base_dir, std::string* label) {
  if (reference.empty()) return absl::InvalidArgumentError("no model given");
  const std::string path =
      reference[0] == '/' || base_dir.empty() ? reference : JoinPath(base_dir, reference);
  if (PathExists(path)) return path;
  if (!IsHfRepoId(reference)) {
    return absl::NotFoundError(absl::StrCat("model path '", path, "' does not exist"));
  }
  absl::StatusOr<HfModel> m = ResolveHfModel(reference);
  if (!m.ok()) {
    return absl::Status(
        m.status().code(),
        absl::StrCat("model path '", path, "' does not exist, and ", m.status().message()));
  }
  if (label != nullptr) *label = reference;
  return m->path;
}

}  // namespace kvsweep

// Models as users name them: a Hugging Face repo id ("org/name", optionally "@REVISION")
// resolved through the local hub cache that `huggingface-cli download` and transformers fill.
//
// Cache layout (huggingface_hub): HUB/models--ORG--NAME/refs/REV holds a commit hash;
// HUB/models--ORG--NAME/snapshots/COMMIT/ holds the files (symlinks into ../../blobs). HUB is
// $HF_HUB_CACHE, else $HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub, else
// $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub. Nothing is downloaded: these
// machines may have no network, and a sweep must not fetch what it evaluates behind the user's
// back.
#ifndef KVSWEEP_COMMON_HF_HUB_H_
#define KVSWEEP_COMMON_HF_HUB_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kvsweep {

// The hub cache directory by the rules above ("" when no variable and no HOME is set).
std::string HfHubCacheDir();

// "org/name" or "org/name@rev": two non-empty parts of [A-Za-z0-9._-] (not starting with '.'
// or '-', no "..", no "--"), at most 96 characters each; rev is a branch, tag or commit of
// [A-Za-z0-9._/-]. A string that is a path ("./x", "/x", "a/b/c") is not one.
bool IsHfRepoId(absl::string_view s);

struct HfModel {
  std::string repo_id;   // "org/name" (without the revision)
  std::string revision;  // as asked ("main" when not given)
  std::string commit;    // the snapshot it resolved to
  std::string path;      // HUB/models--org--name/snapshots/COMMIT
};

// Resolves a repo id in the hub cache. kNotFound, naming the cache directory and how to fill
// it, when the repo, the revision or its snapshot is missing; kInvalidArgument for a malformed
// id or a ref file that does not hold a commit hash.
absl::StatusOr<HfModel> ResolveHfModel(absl::string_view repo_id);

// A sweep's or the CLI's model reference: an existing path as it is; else a repo id through the
// hub cache. `base_dir` resolves relative paths (empty: as given). `label` is set to the repo id
// for a repo id (what a model named that way is called in results), left alone for a path.
absl::StatusOr<std::string> ResolveModelReference(const std::string& reference,
                                                  const std::string& base_dir, std::string* label);

}  // namespace kvsweep

#endif  // KVSWEEP_COMMON_HF_HUB_H_

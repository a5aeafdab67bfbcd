#include "common/build_info.h"

#include "kvsweep_git_commit.h"  // generated in the build tree: #define KVSWEEP_GIT_COMMIT "..."

namespace kvsweep {

const char* BuildGitCommit() { return KVSWEEP_GIT_COMMIT; }

}  // namespace kvsweep

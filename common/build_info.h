#ifndef KVSWEEP_COMMON_BUILD_INFO_H_
#define KVSWEEP_COMMON_BUILD_INFO_H_

namespace kvsweep {

// The git commit this binary was built from, as recorded in result provenance: the full
// `git rev-parse HEAD` of the source checkout at build time, with "-dirty" appended when tracked
// files differed from that commit; "unknown" when it was not built from a git checkout.
// Read at every build (cmake/git_commit.cmake), so it follows new commits without a re-configure.
const char* BuildGitCommit();

}  // namespace kvsweep

#endif  // KVSWEEP_COMMON_BUILD_INFO_H_

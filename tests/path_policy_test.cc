// The coordinator's path policy with real processes: a sweep may name files only under the
// allowed roots (default: the sweep file's directory and KVSWEEP_ASSETS; or --allow-path), with
// symlinks resolved, checked before anything is opened; refusals write nothing and quote no file
// content.
#include <unistd.h>

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "spec/job_spec.h"
#include "tests/harness.h"

namespace kvsweep {
namespace testing {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;

std::string Sweep(const std::string& data) {
  return absl::StrCat("name: paths\nmodels: [", AssetsDir(),
                      "/models/ref-llama]\ntasks:\n  - {task: wikitext, data: ", data,
                      ", max_window: 64}\nmethods: [none]\n");
}

TEST(PathPolicyTest, RefusesPathsOutsideTheAllowedRoots) {
  Harness h("path_policy");
  h.StartCoordinator();
  // /etc/passwd as data: refused naming the field and the line, and nothing written.
  CommandResult r = h.Cli({"submit", h.WriteFile("etc.yaml", Sweep("/etc/passwd"))});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("etc.yaml:4: tasks[0].data: '/etc/passwd' is outside the allowed "
                               "paths ("));
  EXPECT_THAT(r.err, HasSubstr("); start the coordinator with --allow-path"));
  EXPECT_THAT(r.err, Not(HasSubstr("root:")));  // no content of the file
  EXPECT_EQ(h.SqlInt("SELECT count(*) FROM jobs"), 0);
  EXPECT_EQ(h.SqlInt("SELECT count(*) FROM sweeps"), 0);

  // A symlink inside the sweep's directory (an allowed root) pointing out of it.
  const std::string link = JoinPath(h.dir(), "data.txt");
  fs::create_symlink("/etc/passwd", link);
  r = h.Cli({"submit", h.WriteFile("link.yaml", Sweep(link))});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr(absl::StrCat("tasks[0].data: '", link,
                                            "' (resolves to '/etc/passwd') is outside")));
  // A model directory outside: refused at models[0].path before config.json is read.
  r = h.Cli({"submit", h.WriteFile("model.yaml",
                                   "name: m\nmodels: [/etc]\ntasks:\n  - {task: wikitext, "
                                   "data: x.txt}\nmethods: [none]\n")});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("model.yaml:2: models[0].path: '/etc' is outside the allowed"));
  EXPECT_EQ(h.SqlInt("SELECT count(*) FROM jobs"), 0);

  // Inside the sweep's directory: accepted.
  h.WriteFile("wiki.txt", std::string(2000, 'a') + "\n");
  r = h.Cli({"submit", h.WriteFile("ok.yaml", Sweep(JoinPath(h.dir(), "wiki.txt"))), "--dry-run"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

TEST(PathPolicyTest, AllowPathAdmitsADirectoryAndReplacesTheSweepDirectory) {
  Harness h("path_policy_allow");
  const std::string extra = MakeTempDir("path_policy_extra");
  const std::string data = JoinPath(extra, "wiki.txt");
  ASSERT_TRUE(WriteFileAtomic(data, std::string(2000, 'a') + "\n").ok());
  // Default roots: `extra` is outside.
  h.StartCoordinator();
  CommandResult r = h.Cli({"submit", h.WriteFile("s.yaml", Sweep(data)), "--dry-run"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("is outside the allowed paths"));
  h.StopCoordinator();

  Harness::CoordinatorFlags cf;
  cf.extra = {"--allow-path", extra};
  h.StartCoordinator(cf);
  r = h.Cli({"submit", h.WriteFile("s.yaml", Sweep(data)), "--dry-run"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  // With --allow-path, the sweep file's own directory is no longer allowed by default...
  h.WriteFile("local.txt", std::string(2000, 'a') + "\n");
  r = h.Cli({"submit", h.WriteFile("l.yaml", Sweep(JoinPath(h.dir(), "local.txt"))), "--dry-run"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("is outside the allowed paths"));
  // ...while KVSWEEP_ASSETS still is.
  r = h.Cli({"submit", h.WriteFile("a.yaml", Sweep(AssetsDir() + "/data/wikitext-2/wiki.test.raw")),
             "--dry-run"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  fs::remove_all(extra);
}

}  // namespace
}  // namespace testing
}  // namespace kvsweep

// Settings from --config FILE and KVSWEEP_* variables (common/cli_config.h), through the real
// binaries: each of kvsweep-coordinator, kvsweep-worker and kvsweep takes its connection
// settings from a config file and from the environment, the command line wins over the
// environment and the environment over the file, and a bad config file is a one-line error.
#include <dirent.h>
#include <signal.h>
#include <sys/wait.h>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/path_policy.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/harness.h"

namespace kvsweep {
namespace testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

using Env = std::map<std::string, std::string>;

// Files in DIR/blobs (0 when there is none).
int CountBlobs(const std::string& cache_dir) {
  int n = 0;
  if (DIR* d = ::opendir(JoinPath(cache_dir, "blobs").c_str())) {
    while (struct dirent* e = ::readdir(d)) n += e->d_name[0] != '.';
    ::closedir(d);
  }
  return n;
}

// Runs `argv` to completion (60 s at most) with `env` added.
CommandResult RunToEnd(const Harness& h, const std::vector<std::string>& argv, const Env& env) {
  static int n = 0;
  const std::string out = JoinPath(h.dir(), absl::StrCat("run-", n, ".out"));
  const std::string err = JoinPath(h.dir(), absl::StrCat("run-", n++, ".err"));
  CommandResult r;
  auto p = Subprocess::Spawn(argv, {env, out, err});
  if (!p.ok()) {
    ADD_FAILURE() << p.status();
    return r;
  }
  std::optional<int> st = (*p)->Wait(std::chrono::seconds(60));
  if (!st.has_value()) {
    ADD_FAILURE() << argv[0] << " did not exit";
  } else if (WIFEXITED(*st)) {
    r.exit_code = WEXITSTATUS(*st);
  }
  r.out = ReadFile(out).value_or("");
  r.err = ReadFile(err).value_or("");
  return r;
}

// Starts a coordinator with `args` (plus --port-file) and `env`, waits until it serves, stops it
// with SIGTERM. Returns false if it did not serve.
bool ServeOnce(const Harness& h, std::vector<std::string> args, const Env& env) {
  const std::string port_file = JoinPath(h.dir(), "port");
  std::remove(port_file.c_str());
  args.insert(args.begin(), CoordinatorBin());
  args.insert(args.end(), {"--port-file", port_file});
  const std::string log = JoinPath(h.dir(), "coordinator-once.log");
  auto p = Subprocess::Spawn(args, {env, log, log});
  if (!p.ok()) return false;
  const bool served = WaitUntil([&] { return PathExists(port_file) || !(*p)->Running(); },
                                std::chrono::seconds(30)) &&
                      (*p)->Running();
  if (!served) ADD_FAILURE() << ReadFile(log).value_or("");
  (*p)->Signal(SIGTERM);
  std::optional<int> st = (*p)->Wait(std::chrono::seconds(30));
  EXPECT_TRUE(st.has_value() && WIFEXITED(*st) && WEXITSTATUS(*st) == 0);
  return served;
}

TEST(ConfigTest, CoordinatorTakesItsDatabaseFromTheFileTheEnvironmentOrTheCommandLine) {
  Harness h("config_coordinator");
  const std::string d = h.dir();
  const std::string config = h.WriteFile(
      "coordinator.toml", absl::StrCat("# kvsweep-coordinator\ndb = \"", d,
                                       "/from-config.db\"\nlisten = \"127.0.0.1:0\"\n"));
  ASSERT_TRUE(ServeOnce(h, {"--config", config}, {}));
  EXPECT_TRUE(PathExists(d + "/from-config.db"));

  // The environment wins over the file.
  ASSERT_TRUE(ServeOnce(h, {"--config", config}, {{"KVSWEEP_DB", d + "/from-env.db"}}));
  EXPECT_TRUE(PathExists(d + "/from-env.db"));

  // The command line wins over both.
  ASSERT_TRUE(ServeOnce(h, {"--config", config, "--db", d + "/from-flag.db"},
                        {{"KVSWEEP_DB", d + "/from-env-2.db"}}));
  EXPECT_TRUE(PathExists(d + "/from-flag.db"));
  EXPECT_FALSE(PathExists(d + "/from-env-2.db"));

  // Only the environment: no --db, no file.
  ASSERT_TRUE(ServeOnce(h, {"--listen", "127.0.0.1:0"}, {{"KVSWEEP_DB", d + "/env-only.db"}}));
  EXPECT_TRUE(PathExists(d + "/env-only.db"));
}

TEST(ConfigTest, WorkerTakesItsCoordinatorFromTheFileOrTheEnvironment) {
  Harness h("config_worker");
  h.StartCoordinator();
  auto worker = [&](const std::string& name, const std::string& coordinator_in_file,
                    const Env& env) {
    const std::string config = h.WriteFile(
        name + ".toml",
        absl::StrCat("coordinator = \"", coordinator_in_file, "\"\nworker-id = \"", name,
                     "\"\nevaluator = \"fake\"\nfake-sleep-ms = 10\nexit-when-idle = 1\n",
                     "spool-dir = \"", h.dir(), "/spool-", name, "\"\n"));
    CommandResult r = RunToEnd(h, {WorkerBin(), "--config", config, "--device", "cpu"}, env);
    EXPECT_EQ(r.exit_code, 0) << r.err;
  };
  h.Submit(h.WriteFile("a.yaml", h.DistinctJobsYaml("a", 2)));
  worker("from-config", h.address(), {});
  EXPECT_EQ(h.SqlInt("SELECT count(*) FROM results WHERE worker_id = 'from-config'"), 2);

  // The file names a port nothing listens on; KVSWEEP_COORDINATOR wins. (Sweep b shares its
  // first two jobs with a: one new job.)
  h.Submit(h.WriteFile("b.yaml", h.DistinctJobsYaml("b", 3)));
  worker("from-env", "127.0.0.1:1", {{"KVSWEEP_COORDINATOR", h.address()}});
  EXPECT_GE(h.SqlInt("SELECT count(*) FROM results WHERE worker_id = 'from-env'"), 1);
  EXPECT_EQ(h.SqlInt("SELECT count(*) FROM results"), h.SqlInt("SELECT count(*) FROM jobs"));
  EXPECT_EQ(h.Sweep("b").count(JobState::kDone), h.Sweep("b").total);
}

TEST(ConfigTest, CliTakesItsCoordinatorAndTokenFromTheFileTheEnvironmentOrTheCommandLine) {
  Harness h("config_cli");
  const std::string token = h.WriteFile("token", "config-test-token\n");
  Harness::CoordinatorFlags f;
  f.extra = {"--token-file", token};
  h.StartCoordinator(f);
  const std::string nowhere = "127.0.0.1:1";
  const std::string good = h.WriteFile(
      "good.toml",
      absl::StrCat("coordinator = \"", h.address(), "\"\ntoken-file = \"", token, "\"\n"));
  CommandResult from_file = RunToEnd(h, {CliBin(), "--config", good, "status"}, {});
  EXPECT_EQ(from_file.exit_code, 0) << from_file.err;
  EXPECT_EQ(from_file.out, "no sweeps\n");

  const std::string wrong =
      h.WriteFile("wrong.toml", absl::StrCat("coordinator = \"", nowhere, "\"\n"));
  CommandResult from_env =
      RunToEnd(h, {CliBin(), "--config", wrong, "status"},
               {{"KVSWEEP_COORDINATOR", h.address()}, {"KVSWEEP_TOKEN_FILE", token}});
  EXPECT_EQ(from_env.exit_code, 0) << from_env.err;
  EXPECT_EQ(from_env.out, "no sweeps\n");

  CommandResult from_flag =
      RunToEnd(h, {CliBin(), "--config", wrong, "--coordinator", h.address(), "status"},
               {{"KVSWEEP_COORDINATOR", nowhere}, {"KVSWEEP_TOKEN_FILE", token}});
  EXPECT_EQ(from_flag.exit_code, 0) << from_flag.err;
  CommandResult flag_wins =
      RunToEnd(h, {CliBin(), "--coordinator", nowhere, "status"},
               {{"KVSWEEP_COORDINATOR", h.address()}, {"KVSWEEP_TOKEN_FILE", token}});
  EXPECT_EQ(flag_wins.exit_code, 1);
  EXPECT_THAT(flag_wins.err, StartsWith("kvsweep: cannot reach the coordinator at " + nowhere));

  // The token too: without it the coordinator says so.
  CommandResult no_token = RunToEnd(h, {CliBin(), "--coordinator", h.address(), "status"}, {});
  EXPECT_EQ(no_token.exit_code, 1);
  EXPECT_EQ(no_token.err, "kvsweep: missing bearer token (authorization metadata)\n");
}

// The staging settings: a bad value names the source that won (the command line, else the
// environment, else the file), and the cache a staging worker fills is the winning --cache-dir
// (KVSWEEP_FILE_CACHE_DIR in the environment); KVSWEEP_CACHE_DIR keeps naming kvsweep's cache
// directory, whose files/ is the default.
TEST(ConfigTest, WorkerTakesItsStagingSettingsFromTheCommandLineTheEnvironmentOrTheFile) {
  Harness h("config_staging");
  const std::string d = h.dir();
  struct Setting {
    std::string flag, env, error;  // error: what the worker says of a bad value, before it
  };
  for (const Setting& s : {Setting{"stage", "KVSWEEP_STAGE", "kvsweep-worker: --stage: '"},
                           Setting{"cache-max-bytes", "KVSWEEP_CACHE_MAX_BYTES",
                                   "kvsweep-worker: --cache-max-bytes: '"}}) {
    const std::string config =
        h.WriteFile(s.flag + ".toml", absl::StrCat(s.flag, " = \"bad-in-file\"\n"));
    auto bad = [&](const std::vector<std::string>& extra, const Env& env,
                   const std::string& named) {
      std::vector<std::string> argv = {WorkerBin(), "--config", config};
      argv.insert(argv.end(), extra.begin(), extra.end());
      CommandResult r = RunToEnd(h, argv, env);
      EXPECT_EQ(r.exit_code, 2) << s.flag << " " << named << ": " << r.err;
      EXPECT_THAT(r.err, StartsWith(s.error + named + "'")) << s.flag;
    };
    bad({}, {}, "bad-in-file");
    bad({}, {{s.env, "bad-in-env"}}, "bad-in-env");
    bad({"--" + s.flag, "bad-on-command-line"}, {{s.env, "bad-in-env"}}, "bad-on-command-line");
  }

  h.StartCoordinator();
  int jobs = 0;
  // Runs one new job on a worker configured by `file_text`, `argv` and `env`, which must stage
  // its inputs into `cache`.
  auto stage_one = [&](const std::string& name, const std::string& file_text,
                       const std::vector<std::string>& args, const Env& env,
                       const std::string& cache) {
    ++jobs;  // sweep N shares N - 1 jobs with the sweeps before it
    h.Submit(h.WriteFile(name + ".yaml", h.DistinctJobsYaml(name, jobs)));
    const std::string config = h.WriteFile(
        name + ".toml",
        absl::StrCat(file_text, "coordinator = \"", h.address(), "\"\nworker-id = \"", name,
                     "\"\nevaluator = \"fake\"\nexit-when-idle = 1\nspool-dir = \"", d, "/spool-",
                     name, "\"\n"));
    std::vector<std::string> argv = {WorkerBin(),
                                     "--config",
                                     config,
                                     "--device",
                                     "cpu",
                                     "--journal",
                                     JoinPath(d, name + ".journal")};
    argv.insert(argv.end(), args.begin(), args.end());
    CommandResult r = RunToEnd(h, argv, env);
    EXPECT_EQ(r.exit_code, 0) << name << ": " << r.err;
    EXPECT_EQ(h.SqlInt(absl::StrCat("SELECT count(*) FROM results WHERE worker_id = '", name, "'")),
              1)
        << name << ": " << r.err;
    EXPECT_THAT(ReadFile(JoinPath(d, name + ".journal")).value_or(""), HasSubstr(" staged "))
        << name;
    EXPECT_GT(CountBlobs(cache), 0) << name << ": nothing staged into " << cache;
  };
  const std::string in_file = "stage = \"always\"\ncache-dir = \"" + d + "/cache-file\"\n";
  stage_one("flag", in_file, {"--cache-dir", d + "/cache-flag"},
            {{"KVSWEEP_FILE_CACHE_DIR", d + "/cache-env"}}, d + "/cache-flag");
  EXPECT_FALSE(PathExists(d + "/cache-env"));
  EXPECT_FALSE(PathExists(d + "/cache-file"));
  stage_one("env", in_file, {}, {{"KVSWEEP_FILE_CACHE_DIR", d + "/cache-env"}}, d + "/cache-env");
  EXPECT_FALSE(PathExists(d + "/cache-file"));
  // The file says never; KVSWEEP_STAGE wins. The cache is the file's.
  stage_one("file", "stage = \"never\"\ncache-dir = \"" + d + "/cache-file\"\n", {},
            {{"KVSWEEP_STAGE", "always"}}, d + "/cache-file");
  // KVSWEEP_CACHE_DIR is the parent of the default, not the file cache itself.
  stage_one("base", "", {}, {{"KVSWEEP_STAGE", "always"}, {"KVSWEEP_CACHE_DIR", d + "/kvsweep"}},
            d + "/kvsweep/files");
  EXPECT_EQ(h.SqlInt("SELECT count(*) FROM results"), jobs);
}

// `kvsweep demo` starts workers for its embedded (plaintext, loopback, tokenless) coordinator:
// a shell set up for a real deployment must not send them elsewhere or make them use TLS.
TEST(ConfigTest, DemoWorkersIgnoreTheShellsConnectionSettings) {
  Harness h("config_demo");
  CommandResult r = RunToEnd(h,
                             {CliBin(), "demo", "--evaluator", "fake", "--workers", "2", "--limit",
                              "1", "--keep", h.dir() + "/demo"},
                             {{"KVSWEEP_TLS", "1"},
                              {"KVSWEEP_TOKEN_FILE", h.dir() + "/no-such-token"},
                              {"KVSWEEP_TLS_CA", h.dir() + "/no-such-ca.crt"},
                              {"KVSWEEP_DEVICE", "cuda:7"}});
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

// `make demo` on a fresh machine: KVSWEEP_ASSETS unset means the relative ../shared/assets, and
// the demo's sweep file (in a temporary directory) must still name the assets where they are.
TEST(ConfigTest, DemoRunsWithRelativeAssets) {
  Harness h("config_demo_rel");
  // <dir>/a/b/checkout with the assets at <dir>/a/b/assets: ../assets from the checkout, and
  // nothing from the demo's own directory <dir>/demo.
  const std::string work = JoinPath(h.dir(), "a/b/checkout");
  std::filesystem::create_directories(work);
  std::filesystem::create_symlink(RealPath(AssetsDir()), JoinPath(h.dir(), "a/b/assets"));
  CommandResult r = RunToEnd(
      h,
      {"/bin/sh", "-c",
       absl::StrCat("cd '", work, "' && exec '", CliBin(),
                    "' demo --evaluator fake --workers 2 --limit 1 --keep '", h.dir(), "/demo'")},
      {{"KVSWEEP_ASSETS", "../assets"}});
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

// A misspelt setting, a section, an unclosed list and a missing file: exit 2, one line on
// stderr that names the file and the line, and never the file's content.
TEST(ConfigTest, ABadConfigFileIsAOneLineErrorThatDoesNotQuoteTheFile) {
  Harness h("config_bad");
  struct Case {
    std::string name, text, expected;
  };
  const std::vector<Case> cases = {
      {"misspelt.toml", "# ok\n\ntls-cert = \"x\"\nsecret-looking-word-q7\n",
       ": line 4: not a setting"},
      {"section.toml", "[secret-section-q7]\n", ": line 1: sections other than [default]"},
      {"unclosed.toml", "allow-path = [\"/secret-q7\",\n", ": line 1: unclosed ["},
  };
  const std::vector<std::pair<std::string, std::string>> programs = {
      {CoordinatorBin(), "kvsweep-coordinator"},
      {WorkerBin(), "kvsweep-worker"},
      {CliBin(), "kvsweep"}};
  for (const auto& [bin, prog] : programs) {
    for (const Case& c : cases) {
      if (prog != "kvsweep-coordinator" && c.name == "unclosed.toml") continue;  // allow-path
      const std::string file = h.WriteFile(c.name, c.text);
      std::vector<std::string> argv = {bin, "--config", file};
      if (prog == "kvsweep") argv.push_back("status");
      CommandResult r = RunToEnd(h, argv, {});
      EXPECT_EQ(r.exit_code, 2) << prog << " " << c.name << ": " << r.err;
      EXPECT_THAT(r.err, StartsWith(absl::StrCat(prog, ": --config ", file, c.expected))) << c.name;
      EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << prog << ": " << r.err;
      EXPECT_THAT(r.err, Not(HasSubstr("q7"))) << prog << ": " << r.err;
    }
    std::vector<std::string> argv = {bin, "--config", h.dir() + "/missing.toml"};
    if (prog == "kvsweep") argv.push_back("status");
    CommandResult missing = RunToEnd(h, argv, {});
    EXPECT_EQ(missing.exit_code, 2) << prog;
    EXPECT_THAT(missing.err, StartsWith(absl::StrCat(prog, ": --config: File does not exist: ",
                                                     h.dir(), "/missing.toml")));
    EXPECT_EQ(std::count(missing.err.begin(), missing.err.end(), '\n'), 1) << missing.err;
  }
}

}  // namespace
}  // namespace testing
}  // namespace kvsweep

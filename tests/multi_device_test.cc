// kvsweep-worker --devices (worker/device_supervisor.h) with real processes: a coordinator, one
// supervisor and its CPU workers ("cpu:2"), real sweeps on the assets' ref-llama (the engine,
// where built). Each scenario ends with the harness invariants: one result per job.
#include <dirent.h>
#include <signal.h>
#include <sys/wait.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/harness.h"

namespace kvsweep {
namespace testing {
namespace {

using ::testing::HasSubstr;

// The pids of the processes whose parent is `parent` and whose command line has `arg`.
std::vector<pid_t> ChildrenWithArg(pid_t parent, const std::string& arg) {
  std::vector<pid_t> out;
  DIR* d = ::opendir("/proc");
  if (d == nullptr) return out;
  while (dirent* e = ::readdir(d)) {
    pid_t pid = 0;
    if (!absl::SimpleAtoi(e->d_name, &pid)) continue;
    std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
    std::string line;
    if (!std::getline(stat, line)) continue;
    // "pid (comm) state ppid ...": comm may hold spaces, so split after the last ')'.
    const size_t close = line.rfind(')');
    if (close == std::string::npos) continue;
    std::vector<std::string> f = absl::StrSplit(line.substr(close + 2), ' ');
    pid_t ppid = 0;
    if (f.size() < 2 || !absl::SimpleAtoi(f[1], &ppid) || ppid != parent) continue;
    std::ifstream cmd(absl::StrCat("/proc/", pid, "/cmdline"));
    std::stringstream ss;
    ss << cmd.rdbuf();
    for (absl::string_view a : absl::StrSplit(ss.str(), '\0')) {
      if (a == arg) {
        out.push_back(pid);
        break;
      }
    }
  }
  ::closedir(d);
  return out;
}

std::set<std::string> ResultWorkers(const Harness& h) {
  std::set<std::string> out;
  for (const auto& r : h.SqlRows("SELECT DISTINCT worker_id FROM results")) out.insert(r[0]);
  return out;
}

int64_t JobsOf(const Harness& h, const std::string& sweep) { return h.Sweep(sweep).total; }

// The values of metric `name` summed over the lines of a Prometheus text page whose labels
// include `label` (e.g. outcome="recorded").
double SumMetric(const std::string& page, const std::string& name, const std::string& label) {
  double sum = 0;
  for (absl::string_view line : absl::StrSplit(page, '\n')) {
    if (!absl::StartsWith(line, name + "{")) continue;
    const absl::string_view labels = line.substr(0, line.find('}'));
    if (!absl::StrContains(labels, label)) continue;
    double v = 0;
    if (absl::SimpleAtod(line.substr(line.rfind(' ') + 1), &v)) sum += v;
  }
  return sum;
}

TEST(MultiDeviceTest, EachSupervisedWorkerServesItsOwnMetrics) {
  Harness h("devices_metrics");
  h.StartCoordinator();
  h.Submit(h.WriteFile("s.yaml", h.DistinctJobsYaml("mets", 4)));
  const int port = FreePortRange(2);
  Harness::WorkerFlags f;
  f.devices = "cpu:2";
  f.extra = {"--worker-id", "node",         "--metrics-listen", absl::StrCat("127.0.0.1:", port),
             "--fault",     "delay-job:300"};
  const int w = h.StartWorker(f);
  ASSERT_TRUE(h.WaitFinished("mets", std::chrono::seconds(300)));
  // Each worker serves its own page (port, port + 1); the jobs recorded add up to the sweep's
  // (a worker counts a job once the coordinator has answered its Complete: poll until then).
  const int64_t jobs = JobsOf(h, "mets");
  double recorded = 0;
  std::string pages[2];
  WaitUntil(
      [&] {
        recorded = 0;
        for (int i = 0; i < 2; ++i) {
          HttpResponse r = Http(port + i, "/metrics");
          if (r.status != 200) return false;
          pages[i] = r.body;
          recorded += SumMetric(r.body, "kvsweep_worker_jobs_total", "outcome=\"recorded\"");
        }
        return recorded == jobs;
      },
      std::chrono::seconds(60));
  for (const std::string& page : pages) {
    EXPECT_THAT(page, HasSubstr("kvsweep_worker_jobs_started_total"));
  }
  EXPECT_EQ(recorded, jobs);
  h.worker(w)->Signal(SIGTERM);
  std::optional<int> st = h.worker(w)->Wait(std::chrono::seconds(120));
  ASSERT_TRUE(st.has_value());
  EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << DescribeWaitStatus(*st);
  h.CheckInvariants("mets");
  // Port 0 cannot be spread over workers: a one-line error, exit 2.
  Harness::WorkerFlags z;
  z.devices = "cpu:2";
  z.extra = {"--metrics-listen", "127.0.0.1:0"};
  const int bad = h.StartWorker(z);
  std::optional<int> bst = h.worker(bad)->Wait(std::chrono::seconds(60));
  ASSERT_TRUE(bst.has_value());
  EXPECT_TRUE(WIFEXITED(*bst) && WEXITSTATUS(*bst) == 2) << DescribeWaitStatus(*bst);
  absl::StatusOr<std::string> log = ReadFile(h.log(bad));
  ASSERT_TRUE(log.ok());
  EXPECT_THAT(*log, HasSubstr("--metrics-listen: with --devices give a fixed PORT"));
}

TEST(MultiDeviceTest, TwoSupervisedCpuWorkersShareARealSweepAndExitWhenIdle) {
  Harness h("devices_share");
  h.StartCoordinator();
  h.Submit(h.WriteFile("s.yaml", h.DistinctJobsYaml("share", 6)));
  Harness::WorkerFlags f;
  f.devices = "cpu:2";
  // Each job holds its worker a little, so that both workers are busy while jobs remain.
  f.extra = {"--worker-id", "node", "--exit-when-idle", "1", "--fault", "delay-job:300"};
  const int w = h.StartWorker(f);
  ASSERT_TRUE(h.WaitFinished("share", std::chrono::seconds(300)));
  // Both workers idle out (exit 0), and so does the supervisor.
  std::optional<int> st = h.worker(w)->Wait(std::chrono::seconds(120));
  ASSERT_TRUE(st.has_value()) << "the supervisor did not exit once its workers were idle";
  EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << DescribeWaitStatus(*st);
  h.CheckInvariants("share");
  EXPECT_EQ(h.SqlInt("SELECT count(*) FROM results"), JobsOf(h, "share"));
  EXPECT_EQ(ResultWorkers(h), (std::set<std::string>{"node-cpu0", "node-cpu1"}));
  // Each worker told the coordinator its own device and id.
  EXPECT_EQ(h.SqlInt("SELECT count(*) FROM workers WHERE worker_id IN ('node-cpu0', "
                     "'node-cpu1') AND device = 'cpu'"),
            2);
  absl::StatusOr<std::string> log = ReadFile(h.log(w));
  ASSERT_TRUE(log.ok());
  EXPECT_THAT(*log, HasSubstr("supervisor: every worker ended cleanly"));
  EXPECT_THAT(*log, ::testing::Not(HasSubstr("crashed")));
}

TEST(MultiDeviceTest, AWorkerKilledMidJobIsRestartedAndEveryJobHasOneResult) {
  Harness h("devices_kill");
  h.StartCoordinator();
  h.Submit(h.WriteFile("s.yaml", h.DistinctJobsYaml("killc", 6)));
  Harness::WorkerFlags f;
  f.devices = "cpu:2";
  f.extra = {"--worker-id", "node", "--exit-when-idle", "1", "--fault", "delay-job:2000"};
  const int w = h.StartWorker(f);
  const pid_t supervisor = h.worker(w)->pid();
  // node-cpu1 holds a lease (its job is in delay-job): kill it there.
  ASSERT_TRUE(WaitUntil(
      [&] {
        return h.SqlInt(
                   "SELECT count(*) FROM jobs WHERE state = 'leased' AND lease_worker = "
                   "'node-cpu1'") > 0;
      },
      std::chrono::seconds(120)))
      << "node-cpu1 never held a lease";
  std::vector<pid_t> victims = ChildrenWithArg(supervisor, "node-cpu1");
  ASSERT_EQ(victims.size(), 1u);
  ASSERT_EQ(::kill(victims[0], SIGKILL), 0);
  // The supervisor starts node-cpu1 again (a new process under the same worker id).
  ASSERT_TRUE(WaitUntil(
      [&] {
        std::vector<pid_t> now = ChildrenWithArg(supervisor, "node-cpu1");
        return now.size() == 1 && now[0] != victims[0];
      },
      std::chrono::seconds(60)))
      << "node-cpu1 was not restarted";
  ASSERT_TRUE(h.WaitFinished("killc", std::chrono::seconds(300)));
  std::optional<int> st = h.worker(w)->Wait(std::chrono::seconds(120));
  ASSERT_TRUE(st.has_value());
  // A crash that was restarted, then clean exits: success.
  EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << DescribeWaitStatus(*st);
  h.CheckInvariants("killc");
  EXPECT_EQ(h.SqlInt("SELECT count(*) FROM results"), JobsOf(h, "killc"));
  // The killed worker's attempt was lost, and its job recorded once all the same.
  EXPECT_EQ(h.SqlInt("SELECT count(*) FROM attempts WHERE worker_id = 'node-cpu1' AND "
                     "outcome = 'lost'"),
            1);
  EXPECT_EQ(h.SqlInt("SELECT count(*) FROM results r JOIN attempts a ON a.job_id = r.job_id "
                     "WHERE a.outcome = 'lost'"),
            1);
  absl::StatusOr<std::string> log = ReadFile(h.log(w));
  ASSERT_TRUE(log.ok());
  EXPECT_THAT(*log, HasSubstr("worker node-cpu1 crashed (signal 9"));
}

TEST(MultiDeviceTest, SigtermToTheWholeGroupDrainsEveryWorkerOnce) {
  Harness h("devices_drain");
  h.StartCoordinator();
  h.Submit(h.WriteFile("s.yaml", h.DistinctJobsYaml("drainc", 4)));
  Harness::WorkerFlags f;
  f.devices = "cpu:2";
  // Jobs that outlast the drain timeout: each worker hands its job back at once.
  f.extra = {"--worker-id", "node", "--fault", "delay-job:600000", "--drain-timeout-ms", "200"};
  const int w = h.StartWorker(f);
  ASSERT_TRUE(WaitUntil(
      [&] {
        return h.SqlInt(
                   "SELECT count(*) FROM jobs WHERE state = "
                   "'leased'") == 2;
      },
      std::chrono::seconds(120)))
      << "the two workers did not both lease a job";
  // As Ctrl-C, systemd's stop or scancel would: SIGTERM to every process of the group, the
  // workers included. They ignore it; the supervisor's one SIGUSR1 each is their one request.
  const pid_t supervisor = h.worker(w)->pid();
  std::vector<pid_t> workers = ChildrenWithArg(supervisor, "node-cpu0");
  for (pid_t p : ChildrenWithArg(supervisor, "node-cpu1")) workers.push_back(p);
  ASSERT_EQ(workers.size(), 2u);
  for (pid_t p : workers) ASSERT_EQ(::kill(p, SIGTERM), 0);
  h.worker(w)->Signal(SIGTERM);
  std::optional<int> st = h.worker(w)->Wait(std::chrono::seconds(60));
  ASSERT_TRUE(st.has_value()) << "the supervisor did not exit after SIGTERM";
  EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << DescribeWaitStatus(*st);
  // One stop request each: handed back (a second one would also hand back, so check that no
  // worker was asked twice through its log), nothing left leased.
  EXPECT_EQ(h.SqlInt("SELECT count(*) FROM attempts WHERE outcome = 'handed_back'"), 2);
  EXPECT_EQ(h.SqlInt("SELECT count(*) FROM jobs WHERE state = 'leased'"), 0);
  absl::StatusOr<std::string> log = ReadFile(h.log(w));
  ASSERT_TRUE(log.ok());
  EXPECT_THAT(*log, HasSubstr("worker node-cpu0: draining"));
  EXPECT_THAT(*log, HasSubstr("worker node-cpu1: draining"));
  EXPECT_THAT(*log, ::testing::Not(HasSubstr("second stop request")));
  // Another worker finishes the sweep.
  h.StartWorker();
  ASSERT_TRUE(h.WaitFinished("drainc", std::chrono::seconds(300)));
  h.CheckInvariants("drainc");
}

// Model affinity is per device: each worker asks for more of the model it has loaded. Queue
// (oldest first): 3 ref-llama jobs, 3 ref-gpt2 jobs, 3 more ref-llama jobs. Without affinity a
// worker would go llama, gpt2, llama; with it, each worker changes model at most once (when the
// model it holds has no job left).
TEST(MultiDeviceTest, EachWorkerKeepsToTheModelItHasLoaded) {
  Harness h("devices_affinity");
  h.StartCoordinator();
  const char* assets = std::getenv("KVSWEEP_ASSETS");
  ASSERT_NE(assets, nullptr) << "KVSWEEP_ASSETS is not set";
  std::string gpt2 = absl::StrCat("name: gpt2\nmodels:\n  - name: ref-gpt2\n    path: ", assets,
                                  "/models/ref-gpt2\ntasks:\n");
  for (int k = 1; k <= 3; ++k) {
    absl::StrAppend(&gpt2, "  - {name: l", k, ", task: lambada_openai, data: ", assets,
                    "/data/lambada_openai/lambada_test.jsonl, limit: ", k, "}\n");
  }
  absl::StrAppend(&gpt2, "methods: [none]\n");
  h.Submit(h.WriteFile("a.yaml", h.DistinctJobsYaml("llama-a", 3)));
  h.Submit(h.WriteFile("b.yaml", gpt2));
  h.Submit(h.WriteFile("c.yaml", h.DistinctJobsYaml("llama-c", 6)));  // limits 1-3 are a's
  Harness::WorkerFlags f;
  f.devices = "cpu:2";
  f.extra = {"--worker-id", "node", "--exit-when-idle", "1"};
  const int w = h.StartWorker(f);
  for (const char* sweep : {"llama-a", "gpt2", "llama-c"}) {
    ASSERT_TRUE(h.WaitFinished(sweep, std::chrono::seconds(300))) << sweep;
  }
  std::optional<int> st = h.worker(w)->Wait(std::chrono::seconds(120));
  ASSERT_TRUE(st.has_value());
  EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << DescribeWaitStatus(*st);
  EXPECT_EQ(h.SqlInt("SELECT count(*) FROM results"), 9);
  // Each worker's results in the order it leased them.
  std::map<std::string, std::vector<std::string>> models;
  for (const auto& r : h.SqlRows("SELECT a.worker_id, r.model FROM attempts a JOIN results r ON "
                                 "r.job_id = a.job_id AND r.fence = a.fence ORDER BY "
                                 "a.attempt_id")) {
    models[r[0]].push_back(r[1]);
  }
  std::set<std::string> seen;
  for (const auto& [worker, seq] : models) {
    int changes = 0;
    for (size_t i = 1; i < seq.size(); ++i) changes += seq[i] != seq[i - 1] ? 1 : 0;
    EXPECT_LE(changes, 1) << worker << ": " << absl::StrJoin(seq, " ");
    seen.insert(seq.begin(), seq.end());
  }
  EXPECT_EQ(seen.size(), 2u);
}

TEST(MultiDeviceTest, BadDevicesAreRefusedWithOneLine) {
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"--devices", "cpu:0"},
        std::vector<std::string>{"--devices", "0,0"},
        std::vector<std::string>{"--devices", "cpu:2", "--device", "cpu"}}) {
    std::vector<std::string> argv = {WorkerBin(), "--coordinator", "127.0.0.1:1", "--evaluator",
                                     "fake"};
    argv.insert(argv.end(), args.begin(), args.end());
    const std::string err = MakeTempDir("devices_bad") + "/err";
    Subprocess::Options o;
    o.stderr_path = err;
    auto p = Subprocess::Spawn(argv, o);
    ASSERT_TRUE(p.ok());
    std::optional<int> st = (*p)->Wait(std::chrono::seconds(30));
    ASSERT_TRUE(st.has_value());
    EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 2) << DescribeWaitStatus(*st);
    absl::StatusOr<std::string> text = ReadFile(err);
    ASSERT_TRUE(text.ok());
    EXPECT_THAT(*text, HasSubstr("kvsweep-worker: --device"));
    EXPECT_EQ(std::count(text->begin(), text->end(), '\n'), 1) << *text;
  }
}

// `kvsweep-worker eval` with --device cpu,cpu (the model's layers split across two CPU
// "devices", worker/engine/placement.h) gives the result --device cpu gives, to the bit.
TEST(MultiDeviceTest, PipelineGroupOfTwoCpuDevicesGivesTheSameResultAsOne) {
  if (!kEngine) GTEST_SKIP() << "needs the libtorch engine";
  const std::string dir = MakeTempDir("pipeline_eval");
  const char* assets = std::getenv("KVSWEEP_ASSETS");
  ASSERT_NE(assets, nullptr) << "KVSWEEP_ASSETS is not set";
  auto eval = [&](const std::string& device) {
    const std::string out = dir + "/" + device + ".json", err = dir + "/" + device + ".err";
    Subprocess::Options o;
    o.stdout_path = out;
    o.stderr_path = err;
    auto p = Subprocess::Spawn(
        {WorkerBin(), "eval", "--model", std::string(assets) + "/models/ref-llama", "--task",
         "lambada_openai", "--data",
         std::string(assets) + "/data/lambada_openai/lambada_test.jsonl", "--limit", "8",
         "--device", device, "--threads", "1", "--format", "json"},
        o);
    EXPECT_TRUE(p.ok());
    std::optional<int> st = (*p)->Wait(std::chrono::seconds(300));
    EXPECT_TRUE(st.has_value() && WIFEXITED(*st) && WEXITSTATUS(*st) == 0)
        << device << ": " << ReadFile(err).value_or("");
    absl::StatusOr<std::string> json = ReadFile(out);
    EXPECT_TRUE(json.ok());
    absl::StatusOr<std::string> log = ReadFile(err);
    return std::make_pair(nlohmann::json::parse(json.value_or("{}"), nullptr, false),
                          log.value_or(""));
  };
  const auto [one, one_log] = eval("cpu");
  const auto [two, two_log] = eval("cpu,cpu");
  ASSERT_TRUE(one.contains("metrics")) << one.dump();
  EXPECT_EQ(one["metrics"], two["metrics"]);  // loglik of every document, bit for bit
  EXPECT_THAT(two_log, HasSubstr("pipeline cpu layers 0-"));
  EXPECT_THAT(one_log, ::testing::Not(HasSubstr("pipeline")));
}

}  // namespace
}  // namespace testing
}  // namespace kvsweep

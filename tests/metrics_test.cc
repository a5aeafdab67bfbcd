// Observability: the coordinator's Prometheus /metrics endpoint (--metrics-listen) after a
// sweep run by fake workers, and the grpc.health.v1 service that Kubernetes probes call (raw,
// through a generic stub: Debian ships no generated health stub); a worker's /metrics against
// the jobs it ran (the real engine where it is built); and a running job's progress as
// `kvsweep status` and `kvsweep watch` show it, while a worker that lies about it is refused.
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <future>
#include <regex>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "gmock/gmock.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/harness.h"

namespace kvsweep {
namespace testing {
namespace {

Harness::WorkerFlags Fake() {
  Harness::WorkerFlags f;
  f.force_fake = true;
  return f;
}

// The body of GET http://127.0.0.1:port/path; "" on any error or a status other than 200.
std::string HttpGet(int port, const std::string& path) {
  HttpResponse r = Http(port, path);
  return r.status == 200 ? r.body : "";
}

// The value of the sample line `name` (with its labels, e.g. `kvsweep_jobs{state="done"}`);
// -1 if absent.
double Sample(const std::string& body, const std::string& name) {
  for (absl::string_view line : absl::StrSplit(body, '\n')) {
    if (absl::StartsWith(line, absl::StrCat(name, " "))) {
      return std::strtod(std::string(line.substr(name.size() + 1)).c_str(), nullptr);
    }
  }
  return -1;
}

// grpc.health.v1.Health/Check for `service`: the status enum (1 SERVING, 2 NOT_SERVING), or
// -(gRPC code) when the call fails. HealthCheckRequest is {1: string service};
// HealthCheckResponse is {1: enum status}, a zero status encoded as an empty message.
int HealthCheck(const std::string& address, const std::string& service) {
  grpc::GenericStub stub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  std::string req;
  if (!service.empty()) {
    req.push_back('\x0a');
    req.push_back(static_cast<char>(service.size()));  // < 128 here: one-byte varint
    req += service;
  }
  grpc::Slice slice(req);
  grpc::ByteBuffer request(&slice, 1), response;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  std::promise<grpc::Status> done;
  stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&done](grpc::Status s) { done.set_value(std::move(s)); });
  grpc::Status s = done.get_future().get();
  if (!s.ok()) return -static_cast<int>(s.error_code());
  std::vector<grpc::Slice> slices;
  if (!response.Dump(&slices).ok()) return -100;
  std::string bytes;
  for (const grpc::Slice& sl : slices)
    bytes.append(reinterpret_cast<const char*>(sl.begin()), sl.size());
  if (bytes.empty()) return 0;
  if (bytes.size() != 2 || bytes[0] != '\x08') return -101;
  return bytes[1];
}

TEST(MetricsTest, ScrapeAfterSweepAndHealthServing) {
  Harness h("metrics");
  const int metrics_port = FreePort();
  Harness::CoordinatorFlags flags;
  flags.extra = {"--metrics-listen", absl::StrCat("127.0.0.1:", metrics_port)};
  h.StartCoordinator(flags);

  EXPECT_EQ(HealthCheck(h.address(), ""), 1);
  EXPECT_EQ(HealthCheck(h.address(), "kvsweep.v1.SweepService"), 1);
  EXPECT_EQ(HealthCheck(h.address(), "kvsweep.v1.WorkerService"), 1);
  EXPECT_EQ(HealthCheck(h.address(), "no.such.Service"), -grpc::StatusCode::NOT_FOUND);

  constexpr int kJobs = 5;
  h.Submit(h.WriteFile("s.yaml", h.DistinctJobsYaml("obs", kJobs)));
  h.StartWorker(Fake());
  h.StartWorker(Fake());
  ASSERT_TRUE(h.WaitFinished("obs", std::chrono::seconds(120)));
  h.CheckInvariants("obs");

  // Job counts are refreshed at most once a second: scrape until they catch up.
  std::string body;
  const bool caught_up = WaitUntil(
      [&] {
        body = HttpGet(metrics_port, "/metrics");
        return Sample(body, "kvsweep_jobs{state=\"done\"}") == kJobs;
      },
      std::chrono::seconds(15));
  ASSERT_TRUE(caught_up) << body;
  EXPECT_EQ(Sample(body, "kvsweep_jobs{state=\"queued\"}"), 0) << body;
  EXPECT_EQ(Sample(body, "kvsweep_jobs{state=\"leased\"}"), 0) << body;
  EXPECT_EQ(Sample(body, "kvsweep_jobs{state=\"failed\"}"), 0) << body;
  EXPECT_EQ(Sample(body, "kvsweep_jobs{state=\"quarantined\"}"), 0) << body;
  EXPECT_EQ(Sample(body, "kvsweep_jobs{state=\"cancelled\"}"), 0) << body;
  EXPECT_GT(Sample(body, "kvsweep_lease_latency_seconds_count"), 0) << body;
  EXPECT_GE(Sample(body, "kvsweep_complete_latency_seconds_count"), kJobs) << body;
  EXPECT_EQ(Sample(body, "kvsweep_results_total"), kJobs) << body;
  EXPECT_GT(Sample(body, "kvsweep_commits_total"), 0) << body;
  EXPECT_GE(Sample(body, "kvsweep_mutations_total"), Sample(body, "kvsweep_commits_total")) << body;
  EXPECT_THAT(body, ::testing::HasSubstr("# TYPE kvsweep_lease_latency_seconds histogram"));

  h.StopCoordinator();
  if (HasFailure()) h.DumpLogs();
}

// A worker's /metrics, scraped before its first job and after it ran a sweep's jobs, against
// what the jobs' results say: jobs by task and outcome, their durations counted, the tokens
// and tokens per second of the results, the calls to the coordinator, the process's memory.
TEST(MetricsTest, WorkerMetricsAgreeWithTheJobsItRan) {
  Harness h("worker_metrics");
  h.StartCoordinator();
  const int port = FreePort();
  Harness::WorkerFlags w;
  w.extra = {"--metrics-listen", absl::StrCat("127.0.0.1:", port)};
  h.StartWorker(w);
  std::string body;
  ASSERT_TRUE(WaitUntil([&] { return !(body = HttpGet(port, "/metrics")).empty(); },
                        std::chrono::seconds(60)))
      << h.log(0);
  EXPECT_EQ(Sample(body, "kvsweep_worker_jobs_started_total"), 0) << body;
  EXPECT_EQ(Sample(body, "kvsweep_worker_job_running"), 0) << body;
  const double rss = Sample(body, "kvsweep_worker_resident_memory_bytes");
  EXPECT_GT(rss, 0) << body;
  EXPECT_GE(Sample(body, "kvsweep_worker_resident_memory_peak_bytes"), rss) << body;
  // A CPU worker has no CUDA allocator to report.
  EXPECT_THAT(body, ::testing::Not(::testing::HasSubstr("kvsweep_worker_device_allocated_bytes{")));

  constexpr int kJobs = 2;
  h.Submit(h.WriteFile("s.yaml", h.DistinctJobsYaml("wm", kJobs)));
  ASSERT_TRUE(h.WaitFinished("wm", std::chrono::seconds(300)));
  h.CheckInvariants("wm");
  body = HttpGet(port, "/metrics");
  const std::string task = "task=\"lambada_openai\"";
  EXPECT_EQ(Sample(body, "kvsweep_worker_jobs_started_total"), kJobs) << body;
  EXPECT_EQ(
      Sample(body, absl::StrCat("kvsweep_worker_jobs_total{outcome=\"recorded\",", task, "}")),
      kJobs)
      << body;
  EXPECT_EQ(Sample(body, absl::StrCat("kvsweep_worker_job_duration_seconds_count{", task, "}")),
            kJobs)
      << body;
  EXPECT_THAT(body, ::testing::HasSubstr("# TYPE kvsweep_worker_job_duration_seconds histogram"));
  EXPECT_EQ(Sample(body, "kvsweep_worker_job_running"), 0) << body;
  EXPECT_EQ(Sample(body, "kvsweep_worker_job_progress"), 1) << body;
  EXPECT_GE(Sample(body, "kvsweep_worker_rpcs_total{code=\"OK\",rpc=\"lease\"}"), 1) << body;
  EXPECT_GE(Sample(body, "kvsweep_worker_rpcs_total{code=\"OK\",rpc=\"complete\"}"), kJobs) << body;

  // The tokens, as the results report them (the fake evaluator reports none).
  std::vector<std::vector<std::string>> rows = h.SqlRows(
      "SELECT json_extract(result_json, '$.timing.forward_tokens'), "
      "json_extract(result_json, '$.timing.scored_tokens'), "
      "printf('%.17g', json_extract(result_json, '$.timing.tokens_per_s')) FROM results "
      "ORDER BY rowid");
  ASSERT_EQ(rows.size(), static_cast<size_t>(kJobs));
  double forward = 0, scored = 0;
  for (const std::vector<std::string>& r : rows) {
    forward += r[0].empty() ? 0 : std::stod(r[0]);
    scored += r[1].empty() ? 0 : std::stod(r[1]);
  }
  if (kEngine) {
    EXPECT_GT(forward, 0);
    EXPECT_EQ(Sample(body, absl::StrCat("kvsweep_worker_forward_tokens_total{", task, "}")),
              forward)
        << body;
    EXPECT_EQ(Sample(body, absl::StrCat("kvsweep_worker_scored_tokens_total{", task, "}")), scored)
        << body;
  } else {
    EXPECT_EQ(Sample(body, absl::StrCat("kvsweep_worker_forward_tokens_total{", task, "}")), -1)
        << body;
  }
  // The last job's rate (printed in the text format's precision).
  const double last_rate = std::stod(rows.back()[2]);
  EXPECT_NEAR(Sample(body, "kvsweep_worker_tokens_per_second"), last_rate,
              1e-9 * std::max(1.0, last_rate))
      << body;
  if (HasFailure()) h.DumpLogs();
}

// A job that runs for minutes (the fake evaluator): its progress reaches the coordinator with
// the heartbeats, and `kvsweep status` (text and --json) and `kvsweep watch` show it with a
// finite ETA while it runs, as does the worker's /metrics. Heartbeats that lie (NaN, for a
// lease the caller does not hold) are refused and change nothing. Once the sweep is cancelled
// the worker abandons the job and nothing runs any more.
TEST(MetricsTest, RunningJobProgressInStatusWatchAndWorkerMetrics) {
  Harness h("progress");
  h.StartCoordinator();
  h.Submit(h.WriteFile("s.yaml", h.DistinctJobsYaml("prog", 2)));  // one runs, one waits
  const int port = FreePort();
  Harness::WorkerFlags w;
  w.force_fake = true;
  w.fake_sleep_ms = 600000;
  w.extra = {"--metrics-listen", absl::StrCat("127.0.0.1:", port), "--worker-id", "w-prog"};
  h.StartWorker(w);

  // `kvsweep status --json` until the running job has progressed.
  nlohmann::json sweep;
  const bool progressed = WaitUntil(
      [&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        CommandResult r = h.Cli({"status", "prog", "--json"});
        if (r.exit_code != 0) return false;
        sweep = nlohmann::json::parse(r.out, nullptr, false);
        if (!sweep.is_array() || sweep.size() != 1) return false;
        sweep = sweep[0];
        return sweep.contains("running") && sweep["running"].size() == 1 &&
               sweep["running"][0]["progress"].get<double>() > 0;
      },
      std::chrono::seconds(120));
  ASSERT_TRUE(progressed) << sweep.dump();
  const nlohmann::json job = sweep["running"][0];
  const std::string job_id = job["job_id"].get<std::string>();
  EXPECT_EQ(job_id.size(), 64u);
  EXPECT_EQ(job["worker_id"], "w-prog");
  EXPECT_LT(job["progress"].get<double>(), 1);
  EXPECT_GT(job["progress_per_s"].get<double>(), 0);
  ASSERT_TRUE(job["eta_s"].is_number()) << job.dump();
  EXPECT_GT(job["eta_s"].get<double>(), 0);
  ASSERT_TRUE(sweep["eta_s"].is_number()) << sweep.dump();
  EXPECT_GE(sweep["eta_s"].get<double>(), job["eta_s"].get<double>());  // one more job waits

  // The text: the job's line and the sweep's ETA, neither "?".
  CommandResult text = h.Cli({"status", "prog"});
  ASSERT_EQ(text.exit_code, 0) << text.err;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(
      text.out, m, std::regex("  job ([0-9a-f]{12}) on w-prog: ([0-9.]+)% done, ETA (\\S+)\n")))
      << text.out;
  EXPECT_EQ(m[1].str(), job_id.substr(0, 12));
  EXPECT_GT(std::stod(m[2].str()), 0) << text.out;
  EXPECT_LT(std::stod(m[2].str()), 100) << text.out;
  EXPECT_NE(m[3].str(), "?") << text.out;
  ASSERT_TRUE(std::regex_search(text.out, m, std::regex("\n  ETA (\\S+)\n"))) << text.out;
  EXPECT_NE(m[1].str(), "?") << text.out;

  // `kvsweep watch` (not a terminal: a line per change of the counts, the first at once).
  {
    const std::string err = JoinPath(h.dir(), "watch.err");
    Subprocess::Options o;
    o.stdout_path = JoinPath(h.dir(), "watch.out");
    o.stderr_path = err;
    auto watch = Subprocess::Spawn({CliBin(), "--coordinator", h.address(), "watch", "prog"}, o);
    ASSERT_TRUE(watch.ok()) << watch.status();
    std::string line;
    ASSERT_TRUE(WaitUntil(
        [&] {
          line = ReadFile(err).value_or("");
          return line.find('\n') != std::string::npos;
        },
        std::chrono::seconds(60)));
    EXPECT_TRUE(std::regex_search(line, m,
                                  std::regex("0/2 done, 1 running \\((\\d+)%\\), "
                                             "1 queued, ETA (\\S+)\n")))
        << line;
    EXPECT_NE(m[2].str(), "?") << line;
  }  // the watch is killed

  // The worker's view of the same job.
  std::string body = HttpGet(port, "/metrics");
  EXPECT_EQ(Sample(body, "kvsweep_worker_job_running"), 1) << body;
  EXPECT_GT(Sample(body, "kvsweep_worker_job_progress"), 0) << body;
  EXPECT_LT(Sample(body, "kvsweep_worker_job_progress"), 1) << body;
  EXPECT_EQ(Sample(body, "kvsweep_worker_jobs_started_total"), 1) << body;
  // The coordinator saw progress, so a heartbeat carried it.
  EXPECT_GE(Sample(body, "kvsweep_worker_rpcs_total{code=\"OK\",rpc=\"heartbeat\"}"), 1) << body;

  // A worker that lies: NaN is refused, and so is any progress for a lease it does not hold.
  const int64_t fence =
      h.SqlInt(absl::StrCat("SELECT fence FROM jobs WHERE job_id = '", job_id, "'"));
  auto stub = h.WorkerStub();
  auto heartbeat = [&](const std::string& worker, double progress) {
    v1::HeartbeatRequest req;
    req.set_worker_id(worker);
    req.set_job_id(job_id);
    req.set_lease_id("not-the-lease-secret");
    req.set_fencing_token(fence);
    req.set_progress(progress);
    v1::HeartbeatResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return stub->Heartbeat(&ctx, req, &resp).error_code();
  };
  EXPECT_EQ(heartbeat("w-prog", std::nan("")), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(heartbeat("w-prog", 1.5), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(heartbeat("w-prog", 0.99), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(heartbeat("w-liar", 0.99), grpc::StatusCode::PERMISSION_DENIED);
  CommandResult after = h.Cli({"status", "prog", "--json"});
  ASSERT_EQ(after.exit_code, 0) << after.err;
  nlohmann::json now = nlohmann::json::parse(after.out, nullptr, false);
  ASSERT_TRUE(now.is_array() && now.size() == 1 && now[0]["running"].size() == 1) << after.out;
  EXPECT_EQ(now[0]["running"][0]["worker_id"], "w-prog");
  EXPECT_LT(now[0]["running"][0]["progress"].get<double>(), 0.5);  // 10 min job, seconds in

  // Cancelled: the worker abandons the job at its next heartbeat; nothing runs any more.
  ASSERT_EQ(h.Cli({"cancel", "prog"}).exit_code, 0);
  const std::string abandoned =
      "kvsweep_worker_jobs_total{outcome=\"abandoned\",task=\"lambada_openai\"}";
  ASSERT_TRUE(WaitUntil(
      [&] {
        body = HttpGet(port, "/metrics");
        return Sample(body, abandoned) == 1;
      },
      std::chrono::seconds(60)))
      << body;
  EXPECT_EQ(Sample(body, "kvsweep_worker_job_running"), 0) << body;
  after = h.Cli({"status", "prog", "--json"});
  now = nlohmann::json::parse(after.out, nullptr, false);
  ASSERT_TRUE(now.is_array() && now.size() == 1) << after.out;
  EXPECT_TRUE(now[0]["running"].empty()) << after.out;
  EXPECT_TRUE(now[0]["eta_s"].is_null()) << after.out;
  if (HasFailure()) h.DumpLogs();
}

// --metrics-listen from the environment (KVSWEEP_METRICS_LISTEN, as every worker setting): a
// malformed address or one already bound is a one-line error and exit 2, before any lease.
TEST(MetricsTest, WorkerRefusesAMetricsAddressItCannotServe) {
  Harness h("worker_metrics_bad");
  const int taken = FreePort();
  Harness::CoordinatorFlags flags;
  flags.extra = {"--metrics-listen", absl::StrCat("127.0.0.1:", taken)};
  h.StartCoordinator(flags);
  for (const auto& [value, message] : std::vector<std::pair<std::string, std::string>>{
           {"localhost:99999", "--metrics-listen: 'localhost:99999' has no valid port"},
           {"::1:9100", "is not HOST:PORT (IPv6 hosts in brackets)"},
           {absl::StrCat("127.0.0.1:", taken), "--metrics-listen: cannot listen on 127.0.0.1:"}}) {
    Subprocess::Options o;
    o.env = {{"KVSWEEP_METRICS_LISTEN", value}};
    o.stdout_path = o.stderr_path = JoinPath(h.dir(), "worker.err");
    auto w = Subprocess::Spawn(
        {WorkerBin(), "--coordinator", h.address(), "--evaluator", "fake", "--spool-dir", ""}, o);
    ASSERT_TRUE(w.ok()) << w.status();
    std::optional<int> st = (*w)->Wait(std::chrono::seconds(60));
    ASSERT_TRUE(st.has_value()) << value;
    EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 2) << value;
    const std::string err = ReadFile(JoinPath(h.dir(), "worker.err")).value_or("");
    EXPECT_THAT(err, ::testing::HasSubstr(message)) << value;
  }
  EXPECT_EQ(h.SqlInt("SELECT COUNT(*) FROM workers"), 0);  // it never asked for a job
}

}  // namespace
}  // namespace testing
}  // namespace kvsweep

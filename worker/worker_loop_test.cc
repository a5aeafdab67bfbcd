// The worker loop against an in-process coordinator over real gRPC on loopback and a SQLite
// file, with the fake evaluator. (tests/ does the same with separate processes.)
#include "worker/worker_loop.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "coordinator/server.h"
#include "coordinator/sweep_spec.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/harness.h"
#include "worker/fake_evaluator.h"

namespace kvsweep {
namespace {

using ::kvsweep::testing::FreePort;
using ::testing::HasSubstr;

std::string TempDb(const std::string& stem) {
  static std::atomic<int> n{0};
  std::string p =
      absl::StrCat(::testing::TempDir(), "/kvsweep_wl_", getpid(), "_", n++, "_", stem, ".db");
  for (const char* s : {"", "-wal", "-shm", ".lock"}) std::remove((p + s).c_str());
  return p;
}

ExpandedSweep Sweep(const std::string& name, int n_methods) {
  std::string methods;
  for (int b = 1; b <= n_methods; ++b) absl::StrAppend(&methods, "  - quant:bits=", b, "\n");
  const std::string yaml = absl::StrCat("name: ", name, R"(
models: [models/ref-llama]
tasks: [{task: lambada_openai, data: data/lambada_openai/lambada_test.jsonl, limit: 2}]
methods:
)",
                                        methods);
  ExpandOptions o;
  o.base_dir = AssetsDir();
  auto s = ExpandSweep(yaml, o);
  EXPECT_TRUE(s.ok()) << s.status();
  return *s;
}

// Waits up to `timeout` for `pred`.
template <typename Pred>
bool WaitFor(Pred pred, std::chrono::milliseconds timeout = std::chrono::seconds(20)) {
  auto until = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < until) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return pred();
}

class WorkerLoopTest : public ::testing::Test {
 protected:
  void TearDown() override {
    server_.reset();
    for (const char* s : {"", "-wal", "-shm", ".lock", ".journal"}) std::remove((db_ + s).c_str());
  }

  void StartCoordinator(const std::string& listen = "127.0.0.1:0", const std::string& token = "",
                        int lease_ttl_ms = 600) {
    CoordinatorOptions o;
    o.db_path = db_;
    o.listen = listen;
    o.tokens.all = token;
    o.scheduler.lease_ttl_ms = lease_ttl_ms;
    o.scheduler.retry_base_ms = 50;
    o.scheduler.idle_retry_ms = 20;
    auto s = CoordinatorServer::Start(o);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(*s);
  }

  WorkerOptions Options() {
    WorkerOptions o;
    o.coordinator.address = server_ ? server_->address() : "";
    o.evaluator_name = "fake";
    o.worker_id = "test-worker";
    o.rpc_timeout_ms = 2000;
    o.reconnect_max_ms = 200;
    return o;
  }

  SweepInfo Info(const std::string& name) {
    auto i = server_->store()->GetSweep(name);
    return i.ok() ? *i : SweepInfo();
  }

  std::string db_ = TempDb("db");
  std::unique_ptr<CoordinatorServer> server_;
};

TEST_F(WorkerLoopTest, RunsEveryJobOnceThenDrains) {
  StartCoordinator();
  ExpandedSweep s = Sweep("five", 5);
  ASSERT_TRUE(server_->scheduler()->Submit(s, "", "").ok());
  auto eval = NewFakeEvaluator({30});
  WorkerLoop loop(Options(), eval.get());
  absl::Status result;
  std::thread t([&] { result = loop.Run(); });
  EXPECT_TRUE(WaitFor([&] { return Info("five").count(JobState::kDone) == 5; }));
  loop.RequestDrain();
  t.join();
  EXPECT_TRUE(result.ok()) << result;
  EXPECT_EQ(loop.stats().recorded, 5);
  EXPECT_EQ(loop.stats().leased, 5);
  EXPECT_EQ(*server_->store()->CountResults(), 5);
  // Results carry the worker's provenance and the real ledger.
  auto q = server_->store()->Query(
      "SELECT json_extract(result_json, '$.provenance.worker.worker_id'), fraction_payload, "
      "json_extract(result_json, '$.provenance.evaluator') FROM results ORDER BY fraction_payload",
      10, 1000);
  ASSERT_TRUE(q.ok()) << q.status();
  ASSERT_EQ(q->rows.size(), 5u);
  EXPECT_EQ(std::get<std::string>(q->rows[0][0]), "test-worker");
  EXPECT_NEAR(std::get<double>(q->rows[0][1]), 1.0 / 16, 1e-9);  // INT1 payload of fp16
  EXPECT_EQ(std::get<std::string>(q->rows[0][2]), "fake");
}

// Jobs that outlast the lease TTL (600 ms) live on heartbeats: one heartbeat thread serves one job
// after another, so every lease is kept (first attempt, nothing abandoned or re-leased).
TEST_F(WorkerLoopTest, HeartbeatsKeepEachOfSeveralLongJobsLeased) {
  StartCoordinator();
  ASSERT_TRUE(server_->scheduler()->Submit(Sweep("three", 3), "", "").ok());
  auto eval = NewFakeEvaluator({1500});
  WorkerLoop loop(Options(), eval.get());
  std::thread t([&] { (void)loop.Run(); });
  EXPECT_TRUE(WaitFor([&] { return Info("three").count(JobState::kDone) == 3; }));
  loop.RequestDrain();
  t.join();
  EXPECT_EQ(loop.stats().recorded, 3);
  EXPECT_EQ(loop.stats().leased, 3);
  EXPECT_EQ(loop.stats().abandoned, 0);
  auto q = server_->store()->Query(
      "SELECT json_extract(result_json, '$.provenance.worker.attempt') FROM results", 10, 1000);
  ASSERT_TRUE(q.ok()) << q.status();
  ASSERT_EQ(q->rows.size(), 3u);
  for (const auto& row : q->rows) EXPECT_EQ(std::get<int64_t>(row[0]), 1);
}

// The heartbeat thread sleeps until a beat is due and is not woken per job; a job whose lease
// needs beats sooner than the previous job's schedule (here: the coordinator came back with a
// shorter lease) must still be beaten for in time.
TEST_F(WorkerLoopTest, ShorterHeartbeatIntervalOfTheNextJobIsHonoured) {
  const std::string listen = absl::StrCat("127.0.0.1:", FreePort());
  StartCoordinator(listen, "", /*lease_ttl_ms=*/30000);  // beats every 10 s
  ASSERT_TRUE(server_->scheduler()->Submit(Sweep("first", 1), "", "").ok());
  auto eval = NewFakeEvaluator({1500});
  WorkerLoop loop(Options(), eval.get());
  std::thread t([&] { (void)loop.Run(); });
  ASSERT_TRUE(WaitFor([&] { return Info("first").count(JobState::kDone) == 1; }));
  server_.reset();
  StartCoordinator(listen, "", /*lease_ttl_ms=*/600);  // beats every 200 ms, 1.5 s jobs
  ASSERT_TRUE(server_->scheduler()->Submit(Sweep("second", 2), "", "").ok());  // one new job
  EXPECT_TRUE(WaitFor([&] { return Info("second").count(JobState::kDone) == 2; }));
  loop.RequestDrain();
  t.join();
  EXPECT_EQ(loop.stats().recorded, 2);
  EXPECT_EQ(loop.stats().abandoned, 0);
  auto q = server_->store()->Query(
      "SELECT max(json_extract(result_json, '$.provenance.worker.attempt')) FROM results", 10,
      1000);
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(std::get<int64_t>(q->rows.at(0).at(0)), 1);  // no lease of the second job was lost
}

TEST_F(WorkerLoopTest, CancelledJobStopsAtTheNextHeartbeat) {
  StartCoordinator();
  ASSERT_TRUE(server_->scheduler()->Submit(Sweep("long", 1), "", "").ok());
  auto eval = NewFakeEvaluator({20000});
  WorkerOptions o = Options();
  o.journal_path = db_ + ".journal";
  WorkerLoop loop(o, eval.get());
  std::thread t([&] { (void)loop.Run(); });
  ASSERT_TRUE(WaitFor([&] { return Info("long").count(JobState::kLeased) == 1; }));
  const auto cancelled_at = std::chrono::steady_clock::now();
  ASSERT_EQ(server_->scheduler()->Cancel("long")->cancelled, 1);
  EXPECT_TRUE(WaitFor([&] { return loop.stats().abandoned == 1; }));
  EXPECT_LT(std::chrono::steady_clock::now() - cancelled_at, std::chrono::seconds(2));
  loop.RequestDrain();
  t.join();
  EXPECT_EQ(*server_->store()->CountResults(), 0);
  EXPECT_EQ(loop.stats().recorded, 0);
}

TEST_F(WorkerLoopTest, DrainHandsBackAJobThatWouldRunTooLong) {
  StartCoordinator();
  ASSERT_TRUE(server_->scheduler()->Submit(Sweep("drain", 1), "", "").ok());
  auto eval = NewFakeEvaluator({20000});
  WorkerOptions o = Options();
  o.drain_timeout_ms = 100;
  WorkerLoop loop(o, eval.get());
  absl::Status result;
  std::thread t([&] { result = loop.Run(); });
  ASSERT_TRUE(WaitFor([&] { return Info("drain").count(JobState::kLeased) == 1; }));
  loop.RequestDrain();
  t.join();
  EXPECT_TRUE(result.ok());
  EXPECT_EQ(loop.stats().handed_back, 1);
  auto jobs = server_->store()->LoadActiveJobs();
  ASSERT_EQ(jobs->size(), 1u);
  EXPECT_EQ((*jobs)[0].state, JobState::kQueued);
  EXPECT_EQ((*jobs)[0].attempts, 0);          // handing back costs no attempt
  EXPECT_EQ((*jobs)[0].next_eligible_ms, 0);  // and no backoff
}

TEST_F(WorkerLoopTest, DrainLetsAShortJobFinish) {
  StartCoordinator();
  ASSERT_TRUE(server_->scheduler()->Submit(Sweep("short", 2), "", "").ok());
  auto eval = NewFakeEvaluator({400});
  WorkerOptions o = Options();
  o.drain_timeout_ms = 10000;
  WorkerLoop loop(o, eval.get());
  std::thread t([&] { (void)loop.Run(); });
  // Wait for the worker to have the job (not just the database to show the grant: a lease
  // that arrives after the drain request is handed straight back).
  ASSERT_TRUE(WaitFor([&] { return loop.stats().leased == 1; }));
  loop.RequestDrain();
  t.join();
  EXPECT_EQ(loop.stats().recorded, 1);
  EXPECT_EQ(loop.stats().leased, 1);  // no new lease after the drain request
  EXPECT_EQ(Info("short").count(JobState::kDone), 1);
  EXPECT_EQ(Info("short").count(JobState::kQueued), 1);
}

TEST_F(WorkerLoopTest, ExitsWhenIdleOnceTheQueueDrains) {
  StartCoordinator();
  ASSERT_TRUE(server_->scheduler()->Submit(Sweep("idle", 3), "", "").ok());
  // Each job takes longer than the idle limit: time spent on a job is not idleness.
  auto eval = NewFakeEvaluator({400});
  WorkerOptions o = Options();
  o.exit_when_idle_ms = 300;
  o.journal_path = db_ + ".journal";
  WorkerLoop loop(o, eval.get());
  absl::Status result;
  std::atomic<bool> returned{false};
  std::thread t([&] {
    result = loop.Run();
    returned = true;
  });
  // Without the option the loop would wait for jobs forever (until drained).
  const bool exited = WaitFor([&] { return returned.load(); });
  if (!exited) loop.RequestDrain();
  t.join();
  ASSERT_TRUE(exited) << "the worker did not exit after 300 ms without a job";
  EXPECT_TRUE(result.ok()) << result;
  EXPECT_EQ(loop.stats().recorded, 3);
  EXPECT_EQ(Info("idle").count(JobState::kDone), 3);
  absl::StatusOr<std::string> journal = ReadFile(o.journal_path);
  ASSERT_TRUE(journal.ok()) << journal.status();
  EXPECT_THAT(*journal, HasSubstr(" idle - 0 idle for "));
  EXPECT_THAT(*journal, HasSubstr(" s, exiting\n"));
  EXPECT_THAT(*journal, HasSubstr(" drained - 0"));
}

TEST_F(WorkerLoopTest, WaitsForTheCoordinatorToComeUp) {
  const int port = FreePort();
  auto eval = NewFakeEvaluator({10});
  WorkerOptions o = Options();
  o.coordinator.address = absl::StrCat("127.0.0.1:", port);
  WorkerLoop loop(o, eval.get());
  std::thread t([&] { (void)loop.Run(); });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // worker retrying meanwhile
  StartCoordinator(absl::StrCat("127.0.0.1:", port));
  ASSERT_TRUE(server_->scheduler()->Submit(Sweep("late", 3), "", "").ok());
  EXPECT_TRUE(WaitFor([&] { return Info("late").count(JobState::kDone) == 3; }));
  loop.RequestDrain();
  t.join();
  EXPECT_EQ(loop.stats().recorded, 3);
}

// A drain request while the worker is still waiting for its first connection (nobody listens)
// ends Run at once, not after the connection wait (up to 2 s) and a lease attempt.
TEST_F(WorkerLoopTest, DrainWhileConnectingEndsAtOnce) {
  auto eval = NewFakeEvaluator({10});
  WorkerOptions o = Options();
  o.coordinator.address = absl::StrCat("127.0.0.1:", FreePort());
  o.rpc_timeout_ms = 10000;
  WorkerLoop loop(o, eval.get());
  std::atomic<bool> done{false};
  std::thread t([&] {
    EXPECT_TRUE(loop.Run().ok());
    done = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  loop.RequestDrain();
  // The old single wait took the full 2 s; a 50 ms step leaves a wide margin under 1.5 s.
  EXPECT_TRUE(WaitFor([&] { return done.load(); }, std::chrono::milliseconds(1500)));
  t.join();
  EXPECT_EQ(loop.stats().leased, 0);
}

TEST_F(WorkerLoopTest, WorkerWithoutTheTokenIsRefused) {
  StartCoordinator("127.0.0.1:0", "sekrit");
  auto eval = NewFakeEvaluator({10});
  WorkerLoop loop(Options(), eval.get());
  absl::Status s = loop.Run();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(std::string(s.message()), HasSubstr("missing bearer token"));
  WorkerOptions o = Options();
  o.coordinator.token = "wrong";
  WorkerLoop loop2(o, eval.get());
  EXPECT_THAT(std::string(loop2.Run().message()), HasSubstr("wrong bearer token"));
}

// An evaluator whose results the coordinator cannot store (the worker checks them through
// JobResult before sending, and fails the job for good), and one that fails.
class BrokenEvaluator final : public Evaluator {
 public:
  explicit BrokenEvaluator(absl::Status error) : error_(std::move(error)) {}
  absl::StatusOr<nlohmann::json> Run(const JobSpec&, const ProgressFn&) override {
    if (!error_.ok()) return error_;
    return nlohmann::json{{"metrics", "not an object"}};
  }

 private:
  absl::Status error_;
};

TEST_F(WorkerLoopTest, UnstorableResultFailsTheJobForGood) {
  StartCoordinator();
  ASSERT_TRUE(server_->scheduler()->Submit(Sweep("broken", 1), "", "").ok());
  BrokenEvaluator eval(absl::OkStatus());
  WorkerLoop loop(Options(), &eval);
  std::thread t([&] { (void)loop.Run(); });
  EXPECT_TRUE(WaitFor([&] { return Info("broken").count(JobState::kFailed) == 1; }));
  loop.RequestDrain();
  t.join();
  ASSERT_EQ(Info("broken").recent_errors.size(), 1u);
  EXPECT_THAT(Info("broken").recent_errors[0],
              HasSubstr("evaluator returned an invalid result: result: metrics is missing or "
                        "not a non-empty object"));
}

TEST_F(WorkerLoopTest, EvaluatorErrorsAreRetriedOrFailedByKind) {
  StartCoordinator();
  ASSERT_TRUE(server_->scheduler()->Submit(Sweep("errs", 1), "", "").ok());
  BrokenEvaluator bad_input(absl::InvalidArgumentError("model has no lm_head"));
  WorkerLoop loop(Options(), &bad_input);
  std::thread t([&] { (void)loop.Run(); });
  EXPECT_TRUE(WaitFor([&] { return Info("errs").count(JobState::kFailed) == 1; }));
  loop.RequestDrain();
  t.join();
  EXPECT_EQ(loop.stats().leased, 1);  // permanent: not retried
  EXPECT_THAT(Info("errs").recent_errors.at(0), HasSubstr("model has no lm_head"));
  // A retryable error (out of memory) is retried up to max_attempts (3), with backoff.
  ASSERT_EQ(*server_->scheduler()->Retry("errs", true, false), 1);
  BrokenEvaluator oom(absl::ResourceExhaustedError("CUDA out of memory"));
  WorkerLoop loop2(Options(), &oom);
  std::thread t2([&] { (void)loop2.Run(); });
  EXPECT_TRUE(WaitFor(
      [&] { return Info("errs").count(JobState::kFailed) == 1 && loop2.stats().leased == 3; }));
  loop2.RequestDrain();
  t2.join();
  EXPECT_THAT(Info("errs").recent_errors.at(0),
              HasSubstr("gave up after 3 attempts. Last: RESOURCE_EXHAUSTED: CUDA out of memory"));
}

TEST(WorkerFaultTest, ParsesTestFaults) {
  WorkerFaults f;
  ASSERT_TRUE(ParseFault("crash-on-job-substring:quant:bits=3", &f).ok());
  EXPECT_EQ(f.crash_on_substring, "quant:bits=3");
  ASSERT_TRUE(ParseFault("pause-before-complete:1500", &f).ok());
  EXPECT_EQ(f.pause_before_complete_ms, 1500);
  ASSERT_TRUE(ParseFault("delay-job:20", &f).ok());
  EXPECT_EQ(f.delay_job_ms, 20);
  ASSERT_TRUE(ParseFault("hang", &f).ok());
  EXPECT_TRUE(f.hang);
  EXPECT_THAT(std::string(ParseFault("explode", &f).message()),
              HasSubstr("unknown fault 'explode'"));
  EXPECT_THAT(std::string(ParseFault("delay-job:soon", &f).message()),
              HasSubstr("bad milliseconds"));
  EXPECT_EQ(ParseFault("crash-on-job-substring:", &f).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvsweep

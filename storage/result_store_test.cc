// The ResultStore conformance suite (run on the SQLite store and on the fake), then tests that
// only the SQLite store can pass (persistence, migrations, read-only SQL, error mapping).
#include "storage/result_store.h"

#include <sqlite3.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace kvsweep {
namespace {

using ::testing::HasSubstr;

std::vector<std::string>& Created() {
  static std::vector<std::string> paths;
  return paths;
}

// Removes every database the tests made when the program ends.
class CleanupEnvironment : public ::testing::Environment {
 public:
  void TearDown() override {
    for (const std::string& p : Created()) {
      for (const char* suffix : {"", "-wal", "-shm"}) std::remove((p + suffix).c_str());
    }
  }
};
const auto* const kCleanup = ::testing::AddGlobalTestEnvironment(new CleanupEnvironment);

std::string TempPath(const std::string& stem) {
  static std::atomic<int> n{0};
  std::string p =
      absl::StrCat(::testing::TempDir(), "/kvsweep_store_", getpid(), "_", n++, "_", stem, ".db");
  for (const char* suffix : {"", "-wal", "-shm"}) std::remove((p + suffix).c_str());
  Created().push_back(p);
  return p;
}

std::string SpecJson(const std::string& model, const std::string& method) {
  return nlohmann::json{{"model_name", model},
                        {"task", {{"name", "lambada_openai"}}},
                        {"method", method},
                        {"kv_heads", 2}}
      .dump();
}

NewJob Job(const std::string& id, const std::string& method = "none") {
  NewJob j;
  j.job_id = id;
  j.spec_json = SpecJson("ref-llama", method);
  j.model_key = "model-a";
  j.priority = 0;
  j.max_attempts = 3;
  j.labels_json = nlohmann::json{{"model", "ref-llama"}, {"method", method}}.dump();
  return j;
}

std::string ResultJson(double ppl) {
  return nlohmann::json{
      {"metrics", {{"lambada_openai", {{"acc", 0.25}, {"ppl", ppl}, {"n", 4}}}}},
      {"ledger", {{"fraction_payload", 0.25}, {"fraction_total", 0.26}, {"kv_heads", 2}}},
      {"timing", {{"wall_s", 1.5}}}}
      .dump();
}

using Factory = std::function<std::unique_ptr<ResultStore>()>;

struct Backend {
  std::string name;
  Factory make;
};
void PrintTo(const Backend& b, std::ostream* os) { *os << b.name; }

class ResultStoreConformance : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override { store_ = GetParam().make(); }

  // Applies one mutation, returning its status.
  template <typename Op>
  absl::Status One(Op& op) {
    std::vector<Mutation> batch;
    batch.emplace_back(op);
    absl::Status s = store_->Apply(batch);
    EXPECT_TRUE(s.ok()) << s;
    op = std::get<Op>(batch[0].op);
    return batch[0].status;
  }

  SubmitSweep Submit(const std::string& name, std::vector<NewJob> jobs) {
    SubmitSweep op;
    op.name = name;
    op.spec_yaml = "name: " + name;
    op.now_ms = 1000;
    op.jobs = std::move(jobs);
    absl::Status s = One(op);
    EXPECT_TRUE(s.ok()) << s;
    return op;
  }

  GrantLease Grant(const std::string& id, int64_t expected_fence, const std::string& worker) {
    GrantLease g;
    g.job_id = id;
    g.expected_fence = expected_fence;
    g.lease_id = "lease-" + id + "-" + std::to_string(expected_fence);
    g.worker_id = worker;
    g.deadline_ms = 5000;
    g.now_ms = 2000;
    return g;
  }

  RecordResult Record(const std::string& id, int64_t fence, const std::string& worker = "w1") {
    RecordResult r;
    r.job_id = id;
    r.fence = fence;
    r.worker_id = worker;
    r.result_json = ResultJson(10.0);
    r.now_ms = 3000;
    return r;
  }

  ActiveJob Active(const std::string& id) {
    auto jobs = store_->LoadActiveJobs();
    EXPECT_TRUE(jobs.ok());
    for (const ActiveJob& j : *jobs) {
      if (j.job_id == id) return j;
    }
    ADD_FAILURE() << "job " << id << " is not active";
    return ActiveJob();
  }

  std::unique_ptr<ResultStore> store_;
};

TEST_P(ResultStoreConformance, SubmitQueuesNewJobsInOrder) {
  SubmitSweep s = Submit("s1", {Job("a"), Job("b"), Job("c")});
  EXPECT_EQ(s.enqueued, 3);
  EXPECT_EQ(s.queued_job_ids, (std::vector<std::string>{"a", "b", "c"}));
  auto active = store_->LoadActiveJobs();
  ASSERT_TRUE(active.ok());
  ASSERT_EQ(active->size(), 3u);
  EXPECT_EQ((*active)[0].job_id, "a");
  EXPECT_EQ((*active)[2].job_id, "c");
  EXPECT_EQ((*active)[0].state, JobState::kQueued);
  EXPECT_EQ((*active)[0].fence, 0);
  EXPECT_EQ((*active)[0].max_attempts, 3);
  auto info = store_->GetSweep("s1");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->total, 3);
  EXPECT_EQ(info->count(JobState::kQueued), 3);
  EXPECT_EQ(*store_->CountJobs(), 3);
  auto some = store_->LoadJobs({"c", "zzz", "a"});
  ASSERT_TRUE(some.ok());
  ASSERT_EQ(some->size(), 2u);
  EXPECT_EQ((*some)[0].job_id, "a");
  EXPECT_EQ((*some)[1].job_id, "c");
}

TEST_P(ResultStoreConformance, ResubmitEnqueuesNothingAndOtherSweepsReuseDoneJobs) {
  Submit("s1", {Job("a"), Job("b")});
  GrantLease g = Grant("a", 0, "w1");
  ASSERT_TRUE(One(g).ok());
  RecordResult r = Record("a", 1);
  ASSERT_TRUE(One(r).ok());
  SubmitSweep again = Submit("s1", {Job("a"), Job("b")});
  EXPECT_EQ(again.enqueued, 0);
  EXPECT_EQ(again.done, 1);
  EXPECT_EQ(again.pending, 1);
  EXPECT_TRUE(again.queued_job_ids.empty());
  SubmitSweep other = Submit("s2", {Job("a"), Job("c")});
  EXPECT_EQ(other.enqueued, 1);
  EXPECT_EQ(other.done, 1);
  EXPECT_EQ(other.queued_job_ids, std::vector<std::string>{"c"});
  EXPECT_EQ(store_->GetSweep("s2")->count(JobState::kDone), 1);
  EXPECT_EQ(*store_->CountJobs(), 3);
}

TEST_P(ResultStoreConformance, GrantLeaseChecksStateAndFence) {
  Submit("s1", {Job("a")});
  GrantLease g = Grant("a", 0, "w1");
  ASSERT_TRUE(One(g).ok());
  EXPECT_EQ(g.attempt, 1);
  ActiveJob a = Active("a");
  EXPECT_EQ(a.state, JobState::kLeased);
  EXPECT_EQ(a.fence, 1);
  EXPECT_EQ(a.lease_worker, "w1");
  EXPECT_EQ(a.lease_deadline_ms, 5000);
  GrantLease again = Grant("a", 0, "w2");
  absl::Status s = One(again);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), HasSubstr("the job is leased with fence 1"));
  GrantLease unknown = Grant("zzz", 0, "w1");
  EXPECT_EQ(One(unknown).code(), absl::StatusCode::kNotFound);
}

TEST_P(ResultStoreConformance, ResultIsRecordedOnceAndRepeatsAreDuplicates) {
  Submit("s1", {Job("a")});
  GrantLease g = Grant("a", 0, "w1");
  ASSERT_TRUE(One(g).ok());
  RecordResult r = Record("a", 1);
  ASSERT_TRUE(One(r).ok());
  EXPECT_FALSE(r.duplicate);
  RecordResult again = Record("a", 1);
  ASSERT_TRUE(One(again).ok());
  EXPECT_TRUE(again.duplicate);
  RecordResult stale = Record("a", 0);
  absl::Status s = One(stale);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.message()), HasSubstr("stale fencing token 0"));
  EXPECT_EQ(*store_->CountResults(), 1);
  EXPECT_EQ(**store_->ResultFence("a"), 1);
  EXPECT_FALSE(store_->ResultFence("b")->has_value());
  EXPECT_EQ(store_->GetSweep("s1")->count(JobState::kDone), 1);
  EXPECT_TRUE(store_->LoadActiveJobs()->empty());
  EXPECT_TRUE(store_->IntegrityCheck().ok());
}

TEST_P(ResultStoreConformance, ExpiredLeaseMakesTheOldTokenStale) {
  Submit("s1", {Job("a")});
  GrantLease g = Grant("a", 0, "w1");
  ASSERT_TRUE(One(g).ok());
  EndLease lost;
  lost.job_id = "a";
  lost.fence = 1;
  lost.outcome = AttemptOutcome::kLost;
  lost.error = "lease expired on w1";
  lost.new_state = JobState::kQueued;
  lost.next_eligible_ms = 4000;
  lost.crash_workers = std::vector<std::string>{"w1"};
  ASSERT_TRUE(One(lost).ok());
  ActiveJob a = Active("a");
  EXPECT_EQ(a.state, JobState::kQueued);
  EXPECT_EQ(a.fence, 2);
  EXPECT_EQ(a.next_eligible_ms, 4000);
  EXPECT_EQ(a.crash_workers, std::vector<std::string>{"w1"});
  EXPECT_EQ(a.attempts, 1);
  // The worker that lost its lease comes back with its result: rejected.
  RecordResult late = Record("a", 1, "w1");
  EXPECT_EQ(One(late).code(), absl::StatusCode::kFailedPrecondition);
  GrantLease g2 = Grant("a", 2, "w2");
  ASSERT_TRUE(One(g2).ok());
  EXPECT_EQ(g2.attempt, 2);
  RecordResult late2 = Record("a", 1, "w1");
  EXPECT_EQ(One(late2).code(), absl::StatusCode::kFailedPrecondition);
  RecordResult good = Record("a", 3, "w2");
  ASSERT_TRUE(One(good).ok());
  EXPECT_EQ(*store_->CountResults(), 1);
  // Ending a lease that is no longer held is refused too.
  EndLease again = lost;
  EXPECT_EQ(One(again).code(), absl::StatusCode::kFailedPrecondition);
}

TEST_P(ResultStoreConformance, HandedBackLeaseRefundsTheAttempt) {
  Submit("s1", {Job("a")});
  GrantLease g = Grant("a", 0, "w1");
  ASSERT_TRUE(One(g).ok());
  EndLease back;
  back.job_id = "a";
  back.fence = 1;
  back.outcome = AttemptOutcome::kHandedBack;
  back.new_state = JobState::kQueued;
  back.refund_attempt = true;
  ASSERT_TRUE(One(back).ok());
  EXPECT_EQ(Active("a").attempts, 0);
  EXPECT_EQ(Active("a").fence, 2);
}

TEST_P(ResultStoreConformance, BatchMutationsSucceedOrFailOnTheirOwn) {
  Submit("s1", {Job("a"), Job("b")});
  GrantLease ga = Grant("a", 0, "w1");
  ASSERT_TRUE(One(ga).ok());
  std::vector<Mutation> batch;
  batch.emplace_back(Record("a", 1));
  batch.emplace_back(Record("a", 7));  // stale: rolled back alone
  batch.emplace_back(Grant("b", 0, "w2"));
  batch.emplace_back(Record("b", 1, "w2"));  // sees the grant made earlier in the batch
  ASSERT_TRUE(store_->Apply(batch).ok());
  EXPECT_TRUE(batch[0].status.ok()) << batch[0].status;
  EXPECT_EQ(batch[1].status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(batch[2].status.ok()) << batch[2].status;
  EXPECT_TRUE(batch[3].status.ok()) << batch[3].status;
  EXPECT_EQ(*store_->CountResults(), 2);
  EXPECT_TRUE(store_->IntegrityCheck().ok());
}

TEST_P(ResultStoreConformance, MalformedResultsAreRejected) {
  Submit("s1", {Job("a")});
  GrantLease g = Grant("a", 0, "w1");
  ASSERT_TRUE(One(g).ok());
  for (auto [json, fragment] : std::vector<std::pair<std::string, std::string>>{
           {"not json", "invalid JSON"},
           {"[1,2]", "is not a JSON object"},
           {"{}", "metrics is missing"},
           {R"({"metrics": {"lambada_openai": {"ppl": "high"}}})",
            "metrics.lambada_openai.ppl is not a number"},
           {R"({"metrics": {"lambada_openai": {"n": 1.5}}})",
            "metrics.lambada_openai.n is not an integer"},
           {R"({"metrics": {"t": {"ppl": 1e999}}})", "a number is out of range"},
       }) {
    RecordResult r = Record("a", 1);
    r.result_json = json;
    absl::Status s = One(r);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << json;
    EXPECT_THAT(std::string(s.message()), HasSubstr(fragment)) << json;
  }
  EXPECT_EQ(*store_->CountResults(), 0);
  EXPECT_EQ(Active("a").state, JobState::kLeased);
}

TEST_P(ResultStoreConformance, CancelEndsQueuedAndLeasedJobsAndResubmitRequeues) {
  Submit("s1", {Job("a"), Job("b"), Job("c")});
  Submit("s2", {Job("c")});
  GrantLease g = Grant("b", 0, "w1");
  ASSERT_TRUE(One(g).ok());
  auto refs = store_->SweepJobs("s1", {JobState::kQueued, JobState::kLeased});
  ASSERT_TRUE(refs.ok());
  ASSERT_EQ(refs->size(), 3u);
  EXPECT_FALSE((*refs)[0].shared_with_live_sweep);
  EXPECT_TRUE((*refs)[2].shared_with_live_sweep);  // c is also in s2
  CancelJobs c;
  c.sweep = "s1";
  c.jobs = {{"a", JobState::kQueued, 0},
            {"b", JobState::kLeased, 1},
            {"c", JobState::kLeased, 0} /* wrong expectation: skipped */};
  ASSERT_TRUE(One(c).ok());
  EXPECT_EQ(c.cancelled, 2);
  auto info = store_->GetSweep("s1");
  EXPECT_TRUE(info->cancelled);
  EXPECT_EQ(info->count(JobState::kCancelled), 2);
  EXPECT_EQ(info->count(JobState::kQueued), 1);
  // b's holder can no longer report.
  RecordResult late = Record("b", 1);
  EXPECT_EQ(One(late).code(), absl::StatusCode::kFailedPrecondition);
  SubmitSweep again = Submit("s1", {Job("a"), Job("b"), Job("c")});
  EXPECT_EQ(again.requeued, 2);
  EXPECT_EQ(again.pending, 1);
  EXPECT_FALSE(store_->GetSweep("s1")->cancelled);
  EXPECT_EQ(Active("b").fence, 2);
  CancelJobs unknown;
  unknown.sweep = "nope";
  EXPECT_EQ(One(unknown).code(), absl::StatusCode::kNotFound);
}

TEST_P(ResultStoreConformance, RequeueRevivesFailedJobsWithFreshAttempts) {
  Submit("s1", {Job("a"), Job("b")});
  GrantLease g = Grant("a", 0, "w1");
  ASSERT_TRUE(One(g).ok());
  EndLease fail;
  fail.job_id = "a";
  fail.fence = 1;
  fail.outcome = AttemptOutcome::kFailed;
  fail.error = "bad input";
  fail.new_state = JobState::kFailed;
  ASSERT_TRUE(One(fail).ok());
  auto info = store_->GetSweep("s1");
  ASSERT_EQ(info->recent_errors.size(), 1u);
  EXPECT_THAT(info->recent_errors[0], HasSubstr("bad input"));
  RequeueJobs rq;
  rq.job_ids = {"a", "b"};
  rq.from = {JobState::kFailed};
  ASSERT_TRUE(One(rq).ok());
  EXPECT_EQ(rq.requeued, std::vector<std::string>{"a"});
  ActiveJob a = Active("a");
  EXPECT_EQ(a.state, JobState::kQueued);
  EXPECT_EQ(a.attempts, 0);
  EXPECT_EQ(a.fence, 2);
}

TEST_P(ResultStoreConformance, ExportListsLabelsStatesAndResults) {
  Submit("s1", {Job("a", "none"), Job("b", "quant:bits=4")});
  GrantLease g = Grant("a", 0, "w1");
  ASSERT_TRUE(One(g).ok());
  RecordResult r = Record("a", 1);
  ASSERT_TRUE(One(r).ok());
  std::vector<ExportRow> rows;
  ASSERT_TRUE(store_
                  ->Export("s1", true,
                           [&](const ExportRow& row) {
                             rows.push_back(row);
                             return true;
                           })
                  .ok());
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].job_id, "a");
  EXPECT_EQ(rows[0].state, JobState::kDone);
  EXPECT_EQ(nlohmann::json::parse(rows[0].result_json)["metrics"]["lambada_openai"]["ppl"], 10.0);
  EXPECT_EQ(nlohmann::json::parse(rows[1].labels_json)["method"], "quant:bits=4");
  EXPECT_TRUE(rows[1].result_json.empty());
  EXPECT_FALSE(rows[1].spec_json.empty());
  EXPECT_EQ(store_->Export("nope", false, [](const ExportRow&) { return true; }).code(),
            absl::StatusCode::kNotFound);
  auto all = store_->ListSweeps();
  ASSERT_EQ(all->size(), 1u);
  EXPECT_EQ((*all)[0].name, "s1");
}

TEST_P(ResultStoreConformance, SubmitRejectsSpecsWithoutIdentityColumns) {
  NewJob bad = Job("a");
  bad.spec_json = R"({"model_name": "m"})";
  SubmitSweep op;
  op.name = "s1";
  op.jobs = {bad};
  absl::Status s = One(op);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->GetSweep("s1").status().code(), absl::StatusCode::kNotFound);  // rolled back
}

TEST_P(ResultStoreConformance, TouchWorkerIsIdempotent) {
  TouchWorker t;
  t.worker = {"w1", "host", "cpu", "fake", 42};
  t.now_ms = 1;
  ASSERT_TRUE(One(t).ok());
  t.now_ms = 2;
  ASSERT_TRUE(One(t).ok());
}

INSTANTIATE_TEST_SUITE_P(Backends, ResultStoreConformance,
                         ::testing::Values(Backend{"sqlite",
                                                   [] {
                                                     auto s = NewSqliteResultStore(TempPath("conf"),
                                                                                   SqliteOptions());
                                                     EXPECT_TRUE(s.ok()) << s.status();
                                                     return std::move(s).value();
                                                   }},
                                           Backend{"fake", [] { return NewFakeResultStore(); }}),
                         [](const ::testing::TestParamInfo<Backend>& i) { return i.param.name; });

// ---- SQLite only ------------------------------------------------------------------------------

std::unique_ptr<ResultStore> OpenOrDie(const std::string& path, SqliteOptions o = {}) {
  auto s = NewSqliteResultStore(path, o);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? std::move(s).value() : nullptr;
}

void ApplyOk(ResultStore* store, Mutation::Op op) {
  std::vector<Mutation> b;
  b.emplace_back(std::move(op));
  ASSERT_TRUE(store->Apply(b).ok());
  ASSERT_TRUE(b[0].status.ok()) << b[0].status;
}

TEST(SqliteResultStoreTest, ResultsSurviveReopen) {
  const std::string path = TempPath("reopen");
  {
    auto store = OpenOrDie(path);
    SubmitSweep s;
    s.name = "s1";
    s.jobs = {Job("a")};
    ApplyOk(store.get(), s);
    GrantLease g;
    g.job_id = "a";
    g.lease_id = "l";
    g.worker_id = "w";
    ApplyOk(store.get(), g);
    RecordResult r;
    r.job_id = "a";
    r.fence = 1;
    r.worker_id = "w";
    r.result_json = ResultJson(12.5);
    ApplyOk(store.get(), r);
  }
  auto store = OpenOrDie(path);
  EXPECT_EQ(*store->CountResults(), 1);
  auto q =
      store->Query("SELECT ppl, acc, n, fraction_payload, kv_heads, wall_s FROM results", 10, 1000);
  ASSERT_TRUE(q.ok()) << q.status();
  ASSERT_EQ(q->rows.size(), 1u);
  EXPECT_EQ(std::get<double>(q->rows[0][0]), 12.5);
  EXPECT_EQ(std::get<double>(q->rows[0][1]), 0.25);
  EXPECT_EQ(std::get<int64_t>(q->rows[0][2]), 4);
  EXPECT_EQ(std::get<double>(q->rows[0][3]), 0.25);
  EXPECT_EQ(std::get<int64_t>(q->rows[0][4]), 2);
  EXPECT_EQ(std::get<double>(q->rows[0][5]), 1.5);
  EXPECT_TRUE(store->IntegrityCheck().ok());
  // The sweep_results view (schema v2) joins labels.
  auto v =
      store->Query("SELECT sweep, model_label, method_label, ppl FROM sweep_results", 10, 1000);
  ASSERT_TRUE(v.ok()) << v.status();
  ASSERT_EQ(v->rows.size(), 1u);
  EXPECT_EQ(std::get<std::string>(v->rows[0][0]), "s1");
  EXPECT_EQ(std::get<std::string>(v->rows[0][1]), "ref-llama");
}

TEST(SqliteResultStoreTest, UsesWalAndFullSync) {
  const std::string path = TempPath("pragmas");
  auto store = OpenOrDie(path);
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, nullptr), SQLITE_OK);
  ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
  EXPECT_STREQ(reinterpret_cast<const char*>(sqlite3_column_text(st, 0)), "wal");
  sqlite3_finalize(st);
  ASSERT_EQ(sqlite3_prepare_v2(db, "SELECT version FROM schema_version", -1, &st, nullptr),
            SQLITE_OK);
  ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
  EXPECT_EQ(sqlite3_column_int(st, 0), LatestSchemaVersion());
  sqlite3_finalize(st);
  sqlite3_close(db);
}

int64_t FileSize(const std::string& path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  return f ? static_cast<int64_t>(f.tellg()) : -1;
}

// 300 jobs with 2 KiB specs: ~1 MiB of pages, all of it first written to the WAL.
SubmitSweep BigSweep() {
  SubmitSweep s;
  s.name = "big";
  for (int i = 0; i < 300; ++i) {
    NewJob j = Job(absl::StrCat("job-", i));
    j.spec_json = SpecJson("ref-llama", "none:" + std::string(2048, 'x'));
    s.jobs.push_back(j);
  }
  return s;
}

// The background checkpointer copies committed pages into the database file while the store is
// open (it once ran on a connection that had never read the database, so SQLite took it for a
// non-WAL database and every checkpoint did nothing until the store closed).
TEST(SqliteResultStoreTest, WalIsCheckpointedWhileTheStoreIsOpen) {
  SqliteOptions by_timer;
  by_timer.checkpoint_ms = 20;
  by_timer.checkpoint_frames = 1 << 30;
  SqliteOptions by_length;  // woken by the commit that makes the WAL long; the timer is far off
  by_length.checkpoint_ms = 600000;
  by_length.checkpoint_frames = 16;
  for (const SqliteOptions& o : {by_timer, by_length}) {
    const std::string path = TempPath("checkpoint");
    auto store = OpenOrDie(path, o);
    ASSERT_NE(store, nullptr);
    const int64_t before = FileSize(path);
    ApplyOk(store.get(), BigSweep());
    for (int i = 0; i < 500 && FileSize(path) < before + 512 * 1024; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_GE(FileSize(path), before + 512 * 1024)
        << "checkpoint_ms " << o.checkpoint_ms << ": the database file did not grow, nothing "
        << "was checkpointed (WAL " << FileSize(path + "-wal") << " bytes)";
  }
}

// The WAL header's checkpoint sequence number: SQLite adds one each time the WAL starts over.
int64_t WalGeneration(const std::string& wal_path) {
  std::ifstream f(wal_path, std::ios::binary);
  unsigned char h[16] = {0};
  if (!f.read(reinterpret_cast<char*>(h), sizeof(h))) return -1;
  return (int64_t{h[12]} << 24) | (h[13] << 16) | (h[14] << 8) | h[15];
}

// Leases and results written back to back, as under load: a background checkpoint alone never
// lets the WAL start over (the writer is always ahead of it), so it would grow with every
// transaction; the writer finishing the checkpoint makes it start over again and again.
TEST(SqliteResultStoreTest, WalStartsOverUnderWritesWithoutPause) {
  const std::string path = TempPath("walbound");
  SqliteOptions o;
  o.checkpoint_frames = 16;
  o.wal_restart_frames = 64;
  auto store = OpenOrDie(path, o);
  ASSERT_NE(store, nullptr);
  constexpr int kJobs = 3000;
  SubmitSweep sweep;
  sweep.name = "many";
  for (int i = 0; i < kJobs; ++i) sweep.jobs.push_back(Job(absl::StrCat("job-", i)));
  ApplyOk(store.get(), sweep);
  const int64_t first = WalGeneration(path + "-wal");
  int64_t wal_max = 0;
  int txns = 0;
  // Until the WAL has started over three times (a few dozen transactions when it works; all
  // 3,000, ~25 MiB of WAL, when it does not).
  for (; txns < kJobs && WalGeneration(path + "-wal") < first + 3; ++txns) {
    const std::string id = absl::StrCat("job-", txns);
    std::vector<Mutation> b;
    GrantLease g;
    g.job_id = id;
    g.lease_id = "l";
    g.worker_id = "w";
    b.emplace_back(g);
    RecordResult r;
    r.job_id = id;
    r.fence = 1;
    r.worker_id = "w";
    r.result_json = ResultJson(10.0 + txns);
    b.emplace_back(r);
    ASSERT_TRUE(store->Apply(b).ok());
    ASSERT_TRUE(b[0].status.ok() && b[1].status.ok()) << b[0].status << " " << b[1].status;
    wal_max = std::max(wal_max, FileSize(path + "-wal"));
  }
  EXPECT_GE(WalGeneration(path + "-wal"), first + 3)
      << "after " << txns << " transactions the WAL never started over (" << wal_max << " bytes)";
  EXPECT_EQ(*store->CountResults(), txns);
  EXPECT_TRUE(store->IntegrityCheck().ok());
}

TEST(SqliteResultStoreTest, MigratesAnOlderSchemaKeepingData) {
  const std::string path = TempPath("migrate");
  {
    SqliteOptions o;
    o.max_schema_version = 1;
    auto store = OpenOrDie(path, o);
    SubmitSweep s;
    s.name = "old";
    s.jobs = {Job("a")};
    ApplyOk(store.get(), s);
    EXPECT_EQ(store->Query("SELECT * FROM sweep_results", 1, 1000).status().code(),
              absl::StatusCode::kInvalidArgument);  // no view yet at v1
  }
  auto store = OpenOrDie(path);
  EXPECT_EQ(store->GetSweep("old")->total, 1);
  EXPECT_TRUE(store->Query("SELECT * FROM sweep_results", 1, 1000).ok());
}

TEST(SqliteResultStoreTest, RefusesNewerSchemasAndForeignFiles) {
  const std::string path = TempPath("newer");
  { OpenOrDie(path); }
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "UPDATE schema_version SET version = 99", nullptr, nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(db);
  auto s = NewSqliteResultStore(path, SqliteOptions());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("schema version 99"));

  const std::string foreign = TempPath("foreign");
  ASSERT_EQ(sqlite3_open(foreign.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "CREATE TABLE t(x)", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(db);
  s = NewSqliteResultStore(foreign, SqliteOptions());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("not a kvsweep one"));

  const std::string garbage = TempPath("garbage");
  {
    std::ofstream f(garbage);
    f << std::string(4096, 'x');
  }
  s = NewSqliteResultStore(garbage, SqliteOptions());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kDataLoss) << s.status();

  s = NewSqliteResultStore("/nonexistent-dir/x.db", SqliteOptions());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kNotFound) << s.status();
}

TEST(SqliteResultStoreTest, QueryIsReadOnly) {
  auto store = OpenOrDie(TempPath("query"));
  auto ok = store->Query("SELECT count(*) AS n FROM jobs;", 10, 1000);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->columns, std::vector<std::string>{"n"});
  struct Bad {
    std::string sql, fragment;
  };
  for (const Bad& b : std::vector<Bad>{
           {"DELETE FROM jobs", "only read-only SQL"},
           {"INSERT INTO sweeps(name, spec_yaml, created_ms, updated_ms) VALUES('x','',0,0)",
            "only read-only SQL"},
           {"DROP TABLE results", "only read-only SQL"},
           {"SELECT 1; DELETE FROM jobs", "only one SQL statement"},
           {"ATTACH DATABASE '/tmp/x.db' AS x", "not authorized"},
           {"PRAGMA journal_mode=DELETE", "not authorized"},
           {"BEGIN", "not authorized"},
           {"SELEC 1", "syntax error"},
           // Functions that reach outside the data or make large values out of nothing.
           {"SELECT fts3_tokenizer('simple')", "not authorized: function fts3_tokenizer()"},
           {"SELECT length(randomblob(900000000))", "not authorized: function randomblob()"},
           {"SELECT zeroblob(1000000000)", "not authorized: function zeroblob()"},
           {"SELECT load_extension('/tmp/x.so')", "not authorized: function load_extension()"},
           {"WITH RECURSIVE c(s) AS (SELECT 'x' UNION ALL SELECT s || s FROM c "
            "WHERE length(s) < 100000000) SELECT max(length(s)) FROM c",
            "too big"},
           {"", "no SQL statement"},
       }) {
    auto r = store->Query(b.sql, 10, 1000);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << b.sql;
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(b.fragment)) << b.sql;
  }
  EXPECT_TRUE(store->Query("PRAGMA table_info(results)", 100, 1000).ok());
  // What users do query still works: aggregates, JSON, window functions, the view.
  auto usual = store->Query(
      "SELECT count(*), avg(ppl), max(json_extract(result_json, '$.timing.wall_s')), "
      "row_number() OVER (ORDER BY 1), round(1.2345, 2), printf('%5.2f', 1.0) "
      "FROM sweep_results GROUP BY model",
      10, 1000);
  EXPECT_TRUE(usual.ok()) << usual.status();
  auto many = store->Query(
      "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 50) "
      "SELECT x FROM c",
      10, 1000);
  ASSERT_TRUE(many.ok());
  EXPECT_EQ(many->rows.size(), 10u);
  EXPECT_TRUE(many->truncated);
  auto forever = store->Query(
      "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
      "SELECT count(*) FROM c",
      10, 200);
  EXPECT_EQ(forever.status().code(), absl::StatusCode::kDeadlineExceeded) << forever.status();
}

// A database of one sweep with 400 jobs: pages enough to damage some in the middle.
void WriteSweepOf400Jobs(const std::string& path) {
  auto store = OpenOrDie(path);
  std::vector<Mutation> batch;
  SubmitSweep sub;
  sub.name = "s";
  for (int i = 0; i < 400; ++i) sub.jobs.push_back(Job(absl::StrCat("job-", i)));
  batch.emplace_back(std::move(sub));
  ASSERT_TRUE(store->Apply(batch).ok());
}

TEST(SqliteResultStoreTest, DamagedDatabaseIsRefusedAtOpen) {
  const std::string path = TempPath("damaged");
  ASSERT_NO_FATAL_FAILURE(WriteSweepOf400Jobs(path));
  {
    // Overwrite four b-tree pages in the middle of the file with garbage.
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(0, std::ios::end);
    const std::streamoff size = f.tellp();
    ASSERT_GT(size, 5 * 4096);
    f.seekp(3 * 4096);
    const std::string junk(4 * 4096, '\x5a');
    f.write(junk.data(), static_cast<std::streamsize>(junk.size()));
  }
  auto s = NewSqliteResultStore(path, SqliteOptions());
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kDataLoss) << s.status();
  EXPECT_THAT(std::string(s.status().message()), HasSubstr("is damaged"));
  EXPECT_EQ(std::string(s.status().message()).find('\n'), std::string::npos) << s.status();
}

// A few hundred bytes of garbage inside one b-tree page: reads can come back short without an
// error, so every open, read-only ones (`kvsweep export --db`) included, runs quick_check and
// says what it found in one line.
TEST(SqliteResultStoreTest, DamagedPageIsRefusedInOneLine) {
  const std::string path = TempPath("damaged_page");
  ASSERT_NO_FATAL_FAILURE(WriteSweepOf400Jobs(path));
  {
    // Past the page header of page 11 (offset 10 * 4096): its cell pointers.
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(0, std::ios::end);
    ASSERT_GT(f.tellp(), 12 * 4096);
    f.seekp(10 * 4096 + 8);
    const std::string junk(392, '\xab');
    f.write(junk.data(), static_cast<std::streamsize>(junk.size()));
  }
  for (bool read_only : {true, false}) {
    SqliteOptions o;
    o.read_only = read_only;
    auto s = NewSqliteResultStore(path, o);
    ASSERT_FALSE(s.ok()) << "read_only=" << read_only;
    EXPECT_EQ(s.status().code(), absl::StatusCode::kDataLoss) << s.status();
    const std::string msg(s.status().message());
    EXPECT_THAT(msg, HasSubstr(absl::StrCat("database '", path, "' is damaged: ")));
    EXPECT_THAT(msg, HasSubstr("page 11"));
    EXPECT_THAT(msg, ::testing::ContainsRegex(R"(\(and [0-9]+ more\); restore it)"));
    EXPECT_THAT(msg, ::testing::Not(HasSubstr("***"))) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
}

TEST(SqliteResultStoreTest, BusyDatabaseIsAborted) {
  const std::string path = TempPath("busy");
  SqliteOptions o;
  o.busy_timeout_ms = 50;
  auto store = OpenOrDie(path, o);
  sqlite3* other = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &other), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(other, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr), SQLITE_OK);
  SubmitSweep s;
  s.name = "s1";
  s.jobs = {Job("a")};
  std::vector<Mutation> b;
  b.emplace_back(s);
  absl::Status st = store->Apply(b);
  EXPECT_EQ(st.code(), absl::StatusCode::kAborted) << st;
  EXPECT_EQ(b[0].status.code(), absl::StatusCode::kAborted);
  sqlite3_exec(other, "ROLLBACK", nullptr, nullptr, nullptr);
  sqlite3_close(other);
  ASSERT_TRUE(store->Apply(b).ok());
  EXPECT_TRUE(b[0].status.ok());
}

TEST(SqliteResultStoreTest, ReadOnlyOpenRefusesWrites) {
  const std::string path = TempPath("ro");
  { OpenOrDie(path); }
  SqliteOptions o;
  o.read_only = true;
  auto store = OpenOrDie(path, o);
  std::vector<Mutation> b;
  b.emplace_back(TouchWorker{});
  EXPECT_EQ(store->Apply(b).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(store->Query("SELECT 1", 1, 1000).ok());
}

}  // namespace
}  // namespace kvsweep

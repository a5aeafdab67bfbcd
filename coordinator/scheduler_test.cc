// Scheduler unit tests on the in-memory fake store and a fake clock (the reaper thread is off;
// tests expire leases explicitly). Integration tests in tests/ do the same over SQLite, gRPC and
// real processes.
#include "coordinator/scheduler.h"

#include <atomic>
#include <cmath>
#include <future>
#include <limits>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvsweep {
namespace {

using ::testing::HasSubstr;

class FakeClock final : public Clock {
 public:
  int64_t NowMs() override { return now_.load(); }
  void Advance(int64_t ms) { now_ += ms; }

 private:
  std::atomic<int64_t> now_{1'000'000};
};

// Wraps a store; fails the next `fail_next` Apply calls as an I/O error would.
class FlakyStore final : public ResultStore {
 public:
  explicit FlakyStore(ResultStore* inner) : inner_(inner) {}
  std::atomic<int> fail_next{0};
  absl::Status Apply(std::vector<Mutation>& batch) override {
    if (fail_next > 0) {
      --fail_next;
      absl::Status s = absl::UnavailableError("sqlite: disk I/O error");
      for (Mutation& m : batch) m.status = s;
      return s;
    }
    return inner_->Apply(batch);
  }
  absl::StatusOr<std::vector<ActiveJob>> LoadActiveJobs() override {
    return inner_->LoadActiveJobs();
  }
  absl::StatusOr<std::vector<ActiveJob>> LoadJobs(const std::vector<std::string>& ids) override {
    return inner_->LoadJobs(ids);
  }
  absl::StatusOr<SweepInfo> GetSweep(const std::string& n) override { return inner_->GetSweep(n); }
  absl::StatusOr<std::vector<SweepInfo>> ListSweeps() override { return inner_->ListSweeps(); }
  absl::StatusOr<std::vector<SweepJobRef>> SweepJobs(const std::string& s,
                                                     const std::vector<JobState>& st) override {
    return inner_->SweepJobs(s, st);
  }
  absl::Status Export(const std::string& s, bool spec,
                      const std::function<bool(const ExportRow&)>& fn) override {
    return inner_->Export(s, spec, fn);
  }
  absl::StatusOr<std::optional<int64_t>> ResultFence(const std::string& id) override {
    return inner_->ResultFence(id);
  }
  absl::StatusOr<std::optional<AttemptLease>> LeaseOfAttempt(const std::string& id,
                                                             int64_t fence) override {
    return inner_->LeaseOfAttempt(id, fence);
  }
  absl::StatusOr<int64_t> CountResults() override { return inner_->CountResults(); }
  absl::StatusOr<int64_t> CountJobs() override { return inner_->CountJobs(); }
  absl::StatusOr<QueryResult> Query(const std::string& q, int m, int t) override {
    return inner_->Query(q, m, t);
  }
  absl::Status IntegrityCheck() override { return inner_->IntegrityCheck(); }

 private:
  ResultStore* inner_;
};

SweepJob MakeJob(const std::string& model_key, const std::string& method) {
  SweepJob j;
  j.spec.model_name = "model-" + model_key;
  j.spec.model_sha256 = model_key;
  j.spec.task = "lambada_openai";
  j.spec.method = method;
  j.spec.kv_heads = 2;
  j.job_id = j.spec.JobId();
  j.labels = {{"model", j.spec.model_name}, {"method", method}};
  return j;
}

ExpandedSweep MakeSweep(const std::string& name,
                        const std::vector<std::pair<std::string, std::string>>& jobs,
                        int priority = 0, int max_attempts = 3) {
  ExpandedSweep s;
  s.name = name;
  s.priority = priority;
  s.max_attempts = max_attempts;
  for (const auto& [model, method] : jobs) s.jobs.push_back(MakeJob(model, method));
  return s;
}

const std::string kResult = R"({"metrics": {"lambada_openai": {"acc": 0.5, "ppl": 3.0, "n": 2}}})";

class SchedulerTest : public ::testing::Test {
 protected:
  void SetUp() override { Restart(); }

  void Restart(ResultStore* store = nullptr) {
    if (sched_) sched_->Stop();
    SchedulerOptions o;
    o.lease_ttl_ms = 1000;
    o.retry_base_ms = 100;
    o.retry_max_ms = 1000;
    o.quarantine_after = 3;
    o.idle_retry_ms = 250;
    o.reaper_thread = false;
    sched_ = std::make_unique<Scheduler>(store ? store : store_.get(), &clock_, o);
    ASSERT_TRUE(sched_->Start().ok());
  }

  LeaseOffer LeaseOk(const std::string& worker, const std::string& held = "",
                     const std::string& session = "") {
    auto r = Lease(worker, held, session.empty() ? worker + "-session" : session);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : LeaseOffer();
  }
  absl::StatusOr<LeaseOffer> Lease(const std::string& worker, const std::string& held = "",
                                   const std::string& session = "s") {
    std::promise<absl::StatusOr<LeaseOffer>> p;
    WorkerRecord w{worker, "host", "cpu", "fake", 1};
    sched_->Lease(w, session, held, [&p](absl::StatusOr<LeaseOffer> r) { p.set_value(r); });
    return p.get_future().get();
  }
  absl::StatusOr<bool> Complete(const std::string& worker, const LeaseOffer& l,
                                const std::string& result = kResult) {
    auto r = CompleteAndLease(worker, l, nullptr, result);
    if (!r.ok()) return r.status();
    return r->duplicate;
  }
  absl::StatusOr<CompleteOutcome> CompleteAndLease(const std::string& worker, const LeaseOffer& l,
                                                   const NextLease* next,
                                                   const std::string& result = kResult) {
    std::promise<absl::StatusOr<CompleteOutcome>> p;
    sched_->Complete(worker, l.job_id, l.lease_id, l.fence, result, next,
                     [&p](absl::StatusOr<CompleteOutcome> r) { p.set_value(r); });
    return p.get_future().get();
  }
  absl::StatusOr<JobState> Fail(const std::string& worker, const LeaseOffer& l, FailKind k,
                                const std::string& error = "boom") {
    std::promise<absl::StatusOr<JobState>> p;
    sched_->Fail(worker, l.job_id, l.lease_id, l.fence, k, error,
                 [&p](absl::StatusOr<JobState> r) { p.set_value(r); });
    return p.get_future().get();
  }
  // A heartbeat from `worker` for lease `l` (its own fence unless `fence` is given).
  HeartbeatReply Beat(const std::string& worker, const LeaseOffer& l, int64_t fence = 0) {
    absl::StatusOr<HeartbeatReply> r =
        sched_->Heartbeat(worker, l.job_id, l.lease_id, fence == 0 ? l.fence : fence);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : HeartbeatReply();
  }
  SweepInfo Info(const std::string& sweep) {
    auto i = store_->GetSweep(sweep);
    EXPECT_TRUE(i.ok()) << i.status();
    return i.ok() ? *i : SweepInfo();
  }

  FakeClock clock_;
  std::unique_ptr<ResultStore> store_ = NewFakeResultStore();
  std::unique_ptr<Scheduler> sched_;
};

TEST_F(SchedulerTest, LeasesInOrderAndRecordsEachResultOnce) {
  ExpandedSweep s = MakeSweep("s", {{"m1", "none"}, {"m1", "quant:bits=4"}});
  auto out = sched_->Submit(s, "yaml", "/");
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->enqueued, 2);
  LeaseOffer a = LeaseOk("w1");
  ASSERT_TRUE(a.has_job);
  EXPECT_EQ(a.job_id, s.jobs[0].job_id);
  EXPECT_EQ(a.fence, 1);
  EXPECT_EQ(a.attempt, 1);
  EXPECT_EQ(a.deadline_ms, clock_.NowMs() + 1000);
  EXPECT_FALSE(a.spec_json.empty());
  EXPECT_EQ(*Complete("w1", a), false);
  EXPECT_EQ(*Complete("w1", a), true);  // a repeat is a duplicate, not a second row
  EXPECT_EQ(*store_->CountResults(), 1);
  LeaseOffer b = LeaseOk("w1");
  EXPECT_EQ(b.job_id, s.jobs[1].job_id);
  LeaseOffer none = LeaseOk("w2");
  EXPECT_FALSE(none.has_job);
  EXPECT_EQ(none.retry_after_ms, 250);
  EXPECT_EQ(*Complete("w1", b), false);
  EXPECT_EQ(Info("s").count(JobState::kDone), 2);
  // Resubmitting a finished sweep enqueues nothing.
  auto again = sched_->Submit(s, "yaml", "/");
  EXPECT_EQ(again->enqueued, 0);
  EXPECT_EQ(again->done, 2);
}

TEST_F(SchedulerTest, ExpiredLeaseIsRequeuedAndItsTokenRejected) {
  ExpandedSweep s = MakeSweep("s", {{"m1", "none"}});
  ASSERT_TRUE(sched_->Submit(s, "", "").ok());
  LeaseOffer a = LeaseOk("w1");
  clock_.Advance(1001);
  sched_->ExpireLeases();
  sched_->Flush();
  HeartbeatReply hb = Beat("w1", a);
  EXPECT_FALSE(hb.keep_going);
  EXPECT_THAT(hb.reason, HasSubstr("lease expired on worker w1"));
  auto late = Complete("w1", a);
  EXPECT_EQ(late.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(late.status().message()), HasSubstr("stale fencing token 1"));
  EXPECT_THAT(std::string(late.status().message()), HasSubstr("lease expired"));
  // Backoff: not before 100 ms.
  LeaseOffer early = LeaseOk("w2");
  EXPECT_FALSE(early.has_job);
  EXPECT_LE(early.retry_after_ms, 100);
  clock_.Advance(100);
  LeaseOffer b = LeaseOk("w2");
  ASSERT_TRUE(b.has_job);
  EXPECT_EQ(b.fence, 3);  // 1: first grant, 2: expiry, 3: second grant
  EXPECT_EQ(b.attempt, 2);
  EXPECT_EQ(Complete("w1", a).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(*Complete("w2", b), false);
  EXPECT_EQ(*store_->CountResults(), 1);
  // After the result, the stale holder still cannot write (another worker's result is there).
  auto after = Complete("w1", a);
  EXPECT_THAT(std::string(after.status().message()), HasSubstr("stale fencing token 1"));
}

TEST_F(SchedulerTest, HeartbeatsKeepTheLease) {
  ASSERT_TRUE(sched_->Submit(MakeSweep("s", {{"m1", "none"}}), "", "").ok());
  LeaseOffer a = LeaseOk("w1");
  for (int i = 0; i < 5; ++i) {
    clock_.Advance(900);
    HeartbeatReply hb = Beat("w1", a);
    EXPECT_TRUE(hb.keep_going) << hb.reason;
    EXPECT_EQ(hb.deadline_ms, clock_.NowMs() + 1000);
    sched_->ExpireLeases();
  }
  EXPECT_FALSE(Beat("w1", a, a.fence + 1).keep_going);
  EXPECT_EQ(sched_->Heartbeat("w2", a.job_id, a.lease_id, a.fence).status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(*Complete("w1", a), false);
}

// Progress from heartbeats, per lease: the highest fraction in [0, 1] of the lease's holder is
// kept with its rate; what a worker that lies sends (NaN, out of range, backwards, for a lease
// it does not hold) changes nothing; an ended lease's progress is gone; a lease restored after
// a restart counts its rate from its first heartbeat.
TEST_F(SchedulerTest, KeepsEachLeasesProgressAndIgnoresWhatALiarSends) {
  ASSERT_TRUE(
      sched_->Submit(MakeSweep("s", {{"m1", "none"}, {"m1", "quant:bits=4"}}), "", "").ok());
  auto progress_of = [&](const std::string& job_id) {
    for (const JobProgress& p : sched_->RunningJobs()) {
      if (p.job_id == job_id) return p;
    }
    ADD_FAILURE() << "no progress for job " << job_id;
    return JobProgress();
  };
  auto beat = [&](const std::string& worker, const LeaseOffer& l, double progress) {
    return sched_->Heartbeat(worker, l.job_id, l.lease_id, l.fence, progress);
  };
  const int64_t t0 = clock_.NowMs();
  LeaseOffer a = LeaseOk("w1");
  ASSERT_EQ(sched_->RunningJobs().size(), 1u);
  JobProgress p = progress_of(a.job_id);
  EXPECT_EQ(p.worker_id, "w1");
  EXPECT_EQ(p.fraction, 0);
  EXPECT_EQ(p.started_ms, t0);
  EXPECT_EQ(p.fraction_per_s(), 0);

  clock_.Advance(500);
  ASSERT_TRUE(beat("w1", a, 0.25).ok());
  p = progress_of(a.job_id);
  EXPECT_EQ(p.fraction, 0.25);
  EXPECT_EQ(p.updated_ms, t0 + 500);
  EXPECT_DOUBLE_EQ(p.fraction_per_s(), 0.5);

  clock_.Advance(500);
  for (double lie : {0.1, std::nan(""), 1.5, -0.5, std::numeric_limits<double>::infinity()}) {
    absl::StatusOr<HeartbeatReply> r = beat("w1", a, lie);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_TRUE(r->keep_going);  // the lease is still renewed
  }
  EXPECT_EQ(beat("w2", a, 0.9).status().code(), absl::StatusCode::kPermissionDenied);
  LeaseOffer forged = a;
  forged.lease_id = "not-the-secret";
  EXPECT_EQ(beat("w1", forged, 0.9).status().code(), absl::StatusCode::kPermissionDenied);
  LeaseOffer stale = a;
  stale.fence = a.fence + 1;
  EXPECT_FALSE(beat("w1", stale, 0.9)->keep_going);
  p = progress_of(a.job_id);
  EXPECT_EQ(p.fraction, 0.25);
  EXPECT_EQ(p.updated_ms, t0 + 1000);  // the lease's own beats count, without their lies

  clock_.Advance(500);
  ASSERT_TRUE(beat("w1", a, 0.75).ok());
  EXPECT_DOUBLE_EQ(progress_of(a.job_id).fraction_per_s(), 0.5);

  // The other job, leased now, starts at 0; the first job's progress ends with its result.
  LeaseOffer b = LeaseOk("w2");
  EXPECT_EQ(sched_->RunningJobs().size(), 2u);
  EXPECT_EQ(progress_of(b.job_id).fraction, 0);
  ASSERT_TRUE(Complete("w1", a).ok());
  std::vector<JobProgress> running = sched_->RunningJobs();
  ASSERT_EQ(running.size(), 1u);
  EXPECT_EQ(running[0].job_id, b.job_id);

  // After a restart the lease is restored without its progress: its first beat starts it.
  clock_.Advance(100);
  ASSERT_TRUE(beat("w2", b, 0.5).ok());
  Restart();
  EXPECT_TRUE(sched_->RunningJobs().empty());
  const int64_t t1 = clock_.NowMs();
  ASSERT_TRUE(beat("w2", b, 0.5).ok());
  p = progress_of(b.job_id);
  EXPECT_EQ(p.fraction, 0.5);
  EXPECT_EQ(p.started_ms, t1);
  EXPECT_EQ(p.started_fraction, 0.5);
  EXPECT_EQ(p.fraction_per_s(), 0);  // no progress seen since the restart yet
  clock_.Advance(250);
  ASSERT_TRUE(beat("w2", b, 0.75).ok());
  EXPECT_DOUBLE_EQ(progress_of(b.job_id).fraction_per_s(), 1.0);

  // An expired lease's progress is gone.
  clock_.Advance(2000);
  sched_->ExpireLeases();
  sched_->Flush();
  EXPECT_TRUE(sched_->RunningJobs().empty());
}

TEST_F(SchedulerTest, RetriesWithExponentialBackoffThenFails) {
  ASSERT_TRUE(sched_->Submit(MakeSweep("s", {{"m1", "none"}}, 0, 3), "", "").ok());
  LeaseOffer l = LeaseOk("w1");
  EXPECT_EQ(*Fail("w1", l, FailKind::kRetryable), JobState::kQueued);
  EXPECT_FALSE(LeaseOk("w1").has_job);
  clock_.Advance(100);
  l = LeaseOk("w1");
  ASSERT_TRUE(l.has_job);
  EXPECT_EQ(l.attempt, 2);
  EXPECT_EQ(*Fail("w1", l, FailKind::kRetryable), JobState::kQueued);
  clock_.Advance(199);
  EXPECT_FALSE(LeaseOk("w1").has_job);  // second backoff is 200 ms
  clock_.Advance(1);
  l = LeaseOk("w1");
  ASSERT_TRUE(l.has_job);
  EXPECT_EQ(l.attempt, 3);
  EXPECT_EQ(*Fail("w1", l, FailKind::kRetryable, "out of memory"), JobState::kFailed);
  SweepInfo info = Info("s");
  EXPECT_EQ(info.count(JobState::kFailed), 1);
  ASSERT_EQ(info.recent_errors.size(), 1u);
  EXPECT_THAT(info.recent_errors[0], HasSubstr("gave up after 3 attempts. Last: out of memory"));
  // A stale Fail is refused.
  EXPECT_EQ(Fail("w1", l, FailKind::kRetryable).status().code(),
            absl::StatusCode::kFailedPrecondition);
  // retry --failed brings it back with fresh attempts.
  EXPECT_EQ(*sched_->Retry("s", true, false), 1);
  l = LeaseOk("w1");
  ASSERT_TRUE(l.has_job);
  EXPECT_EQ(l.attempt, 1);
  EXPECT_EQ(sched_->Retry("s", false, false).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(SchedulerTest, PermanentFailureIsFinalAndHandBackCostsNoAttempt) {
  ASSERT_TRUE(sched_->Submit(MakeSweep("s", {{"m1", "none"}, {"m1", "x"}}), "", "").ok());
  LeaseOffer a = LeaseOk("w1");
  EXPECT_EQ(*Fail("w1", a, FailKind::kPermanent, "model has no config"), JobState::kFailed);
  LeaseOffer b = LeaseOk("w1");
  EXPECT_EQ(*Fail("w1", b, FailKind::kHandedBack, "draining"), JobState::kQueued);
  LeaseOffer b2 = LeaseOk("w2");  // at once, no backoff
  EXPECT_EQ(b2.job_id, b.job_id);
  EXPECT_EQ(b2.attempt, 1);
}

TEST_F(SchedulerTest, JobThatKillsThreeDifferentWorkersIsQuarantined) {
  ExpandedSweep s = MakeSweep("s", {{"m1", "poison"}, {"m1", "fine"}}, 0, 10);
  ASSERT_TRUE(sched_->Submit(s, "", "").ok());
  // The same worker dying twice counts once.
  for (const char* w : {"w1", "w1", "w2", "w3"}) {
    LeaseOffer l = LeaseOk(w);
    ASSERT_EQ(l.job_id, s.jobs[0].job_id) << w;
    clock_.Advance(1001);
    sched_->ExpireLeases();
    clock_.Advance(1000);  // past any backoff
  }
  sched_->Flush();
  SweepInfo info = Info("s");
  EXPECT_EQ(info.count(JobState::kQuarantined), 1);
  ASSERT_EQ(info.recent_errors.size(), 1u);
  EXPECT_THAT(info.recent_errors[0],
              HasSubstr("quarantined: lost its lease on 3 different workers (w1, w2, w3)"));
  // The rest of the sweep goes on.
  LeaseOffer fine = LeaseOk("w4");
  EXPECT_EQ(fine.job_id, s.jobs[1].job_id);
  EXPECT_EQ(*Complete("w4", fine), false);
  EXPECT_FALSE(LeaseOk("w4").has_job);
  EXPECT_EQ(*sched_->Retry("s", false, true), 1);
  EXPECT_EQ(LeaseOk("w4").job_id, s.jobs[0].job_id);
}

TEST_F(SchedulerTest, HigherPriorityFirstThenModelAffinity) {
  ExpandedSweep low = MakeSweep("low", {{"m1", "a"}, {"m2", "b"}, {"m1", "c"}, {"m2", "d"}}, 0);
  ExpandedSweep high = MakeSweep("high", {{"m1", "hi"}}, 5);
  ASSERT_TRUE(sched_->Submit(low, "", "").ok());
  ASSERT_TRUE(sched_->Submit(high, "", "").ok());
  EXPECT_EQ(LeaseOk("w1", "m2").job_id, high.jobs[0].job_id);  // priority beats affinity
  EXPECT_EQ(LeaseOk("w2", "m2").job_id, low.jobs[1].job_id);   // m2 preferred over older m1
  EXPECT_EQ(LeaseOk("w3", "m2").job_id, low.jobs[3].job_id);
  EXPECT_EQ(LeaseOk("w4", "m2").job_id, low.jobs[0].job_id);  // no m2 left: oldest
  EXPECT_EQ(LeaseOk("w5").job_id, low.jobs[2].job_id);
}

TEST_F(SchedulerTest, CancelStopsLeasedJobsAndSparesSharedOnes) {
  ExpandedSweep a = MakeSweep("a", {{"m1", "x"}, {"m1", "y"}, {"m1", "shared"}});
  ExpandedSweep b = MakeSweep("b", {{"m1", "shared"}});
  ASSERT_TRUE(sched_->Submit(a, "", "").ok());
  ASSERT_TRUE(sched_->Submit(b, "", "").ok());
  LeaseOffer x = LeaseOk("w1");
  auto c = sched_->Cancel("a");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->cancelled, 2);
  EXPECT_EQ(c->kept_for_others, 1);
  HeartbeatReply hb = Beat("w1", x);
  EXPECT_FALSE(hb.keep_going);
  EXPECT_EQ(hb.reason, "cancelled");
  EXPECT_EQ(Complete("w1", x).status().code(), absl::StatusCode::kFailedPrecondition);
  LeaseOffer shared = LeaseOk("w2");
  EXPECT_EQ(shared.job_id, b.jobs[0].job_id);
  EXPECT_FALSE(LeaseOk("w3").has_job);
  EXPECT_EQ(Info("a").count(JobState::kCancelled), 2);
  EXPECT_EQ(sched_->Cancel("nope").status().code(), absl::StatusCode::kNotFound);
  // Resubmitting requeues the cancelled jobs.
  auto again = sched_->Submit(a, "", "");
  EXPECT_EQ(again->requeued, 2);
  EXPECT_TRUE(LeaseOk("w3").has_job);
}

TEST_F(SchedulerTest, LeasesSurviveACoordinatorRestart) {
  ASSERT_TRUE(sched_->Submit(MakeSweep("s", {{"m1", "a"}, {"m1", "b"}}), "", "").ok());
  LeaseOffer a = LeaseOk("w1");
  Restart();
  // The worker kept running through the restart: its lease is adopted with a fresh TTL.
  clock_.Advance(900);
  sched_->ExpireLeases();
  EXPECT_TRUE(Beat("w1", a).keep_going);
  EXPECT_EQ(*Complete("w1", a), false);
  LeaseOffer b = LeaseOk("w2");
  EXPECT_TRUE(b.has_job);
  EXPECT_NE(b.job_id, a.job_id);
}

// A coordinator down for far longer than a TTL: the leases it restores have no deadline until
// a worker is back, then a grace of at least a TTL (here max(2 TTL, 10 s)) to be renewed, so a
// worker that finished during the outage and retries with backoff still delivers its result.
TEST_F(SchedulerTest, RestoredLeasesGetAGraceAfterTheFirstWorkerIsBack) {
  ASSERT_TRUE(sched_->Submit(MakeSweep("s", {{"m1", "a"}, {"m1", "b"}, {"m1", "c"}}), "", "").ok());
  LeaseOffer a = LeaseOk("w1");
  LeaseOffer b = LeaseOk("w2");
  sched_->Flush();
  Restart();
  clock_.Advance(10 * 60 * 1000);  // ten minutes before any worker calls
  sched_->ExpireLeases();
  sched_->Flush();
  EXPECT_EQ(Info("s").count(JobState::kLeased), 2);
  LeaseOffer c = LeaseOk("w3");  // the first worker back
  EXPECT_TRUE(c.has_job);
  clock_.Advance(9000);  // past the 1 s TTL, within the 10 s grace
  sched_->ExpireLeases();
  EXPECT_EQ(*Complete("w1", a), false);
  clock_.Advance(1001);  // w2 never came back: its lease ends
  sched_->ExpireLeases();
  sched_->Flush();
  EXPECT_FALSE(Beat("w2", b).keep_going);
  EXPECT_EQ(Complete("w2", b).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(SchedulerTest, RepeatedLeaseFromTheSameSessionIsIdempotent) {
  ExpandedSweep s = MakeSweep("s", {{"m1", "a"}, {"m1", "b"}});
  ASSERT_TRUE(sched_->Submit(s, "", "").ok());
  LeaseOffer first = LeaseOk("w1", "", "session-1");
  LeaseOffer again = LeaseOk("w1", "", "session-1");  // the answer was lost; it asks again
  EXPECT_EQ(again.job_id, first.job_id);
  EXPECT_EQ(again.fence, first.fence);
  EXPECT_EQ(again.lease_id, first.lease_id);
  // A new process under the same worker id (or anyone who knows the id) gets a job of its
  // own; the lease of the first session is left to its holder: renewed, or it expires.
  LeaseOffer restarted = LeaseOk("w1", "", "session-2");
  EXPECT_EQ(restarted.job_id, s.jobs[1].job_id);
  EXPECT_NE(restarted.lease_id, first.lease_id);
  EXPECT_TRUE(Beat("w1", first).keep_going);
  clock_.Advance(1001);
  EXPECT_TRUE(Beat("w1", restarted).keep_going);
  sched_->ExpireLeases();
  sched_->Flush();
  EXPECT_FALSE(Beat("w1", first).keep_going);
  EXPECT_EQ(Info("s").count(JobState::kQueued), 1);
}

TEST_F(SchedulerTest, ConcurrentCompletesOfOneResultMakeOneRow) {
  ASSERT_TRUE(sched_->Submit(MakeSweep("s", {{"m1", "a"}}), "", "").ok());
  LeaseOffer a = LeaseOk("w1");
  std::atomic<int> recorded{0}, duplicates{0}, errors{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 16; ++i) {
    threads.emplace_back([&] {
      auto r = Complete("w1", a);
      if (!r.ok()) {
        ++errors;
      } else if (*r) {
        ++duplicates;
      } else {
        ++recorded;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(recorded, 1);
  EXPECT_EQ(duplicates, 15);
  EXPECT_EQ(errors, 0);
  EXPECT_EQ(*store_->CountResults(), 1);
}

TEST_F(SchedulerTest, CompleteAndLeaseCommitsBothOrKeepsNeither) {
  ExpandedSweep s = MakeSweep("s", {{"m1", "a"}, {"m1", "b"}, {"m1", "c"}});
  ASSERT_TRUE(sched_->Submit(s, "", "").ok());
  NextLease next{{"w1", "host", "cpu", "fake", 1}, "w1-session", "m1"};
  LeaseOffer a = LeaseOk("w1");
  auto out = CompleteAndLease("w1", a, &next);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_FALSE(out->duplicate);
  ASSERT_TRUE(out->next.has_value());
  EXPECT_EQ(out->next->job_id, s.jobs[1].job_id);
  EXPECT_EQ(out->next->attempt, 1);
  EXPECT_TRUE(Beat("w1", *out->next).keep_going);
  // A repeat of the same Complete is a duplicate and leases nothing more.
  auto again = CompleteAndLease("w1", a, &next);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->duplicate);
  EXPECT_FALSE(again->next.has_value());
  // A refused result keeps no lease: the job it would have leased goes straight back.
  LeaseOffer b = *out->next;
  clock_.Advance(1001);
  sched_->ExpireLeases();  // b's lease is lost
  clock_.Advance(1000);
  LeaseOffer b2 = LeaseOk("w2");
  ASSERT_EQ(b2.job_id, b.job_id);
  auto refused = CompleteAndLease("w1", b, &next);
  // b is no longer leased to w1 under that token: stale, answered without a lease.
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  sched_->Flush();
  LeaseOffer c = LeaseOk("w3");
  EXPECT_EQ(c.job_id, s.jobs[2].job_id);
  EXPECT_EQ(*store_->CountResults(), 1);
}

TEST_F(SchedulerTest, ResultRefusedByTheStoreHandsTheNextLeaseBack) {
  ExpandedSweep s = MakeSweep("s", {{"m1", "a"}, {"m1", "b"}});
  ASSERT_TRUE(sched_->Submit(s, "", "").ok());
  NextLease next{{"w1", "host", "cpu", "fake", 1}, "w1-session", ""};
  LeaseOffer a = LeaseOk("w1");
  auto out = CompleteAndLease("w1", a, &next, "not json");
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  sched_->Flush();
  // b was leased with the refused result and handed straight back: no backoff, no attempt.
  LeaseOffer b = LeaseOk("w2");
  EXPECT_EQ(b.job_id, s.jobs[1].job_id);
  EXPECT_EQ(b.attempt, 1);
  // a is still leased to w1, which may report it properly.
  EXPECT_EQ(*Complete("w1", a), false);
}

TEST_F(SchedulerTest, StorageFailureFailsTheCallAndReloadsTheSchedule) {
  FlakyStore flaky(store_.get());
  Restart(&flaky);
  ASSERT_TRUE(sched_->Submit(MakeSweep("s", {{"m1", "a"}}), "", "").ok());
  flaky.fail_next = 1;
  auto l = Lease("w1");
  EXPECT_EQ(l.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(l.status().message()), HasSubstr("could not record the lease"));
  sched_->Flush();
  // Memory was rebuilt from the store: the job is still queued, under its old token.
  LeaseOffer again = LeaseOk("w1");
  ASSERT_TRUE(again.has_job);
  EXPECT_EQ(again.fence, 1);
  EXPECT_EQ(*Complete("w1", again), false);
  EXPECT_TRUE(store_->IntegrityCheck().ok());
  sched_->Stop();
}

// Knowing a job id and its fencing token (both readable through `kvsweep query`) is not enough
// to record, fail or renew someone else's lease: every call must carry the lease's secret, and
// the store keeps only its key.
TEST_F(SchedulerTest, OnlyTheLeaseHolderCanCompleteFailOrRenew) {
  ExpandedSweep s = MakeSweep("s", {{"m1", "a"}, {"m1", "b"}});
  ASSERT_TRUE(sched_->Submit(s, "", "").ok());
  LeaseOffer a = LeaseOk("victim");
  ASSERT_TRUE(a.has_job);
  EXPECT_EQ(a.lease_id.size(), 32u);
  sched_->Flush();
  auto active = store_->LoadActiveJobs();
  ASSERT_TRUE(active.ok());
  for (const ActiveJob& j : *active) {
    if (j.job_id != a.job_id) continue;
    EXPECT_NE(j.lease_id, a.lease_id);  // the store has the key, not the secret
    EXPECT_EQ(j.lease_id.size(), 64u);
  }
  LeaseOffer forged = a;
  forged.lease_id = std::string(32, '0');
  for (const std::string& who : {std::string("victim"), std::string("attacker")}) {
    EXPECT_EQ(Complete(who, forged).status().code(), absl::StatusCode::kPermissionDenied) << who;
    EXPECT_EQ(Fail(who, forged, FailKind::kPermanent).status().code(),
              absl::StatusCode::kPermissionDenied)
        << who;
    EXPECT_EQ(sched_->Heartbeat(who, a.job_id, forged.lease_id, a.fence).status().code(),
              absl::StatusCode::kPermissionDenied)
        << who;
  }
  // The right secret under another worker id is refused too.
  EXPECT_EQ(Complete("attacker", a).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(*store_->CountResults(), 0);
  // The holder is unaffected: it renews and records its result.
  EXPECT_TRUE(Beat("victim", a).keep_going);
  EXPECT_EQ(*Complete("victim", a), false);
  // Once recorded, a forger is still refused rather than told "duplicate".
  EXPECT_EQ(Complete("victim", forged).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(*Complete("victim", a), true);
  EXPECT_EQ(*store_->CountResults(), 1);
}

TEST_F(SchedulerTest, LeaseSecretStillWorksAfterACoordinatorRestart) {
  ASSERT_TRUE(sched_->Submit(MakeSweep("s", {{"m1", "a"}}), "", "").ok());
  LeaseOffer a = LeaseOk("w1");
  sched_->Flush();
  Restart();
  LeaseOffer forged = a;
  forged.lease_id = "not-the-secret";
  EXPECT_EQ(Complete("w1", forged).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(Beat("w1", a).keep_going);
  EXPECT_EQ(*Complete("w1", a), false);
}

TEST_F(SchedulerTest, AResultMustBeForTheJobItCompletes) {
  ASSERT_TRUE(sched_->Submit(MakeSweep("s", {{"m1", "a"}}), "", "").ok());
  LeaseOffer a = LeaseOk("w1");
  auto wrong_task =
      Complete("w1", a, R"({"metrics": {"wikitext": {"token_ppl": 3.0, "tokens": 10}}})");
  EXPECT_EQ(wrong_task.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(wrong_task.status().message()), HasSubstr("is task 'lambada_openai'"));
  auto two_tasks = Complete(
      "w1", a, R"({"metrics": {"lambada_openai": {"acc": 0.5}, "wikitext": {"tokens": 1}}})");
  EXPECT_EQ(two_tasks.status().code(), absl::StatusCode::kInvalidArgument);
  auto wrong_id = Complete("w1", a,
                           absl::StrCat(R"({"job_id": ")", std::string(64, 'a'),
                                        R"(", "metrics": {"lambada_openai": {"acc": 0.5}}})"));
  EXPECT_EQ(wrong_id.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(wrong_id.status().message()), HasSubstr("is not the completed job"));
  EXPECT_EQ(*store_->CountResults(), 0);
  EXPECT_EQ(*Complete("w1", a,
                      absl::StrCat(R"({"job_id": ")", a.job_id,
                                   R"(", "metrics": {"lambada_openai": {"acc": 0.5}}})")),
            false);
}

// Lease deadlines must not follow steps of the wall clock: the scheduler's clock is wall time
// read once, advanced by a monotonic source.
TEST(SchedulerClockTest, LeaseDeadlinesIgnoreWallClockSteps) {
  std::atomic<int64_t> wall{1'700'000'000'000}, mono{5'000};
  MonotonicEpochClock clock([&] { return wall.load(); }, [&] { return mono.load(); });
  std::unique_ptr<ResultStore> store = NewFakeResultStore();
  SchedulerOptions o;
  o.lease_ttl_ms = 1000;
  o.reaper_thread = false;
  Scheduler sched(store.get(), &clock, o);
  ASSERT_TRUE(sched.Start().ok());
  ASSERT_TRUE(sched.Submit(MakeSweep("s", {{"m1", "a"}}), "", "").ok());
  std::promise<absl::StatusOr<LeaseOffer>> p;
  sched.Lease({"w1", "h", "cpu", "fake", 1}, "s1", "",
              [&p](absl::StatusOr<LeaseOffer> r) { p.set_value(r); });
  absl::StatusOr<LeaseOffer> l = p.get_future().get();
  ASSERT_TRUE(l.ok() && l->has_job);
  // The wall clock jumps 2 h forward: the lease is not expired.
  wall += 2 * 3600 * 1000;
  mono += 100;
  sched.ExpireLeases();
  auto hb = sched.Heartbeat("w1", l->job_id, l->lease_id, l->fence);
  ASSERT_TRUE(hb.ok());
  EXPECT_TRUE(hb->keep_going) << hb->reason;
  // It jumps 4 h back and the worker goes silent: the lease still expires one TTL later.
  wall -= 4 * 3600 * 1000;
  mono += 1001;
  sched.ExpireLeases();
  sched.Flush();
  hb = sched.Heartbeat("w1", l->job_id, l->lease_id, l->fence);
  ASSERT_TRUE(hb.ok());
  EXPECT_FALSE(hb->keep_going);
  EXPECT_THAT(hb->reason, HasSubstr("lease expired"));
  sched.Stop();
}

}  // namespace
}  // namespace kvsweep

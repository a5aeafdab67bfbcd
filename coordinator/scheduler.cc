#include "coordinator/scheduler.h"

#include <algorithm>
#include <chrono>
#include <future>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/json_util.h"
#include "common/log.h"
#include "common/unix_time.h"
#include "coordinator/lease_secret.h"

namespace kvsweep {

MonotonicEpochClock::MonotonicEpochClock(std::function<int64_t()> wall_ms,
                                         std::function<int64_t()> mono_ms)
    : mono_ms_(std::move(mono_ms)), wall_at_start_(wall_ms()), mono_at_start_(mono_ms_()) {}

int64_t MonotonicEpochClock::NowMs() { return wall_at_start_ + (mono_ms_() - mono_at_start_); }

Clock* SystemClock() {
  static MonotonicEpochClock clock([] { return NowMs(); },
                                   [] {
                                     return std::chrono::duration_cast<std::chrono::milliseconds>(
                                                std::chrono::steady_clock::now().time_since_epoch())
                                         .count();
                                   });
  return &clock;
}

Scheduler::Scheduler(ResultStore* store, Clock* clock, const SchedulerOptions& options)
    : store_(store),
      clock_(clock),
      options_(options),
      schedule_(options),
      committer_(store, options.max_batch,
                 [this](std::vector<GroupCommitter::Pending>* failed) { Reload(failed); }) {}

Scheduler::~Scheduler() { Stop(); }

absl::Status Scheduler::Start() {
  {
    MutexLock lock(&mu_);
    absl::Status s = LoadAll();
    if (!s.ok()) return s;
    KV_LOG(INFO) << "scheduler: " << schedule_.jobs() << " active jobs (" << schedule_.leased()
                 << " leased) loaded";
  }
  started_ = true;
  committer_.Start();
  if (options_.reaper_thread) {
    reaper_.emplace(std::clamp(options_.lease_ttl_ms / 8, 20, 1000), [this] { ExpireLeases(); });
    reaper_->Start();
  }
  return absl::OkStatus();
}

void Scheduler::Stop() {
  if (!started_) return;
  started_ = false;
  if (reaper_.has_value()) reaper_->Stop();
  committer_.Stop();
}

absl::Status Scheduler::LoadAll() {
  absl::StatusOr<std::vector<ActiveJob>> active = store_->LoadActiveJobs();
  if (!active.ok()) return active.status();
  schedule_.Load(*active, clock_->NowMs());
  return absl::OkStatus();
}

void Scheduler::Reload(std::vector<GroupCommitter::Pending>* failed) {
  MutexLock lock(&mu_);
  // Everything still queued was decided on the memory we are about to throw away.
  committer_.TakeQueued(failed);
  absl::Status s = LoadAll();
  if (!s.ok()) {
    KV_LOG(ERROR) << "reloading the schedule failed (" << s << "); will retry";
    committer_.RequestReload();
  } else {
    KV_LOG(WARNING) << "schedule reloaded from the store: " << schedule_.jobs() << " active jobs";
  }
}

// ---- Workers -----------------------------------------------------------------------------------

Scheduler::Decision Scheduler::DecideLease(const WorkerRecord& worker, const std::string& session,
                                           const std::string& held_model, int64_t now,
                                           LeaseOffer* offer, GrantLease* grant) {
  bool touch = false;
  const Decision d = schedule_.DecideLease(worker, session, held_model, now, offer, grant, &touch);
  if (touch) Enqueue(TouchWorker{worker, now}, nullptr, false);
  if (d == Decision::kNew) {
    progress_[offer->job_id] = {offer->fence, {offer->job_id, worker.worker_id, 0, now, 0, now}};
  }
  return d;
}

void Scheduler::Lease(const WorkerRecord& worker, const std::string& session,
                      const std::string& held_model,
                      std::function<void(absl::StatusOr<LeaseOffer>)> done) {
  MutexLock lock(&mu_);
  const int64_t now = clock_->NowMs();
  LeaseOffer offer;
  GrantLease grant;
  switch (DecideLease(worker, session, held_model, now, &offer, &grant)) {
    case Decision::kNone:
      lock.Unlock();
      done(offer);
      return;
    case Decision::kRepeat:
      // Answered after a commit, so the grant it repeats is durable by then.
      Enqueue(
          TouchWorker{worker, now},
          [offer, done](Mutation& m) {
            if (!m.status.ok()) {
              done(absl::UnavailableError(
                  absl::StrCat("could not record the lease: ", m.status.message())));
            } else {
              done(offer);
            }
          },
          false);
      return;
    case Decision::kNew:
      Enqueue(
          std::move(grant),
          [offer, done](Mutation& m) mutable {
            if (!m.status.ok()) {
              done(absl::UnavailableError(
                  absl::StrCat("could not record the lease: ", m.status.message())));
              return;
            }
            offer.attempt = std::get<GrantLease>(m.op).attempt;
            done(offer);
          },
          /*must_succeed=*/true);
      return;
  }
}

absl::StatusOr<HeartbeatReply> Scheduler::Heartbeat(const std::string& worker_id,
                                                    const std::string& job_id,
                                                    const std::string& lease_id, int64_t fence,
                                                    double progress) {
  MutexLock lock(&mu_);
  const int64_t now = clock_->NowMs();
  schedule_.OnWorkerCall(now);
  Job* j = schedule_.Find(job_id);
  if (j != nullptr && j->state == JobState::kLeased && j->fence == fence) {
    if (absl::Status s = LeaseSchedule::CheckHolder(*j, worker_id, lease_id); !s.ok()) return s;
    schedule_.Renew(*j, now);
    if (progress >= 0.0 && progress <= 1.0) {  // false for NaN
      LeaseProgress& lp = progress_[job_id];
      if (lp.fence != fence) {  // a lease restored from the store: progress counts from here
        lp = {fence, {job_id, worker_id, progress, now, progress, now}};
      }
      lp.p.fraction = std::max(lp.p.fraction, progress);
      lp.p.updated_ms = now;
    }
    return HeartbeatReply{true, "", j->deadline_ms};
  }
  HeartbeatReply r;
  if (const std::string* reason = schedule_.RevokedReason(job_id, fence); reason != nullptr) {
    r.reason = *reason;
  } else {
    r.reason = absl::StrCat("lease lost: fencing token ", fence, " for job ", job_id.substr(0, 12),
                            " is not current");
  }
  return r;
}

void Scheduler::Complete(const std::string& worker_id, const std::string& job_id,
                         const std::string& lease_id, int64_t fence, std::string result_json,
                         const NextLease* next,
                         std::function<void(absl::StatusOr<CompleteOutcome>)> done,
                         std::optional<ResultMetrics> metrics, const std::string& actor) {
  if (!metrics.has_value()) {
    absl::StatusOr<ResultMetrics> m = ExtractResultMetrics(result_json);
    if (!m.ok()) {
      done(absl::InvalidArgumentError(absl::StrCat("result_json: ", m.status().message())));
      return;
    }
    metrics = *std::move(m);
  }
  MutexLock lock(&mu_);
  const int64_t now = clock_->NowMs();
  schedule_.OnWorkerCall(now);
  Job* j = schedule_.Find(job_id);
  if (j != nullptr && j->state == JobState::kLeased && j->fence == fence) {
    absl::Status holder = LeaseSchedule::CheckHolder(*j, worker_id, lease_id);
    if (holder.ok()) holder = LeaseSchedule::CheckResultIsFor(*metrics, *j);
    if (!holder.ok()) {
      lock.Unlock();
      done(holder);
      return;
    }
    j->completing++;
    RecordResult r;
    r.job_id = job_id;
    r.fence = fence;
    r.worker_id = worker_id;
    r.result_json = std::move(result_json);
    r.metrics = std::move(metrics);
    r.now_ms = now;
    r.actor = actor;
    // Both halves of a complete-and-lease answer once; the lease callback runs second.
    struct Shared {
      absl::Status status;
      bool duplicate = false;
    };
    auto shared = std::make_shared<Shared>();
    LeaseOffer offer;
    GrantLease grant;
    const bool granting =
        next != nullptr && DecideLease(next->worker, next->session, next->held_model, now, &offer,
                                       &grant) == Decision::kNew;
    Enqueue(
        std::move(r),
        [this, job_id, fence, done, shared, granting](Mutation& m) {
          {
            MutexLock l(&mu_);
            Job* j = schedule_.Find(job_id);
            if (j != nullptr && j->fence == fence) {
              // (> 0 check: a reload after a storage error resets the count.)
              if (j->completing > 0) j->completing--;
              if (m.status.ok()) schedule_.Forget(job_id);
            }
          }
          shared->status = m.status;
          if (m.status.ok()) shared->duplicate = std::get<RecordResult>(m.op).duplicate;
          if (granting) return;  // the lease callback answers
          if (!m.status.ok()) {
            done(m.status);
          } else {
            done(CompleteOutcome{shared->duplicate, std::nullopt});
          }
        },
        /*must_succeed=*/true);
    if (granting) {
      const std::string worker = next->worker.worker_id;
      Enqueue(
          std::move(grant),
          [this, done, shared, offer, worker](Mutation& m) mutable {
            if (!shared->status.ok()) {
              // The result was refused: do not keep the lease we decided with it.
              if (m.status.ok()) {
                MutexLock l(&mu_);
                Job* j = schedule_.Find(offer.job_id);
                if (j != nullptr && j->state == JobState::kLeased && j->fence == offer.fence &&
                    j->lease_worker == worker && j->completing == 0) {
                  EndLeaseLocked(*j, FailKind::kHandedBack, "", clock_->NowMs(), nullptr);
                }
              }
              done(shared->status);
              return;
            }
            CompleteOutcome out{shared->duplicate, std::nullopt};
            if (m.status.ok()) {
              offer.attempt = std::get<GrantLease>(m.op).attempt;
              out.next = offer;
            }
            done(out);
          },
          /*must_succeed=*/true);
    }
    return;
  }
  std::string reason;
  if (const std::string* r = schedule_.RevokedReason(job_id, fence); r != nullptr) reason = *r;
  lock.Unlock();
  // Not leased under this token: either a repeat of a result already recorded, or stale. Either
  // way only the attempt's own holder is told which. (A repeat gets no next lease; the worker
  // asks with Lease.)
  absl::StatusOr<std::optional<ResultStore::AttemptLease>> attempt =
      store_->LeaseOfAttempt(job_id, fence);
  if (!attempt.ok()) {
    done(attempt.status());
    return;
  }
  if (attempt->has_value() &&
      ((*attempt)->worker_id != worker_id || !LeaseMatches((*attempt)->lease_id, lease_id))) {
    done(absl::PermissionDeniedError(absl::StrCat("job ", job_id.substr(0, 12),
                                                  " was not leased to ", worker_id,
                                                  " under this lease id and fencing token")));
    return;
  }
  absl::StatusOr<std::optional<int64_t>> recorded = store_->ResultFence(job_id);
  if (!recorded.ok()) {
    done(recorded.status());
    return;
  }
  if (recorded->has_value() && **recorded == fence) {
    done(CompleteOutcome{true, std::nullopt});
    return;
  }
  done(absl::FailedPreconditionError(absl::StrCat(
      "stale fencing token ", fence, " for job ", job_id.substr(0, 12),
      "; the result is rejected (",
      reason.empty() ? (recorded->has_value() ? "another worker's result is recorded"
                                              : "the job is not leased under this token")
                     : reason,
      ")")));
}

JobState Scheduler::EndLeaseLocked(Job& j, FailKind kind, const std::string& error, int64_t now,
                                   std::function<void(Mutation&)> done) {
  EndLease e = schedule_.EndLeaseOf(j, kind, error, now);
  const JobState new_state = e.new_state;
  Enqueue(std::move(e), std::move(done), /*must_succeed=*/true);
  return new_state;
}

void Scheduler::Fail(const std::string& worker_id, const std::string& job_id,
                     const std::string& lease_id, int64_t fence, FailKind kind,
                     const std::string& error, std::function<void(absl::StatusOr<JobState>)> done) {
  MutexLock lock(&mu_);
  const int64_t now = clock_->NowMs();
  schedule_.OnWorkerCall(now);
  Job* j = schedule_.Find(job_id);
  if (j != nullptr && j->state == JobState::kLeased && j->fence == fence) {
    if (absl::Status s = LeaseSchedule::CheckHolder(*j, worker_id, lease_id); !s.ok()) {
      lock.Unlock();
      done(s);
      return;
    }
  }
  if (j == nullptr || j->state != JobState::kLeased || j->fence != fence ||
      j->lease_worker != worker_id || j->completing > 0) {
    lock.Unlock();
    done(absl::FailedPreconditionError(
        absl::StrCat("stale fencing token ", fence, " for job ", job_id.substr(0, 12),
                     ": the job is not leased to ", worker_id, " under this token")));
    return;
  }
  EndLeaseLocked(*j, kind, error, now, [done](Mutation& m) {
    if (!m.status.ok()) {
      done(m.status);
    } else {
      done(std::get<EndLease>(m.op).new_state);
    }
  });
}

void Scheduler::PruneProgressLocked() {
  for (auto it = progress_.begin(); it != progress_.end();) {
    const Job* j = schedule_.Find(it->first);
    if (j == nullptr || j->state != JobState::kLeased || j->fence != it->second.fence) {
      it = progress_.erase(it);
    } else {
      ++it;
    }
  }
}

std::vector<JobProgress> Scheduler::RunningJobs(int64_t* now_ms) {
  MutexLock lock(&mu_);
  if (now_ms != nullptr) *now_ms = clock_->NowMs();
  PruneProgressLocked();
  std::vector<JobProgress> out;
  out.reserve(progress_.size());
  for (const auto& [id, lp] : progress_) out.push_back(lp.p);
  return out;
}

void Scheduler::ExpireLeases() {
  MutexLock lock(&mu_);
  if (progress_.size() > 2 * static_cast<size_t>(schedule_.leased()) + 64) PruneProgressLocked();
  const int64_t now = clock_->NowMs();
  for (const std::string& id : schedule_.Expired(now)) {
    Job* j = schedule_.Find(id);
    if (j == nullptr || j->state != JobState::kLeased) continue;
    if (j->completing > 0) continue;  // its result is being written
    EndLease e =
        schedule_.LoseLease(*j,
                            absl::StrCat("lease expired on worker ", j->lease_worker,
                                         " (no heartbeat for ", options_.lease_ttl_ms, " ms)"),
                            now);
    Enqueue(std::move(e), nullptr, /*must_succeed=*/true);
  }
}

// ---- Users -------------------------------------------------------------------------------------

absl::StatusOr<Mutation> Scheduler::EnqueueAndWait(Mutation::Op op) {
  auto promise = std::make_shared<std::promise<Mutation>>();
  std::future<Mutation> f = promise->get_future();
  {
    MutexLock lock(&mu_);
    Enqueue(
        std::move(op), [promise](Mutation& m) { promise->set_value(std::move(m)); }, false);
  }
  return f.get();
}

absl::StatusOr<SubmitOutcome> Scheduler::Submit(const ExpandedSweep& sweep, const std::string& yaml,
                                                const std::string& base_dir,
                                                const std::string& actor) {
  MutexLock admin(&admin_mu_);
  SubmitSweep op;
  op.name = sweep.name;
  op.spec_yaml = yaml;
  op.base_dir = base_dir;
  op.priority = sweep.priority;
  op.now_ms = clock_->NowMs();
  op.actor = actor;
  op.jobs.reserve(sweep.jobs.size());
  for (const SweepJob& sj : sweep.jobs) {
    NewJob nj;
    nj.job_id = sj.job_id;
    nj.spec_json = CanonicalJson(sj.spec.ToJson());
    nj.model_key = sj.spec.model_sha256;
    nj.priority = sweep.priority;
    nj.max_attempts = sweep.max_attempts;
    nj.labels_json = CanonicalJson(sj.labels);
    op.jobs.push_back(std::move(nj));
  }
  absl::StatusOr<Mutation> m = EnqueueAndWait(std::move(op));
  if (!m.ok()) return m.status();
  if (!m->status.ok()) return m->status;
  const SubmitSweep& done = std::get<SubmitSweep>(m->op);
  if (!done.queued_job_ids.empty()) {
    // The jobs are committed; nothing else can touch them until they are in memory (they are
    // not there yet, and Cancel/Retry wait for admin_mu_).
    absl::StatusOr<std::vector<ActiveJob>> loaded = store_->LoadJobs(done.queued_job_ids);
    if (!loaded.ok()) {
      committer_.RequestReload();
      return loaded.status();
    }
    MutexLock lock(&mu_);
    const int64_t now = clock_->NowMs();
    for (const ActiveJob& a : *loaded) schedule_.Adopt(a, now);
  }
  KV_LOG(INFO) << "sweep '" << sweep.name << "': " << sweep.jobs.size() << " jobs, "
               << done.enqueued << " enqueued, " << done.requeued << " requeued, " << done.done
               << " already done, " << done.pending << " pending elsewhere, " << done.failed
               << " failed earlier";
  return SubmitOutcome{done.enqueued, done.requeued, done.done, done.pending, done.failed};
}

absl::StatusOr<CancelOutcome> Scheduler::Cancel(const std::string& sweep,
                                                const std::string& actor) {
  MutexLock admin(&admin_mu_);
  absl::StatusOr<std::vector<SweepJobRef>> refs =
      store_->SweepJobs(sweep, {JobState::kQueued, JobState::kLeased});
  if (!refs.ok()) return refs.status();
  CancelOutcome out;
  CancelJobs op;
  op.sweep = sweep;
  op.actor = actor;
  auto promise = std::make_shared<std::promise<Mutation>>();
  std::future<Mutation> f = promise->get_future();
  {
    MutexLock lock(&mu_);
    op.now_ms = clock_->NowMs();
    for (const SweepJobRef& r : *refs) {
      if (r.shared_with_live_sweep) {
        ++out.kept_for_others;
        continue;
      }
      Job* j = schedule_.Find(r.job_id);
      if (j == nullptr || j->completing > 0) continue;  // finishing right now
      op.jobs.push_back({j->job_id, j->state, j->fence});
      if (j->state == JobState::kLeased) schedule_.Revoke(j->job_id, j->fence, "cancelled");
      schedule_.Forget(r.job_id);
    }
    Enqueue(
        std::move(op), [promise](Mutation& m) { promise->set_value(std::move(m)); }, true);
  }
  Mutation m = f.get();
  if (!m.status.ok()) return m.status;
  out.cancelled = std::get<CancelJobs>(m.op).cancelled;
  KV_LOG(INFO) << "sweep '" << sweep << "': cancelled " << out.cancelled << " jobs, kept "
               << out.kept_for_others << " needed by other sweeps";
  return out;
}

absl::StatusOr<int> Scheduler::Retry(const std::string& sweep, bool failed, bool quarantined,
                                     const std::string& actor) {
  MutexLock admin(&admin_mu_);
  std::vector<JobState> from;
  if (failed) from.push_back(JobState::kFailed);
  if (quarantined) from.push_back(JobState::kQuarantined);
  if (from.empty()) {
    return absl::InvalidArgumentError("retry: say which jobs (failed and/or quarantined)");
  }
  absl::StatusOr<std::vector<SweepJobRef>> refs = store_->SweepJobs(sweep, from);
  if (!refs.ok()) return refs.status();
  RequeueJobs op;
  op.from = from;
  op.sweep = sweep;
  op.actor = actor;
  op.now_ms = clock_->NowMs();
  for (const SweepJobRef& r : *refs) op.job_ids.push_back(r.job_id);
  if (op.job_ids.empty()) return 0;
  absl::StatusOr<Mutation> m = EnqueueAndWait(std::move(op));
  if (!m.ok()) return m.status();
  if (!m->status.ok()) return m->status;
  const std::vector<std::string>& ids = std::get<RequeueJobs>(m->op).requeued;
  absl::StatusOr<std::vector<ActiveJob>> loaded = store_->LoadJobs(ids);
  if (!loaded.ok()) return loaded.status();
  MutexLock lock(&mu_);
  const int64_t now = clock_->NowMs();
  for (const ActiveJob& a : *loaded) schedule_.Adopt(a, now);
  return static_cast<int>(ids.size());
}

void Scheduler::Flush() { committer_.Flush(); }

SchedulerStats Scheduler::Stats() {
  SchedulerStats s;
  {
    MutexLock lock(&mu_);
    s.leased = schedule_.leased();
    s.delayed = schedule_.delayed();
    s.queued = schedule_.jobs() - s.leased - s.delayed;
  }
  const GroupCommitter::Stats c = committer_.stats();
  s.commits = c.commits;
  s.mutations = c.mutations;
  s.apply_ms = c.apply_us / 1000.0;
  return s;
}

}  // namespace kvsweep

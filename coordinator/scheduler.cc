#include "coordinator/scheduler.h"

#include <algorithm>
#include <chrono>
#include <future>
#include <limits>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/json_util.h"
#include "common/log.h"
#include "coordinator/lease_secret.h"

namespace kvsweep {

namespace {

std::string RevokeKey(const std::string& job_id, int64_t fence) {
  return absl::StrCat(job_id, "#", fence);
}

std::string WorkerSessionKey(const std::string& worker_id, const std::string& session) {
  return absl::StrCat(worker_id, "\n", session);
}

constexpr size_t kMaxRevoked = 100000;
constexpr int64_t kNoDeadline = std::numeric_limits<int64_t>::max() / 2;
// Leases restored from the store expire no sooner than this (or two TTLs) after the first
// worker call once the coordinator is back: every worker's reconnect backoff (<= 5 s) fits.
constexpr int64_t kRestoredGraceMs = 10000;
constexpr int64_t kTouchEveryMs = 30000;

}  // namespace

MonotonicEpochClock::MonotonicEpochClock(std::function<int64_t()> wall_ms,
                                         std::function<int64_t()> mono_ms)
    : mono_ms_(std::move(mono_ms)), wall_at_start_(wall_ms()), mono_at_start_(mono_ms_()) {}

int64_t MonotonicEpochClock::NowMs() { return wall_at_start_ + (mono_ms_() - mono_at_start_); }

Clock* SystemClock() {
  static MonotonicEpochClock clock(
      [] {
        return std::chrono::duration_cast<std::chrono::milliseconds>(
                   std::chrono::system_clock::now().time_since_epoch())
            .count();
      },
      [] {
        return std::chrono::duration_cast<std::chrono::milliseconds>(
                   std::chrono::steady_clock::now().time_since_epoch())
            .count();
      });
  return &clock;
}

Scheduler::Scheduler(ResultStore* store, Clock* clock, const SchedulerOptions& options)
    : store_(store), clock_(clock), options_(options) {}

Scheduler::~Scheduler() { Stop(); }

absl::Status Scheduler::Start() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    absl::Status s = LoadAll();
    if (!s.ok()) return s;
    KV_LOG(INFO) << "scheduler: " << jobs_.size() << " active jobs (" << leased_count_
                 << " leased) loaded";
  }
  started_ = true;
  answerer_ = std::thread([this] { AnswerLoop(); });
  committer_ = std::thread([this] { CommitLoop(); });
  if (options_.reaper_thread) reaper_ = std::thread([this] { ReaperLoop(); });
  return absl::OkStatus();
}

void Scheduler::Stop() {
  if (!started_) return;
  started_ = false;
  {
    std::lock_guard<std::mutex> lock(reaper_mu_);
    std::lock_guard<std::mutex> q(q_mu_);
    stopping_ = true;
  }
  reaper_cv_.notify_all();
  q_cv_.notify_all();
  if (reaper_.joinable()) reaper_.join();
  if (committer_.joinable()) committer_.join();
  {
    std::lock_guard<std::mutex> a(a_mu_);
    a_stop_ = true;
  }
  a_cv_.notify_all();
  if (answerer_.joinable()) answerer_.join();  // after answering everything handed to it
  KV_LOG(INFO) << "scheduler: stopped after " << commits_ << " commits of " << mutations_
               << " mutations, " << (commits_ > 0 ? apply_us_ / 1000.0 / commits_ : 0.0)
               << " ms per commit (" << commit_ms_.Summary() << ")";
}

// ---- Memory bookkeeping (mu_ held) -------------------------------------------------------------

absl::Status Scheduler::LoadAll() {
  absl::StatusOr<std::vector<ActiveJob>> active = store_->LoadActiveJobs();
  if (!active.ok()) return active.status();
  jobs_.clear();
  ready_.clear();
  delayed_.clear();
  deadlines_.clear();
  worker_lease_.clear();
  leased_count_ = 0;
  const int64_t now = clock_->NowMs();
  restored_.clear();
  for (const ActiveJob& a : *active) {
    Adopt(a, now);
    MemJob& j = jobs_.at(a.job_id);
    if (j.state == JobState::kLeased) {
      // Its worker may be retrying with a long backoff: no deadline until workers are back.
      SetDeadline(j, kNoDeadline);
      restored_.push_back(j.job_id);
    }
  }
  awaiting_worker_ = !restored_.empty();
  return absl::OkStatus();
}

void Scheduler::OnWorkerCall(int64_t now) {
  if (!awaiting_worker_) return;
  awaiting_worker_ = false;
  const int64_t grace = std::max<int64_t>(2 * int64_t{options_.lease_ttl_ms}, kRestoredGraceMs);
  for (const std::string& id : restored_) {
    auto it = jobs_.find(id);
    if (it == jobs_.end() || it->second.state != JobState::kLeased) continue;
    if (it->second.deadline_ms == kNoDeadline) SetDeadline(it->second, now + grace);
  }
  KV_LOG(INFO) << "scheduler: a worker is back; " << restored_.size()
               << " leases held across the restart expire in " << grace
               << " ms unless their workers renew them";
  restored_.clear();
}

void Scheduler::Adopt(const ActiveJob& a, int64_t now) {
  if (jobs_.count(a.job_id)) return;
  MemJob& j = jobs_[a.job_id];
  j.job_id = a.job_id;
  j.spec_json = a.spec_json;
  j.model_key = a.model_key;
  j.state = a.state;
  j.priority = a.priority;
  j.attempts = a.attempts;
  j.max_attempts = a.max_attempts;
  j.next_eligible_ms = a.next_eligible_ms;
  j.fence = a.fence;
  j.seq = a.seq;
  j.crash_workers = a.crash_workers;
  j.task = a.task;
  if (a.state == JobState::kLeased) {
    j.lease_key = a.lease_id;
    j.lease_worker = a.lease_worker;
    // Renewals live in memory only: a lease found in the store gets a fresh TTL, so workers
    // that kept running through a coordinator restart are not declared dead. (Its session is
    // not known: the lease is not handed out again, it is renewed or it expires.)
    SetDeadline(j, std::max(a.lease_deadline_ms, now + options_.lease_ttl_ms));
    ++leased_count_;
  } else {
    MakeReady(j, now);
  }
}

void Scheduler::MakeReady(MemJob& j, int64_t now) {
  if (j.next_eligible_ms > now) {
    delayed_.insert({j.next_eligible_ms, j.job_id});
  } else {
    ready_[j.priority][j.model_key].insert({j.seq, j.job_id});
  }
}

void Scheduler::Unready(MemJob& j) {
  delayed_.erase({j.next_eligible_ms, j.job_id});
  auto p = ready_.find(j.priority);
  if (p == ready_.end()) return;
  auto m = p->second.find(j.model_key);
  if (m == p->second.end()) return;
  m->second.erase({j.seq, j.job_id});
  if (m->second.empty()) p->second.erase(m);
  if (p->second.empty()) ready_.erase(p);
}

void Scheduler::SetDeadline(MemJob& j, int64_t deadline) {
  deadlines_.erase({j.deadline_ms, j.job_id});
  j.deadline_ms = deadline;
  deadlines_.insert({deadline, j.job_id});
}

void Scheduler::Forget(const std::string& job_id) {
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) return;
  MemJob& j = it->second;
  if (j.state == JobState::kLeased) {
    deadlines_.erase({j.deadline_ms, j.job_id});
    auto w = worker_lease_.find(WorkerSessionKey(j.lease_worker, j.lease_session));
    if (w != worker_lease_.end() && w->second == job_id) worker_lease_.erase(w);
    --leased_count_;
  } else {
    Unready(j);
  }
  jobs_.erase(it);
}

void Scheduler::PromoteDelayed(int64_t now) {
  while (!delayed_.empty() && delayed_.begin()->first <= now) {
    const std::string id = delayed_.begin()->second;
    delayed_.erase(delayed_.begin());
    auto it = jobs_.find(id);
    if (it == jobs_.end()) continue;
    MemJob& j = it->second;
    ready_[j.priority][j.model_key].insert({j.seq, j.job_id});
  }
}

Scheduler::MemJob* Scheduler::PickJob(const std::string& held_model) {
  for (auto& [priority, models] : ready_) {
    if (models.empty()) continue;
    std::set<ReadyKey>* pick = nullptr;
    if (!held_model.empty()) {
      auto m = models.find(held_model);
      if (m != models.end() && !m->second.empty()) pick = &m->second;
    }
    if (pick == nullptr) {
      // No affinity: the oldest job of this priority.
      for (auto& [model, set] : models) {
        if (!set.empty() && (pick == nullptr || *set.begin() < *pick->begin())) pick = &set;
      }
    }
    if (pick != nullptr) return &jobs_.at(pick->begin()->second);
  }
  return nullptr;
}

void Scheduler::Revoke(const std::string& job_id, int64_t fence, const std::string& reason) {
  const std::string key = RevokeKey(job_id, fence);
  if (revoked_.emplace(key, reason).second) revoked_order_.push_back(key);
  while (revoked_order_.size() > kMaxRevoked) {
    revoked_.erase(revoked_order_.front());
    revoked_order_.pop_front();
  }
}

int64_t Scheduler::Backoff(int attempts) const {
  int64_t d = options_.retry_base_ms;
  for (int i = 1; i < attempts && d < options_.retry_max_ms; ++i) d *= 2;
  return std::min<int64_t>(d, options_.retry_max_ms);
}

absl::Status Scheduler::CheckResultIsFor(const ResultMetrics& m, const MemJob& j) {
  if (!m.job_id.empty() && m.job_id != j.job_id) {
    return absl::InvalidArgumentError(absl::StrCat("result_json.job_id: ", m.job_id.substr(0, 12),
                                                   " is not the completed job ",
                                                   j.job_id.substr(0, 12)));
  }
  if (m.tasks.size() != 1 || m.tasks[0] != j.task) {
    return absl::InvalidArgumentError(absl::StrCat(
        "result_json.metrics: has results for '", absl::StrJoin(m.tasks, "', '"),
        "'; job ", j.job_id.substr(0, 12), " is task '", j.task, "'"));
  }
  return absl::OkStatus();
}

absl::Status Scheduler::CheckHolder(const MemJob& j, const std::string& worker_id,
                                    const std::string& lease_id) const {
  if (j.lease_worker != worker_id || !LeaseMatches(j.lease_key, lease_id)) {
    return absl::PermissionDeniedError(
        absl::StrCat("job ", j.job_id.substr(0, 12), " is not leased to ", worker_id,
                     " under this lease id"));
  }
  return absl::OkStatus();
}

void Scheduler::Enqueue(Mutation::Op op, std::function<void(Mutation&)> done, bool must_succeed) {
  std::lock_guard<std::mutex> q(q_mu_);
  queue_.push_back(Pending{Mutation(std::move(op)), std::move(done), must_succeed});
  ++enqueued_;
  q_cv_.notify_one();
}

void Scheduler::LoseLease(MemJob& j, const std::string& why, int64_t now) {
  std::vector<std::string> crash = j.crash_workers;
  if (std::find(crash.begin(), crash.end(), j.lease_worker) == crash.end()) {
    crash.push_back(j.lease_worker);
  }
  EndLease e;
  e.job_id = j.job_id;
  e.fence = j.fence;
  e.outcome = AttemptOutcome::kLost;
  e.crash_workers = crash;
  e.now_ms = now;
  if (static_cast<int>(crash.size()) >= options_.quarantine_after) {
    e.new_state = JobState::kQuarantined;
    e.error = absl::StrCat("quarantined: lost its lease on ", crash.size(),
                           " different workers (", absl::StrJoin(crash, ", "),
                           "); it kills or hangs workers. Last: ", why);
  } else if (j.attempts >= j.max_attempts) {
    e.new_state = JobState::kFailed;
    e.error = absl::StrCat("gave up after ", j.attempts, " attempts. Last: ", why);
  } else {
    e.new_state = JobState::kQueued;
    e.next_eligible_ms = now + Backoff(j.attempts);
    e.error = why;
  }
  KV_LOG(WARNING) << "job " << j.job_id.substr(0, 12) << ": " << why << " -> "
                  << JobStateName(e.new_state);
  Revoke(j.job_id, j.fence, absl::StrCat("lease lost: ", why));
  const std::string id = j.job_id;
  if (e.new_state == JobState::kQueued) {
    j.crash_workers = crash;
    Requeue(j, e.next_eligible_ms, now);
  } else {
    Forget(id);
  }
  Enqueue(std::move(e), nullptr, /*must_succeed=*/true);
}

void Scheduler::Requeue(MemJob& j, int64_t next_eligible_ms, int64_t now) {
  deadlines_.erase({j.deadline_ms, j.job_id});
  auto w = worker_lease_.find(WorkerSessionKey(j.lease_worker, j.lease_session));
  if (w != worker_lease_.end() && w->second == j.job_id) worker_lease_.erase(w);
  --leased_count_;
  j.state = JobState::kQueued;
  j.fence++;
  j.lease_key.clear();
  j.lease_secret.clear();
  j.lease_worker.clear();
  j.lease_session.clear();
  j.next_eligible_ms = next_eligible_ms;
  MakeReady(j, now);
}

// ---- Workers -----------------------------------------------------------------------------------

Scheduler::Decision Scheduler::DecideLease(const WorkerRecord& worker,
                                           const std::string& session,
                                           const std::string& held_model, int64_t now,
                                           LeaseOffer* offer, GrantLease* grant) {
  OnWorkerCall(now);
  auto touched = worker_touched_.find(worker.worker_id);
  if (touched == worker_touched_.end() || now - touched->second > kTouchEveryMs) {
    worker_touched_[worker.worker_id] = now;
    Enqueue(TouchWorker{worker, now}, nullptr, false);
  }
  // The same worker session asking while it holds a lease did not get our answer: hand out
  // the same lease again. A Lease under the same worker id from another session (a restarted
  // worker, or anyone who knows the id) leaves that lease alone: it is renewed by its holder or
  // expires.
  auto held = worker_lease_.find(WorkerSessionKey(worker.worker_id, session));
  if (held != worker_lease_.end()) {
    auto it = jobs_.find(held->second);
    if (it != jobs_.end() && it->second.state == JobState::kLeased &&
        it->second.lease_worker == worker.worker_id && it->second.lease_session == session &&
        !it->second.lease_secret.empty() && it->second.completing == 0) {
      MemJob& j = it->second;
      SetDeadline(j, now + options_.lease_ttl_ms);
      *offer = LeaseOffer{true, j.job_id, j.spec_json, j.lease_secret, j.fence, j.deadline_ms,
                          j.attempts, 0};
      return Decision::kRepeat;
    }
  }
  PromoteDelayed(now);
  MemJob* j = PickJob(held_model);
  if (j == nullptr) {
    *offer = LeaseOffer();
    offer->retry_after_ms = options_.idle_retry_ms;
    if (!delayed_.empty()) {
      offer->retry_after_ms = static_cast<int>(
          std::clamp<int64_t>(delayed_.begin()->first - now, 20, options_.idle_retry_ms));
    }
    return Decision::kNone;
  }
  Unready(*j);
  const int64_t expected = j->fence;
  j->state = JobState::kLeased;
  j->fence++;
  j->attempts++;
  j->lease_secret = NewLeaseSecret();
  j->lease_key = LeaseKey(j->lease_secret);
  j->lease_worker = worker.worker_id;
  j->lease_session = session;
  SetDeadline(*j, now + options_.lease_ttl_ms);
  worker_lease_[WorkerSessionKey(worker.worker_id, session)] = j->job_id;
  ++leased_count_;
  *offer = LeaseOffer{true, j->job_id, j->spec_json, j->lease_secret, j->fence, j->deadline_ms,
                      j->attempts, 0};
  grant->job_id = j->job_id;
  grant->expected_fence = expected;
  grant->lease_id = j->lease_key;
  grant->worker_id = worker.worker_id;
  grant->deadline_ms = j->deadline_ms;
  grant->now_ms = now;
  return Decision::kNew;
}

void Scheduler::Lease(const WorkerRecord& worker, const std::string& session,
                      const std::string& held_model,
                      std::function<void(absl::StatusOr<LeaseOffer>)> done) {
  std::unique_lock<std::mutex> lock(mu_);
  const int64_t now = clock_->NowMs();
  LeaseOffer offer;
  GrantLease grant;
  switch (DecideLease(worker, session, held_model, now, &offer, &grant)) {
    case Decision::kNone:
      lock.unlock();
      done(offer);
      return;
    case Decision::kRepeat:
      // Answered after a commit, so the grant it repeats is durable by then.
      Enqueue(TouchWorker{worker, now},
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
      Enqueue(std::move(grant),
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
                                                    const std::string& lease_id, int64_t fence) {
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t now = clock_->NowMs();
  OnWorkerCall(now);
  auto it = jobs_.find(job_id);
  if (it != jobs_.end() && it->second.state == JobState::kLeased && it->second.fence == fence) {
    if (absl::Status s = CheckHolder(it->second, worker_id, lease_id); !s.ok()) return s;
    SetDeadline(it->second, now + options_.lease_ttl_ms);
    return HeartbeatReply{true, "", it->second.deadline_ms};
  }
  HeartbeatReply r;
  auto rv = revoked_.find(RevokeKey(job_id, fence));
  if (rv != revoked_.end()) {
    r.reason = rv->second;
  } else {
    r.reason = absl::StrCat("lease lost: fencing token ", fence, " for job ",
                            job_id.substr(0, 12), " is not current");
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
  std::unique_lock<std::mutex> lock(mu_);
  const int64_t now = clock_->NowMs();
  OnWorkerCall(now);
  auto it = jobs_.find(job_id);
  if (it != jobs_.end() && it->second.state == JobState::kLeased && it->second.fence == fence) {
    absl::Status holder = CheckHolder(it->second, worker_id, lease_id);
    if (holder.ok()) holder = CheckResultIsFor(*metrics, it->second);
    if (!holder.ok()) {
      lock.unlock();
      done(holder);
      return;
    }
    it->second.completing++;
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
        next != nullptr &&
        DecideLease(next->worker, next->session, next->held_model, now, &offer, &grant) ==
            Decision::kNew;
    Enqueue(std::move(r),
            [this, job_id, fence, done, shared, granting](Mutation& m) {
              {
                std::lock_guard<std::mutex> l(mu_);
                auto it = jobs_.find(job_id);
                if (it != jobs_.end() && it->second.fence == fence) {
                  // (> 0 check: a reload after a storage error resets the count.)
                  if (it->second.completing > 0) it->second.completing--;
                  if (m.status.ok()) Forget(job_id);
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
      Enqueue(std::move(grant),
              [this, done, shared, offer, worker](Mutation& m) mutable {
                if (!shared->status.ok()) {
                  // The result was refused: do not keep the lease we decided with it.
                  if (m.status.ok()) {
                    std::lock_guard<std::mutex> l(mu_);
                    auto it = jobs_.find(offer.job_id);
                    if (it != jobs_.end() && it->second.state == JobState::kLeased &&
                        it->second.fence == offer.fence && it->second.lease_worker == worker &&
                        it->second.completing == 0) {
                      EndLeaseLocked(it->second, FailKind::kHandedBack, "", clock_->NowMs(),
                                     nullptr);
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
  auto rv = revoked_.find(RevokeKey(job_id, fence));
  if (rv != revoked_.end()) reason = rv->second;
  lock.unlock();
  // Not leased under this token: either a repeat of a result already recorded, or stale. Either
  // way only the attempt's own holder is told which. (A repeat gets no next lease; the worker
  // asks with Lease.)
  absl::StatusOr<std::optional<ResultStore::AttemptLease>> attempt =
      store_->LeaseOfAttempt(job_id, fence);
  if (!attempt.ok()) {
    done(attempt.status());
    return;
  }
  if (attempt->has_value() && ((*attempt)->worker_id != worker_id ||
                               !LeaseMatches((*attempt)->lease_id, lease_id))) {
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

JobState Scheduler::EndLeaseLocked(MemJob& j, FailKind kind, const std::string& error,
                                   int64_t now, std::function<void(Mutation&)> done) {
  EndLease e;
  e.job_id = j.job_id;
  e.fence = j.fence;
  e.now_ms = now;
  e.error = error;
  switch (kind) {
    case FailKind::kHandedBack:
      e.outcome = AttemptOutcome::kHandedBack;
      e.new_state = JobState::kQueued;
      e.refund_attempt = true;
      e.error.clear();  // not an error of the job
      j.attempts--;
      break;
    case FailKind::kPermanent:
      e.outcome = AttemptOutcome::kFailed;
      e.new_state = JobState::kFailed;
      break;
    case FailKind::kRetryable:
      e.outcome = AttemptOutcome::kFailed;
      if (j.attempts >= j.max_attempts) {
        e.new_state = JobState::kFailed;
        e.error = absl::StrCat("gave up after ", j.attempts, " attempts. Last: ", error);
      } else {
        e.new_state = JobState::kQueued;
        e.next_eligible_ms = now + Backoff(j.attempts);
      }
      break;
  }
  const JobState new_state = e.new_state;
  const std::string job_id = j.job_id;
  if (new_state == JobState::kQueued) {
    Requeue(j, e.next_eligible_ms, now);
  } else {
    Forget(job_id);
  }
  Enqueue(std::move(e), std::move(done), /*must_succeed=*/true);
  return new_state;
}

void Scheduler::Fail(const std::string& worker_id, const std::string& job_id,
                     const std::string& lease_id, int64_t fence, FailKind kind,
                     const std::string& error,
                     std::function<void(absl::StatusOr<JobState>)> done) {
  std::unique_lock<std::mutex> lock(mu_);
  const int64_t now = clock_->NowMs();
  OnWorkerCall(now);
  auto it = jobs_.find(job_id);
  if (it != jobs_.end() && it->second.state == JobState::kLeased && it->second.fence == fence) {
    if (absl::Status s = CheckHolder(it->second, worker_id, lease_id); !s.ok()) {
      lock.unlock();
      done(s);
      return;
    }
  }
  if (it == jobs_.end() || it->second.state != JobState::kLeased || it->second.fence != fence ||
      it->second.lease_worker != worker_id || it->second.completing > 0) {
    lock.unlock();
    done(absl::FailedPreconditionError(
        absl::StrCat("stale fencing token ", fence, " for job ", job_id.substr(0, 12),
                     ": the job is not leased to ", worker_id, " under this token")));
    return;
  }
  EndLeaseLocked(it->second, kind, error, now, [done](Mutation& m) {
    if (!m.status.ok()) {
      done(m.status);
    } else {
      done(std::get<EndLease>(m.op).new_state);
    }
  });
}

void Scheduler::ExpireLeases() {
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t now = clock_->NowMs();
  std::vector<std::string> expired;
  for (const auto& [deadline, id] : deadlines_) {
    if (deadline >= now) break;
    expired.push_back(id);
  }
  for (const std::string& id : expired) {
    auto it = jobs_.find(id);
    if (it == jobs_.end() || it->second.state != JobState::kLeased) continue;
    MemJob& j = it->second;
    if (j.completing > 0) continue;  // its result is being written
    LoseLease(j,
              absl::StrCat("lease expired on worker ", j.lease_worker, " (no heartbeat for ",
                           options_.lease_ttl_ms, " ms)"),
              now);
  }
}

// ---- Users -------------------------------------------------------------------------------------

absl::StatusOr<Mutation> Scheduler::EnqueueAndWait(Mutation::Op op) {
  auto promise = std::make_shared<std::promise<Mutation>>();
  std::future<Mutation> f = promise->get_future();
  {
    std::lock_guard<std::mutex> lock(mu_);
    Enqueue(std::move(op), [promise](Mutation& m) { promise->set_value(std::move(m)); }, false);
  }
  return f.get();
}

absl::StatusOr<SubmitOutcome> Scheduler::Submit(const ExpandedSweep& sweep,
                                                const std::string& yaml,
                                                const std::string& base_dir,
                                                const std::string& actor) {
  std::lock_guard<std::mutex> admin(admin_mu_);
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
      std::lock_guard<std::mutex> q(q_mu_);
      reload_requested_ = true;
      q_cv_.notify_one();
      return loaded.status();
    }
    std::lock_guard<std::mutex> lock(mu_);
    const int64_t now = clock_->NowMs();
    for (const ActiveJob& a : *loaded) Adopt(a, now);
  }
  KV_LOG(INFO) << "sweep '" << sweep.name << "': " << sweep.jobs.size() << " jobs, "
               << done.enqueued << " enqueued, " << done.requeued << " requeued, " << done.done
               << " already done, " << done.pending << " pending elsewhere, " << done.failed
               << " failed earlier";
  return SubmitOutcome{done.enqueued, done.requeued, done.done, done.pending, done.failed};
}

absl::StatusOr<CancelOutcome> Scheduler::Cancel(const std::string& sweep,
                                                const std::string& actor) {
  std::lock_guard<std::mutex> admin(admin_mu_);
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
    std::lock_guard<std::mutex> lock(mu_);
    op.now_ms = clock_->NowMs();
    for (const SweepJobRef& r : *refs) {
      if (r.shared_with_live_sweep) {
        ++out.kept_for_others;
        continue;
      }
      auto it = jobs_.find(r.job_id);
      if (it == jobs_.end() || it->second.completing > 0) continue;  // finishing right now
      MemJob& j = it->second;
      op.jobs.push_back({j.job_id, j.state, j.fence});
      if (j.state == JobState::kLeased) Revoke(j.job_id, j.fence, "cancelled");
      Forget(r.job_id);
    }
    Enqueue(std::move(op), [promise](Mutation& m) { promise->set_value(std::move(m)); }, true);
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
  std::lock_guard<std::mutex> admin(admin_mu_);
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
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t now = clock_->NowMs();
  for (const ActiveJob& a : *loaded) Adopt(a, now);
  return static_cast<int>(ids.size());
}

// ---- Threads -----------------------------------------------------------------------------------

void Scheduler::CommitLoop() {
  for (;;) {
    std::vector<Pending> batch;
    bool reload = false;
    int64_t reload_batch = 0;
    {
      std::unique_lock<std::mutex> q(q_mu_);
      q_cv_.wait(q, [this] { return !queue_.empty() || stopping_ || reload_requested_; });
      if (queue_.empty() && stopping_) {
        // A callback still running may queue one more mutation (a lease handed back).
        q.unlock();
        WaitAnswered();
        q.lock();
        if (queue_.empty()) return;
      }
      if (static_cast<int>(queue_.size()) <= options_.max_batch) {
        batch.swap(queue_);
      } else {
        batch.assign(std::make_move_iterator(queue_.begin()),
                     std::make_move_iterator(queue_.begin() + options_.max_batch));
        queue_.erase(queue_.begin(), queue_.begin() + options_.max_batch);
      }
      reload = reload_requested_;
    }
    if (!batch.empty()) {
      std::vector<Mutation> muts;
      muts.reserve(batch.size());
      for (Pending& p : batch) muts.push_back(std::move(p.mutation));
      const auto apply_start = std::chrono::steady_clock::now();
      absl::Status s = store_->Apply(muts);
      const int64_t apply_us = std::chrono::duration_cast<std::chrono::microseconds>(
                                   std::chrono::steady_clock::now() - apply_start)
                                   .count();
      if (!s.ok()) {
        KV_LOG(ERROR) << "commit of " << muts.size() << " mutations failed: " << s;
        reload = true;
      }
      for (size_t i = 0; i < muts.size(); ++i) {
        if (!muts[i].status.ok() && batch[i].must_succeed &&
            !absl::IsInvalidArgument(muts[i].status)) {
          if (s.ok()) {
            KV_LOG(ERROR) << "store refused a scheduled mutation (" << muts[i].status
                          << "); reloading the schedule from the store";
          }
          reload = true;
        }
      }
      commit_ms_.Record(apply_us / 1000.0);
      {
        std::lock_guard<std::mutex> q(q_mu_);
        ++commits_;
        mutations_ += static_cast<int64_t>(muts.size());
        apply_us_ += apply_us;
      }
      // A batch that causes a reload counts as answered only after it (below), so that
      // Flush() also waits for the reload.
      const int64_t n = static_cast<int64_t>(muts.size());
      Answer(std::move(batch), std::move(muts), reload ? 0 : n);
      if (reload) reload_batch = n;
    }
    if (reload) {
      // The callbacks update memory; let them all run on the memory they were decided on
      // before it is thrown away.
      WaitAnswered();
      std::vector<Pending> failed;
      Recover(&failed);
      std::vector<Mutation> muts;
      muts.reserve(failed.size());
      for (Pending& p : failed) {
        p.mutation.status =
            absl::UnavailableError("coordinator storage error; the schedule was reloaded, retry");
        muts.push_back(std::move(p.mutation));
      }
      const int64_t n = static_cast<int64_t>(muts.size()) + reload_batch;
      Answer(std::move(failed), std::move(muts), n);
    }
  }
}

void Scheduler::Answer(std::vector<Pending> batch, std::vector<Mutation> muts, int64_t count) {
  {
    std::lock_guard<std::mutex> a(a_mu_);
    answers_.push_back(AnswerBatch{std::move(batch), std::move(muts), count});
  }
  a_cv_.notify_all();
}

void Scheduler::WaitAnswered() {
  std::unique_lock<std::mutex> a(a_mu_);
  a_cv_.wait(a, [this] { return answers_.empty() && !a_busy_; });
}

void Scheduler::AnswerLoop() {
  std::unique_lock<std::mutex> a(a_mu_);
  for (;;) {
    a_cv_.wait(a, [this] { return !answers_.empty() || a_stop_; });
    if (answers_.empty()) return;  // stopping, and everything handed over is answered
    AnswerBatch b = std::move(answers_.front());
    answers_.pop_front();
    a_busy_ = true;
    a.unlock();
    for (size_t i = 0; i < b.pending.size(); ++i) {
      if (b.pending[i].done) b.pending[i].done(b.muts[i]);
    }
    {
      std::lock_guard<std::mutex> q(q_mu_);
      answered_ += b.count;
      flushed_cv_.notify_all();
    }
    a.lock();
    a_busy_ = false;
    a_cv_.notify_all();
  }
}

void Scheduler::Recover(std::vector<Pending>* failed) {
  std::lock_guard<std::mutex> lock(mu_);
  {
    std::lock_guard<std::mutex> q(q_mu_);
    // Everything still queued was decided on the memory we are about to throw away.
    for (Pending& p : queue_) failed->push_back(std::move(p));
    queue_.clear();
    reload_requested_ = false;
  }
  absl::Status s = LoadAll();
  if (!s.ok()) {
    KV_LOG(ERROR) << "reloading the schedule failed (" << s << "); will retry";
    std::lock_guard<std::mutex> q(q_mu_);
    reload_requested_ = true;
  } else {
    KV_LOG(WARNING) << "schedule reloaded from the store: " << jobs_.size() << " active jobs";
  }
}

void Scheduler::ReaperLoop() {
  const int period = std::clamp(options_.lease_ttl_ms / 8, 20, 1000);
  std::unique_lock<std::mutex> lock(reaper_mu_);
  while (!stopping_) {
    reaper_cv_.wait_for(lock, std::chrono::milliseconds(period));
    if (stopping_) break;
    lock.unlock();
    ExpireLeases();
    lock.lock();
  }
}

void Scheduler::Flush() {
  std::unique_lock<std::mutex> q(q_mu_);
  const int64_t target = enqueued_;
  flushed_cv_.wait(q, [&] { return answered_ >= target; });
}

SchedulerStats Scheduler::Stats() {
  SchedulerStats s;
  {
    std::lock_guard<std::mutex> lock(mu_);
    s.leased = leased_count_;
    s.delayed = static_cast<int64_t>(delayed_.size());
    s.queued = static_cast<int64_t>(jobs_.size()) - leased_count_ - s.delayed;
  }
  std::lock_guard<std::mutex> q(q_mu_);
  s.commits = commits_;
  s.mutations = mutations_;
  s.apply_ms = apply_us_ / 1000.0;
  return s;
}

}  // namespace kvsweep

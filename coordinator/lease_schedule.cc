#include "coordinator/lease_schedule.h"

#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
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

void LeaseSchedule::Load(const std::vector<ActiveJob>& active, int64_t now) {
  jobs_.clear();
  ready_.clear();
  delayed_.clear();
  deadlines_.clear();
  worker_lease_.clear();
  leased_count_ = 0;
  restored_.clear();
  for (const ActiveJob& a : active) {
    Adopt(a, now);
    Job& j = jobs_.at(a.job_id);
    if (j.state == JobState::kLeased) {
      // Its worker may be retrying with a long backoff: no deadline until workers are back.
      SetDeadline(j, kNoDeadline);
      restored_.push_back(j.job_id);
    }
  }
  awaiting_worker_ = !restored_.empty();
}

void LeaseSchedule::OnWorkerCall(int64_t now) {
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

void LeaseSchedule::Adopt(const ActiveJob& a, int64_t now) {
  if (jobs_.count(a.job_id)) return;
  Job& j = jobs_[a.job_id];
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

void LeaseSchedule::MakeReady(Job& j, int64_t now) {
  if (j.next_eligible_ms > now) {
    delayed_.insert({j.next_eligible_ms, j.job_id});
  } else {
    ready_[j.priority][j.model_key].insert({j.seq, j.job_id});
  }
}

void LeaseSchedule::Unready(Job& j) {
  delayed_.erase({j.next_eligible_ms, j.job_id});
  auto p = ready_.find(j.priority);
  if (p == ready_.end()) return;
  auto m = p->second.find(j.model_key);
  if (m == p->second.end()) return;
  m->second.erase({j.seq, j.job_id});
  if (m->second.empty()) p->second.erase(m);
  if (p->second.empty()) ready_.erase(p);
}

void LeaseSchedule::SetDeadline(Job& j, int64_t deadline) {
  deadlines_.erase({j.deadline_ms, j.job_id});
  j.deadline_ms = deadline;
  deadlines_.insert({deadline, j.job_id});
}

LeaseSchedule::Job* LeaseSchedule::Find(const std::string& job_id) {
  auto it = jobs_.find(job_id);
  return it == jobs_.end() ? nullptr : &it->second;
}

void LeaseSchedule::Forget(const std::string& job_id) {
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) return;
  Job& j = it->second;
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

void LeaseSchedule::PromoteDelayed(int64_t now) {
  while (!delayed_.empty() && delayed_.begin()->first <= now) {
    const std::string id = delayed_.begin()->second;
    delayed_.erase(delayed_.begin());
    auto it = jobs_.find(id);
    if (it == jobs_.end()) continue;
    Job& j = it->second;
    ready_[j.priority][j.model_key].insert({j.seq, j.job_id});
  }
}

LeaseSchedule::Job* LeaseSchedule::PickJob(const std::string& held_model) {
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

void LeaseSchedule::Revoke(const std::string& job_id, int64_t fence, const std::string& reason) {
  const std::string key = RevokeKey(job_id, fence);
  if (revoked_.emplace(key, reason).second) revoked_order_.push_back(key);
  while (revoked_order_.size() > kMaxRevoked) {
    revoked_.erase(revoked_order_.front());
    revoked_order_.pop_front();
  }
}

const std::string* LeaseSchedule::RevokedReason(const std::string& job_id, int64_t fence) const {
  auto rv = revoked_.find(RevokeKey(job_id, fence));
  return rv == revoked_.end() ? nullptr : &rv->second;
}

std::vector<std::string> LeaseSchedule::Expired(int64_t now) const {
  std::vector<std::string> expired;
  for (const auto& [deadline, id] : deadlines_) {
    if (deadline >= now) break;
    expired.push_back(id);
  }
  return expired;
}

int64_t LeaseSchedule::Backoff(int attempts) const {
  int64_t d = options_.retry_base_ms;
  for (int i = 1; i < attempts && d < options_.retry_max_ms; ++i) d *= 2;
  return std::min<int64_t>(d, options_.retry_max_ms);
}

absl::Status LeaseSchedule::CheckResultIsFor(const ResultMetrics& m, const Job& j) {
  if (!m.job_id.empty() && m.job_id != j.job_id) {
    return absl::InvalidArgumentError(absl::StrCat("result_json.job_id: ", m.job_id.substr(0, 12),
                                                   " is not the completed job ",
                                                   j.job_id.substr(0, 12)));
  }
  if (m.tasks.size() != 1 || m.tasks[0] != j.task) {
    return absl::InvalidArgumentError(
        absl::StrCat("result_json.metrics: has results for '", absl::StrJoin(m.tasks, "', '"),
                     "'; job ", j.job_id.substr(0, 12), " is task '", j.task, "'"));
  }
  return absl::OkStatus();
}

absl::Status LeaseSchedule::CheckHolder(const Job& j, const std::string& worker_id,
                                        const std::string& lease_id) {
  if (j.lease_worker != worker_id || !LeaseMatches(j.lease_key, lease_id)) {
    return absl::PermissionDeniedError(absl::StrCat(
        "job ", j.job_id.substr(0, 12), " is not leased to ", worker_id, " under this lease id"));
  }
  return absl::OkStatus();
}

EndLease LeaseSchedule::LoseLease(Job& j, const std::string& why, int64_t now) {
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
    e.error = absl::StrCat("quarantined: lost its lease on ", crash.size(), " different workers (",
                           absl::StrJoin(crash, ", "), "); it kills or hangs workers. Last: ", why);
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
  return e;
}

void LeaseSchedule::Requeue(Job& j, int64_t next_eligible_ms, int64_t now) {
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

LeaseSchedule::Decision LeaseSchedule::DecideLease(const WorkerRecord& worker,
                                                   const std::string& session,
                                                   const std::string& held_model, int64_t now,
                                                   LeaseOffer* offer, GrantLease* grant,
                                                   bool* touch) {
  OnWorkerCall(now);
  auto touched = worker_touched_.find(worker.worker_id);
  *touch = touched == worker_touched_.end() || now - touched->second > kTouchEveryMs;
  if (*touch) worker_touched_[worker.worker_id] = now;
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
      Job& j = it->second;
      SetDeadline(j, now + options_.lease_ttl_ms);
      *offer = LeaseOffer{true,    j.job_id,      j.spec_json, j.lease_secret,
                          j.fence, j.deadline_ms, j.attempts,  0};
      return Decision::kRepeat;
    }
  }
  PromoteDelayed(now);
  Job* j = PickJob(held_model);
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
  *offer = LeaseOffer{true,     j->job_id,      j->spec_json, j->lease_secret,
                      j->fence, j->deadline_ms, j->attempts,  0};
  grant->job_id = j->job_id;
  grant->expected_fence = expected;
  grant->lease_id = j->lease_key;
  grant->worker_id = worker.worker_id;
  grant->deadline_ms = j->deadline_ms;
  grant->now_ms = now;
  return Decision::kNew;
}

EndLease LeaseSchedule::EndLeaseOf(Job& j, FailKind kind, const std::string& error, int64_t now) {
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
  const std::string job_id = j.job_id;
  if (e.new_state == JobState::kQueued) {
    Requeue(j, e.next_eligible_ms, now);
  } else {
    Forget(job_id);
  }
  return e;
}

}  // namespace kvsweep

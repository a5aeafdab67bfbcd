// The scheduler's memory and lease policy: every queued and leased job, the ready queues (by
// priority, then model for affinity), the backoff heap, lease deadlines and revoked leases, and
// the decisions made on them (which job a worker gets, what a failure or a lost lease does to a
// job). It returns the mutations that make its decisions durable and never touches the store:
// the Scheduler (coordinator/scheduler.h) holds it under its mutex and queues those mutations to
// its GroupCommitter in the order they were decided.
//
// Not thread-safe: the Scheduler guards it (ABSL_GUARDED_BY).
#ifndef KVSWEEP_COORDINATOR_LEASE_SCHEDULE_H_
#define KVSWEEP_COORDINATOR_LEASE_SCHEDULE_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "storage/result_store.h"

namespace kvsweep {

struct SchedulerOptions {
  int lease_ttl_ms = 30000;
  int retry_base_ms = 2000;   // backoff after the n-th failed attempt: base * 2^(n-1) ...
  int retry_max_ms = 300000;  // ... capped here
  int quarantine_after = 3;   // lost leases on this many different workers = poison
  int idle_retry_ms = 500;    // what Lease tells a worker when there is no job
  int max_batch = 4096;       // mutations per transaction
  bool reaper_thread = true;  // expire leases on a timer (tests call ExpireLeases instead)
};

struct LeaseOffer {
  bool has_job = false;
  std::string job_id;
  std::string spec_json;
  std::string lease_id;
  int64_t fence = 0;
  int64_t deadline_ms = 0;
  int attempt = 0;
  int retry_after_ms = 0;
};

enum class FailKind { kRetryable, kPermanent, kHandedBack };

class LeaseSchedule {
 public:
  struct Job {
    std::string job_id, spec_json, model_key;
    JobState state = JobState::kQueued;
    int priority = 0, attempts = 0, max_attempts = 0;
    int64_t next_eligible_ms = 0, fence = 0, seq = 0;
    std::string task;  // the spec's task: a result must be for it
    // lease_key: LeaseKey(secret), as stored. lease_secret: the secret itself, in memory only
    // while this process granted the lease (to hand the same lease out again to its session).
    std::string lease_key, lease_secret, lease_worker, lease_session;
    int64_t deadline_ms = 0;
    std::vector<std::string> crash_workers;
    int completing = 0;  // RecordResult mutations in flight
  };

  enum class Decision { kNone, kRepeat, kNew };

  explicit LeaseSchedule(const SchedulerOptions& options) : options_(options) {}

  // Replaces everything with the store's active jobs. A lease found there gets no deadline
  // until the first worker call (OnWorkerCall).
  void Load(const std::vector<ActiveJob>& active, int64_t now);
  // Adds a job the store has (queued or leased); nothing if it is already here.
  void Adopt(const ActiveJob& a, int64_t now);
  // The first worker call after a (re)load starts the clock of the leases it restored.
  void OnWorkerCall(int64_t now);

  // Decides `worker`'s lease: none (offer->retry_after_ms set), its existing lease again
  // (kRepeat), or a new one (memory updated; *grant to be queued). *touch: the worker's row is
  // due for a TouchWorker, to be queued before *grant.
  Decision DecideLease(const WorkerRecord& worker, const std::string& session,
                       const std::string& held_model, int64_t now, LeaseOffer* offer,
                       GrantLease* grant, bool* touch);
  // Ends j's lease without a result (a failure or a hand-back): j is requeued or forgotten, and
  // the returned EndLease is to be queued.
  EndLease EndLeaseOf(Job& j, FailKind kind, const std::string& error, int64_t now);
  // Ends j's lease as lost (expired or abandoned): requeued with backoff, failed, or
  // quarantined; the returned EndLease is to be queued.
  EndLease LoseLease(Job& j, const std::string& why, int64_t now);
  // Renews j's lease for one TTL from `now`.
  void Renew(Job& j, int64_t now) { SetDeadline(j, now + options_.lease_ttl_ms); }
  // Leases whose deadline is before `now` (job ids, earliest first).
  std::vector<std::string> Expired(int64_t now) const;

  Job* Find(const std::string& job_id);
  // Removes the job from memory (it is done, failed, quarantined or cancelled).
  void Forget(const std::string& job_id);
  // Remembers why the lease (job_id, fence) ended, for its holder's next call.
  void Revoke(const std::string& job_id, int64_t fence, const std::string& reason);
  // Why (job_id, fence) was revoked; nullptr if it was not (or it was forgotten since).
  const std::string* RevokedReason(const std::string& job_id, int64_t fence) const;

  // kInvalidArgument unless the result is for j: its metrics are for j's task alone, and its
  // job_id, if it names one, is j's.
  static absl::Status CheckResultIsFor(const ResultMetrics& m, const Job& j);
  // kPermissionDenied unless `worker_id` holds j's lease under `lease_id`.
  static absl::Status CheckHolder(const Job& j, const std::string& worker_id,
                                  const std::string& lease_id);

  int64_t jobs() const { return static_cast<int64_t>(jobs_.size()); }
  int64_t leased() const { return leased_count_; }
  int64_t delayed() const { return static_cast<int64_t>(delayed_.size()); }

 private:
  using ReadyKey = std::pair<int64_t, std::string>;  // (seq, job id)

  void MakeReady(Job& j, int64_t now);
  // Ends j's lease in memory and puts it back in the queue (fence bumped), eligible from
  // next_eligible_ms.
  void Requeue(Job& j, int64_t next_eligible_ms, int64_t now);
  void Unready(Job& j);
  void SetDeadline(Job& j, int64_t deadline);
  void PromoteDelayed(int64_t now);
  Job* PickJob(const std::string& held_model);
  int64_t Backoff(int attempts) const;

  const SchedulerOptions options_;
  std::unordered_map<std::string, Job> jobs_;
  // priority (highest first) -> model key -> (seq, job id)
  std::map<int, std::map<std::string, std::set<ReadyKey>>, std::greater<int>> ready_;
  std::set<std::pair<int64_t, std::string>> delayed_;    // (eligible_ms, job id)
  std::set<std::pair<int64_t, std::string>> deadlines_;  // (deadline_ms, job id)
  // WorkerSessionKey(worker id, session) -> job id, for leases granted by this process (a
  // session's lost Lease answer is answered again). Leases loaded from the store have no entry.
  std::unordered_map<std::string, std::string> worker_lease_;
  std::unordered_map<std::string, int64_t> worker_touched_;  // worker id -> last TouchWorker
  std::unordered_map<std::string, std::string> revoked_;     // "job#fence" -> reason
  std::deque<std::string> revoked_order_;
  int64_t leased_count_ = 0;
  // Leases restored by Load, without a deadline until the first worker call.
  std::vector<std::string> restored_;
  bool awaiting_worker_ = false;
};

}  // namespace kvsweep

#endif  // KVSWEEP_COORDINATOR_LEASE_SCHEDULE_H_

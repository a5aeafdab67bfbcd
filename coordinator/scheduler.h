// The scheduler: which worker runs which job, under which lease. A facade over three parts:
//
// - LeaseSchedule (coordinator/lease_schedule.h): memory holds every queued and leased job
//   (ready queues by priority and model, a backoff heap, lease deadlines) and decides;
// - GroupCommitter (coordinator/group_committer.h): the ResultStore makes each decision durable.
//   Decisions are made under one mutex and their mutations queued, in the same order, to a
//   single committer thread that applies whatever has accumulated in ONE transaction (group
//   commit: one fsync for many leases and results). A caller is answered only after its
//   mutation has committed, so everything acknowledged is durable; the answers (callbacks) run
//   on an answer thread, in commit order, while the committer starts the next transaction.
//   Memory is therefore always "DB + the queued mutations"; should the store ever disagree (an
//   I/O error, a mutation refused unexpectedly), the committer fails what is queued and reloads
//   memory from the store;
// - LeaseReaper (coordinator/lease_reaper.h): a thread that expires leases past their deadline.
//
// Lease semantics (docs/protocol.md): a lease lasts `lease_ttl_ms` and is renewed by
// heartbeats (in memory only: after a coordinator restart a restored lease has no deadline
// until the first worker call, then max(2 TTL, 10 s) to be renewed by its holder). Each
// change of a job's lease (grant, expiry, cancel, failure) bumps its fencing token; results and
// failures must carry the current token. Expired leases count as the worker having died on the
// job: the job goes back to the queue with backoff, or, once it has lost leases on
// `quarantine_after` different workers, is quarantined as poison. Workers are never blamed.
//
// Locks, in the order they are taken: admin_mu_ (Submit/Cancel/Retry among themselves), mu_
// (the LeaseSchedule), then the GroupCommitter's own.
#ifndef KVSWEEP_COORDINATOR_SCHEDULER_H_
#define KVSWEEP_COORDINATOR_SCHEDULER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "common/mutex.h"
#include "coordinator/group_committer.h"
#include "coordinator/lease_reaper.h"
#include "coordinator/lease_schedule.h"
#include "coordinator/sweep_spec.h"
#include "storage/result_store.h"

namespace kvsweep {

// The scheduler's time: ms on the Unix epoch's scale, for timestamps in the store and lease
// deadlines in memory. It must never step: a lease deadline compared against a clock that jumps
// forward expires every lease at once, and one that jumps back strands a dead worker's job.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual int64_t NowMs() = 0;
};

// Wall time read once, then advanced by a monotonic source: epoch-scaled, never steps. After a
// step of the wall clock its readings differ from the wall clock by the step (until the process
// restarts); what is stored stays ordered. `wall_ms`/`mono_ms` are injectable for tests.
class MonotonicEpochClock final : public Clock {
 public:
  MonotonicEpochClock(std::function<int64_t()> wall_ms, std::function<int64_t()> mono_ms);
  int64_t NowMs() override;

 private:
  std::function<int64_t()> mono_ms_;
  int64_t wall_at_start_ = 0, mono_at_start_ = 0;
};

// MonotonicEpochClock over the system's realtime and steady clocks.
Clock* SystemClock();

struct HeartbeatReply {
  bool keep_going = false;
  std::string reason;
  int64_t deadline_ms = 0;
};

// A leased job's progress as its worker reports it in heartbeats. Memory only: a coordinator
// restart forgets it, and a restored lease starts again from its first heartbeat.
struct JobProgress {
  std::string job_id, worker_id;
  double fraction = 0;          // the highest reported under the current lease, in [0, 1]
  int64_t started_ms = 0;       // the lease's grant (restored lease: its first heartbeat)
  double started_fraction = 0;  // the fraction at started_ms (0 for a lease granted here)
  int64_t updated_ms = 0;       // the last heartbeat (the grant before any)
  // Fraction gained per second from started_ms to updated_ms; 0 until there is progress.
  double fraction_per_s() const {
    return updated_ms > started_ms && fraction > started_fraction
               ? (fraction - started_fraction) * 1000.0 / (updated_ms - started_ms)
               : 0.0;
  }
};

// Complete-and-lease: who asks for the next job.
struct NextLease {
  WorkerRecord worker;
  std::string session;
  std::string held_model;
};

struct CompleteOutcome {
  bool duplicate = false;
  std::optional<LeaseOffer> next;  // when asked for and a job was leased
};

struct SubmitOutcome {
  int enqueued = 0, requeued = 0, done = 0, pending = 0, failed = 0;
};

struct CancelOutcome {
  int cancelled = 0;
  int kept_for_others = 0;
};

struct SchedulerStats {
  int64_t commits = 0;    // transactions
  int64_t mutations = 0;  // mutations in them
  double apply_ms = 0;    // time spent applying them (SQL + fsync)
  int64_t queued = 0, leased = 0, delayed = 0;
};

class Scheduler {
 public:
  // `store` must outlive the scheduler. Call Start() before anything else.
  Scheduler(ResultStore* store, Clock* clock, const SchedulerOptions& options);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Loads queued and leased jobs from the store (leases get a fresh TTL) and starts the
  // committer (and reaper) threads.
  absl::Status Start();
  // Commits what is queued, answers it, and stops the threads. Idempotent.
  void Stop();

  // --- Workers (asynchronous: `done` runs once the decision is durable, on another thread) ---

  // A job for `worker` (preferring `held_model`), or none. A worker that asks while the
  // scheduler thinks it holds a lease from another session (it restarted) abandons that
  // lease: it ends as lost. Same session: the same lease is handed out again (idempotent).
  void Lease(const WorkerRecord& worker, const std::string& session, const std::string& held_model,
             std::function<void(absl::StatusOr<LeaseOffer>)> done) ABSL_LOCKS_EXCLUDED(mu_);
  // Synchronous and in memory: renews the lease if it is current, and keeps `progress` (a
  // fraction in [0, 1]; anything else is ignored, and so is a fraction below the highest seen
  // under this lease) for RunningJobs. kPermissionDenied when the job is leased under `fence`
  // but to another worker or under another lease secret.
  absl::StatusOr<HeartbeatReply> Heartbeat(const std::string& worker_id, const std::string& job_id,
                                           const std::string& lease_id, int64_t fence,
                                           double progress = -1) ABSL_LOCKS_EXCLUDED(mu_);
  // Records the result exactly once (kFailedPrecondition for a stale token; OK with
  // duplicate = true for a repeat of a recorded result). kPermissionDenied when the attempt
  // under `fence` belongs to another worker or lease secret (current, recorded or stale alike);
  // kInvalidArgument when the result is not for this job (its metrics name another task, or
  // its job_id is another job's). With `next`, also leases the worker its next job in the same
  // commit; if the result is refused, that lease is handed back.
  // `metrics`: ExtractResultMetrics(result_json) if the caller has it (saves a parse in the
  // transaction); nullopt and the store parses the result itself.
  void Complete(const std::string& worker_id, const std::string& job_id,
                const std::string& lease_id, int64_t fence, std::string result_json,
                const NextLease* next, std::function<void(absl::StatusOr<CompleteOutcome>)> done,
                std::optional<ResultMetrics> metrics = std::nullopt, const std::string& actor = "")
      ABSL_LOCKS_EXCLUDED(mu_);
  // Ends the lease without a result; `done` gets the job's new state. kPermissionDenied as for
  // Heartbeat; kFailedPrecondition for a stale token.
  void Fail(const std::string& worker_id, const std::string& job_id, const std::string& lease_id,
            int64_t fence, FailKind kind, const std::string& error,
            std::function<void(absl::StatusOr<JobState>)> done) ABSL_LOCKS_EXCLUDED(mu_);

  // --- Users (synchronous; serialized among themselves) ---

  // `actor`: who asks (rpc/auth.h Caller::name), recorded in the audit log with the change.
  absl::StatusOr<SubmitOutcome> Submit(const ExpandedSweep& sweep, const std::string& yaml,
                                       const std::string& base_dir, const std::string& actor = "")
      ABSL_LOCKS_EXCLUDED(admin_mu_, mu_);
  absl::StatusOr<CancelOutcome> Cancel(const std::string& sweep, const std::string& actor = "")
      ABSL_LOCKS_EXCLUDED(admin_mu_, mu_);
  // Requeues the sweep's failed (and optionally quarantined) jobs; returns how many.
  absl::StatusOr<int> Retry(const std::string& sweep, bool failed, bool quarantined,
                            const std::string& actor = "") ABSL_LOCKS_EXCLUDED(admin_mu_, mu_);

  // Ends every lease past its deadline. Called by the reaper thread; tests call it directly.
  void ExpireLeases() ABSL_LOCKS_EXCLUDED(mu_);
  // Blocks until every mutation queued so far is committed and answered.
  void Flush();

  SchedulerStats Stats() ABSL_LOCKS_EXCLUDED(mu_);
  // The progress of every job leased now (in no particular order); *now_ms: the clock then.
  std::vector<JobProgress> RunningJobs(int64_t* now_ms = nullptr) ABSL_LOCKS_EXCLUDED(mu_);
  const SchedulerOptions& options() const { return options_; }

 private:
  using Job = LeaseSchedule::Job;
  using Decision = LeaseSchedule::Decision;

  // schedule_.DecideLease, queueing the TouchWorker it asks for.
  Decision DecideLease(const WorkerRecord& worker, const std::string& session,
                       const std::string& held_model, int64_t now, LeaseOffer* offer,
                       GrantLease* grant) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Ends j's lease without a result (a failure or a hand-back) and queues the EndLease.
  JobState EndLeaseLocked(Job& j, FailKind kind, const std::string& error, int64_t now,
                          std::function<void(Mutation&)> done) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Queues a mutation decided under mu_ (so mutations commit in the order of the decisions).
  void Enqueue(Mutation::Op op, std::function<void(Mutation&)> done, bool must_succeed)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    committer_.Enqueue(std::move(op), std::move(done), must_succeed);
  }
  // Queues one mutation and waits for its commit.
  absl::StatusOr<Mutation> EnqueueAndWait(Mutation::Op op) ABSL_LOCKS_EXCLUDED(mu_);
  // The committer's reload: takes what is queued and reloads memory from the store.
  void Reload(std::vector<GroupCommitter::Pending>* failed) ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status LoadAll() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  ResultStore* store_;
  Clock* clock_;
  const SchedulerOptions options_;

  Mutex admin_mu_;  // serializes Submit/Cancel/Retry (guards no data: their store reads and
                    // the adoption of what they committed must not interleave)
  Mutex mu_;        // the schedule; taken before the committer's locks
  LeaseSchedule schedule_ ABSL_GUARDED_BY(mu_);
  // Progress per leased job, keyed by job id, with the fence it was reported under. Entries of
  // ended leases are dropped by RunningJobs and, once they outnumber the leases, ExpireLeases.
  struct LeaseProgress {
    int64_t fence = 0;
    JobProgress p;
  };
  std::unordered_map<std::string, LeaseProgress> progress_ ABSL_GUARDED_BY(mu_);
  // Drops the entries whose lease is no longer current.
  void PruneProgressLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  GroupCommitter committer_;
  std::optional<LeaseReaper> reaper_;
  bool started_ = false;  // Start/Stop only
};

}  // namespace kvsweep

#endif  // KVSWEEP_COORDINATOR_SCHEDULER_H_

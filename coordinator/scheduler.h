// The scheduler: which worker runs which job, under which lease.
//
// Memory holds every queued and leased job (ready queues by priority and model, a backoff
// heap, lease deadlines) and decides; the ResultStore makes each decision durable. Decisions
// are made under one mutex and their mutations queued, in the same order, to a single
// committer thread that applies whatever has accumulated in ONE transaction (group commit:
// one fsync for many leases and results). A caller is answered only after its mutation has
// committed, so everything acknowledged is durable; the answers (callbacks) run on an answer
// thread, in commit order, while the committer starts the next transaction. Memory is therefore
// always "DB + the queued mutations"; should the store ever disagree (an I/O error, a mutation
// refused unexpectedly), the committer fails what is queued and reloads memory from the store.
//
// Lease semantics (docs/protocol.md): a lease lasts `lease_ttl_ms` and is renewed by
// heartbeats (in memory only: after a coordinator restart a restored lease has no deadline
// until the first worker call, then max(2 TTL, 10 s) to be renewed by its holder). Each
// change of a job's lease (grant, expiry, cancel, failure) bumps its fencing token; results and
// failures must carry the current token. Expired leases count as the worker having died on the
// job: the job goes back to the queue with backoff, or, once it has lost leases on
// `quarantine_after` different workers, is quarantined as poison. Workers are never blamed.
#ifndef KVSWEEP_COORDINATOR_SCHEDULER_H_
#define KVSWEEP_COORDINATOR_SCHEDULER_H_

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "common/latency_histogram.h"
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

struct SchedulerOptions {
  int lease_ttl_ms = 30000;
  int retry_base_ms = 2000;     // backoff after the n-th failed attempt: base * 2^(n-1) ...
  int retry_max_ms = 300000;    // ... capped here
  int quarantine_after = 3;     // lost leases on this many different workers = poison
  int idle_retry_ms = 500;      // what Lease tells a worker when there is no job
  int max_batch = 4096;         // mutations per transaction
  bool reaper_thread = true;    // expire leases on a timer (tests call ExpireLeases instead)
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

struct HeartbeatReply {
  bool keep_going = false;
  std::string reason;
  int64_t deadline_ms = 0;
};

enum class FailKind { kRetryable, kPermanent, kHandedBack };

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
  int64_t commits = 0;     // transactions
  int64_t mutations = 0;   // mutations in them
  double apply_ms = 0;     // time spent applying them (SQL + fsync)
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
             std::function<void(absl::StatusOr<LeaseOffer>)> done);
  // Synchronous and in memory: renews the lease if it is current. kPermissionDenied when the
  // job is leased under `fence` but to another worker or under another lease secret.
  absl::StatusOr<HeartbeatReply> Heartbeat(const std::string& worker_id,
                                           const std::string& job_id,
                                           const std::string& lease_id, int64_t fence);
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
                const NextLease* next,
                std::function<void(absl::StatusOr<CompleteOutcome>)> done,
                std::optional<ResultMetrics> metrics = std::nullopt,
                const std::string& actor = "");
  // Ends the lease without a result; `done` gets the job's new state. kPermissionDenied as for
  // Heartbeat; kFailedPrecondition for a stale token.
  void Fail(const std::string& worker_id, const std::string& job_id,
            const std::string& lease_id, int64_t fence, FailKind kind, const std::string& error,
            std::function<void(absl::StatusOr<JobState>)> done);

  // --- Users (synchronous; serialized among themselves) ---

  // `actor`: who asks (rpc/auth.h Caller::name), recorded in the audit log with the change.
  absl::StatusOr<SubmitOutcome> Submit(const ExpandedSweep& sweep, const std::string& yaml,
                                       const std::string& base_dir,
                                       const std::string& actor = "");
  absl::StatusOr<CancelOutcome> Cancel(const std::string& sweep, const std::string& actor = "");
  // Requeues the sweep's failed (and optionally quarantined) jobs; returns how many.
  absl::StatusOr<int> Retry(const std::string& sweep, bool failed, bool quarantined,
                            const std::string& actor = "");

  // Ends every lease past its deadline. Called by the reaper thread; tests call it directly.
  void ExpireLeases();
  // Blocks until every mutation queued so far is committed and answered.
  void Flush();

  SchedulerStats Stats();
  const SchedulerOptions& options() const { return options_; }

 private:
  struct MemJob {
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
  struct Pending {
    Mutation mutation;
    std::function<void(Mutation&)> done;  // may be empty
    bool must_succeed = false;  // memory assumed success: a refusal means memory is wrong
  };
  using ReadyKey = std::pair<int64_t, std::string>;  // (seq, job id)

  enum class Decision { kNone, kRepeat, kNew };

  // All below with mu_ held.
  // Decides `worker`'s lease: none (offer->retry_after_ms set), its existing lease again
  // (kRepeat), or a new one (memory updated; *grant to be enqueued).
  Decision DecideLease(const WorkerRecord& worker, const std::string& session,
                       const std::string& held_model, int64_t now, LeaseOffer* offer,
                       GrantLease* grant);
  // Ends j's lease without a result (a failure or a hand-back) and queues the EndLease.
  JobState EndLeaseLocked(MemJob& j, FailKind kind, const std::string& error, int64_t now,
                          std::function<void(Mutation&)> done);
  void Adopt(const ActiveJob& a, int64_t now);
  // The first worker call after a (re)load starts the clock of the leases it restored.
  void OnWorkerCall(int64_t now);
  void MakeReady(MemJob& j, int64_t now);
  // Ends j's lease in memory and puts it back in the queue (fence bumped), eligible from
  // next_eligible_ms.
  void Requeue(MemJob& j, int64_t next_eligible_ms, int64_t now);
  void Unready(MemJob& j);
  void SetDeadline(MemJob& j, int64_t deadline);
  void Forget(const std::string& job_id);
  void PromoteDelayed(int64_t now);
  MemJob* PickJob(const std::string& held_model);
  void Revoke(const std::string& job_id, int64_t fence, const std::string& reason);
  // Ends a lease as lost (expired or abandoned) and queues the EndLease.
  void LoseLease(MemJob& j, const std::string& why, int64_t now);
  int64_t Backoff(int attempts) const;
  void Enqueue(Mutation::Op op, std::function<void(Mutation&)> done, bool must_succeed);

  // Queues one mutation and waits for its commit (not with mu_ held).
  absl::StatusOr<Mutation> EnqueueAndWait(Mutation::Op op);
  void CommitLoop();
  // Runs the callbacks of committed batches, in commit order, off the committer thread (so the
  // next transaction starts while this one's callers are answered).
  void AnswerLoop();
  // Hands a committed (or failed) batch to AnswerLoop, which then counts `count` mutations
  // as answered (for Flush).
  void Answer(std::vector<Pending> batch, std::vector<Mutation> muts, int64_t count);
  // Blocks until AnswerLoop has run every callback handed to it.
  void WaitAnswered();
  void ReaperLoop();
  void Recover(std::vector<Pending>* failed);
  absl::Status LoadAll();
  // kInvalidArgument unless the result is for j: its metrics are for j's task alone, and its
  // job_id, if it names one, is j's.
  static absl::Status CheckResultIsFor(const ResultMetrics& m, const MemJob& j);
  // kPermissionDenied unless `worker_id` holds j's lease under `lease_id`.
  absl::Status CheckHolder(const MemJob& j, const std::string& worker_id,
                           const std::string& lease_id) const;

  ResultStore* store_;
  Clock* clock_;
  const SchedulerOptions options_;

  std::mutex mu_;  // memory state; ordered before q_mu_
  std::unordered_map<std::string, MemJob> jobs_;
  // priority (highest first) -> model key -> (seq, job id)
  std::map<int, std::map<std::string, std::set<ReadyKey>>, std::greater<int>> ready_;
  std::set<std::pair<int64_t, std::string>> delayed_;    // (eligible_ms, job id)
  std::set<std::pair<int64_t, std::string>> deadlines_;  // (deadline_ms, job id)
  // WorkerSessionKey(worker id, session) -> job id, for leases granted by this process (a
  // session's lost Lease answer is answered again). Leases loaded from the store have no entry.
  std::unordered_map<std::string, std::string> worker_lease_;
  std::unordered_map<std::string, int64_t> worker_touched_;    // worker id -> last TouchWorker
  std::unordered_map<std::string, std::string> revoked_;       // "job#fence" -> reason
  std::deque<std::string> revoked_order_;
  int64_t leased_count_ = 0;
  // Leases restored by LoadAll, without a deadline until the first worker call.
  std::vector<std::string> restored_;
  bool awaiting_worker_ = false;

  std::mutex admin_mu_;  // serializes Submit/Cancel/Retry

  std::mutex q_mu_;
  std::condition_variable q_cv_;
  std::condition_variable flushed_cv_;
  std::vector<Pending> queue_;
  bool reload_requested_ = false;
  bool stopping_ = false;
  int64_t enqueued_ = 0, answered_ = 0;
  int64_t commits_ = 0, mutations_ = 0, apply_us_ = 0;

  struct AnswerBatch {
    std::vector<Pending> pending;
    std::vector<Mutation> muts;  // muts[i] is pending[i]'s mutation, as applied
    int64_t count = 0;           // added to answered_ once the callbacks have run
  };
  std::mutex a_mu_;
  std::condition_variable a_cv_;
  std::deque<AnswerBatch> answers_;
  bool a_busy_ = false, a_stop_ = false;
  std::thread answerer_;

  std::mutex reaper_mu_;
  std::condition_variable reaper_cv_;
  bool started_ = false;
  std::thread committer_, reaper_;
  LatencyHistogram commit_ms_;  // wall time of each transaction (SQL + fsync)
};

}  // namespace kvsweep

#endif  // KVSWEEP_COORDINATOR_SCHEDULER_H_

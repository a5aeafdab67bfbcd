// The durable store behind the coordinator: sweeps, jobs, attempts, results and workers.
//
// One interface, two implementations: SQLite (NewSqliteResultStore, what the coordinator and
// every integration test use) and an in-memory fake (NewFakeResultStore, for unit tests of
// callers). Both pass the conformance suite in result_store_test.cc.
//
// Writes are Mutations applied in batches: Apply() runs a whole batch in ONE transaction (one
// fsync with synchronous=FULL: the coordinator's group commit), each mutation inside its own
// savepoint so that one mutation's precondition failure (a stale fencing token, say) rolls back
// only that mutation. Every mutation checks its preconditions in the same transaction that
// writes — in particular RecordResult checks the fencing token in the transaction that inserts
// the result, and results are UNIQUE(job_id).
//
// Thread safety: Apply and the write-side calls must come from one thread at a time (the
// coordinator's committer); read calls may come from any thread concurrently with writes.
#ifndef KVSWEEP_STORAGE_RESULT_STORE_H_
#define KVSWEEP_STORAGE_RESULT_STORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kvsweep {

// Never renumber: the numbers equal kvsweep.v1.JobState; the database stores the names.
enum class JobState {
  kQueued = 1,
  kLeased = 2,
  kDone = 3,
  kFailed = 4,
  kQuarantined = 5,
  kCancelled = 6,
};
const char* JobStateName(JobState s);  // "queued", "leased", ...
// kInvalidArgument for an unknown name.
absl::StatusOr<JobState> ParseJobState(absl::string_view name);
// done, failed, quarantined and cancelled: nothing more happens without a user action.
bool IsFinal(JobState s);

// How one attempt (one lease) ended. Stored as the name in attempts.outcome.
enum class AttemptOutcome {
  kRunning = 0,     // the lease is held
  kDone = 1,        // its result was recorded
  kFailed = 2,      // the worker reported a failure
  kLost = 3,        // the lease expired or was abandoned: the worker died, hung or was cut off
  kHandedBack = 4,  // the worker drained and gave the job back (no attempt used)
  kCancelled = 5,   // the job was cancelled while leased
};
const char* AttemptOutcomeName(AttemptOutcome o);

// ---- Mutations ------------------------------------------------------------------------------

struct NewJob {
  std::string job_id;     // sha256 of the job's identity JSON
  std::string spec_json;  // JobSpec::ToJson()
  std::string model_key;  // affinity key: the model's content hash
  int priority = 0;
  int max_attempts = 3;
  std::string labels_json;  // this sweep's labels for the job (model, method label, ...)
};

// Creates or updates the sweep `name` (spec, priority; clears its cancelled mark) and links
// `jobs` to it. New jobs are inserted queued; existing cancelled jobs are requeued with fresh
// attempts; every other existing job is left as it is (done ones are reused).
struct SubmitSweep {
  std::string name;
  std::string spec_yaml;
  std::string base_dir;
  int priority = 0;
  int64_t now_ms = 0;
  std::vector<NewJob> jobs;  // distinct job ids
  std::string actor;         // who submitted it (rpc/auth.h Caller::name): the audit log
  // Out.
  int enqueued = 0, requeued = 0, done = 0, pending = 0, failed = 0;
  std::vector<std::string> queued_job_ids;  // enqueued + requeued, for the scheduler
};

// queued -> leased. Precondition: state queued and fence == expected_fence (kFailedPrecondition
// otherwise). Sets fence = expected_fence + 1, counts an attempt, adds an attempt row.
struct GrantLease {
  std::string job_id;
  int64_t expected_fence = 0;
  // What the store keeps of the lease's secret: its key (coordinator/lease_secret.h), never the
  // secret itself, so that nothing readable through Query lets anyone act for the worker.
  std::string lease_id;
  std::string worker_id;
  int64_t deadline_ms = 0;
  int64_t now_ms = 0;
  // Out.
  int attempt = 0;  // the attempt number this lease is (attempts after the grant)
};

// Common metric columns pulled out of a result object (NaN-free; absent = nullopt).
struct ResultMetrics {
  std::optional<double> acc, ppl, token_ppl, word_ppl, bits_per_byte, loglik_sum;
  std::optional<int64_t> n, tokens, words, bytes;
  std::optional<double> fraction_payload, fraction_total;
  std::optional<int64_t> kv_heads;
  std::optional<double> wall_s, tokens_per_s;
  std::vector<std::string> tasks;  // the keys of "metrics"
  std::string job_id;              // the result's own "job_id", if it has one
};
// Validates a result object (JobResult::Parse: spec/job_result.h) and pulls out its columns.
// kInvalidArgument naming the offending field otherwise.
absl::StatusOr<ResultMetrics> ExtractResultMetrics(absl::string_view result_json);

// leased -> done, writing the result. Precondition, checked in the transaction that writes:
// state leased and fence == `fence`. If instead the job's result was already recorded with this
// same fence, the mutation succeeds with duplicate = true and writes nothing (an idempotent
// repeat). Anything else: kFailedPrecondition ("stale fencing token ...").
// kInvalidArgument if result_json is not a JSON object.
struct RecordResult {
  std::string job_id;
  int64_t fence = 0;
  std::string worker_id;
  std::string result_json;
  int64_t now_ms = 0;
  std::string actor;  // the authenticated caller that reported it (results.recorded_by)
  // ExtractResultMetrics(result_json), when the caller has it already (the coordinator
  // validates results before queueing them): spares the transaction a second parse.
  std::optional<ResultMetrics> metrics;
  // Out.
  bool duplicate = false;
};

// leased -> new_state (queued for a retry, failed, quarantined or cancelled), ending the
// attempt with `outcome`. Precondition: state leased and fence == `fence`
// (kFailedPrecondition). Bumps the fence so the old holder's token is stale from now on.
struct EndLease {
  std::string job_id;
  int64_t fence = 0;
  AttemptOutcome outcome = AttemptOutcome::kFailed;
  std::string error;
  JobState new_state = JobState::kQueued;
  int64_t next_eligible_ms = 0;
  bool refund_attempt = false;                            // handed back: the attempt does not count
  std::optional<std::vector<std::string>> crash_workers;  // replaces the job's list if set
  int64_t now_ms = 0;
};

// Cancels jobs whose state and fence are still as expected (others are skipped, not errors):
// queued -> cancelled; leased -> cancelled with the fence bumped and the attempt ended.
// Also marks the sweep cancelled (so it no longer keeps shared jobs alive).
struct CancelJobs {
  std::string sweep;
  struct Expect {
    std::string job_id;
    JobState state;
    int64_t fence;
  };
  std::vector<Expect> jobs;
  int64_t now_ms = 0;
  std::string actor;  // the audit log
  // Out.
  int cancelled = 0;
};

// Requeues jobs whose state is in `from` with fresh attempts and crash history.
struct RequeueJobs {
  std::vector<std::string> job_ids;
  std::vector<JobState> from;
  int64_t now_ms = 0;
  std::string sweep, actor;  // the audit log
  // Out.
  std::vector<std::string> requeued;
};

struct WorkerRecord {
  std::string worker_id;
  std::string hostname;
  std::string device;
  std::string evaluator;
  int pid = 0;
};
// Inserts or refreshes a worker row (last_seen).
struct TouchWorker {
  WorkerRecord worker;
  int64_t now_ms = 0;
};

struct Mutation {
  using Op = std::variant<SubmitSweep, GrantLease, RecordResult, EndLease, CancelJobs, RequeueJobs,
                          TouchWorker>;
  explicit Mutation(Op o) : op(std::move(o)) {}
  Op op;
  absl::Status status;  // set by Apply
};

// ---- Reads ----------------------------------------------------------------------------------

// A job the scheduler must track: queued or leased.
struct ActiveJob {
  std::string job_id;
  std::string spec_json;
  std::string model_key;
  std::string task;  // the spec's task name (jobs.task)
  JobState state = JobState::kQueued;
  int priority = 0;
  int attempts = 0;
  int max_attempts = 0;
  int64_t next_eligible_ms = 0;
  int64_t fence = 0;
  std::string lease_id;
  std::string lease_worker;
  int64_t lease_deadline_ms = 0;
  std::vector<std::string> crash_workers;
  int64_t seq = 0;  // insertion order (FIFO among equals)
};

struct SweepInfo {
  std::string name;
  int priority = 0;
  int64_t created_ms = 0;
  bool cancelled = false;
  int total = 0;
  int counts[7] = {0, 0, 0, 0, 0, 0, 0};   // indexed by JobState
  std::vector<std::string> recent_errors;  // "<job id prefix>: <error>"
  int count(JobState s) const { return counts[static_cast<int>(s)]; }
};

// A sweep's job as CancelJobs expects it.
struct SweepJobRef {
  std::string job_id;
  JobState state;
  int64_t fence;
  bool shared_with_live_sweep;  // another non-cancelled sweep also contains it
};

struct ExportRow {
  std::string job_id;
  std::string sweep;
  std::string labels_json;
  JobState state;
  std::string result_json;  // empty unless done
  std::string spec_json;    // only when asked for
  std::string last_error;
};

struct QueryResult {
  // A cell: NULL, integer, real, text or blob.
  using Value = std::variant<std::monostate, int64_t, double, std::string, std::vector<uint8_t>>;
  std::vector<std::string> columns;
  std::vector<std::vector<Value>> rows;
  bool truncated = false;
};

class ResultStore {
 public:
  ResultStore() = default;
  virtual ~ResultStore() = default;
  ResultStore(const ResultStore&) = delete;
  ResultStore& operator=(const ResultStore&) = delete;

  // Applies `batch` in one transaction, setting each mutation's status and outputs. Returns
  // non-OK only if the transaction itself failed (then nothing of the batch was written and
  // every mutation's status is that error): kAborted for busy/locked (retry), kUnavailable for
  // I/O errors, kDataLoss for a corrupt file, kResourceExhausted for a full disk.
  virtual absl::Status Apply(std::vector<Mutation>& batch) = 0;

  // Every queued and leased job, in insertion order.
  virtual absl::StatusOr<std::vector<ActiveJob>> LoadActiveJobs() = 0;
  // Those of `job_ids` that are queued or leased, in insertion order (unknown ids are skipped).
  virtual absl::StatusOr<std::vector<ActiveJob>> LoadJobs(
      const std::vector<std::string>& job_ids) = 0;

  // kNotFound "no sweep named 'x'".
  virtual absl::StatusOr<SweepInfo> GetSweep(const std::string& name) = 0;
  virtual absl::StatusOr<std::vector<SweepInfo>> ListSweeps() = 0;
  // The sweep's jobs in `states` (all states if empty). kNotFound for an unknown sweep.
  virtual absl::StatusOr<std::vector<SweepJobRef>> SweepJobs(
      const std::string& sweep, const std::vector<JobState>& states) = 0;
  // Calls `fn` for each job of the sweep (insertion order); stops early if fn returns false.
  virtual absl::Status Export(const std::string& sweep, bool include_spec,
                              const std::function<bool(const ExportRow&)>& fn) = 0;
  // The fence the job's result was recorded with; nullopt if it has no result.
  virtual absl::StatusOr<std::optional<int64_t>> ResultFence(const std::string& job_id) = 0;
  // The lease (its key, as GrantLease stored it) and worker of the job's attempt under `fence`;
  // nullopt if there is no such attempt.
  struct AttemptLease {
    std::string lease_id;
    std::string worker_id;
  };
  virtual absl::StatusOr<std::optional<AttemptLease>> LeaseOfAttempt(const std::string& job_id,
                                                                     int64_t fence) = 0;
  // Number of rows in results (and jobs).
  virtual absl::StatusOr<int64_t> CountResults() = 0;
  virtual absl::StatusOr<int64_t> CountJobs() = 0;

  // One read-only SQL statement. kInvalidArgument for syntax errors, several statements, or a
  // statement that would write (or ATTACH, PRAGMA with a value, transactions);
  // kDeadlineExceeded past `timeout_ms`. kUnimplemented where there is no SQL (the fake).
  virtual absl::StatusOr<QueryResult> Query(const std::string& sql, int max_rows,
                                            int timeout_ms) = 0;
  // PRAGMA integrity_check (OK or kDataLoss with its report); the fake checks its invariants.
  virtual absl::Status IntegrityCheck() = 0;
};

struct SqliteOptions {
  bool read_only = false;  // open an existing database for reading only (no migrations)
  int busy_timeout_ms = 5000;
  // Tests: stop migrating at this schema version (0: the latest).
  int max_schema_version = 0;
  // The WAL is checkpointed in the background: as soon as a commit leaves it checkpoint_frames
  // frames (4 KiB pages) long, and at least every checkpoint_ms. Under writes without a pause a
  // background checkpoint never quite catches up with the writer, and SQLite starts the WAL over
  // only once one has: when it holds wal_restart_frames frames or more, the writer finishes the
  // checkpoint itself between two transactions.
  int checkpoint_frames = 256;  // 1 MiB
  int checkpoint_ms = 1000;
  int wal_restart_frames = 16384;  // 64 MiB
  // If > 0: SQLite's hard heap limit for the whole process (sqlite3_hard_heap_limit64). A
  // backstop for user SQL that makes SQLite allocate without bound (the query connection's
  // authorizer and limits bound single values and functions; big sorts spill to temporary
  // files): past it, allocations fail with SQLITE_NOMEM instead of the kernel killing the
  // process. The store's own connections use a few MiB.
  int64_t heap_limit_bytes = 0;
};

// Opens (creating if needed, unless read_only) the database at `path`, in WAL mode with
// synchronous=FULL, and migrates its schema to the latest version. Errors: kNotFound /
// kPermissionDenied / kUnavailable when the file cannot be opened, kFailedPrecondition when the
// schema is newer than this build, kDataLoss when the file is not a database or fails
// PRAGMA quick_check (read-only opens included), with one line naming the first problem.
absl::StatusOr<std::unique_ptr<ResultStore>> NewSqliteResultStore(const std::string& path,
                                                                  const SqliteOptions& options);
// The schema version this build writes.
int LatestSchemaVersion();

// In-memory, for unit tests of callers only.
std::unique_ptr<ResultStore> NewFakeResultStore();

}  // namespace kvsweep

#endif  // KVSWEEP_STORAGE_RESULT_STORE_H_

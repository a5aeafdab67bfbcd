#include "storage/sqlite_writer.h"

#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/json_util.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "storage/sqlite_schema.h"

namespace kvsweep {

// Write-path helpers inside SqliteWriter's mutations. A SQLite failure there is "hard":
// Hard() records it and Apply rolls the whole batch back.
//   SQL_W(st, "SQL")   a cached statement on the write connection, reset at scope end
//   SQL_STEP(row, st)  steps it; `row` says whether a row is available
//   SQL_RUN(st)        steps it to completion
#define SQL_CAT_(a, b) a##b
#define SQL_CAT(a, b) SQL_CAT_(a, b)
#define SQL_W(var, sql)                   \
  KV_ASSIGN_OR_RETURN(Stmt* var, W(sql)); \
  ScopedReset SQL_CAT(reset_, __LINE__)(var)
#define SQL_STEP(var, st)                         \
  bool var = false;                               \
  {                                               \
    absl::StatusOr<bool> kv_r_ = (st)->Step();    \
    if (!kv_r_.ok()) return Hard(kv_r_.status()); \
    var = *kv_r_;                                 \
  }
#define SQL_RUN(st)                      \
  do {                                   \
    absl::Status kv_r_ = (st)->Run();    \
    if (!kv_r_.ok()) return Hard(kv_r_); \
  } while (0)

SqliteWriter::~SqliteWriter() { Close(); }

absl::Status SqliteWriter::Open(const std::string& path, const SqliteOptions& o,
                                WalCheckpointer* checkpointer) {
  MutexLock lock(&mu_);
  checkpointer_ = checkpointer;
  KV_RETURN_IF_ERROR(OpenConnection(path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, &db_));
  sqlite3_busy_timeout(db_, o.busy_timeout_ms);
  KV_RETURN_IF_ERROR(Exec(db_, "PRAGMA journal_mode=WAL"));
  KV_RETURN_IF_ERROR(CheckJournalMode(db_, path));
  // FULL: a COMMIT returns only once the WAL is fsynced, so acknowledged results survive
  // power loss, not just a crash of the process.
  KV_RETURN_IF_ERROR(Exec(db_, "PRAGMA synchronous=FULL"));
  KV_RETURN_IF_ERROR(Exec(db_, "PRAGMA foreign_keys=ON"));
  // A damaged file is refused at start, not found out by a later write.
  KV_RETURN_IF_ERROR(QuickCheck(db_, path));
  KV_ASSIGN_OR_RETURN(schema_, MigrateSchema(db_, path, o.max_schema_version));
  // Checkpoints copy the WAL into the database file; run on the commit path (SQLite's
  // default) they stall an unlucky commit for tens of ms. The checkpointer's connection does
  // them instead; commits only append to the WAL.
  KV_RETURN_IF_ERROR(Exec(db_, "PRAGMA wal_autocheckpoint=0"));
  if (checkpointer_ != nullptr) sqlite3_wal_hook(db_, &WalCheckpointer::OnWalCommit, checkpointer_);
  // A WAL file that once grew (a big submit, a burst) is cut back to this size when the
  // WAL starts over.
  KV_RETURN_IF_ERROR(Exec(db_, "PRAGMA journal_size_limit=67108864"));
  return absl::OkStatus();
}

void SqliteWriter::Checkpoint() {
  MutexLock lock(&mu_);
  stmts_.clear();
  if (db_ != nullptr) Exec(db_, "PRAGMA wal_checkpoint(TRUNCATE)").IgnoreError();
}

void SqliteWriter::Close() {
  MutexLock lock(&mu_);
  stmts_.clear();
  sqlite3_close_v2(db_);
  db_ = nullptr;
}

absl::Status SqliteWriter::Apply(std::vector<Mutation>& batch) {
  MutexLock lock(&mu_);
  if (db_ == nullptr) {
    absl::Status s = absl::FailedPreconditionError("result store was opened read-only");
    for (Mutation& m : batch) m.status = s;
    return s;
  }
  hard_error_ = absl::OkStatus();
  if (checkpointer_ != nullptr && checkpointer_->TakeRestartWanted()) {
    // The background checkpoint has copied nearly all of a long WAL; copying the rest here,
    // with no transaction in flight, lets the next one start the WAL over.
    int log = 0, done = 0;
    const int rc = sqlite3_wal_checkpoint_v2(db_, nullptr, SQLITE_CHECKPOINT_PASSIVE, &log, &done);
    if (rc != SQLITE_OK && rc != SQLITE_BUSY) {
      KV_LOG(WARNING) << "result store: checkpoint: " << sqlite3_errmsg(db_);
    }
  }
  absl::Status s = Ctl("BEGIN IMMEDIATE");
  if (!s.ok()) {
    hard_error_ = absl::OkStatus();
    for (Mutation& m : batch) m.status = s;
    return s;
  }
  for (Mutation& m : batch) {
    s = Ctl("SAVEPOINT m");
    if (!s.ok()) {
      hard_error_ = s;
      break;
    }
    m.status = std::visit(
        [this](auto& op) {
          mu_.AssertHeld();  // (a lambda is analysed on its own)
          return Do(op);
        },
        m.op);
    if (!hard_error_.ok()) break;
    if (!m.status.ok()) s = Ctl("ROLLBACK TO m");
    if (s.ok()) s = Ctl("RELEASE m");
    if (!s.ok()) {
      hard_error_ = s;
      break;
    }
  }
  if (hard_error_.ok()) {
    s = Ctl("COMMIT");
    if (!s.ok()) hard_error_ = s;
  }
  if (!hard_error_.ok()) {
    Exec(db_, "ROLLBACK").IgnoreError();
    for (Mutation& m : batch) m.status = hard_error_;
    return hard_error_;
  }
  return absl::OkStatus();
}

// A cached prepared statement on the write connection.
absl::StatusOr<Stmt*> SqliteWriter::W(const char* sql) {
  auto it = stmts_.find(sql);
  if (it != stmts_.end()) return it->second.get();
  absl::StatusOr<std::unique_ptr<Stmt>> st = Stmt::Prepare(db_, sql);
  if (!st.ok()) return Hard(st.status());
  Stmt* raw = st->get();
  stmts_.emplace(sql, std::move(*st));
  return raw;
}

// Runs a transaction-control statement through the statement cache (no re-parse per batch).
absl::Status SqliteWriter::Ctl(const char* sql) {
  absl::StatusOr<Stmt*> st = W(sql);
  if (!st.ok()) return st.status();
  absl::Status s = (*st)->Run();
  (*st)->Reset();
  return s;
}

// Marks a SQLite failure inside a mutation: the whole batch is rolled back.
absl::Status SqliteWriter::Hard(absl::Status s) {
  if (hard_error_.ok()) hard_error_ = s;
  return s;
}

// The job's (state, fence), or kNotFound.
absl::Status SqliteWriter::JobStateFence(const std::string& job_id, JobState* state,
                                         int64_t* fence) {
  SQL_W(st, "SELECT state, fence FROM jobs WHERE job_id = ?");
  st->Bind(1, job_id);
  SQL_STEP(row, st);
  if (!row) return absl::NotFoundError(absl::StrCat("unknown job ", job_id));
  KV_ASSIGN_OR_RETURN(*state, ParseJobState(st->Text(0)));
  *fence = st->Int(1);
  return absl::OkStatus();
}

absl::Status SqliteWriter::Do(SubmitSweep& op) {
  {
    SQL_W(st,
          "INSERT INTO sweeps(name, spec_yaml, base_dir, priority, cancelled, created_ms, "
          "updated_ms) VALUES (?1, ?2, ?3, ?4, 0, ?5, ?5) ON CONFLICT(name) DO UPDATE SET "
          "spec_yaml = excluded.spec_yaml, base_dir = excluded.base_dir, "
          "priority = excluded.priority, cancelled = 0, updated_ms = excluded.updated_ms");
    st->Bind(1, op.name).Bind(2, op.spec_yaml).Bind(3, op.base_dir).Bind(4, op.priority);
    st->Bind(5, op.now_ms);
    SQL_RUN(st);
  }
  int64_t sid = 0;
  {
    SQL_W(st, "SELECT sweep_id FROM sweeps WHERE name = ?");
    st->Bind(1, op.name);
    SQL_STEP(row, st);
    if (!row) return Hard(absl::InternalError("sweep row vanished"));
    sid = st->Int(0);
  }
  op.enqueued = op.requeued = op.done = op.pending = op.failed = 0;
  op.queued_job_ids.clear();
  for (const NewJob& j : op.jobs) {
    JobState state;
    int64_t fence;
    absl::Status s = JobStateFence(j.job_id, &state, &fence);
    if (!hard_error_.ok()) return hard_error_;
    if (absl::IsNotFound(s)) {
      absl::StatusOr<nlohmann::json> spec = ParseJson(j.spec_json, "job spec");
      if (!spec.ok()) return spec.status();
      std::string model, task, method;
      int64_t kv_heads = 0;
      try {
        model = spec->at("model_name").get<std::string>();
        task = spec->at("task").at("name").get<std::string>();
        method = spec->at("method").get<std::string>();
        kv_heads = spec->at("kv_heads").get<int64_t>();
      } catch (const nlohmann::json::exception& e) {
        return absl::InvalidArgumentError(absl::StrCat("job spec: ", e.what()));
      }
      SQL_W(st,
            "INSERT INTO jobs(job_id, model_key, model, task, method, kv_heads, "
            "state, priority, max_attempts, created_ms, updated_ms) "
            "VALUES (?1, ?3, ?4, ?5, ?6, ?7, 'queued', ?8, ?9, ?10, ?10)");
      st->Bind(1, j.job_id).Bind(2, j.spec_json).Bind(3, j.model_key).Bind(4, model);
      st->Bind(5, task).Bind(6, method).Bind(7, kv_heads).Bind(8, j.priority);
      st->Bind(9, j.max_attempts).Bind(10, op.now_ms);
      SQL_RUN(st);
      SQL_W(sp, "INSERT INTO job_specs(job_id, spec_json) VALUES (?1, ?2)");
      sp->Bind(1, j.job_id).Bind(2, j.spec_json);
      SQL_RUN(sp);
      ++op.enqueued;
      op.queued_job_ids.push_back(j.job_id);
    } else if (!s.ok()) {
      return s;
    } else if (state == JobState::kCancelled) {
      SQL_W(st,
            "UPDATE jobs SET state = 'queued', attempts = 0, next_eligible_ms = 0, "
            "crash_workers = '[]', last_error = NULL, priority = ?2, max_attempts = ?3, "
            "updated_ms = ?4 WHERE job_id = ?1");
      st->Bind(1, j.job_id).Bind(2, j.priority).Bind(3, j.max_attempts).Bind(4, op.now_ms);
      SQL_RUN(st);
      ++op.requeued;
      op.queued_job_ids.push_back(j.job_id);
    } else if (state == JobState::kDone) {
      ++op.done;
    } else if (state == JobState::kQueued || state == JobState::kLeased) {
      ++op.pending;
    } else {
      ++op.failed;
    }
    SQL_W(link,
          "INSERT INTO sweep_jobs(sweep_id, job_id, labels) VALUES (?1, ?2, ?3) "
          "ON CONFLICT(sweep_id, job_id) DO UPDATE SET labels = excluded.labels");
    link->Bind(1, sid).Bind(2, j.job_id).Bind(3, j.labels_json);
    SQL_RUN(link);
  }
  return Audit(op.now_ms, op.actor, "submit", op.name,
               nlohmann::json{{"jobs", op.jobs.size()},
                              {"enqueued", op.enqueued},
                              {"requeued", op.requeued},
                              {"done", op.done}});
}

// One row of the audit log, in the transaction of what it records.
absl::Status SqliteWriter::Audit(int64_t now_ms, const std::string& actor, const char* action,
                                 const std::string& sweep, const nlohmann::json& detail) {
  if (schema_ < 3) return absl::OkStatus();  // (tests that stop at an older schema)
  SQL_W(st, "INSERT INTO audit(at_ms, actor, action, sweep, detail) VALUES (?1, ?2, ?3, ?4, ?5)");
  st->Bind(1, now_ms).Bind(2, actor.empty() ? std::string("unknown") : actor);
  st->Bind(3, action).Bind(4, sweep).Bind(5, detail.dump());
  SQL_RUN(st);
  return absl::OkStatus();
}

absl::Status SqliteWriter::Do(GrantLease& op) {
  SQL_W(st,
        "UPDATE jobs SET state = 'leased', fence = fence + 1, attempts = attempts + 1, "
        "lease_id = ?3, lease_worker = ?4, lease_deadline_ms = ?5, updated_ms = ?6 "
        "WHERE job_id = ?1 AND state = 'queued' AND fence = ?2 RETURNING attempts");
  st->Bind(1, op.job_id).Bind(2, op.expected_fence).Bind(3, op.lease_id);
  st->Bind(4, op.worker_id).Bind(5, op.deadline_ms).Bind(6, op.now_ms);
  SQL_STEP(row, st);
  if (!row) {
    st->Reset();
    return Explain(op.job_id, "queued", op.expected_fence);
  }
  op.attempt = static_cast<int>(st->Int(0));
  SQL_STEP(more, st);  // finish the statement
  (void)more;
  SQL_W(ins,
        "INSERT INTO attempts(job_id, fence, lease_id, worker_id, started_ms, outcome) "
        "VALUES (?1, ?2, ?3, ?4, ?5, 'running')");
  ins->Bind(1, op.job_id).Bind(2, op.expected_fence + 1).Bind(3, op.lease_id);
  ins->Bind(4, op.worker_id).Bind(5, op.now_ms);
  SQL_RUN(ins);
  return absl::OkStatus();
}

// A precondition failure that says what the job actually is.
absl::Status SqliteWriter::Explain(const std::string& job_id, absl::string_view want_state,
                                   int64_t want_fence) {
  JobState state;
  int64_t fence;
  absl::Status s = JobStateFence(job_id, &state, &fence);
  if (!s.ok()) return s;
  return absl::FailedPreconditionError(
      absl::StrCat("stale fencing token ", want_fence, " for job ", job_id.substr(0, 12),
                   ": the job is ", JobStateName(state), " with fence ", fence, " (expected ",
                   want_state, " with fence ", want_fence, ")"));
}

absl::Status SqliteWriter::Do(RecordResult& op) {
  absl::StatusOr<ResultMetrics> m = op.metrics ? absl::StatusOr<ResultMetrics>(*op.metrics)
                                               : ExtractResultMetrics(op.result_json);
  if (!m.ok()) return m.status();
  JobState state;
  int64_t fence;
  KV_RETURN_IF_ERROR(JobStateFence(op.job_id, &state, &fence));
  op.duplicate = false;
  if (state != JobState::kLeased || fence != op.fence) {
    SQL_W(st, "SELECT fence FROM results WHERE job_id = ?");
    st->Bind(1, op.job_id);
    SQL_STEP(row, st);
    if (row && st->Int(0) == op.fence) {
      op.duplicate = true;
      return absl::OkStatus();
    }
    return absl::FailedPreconditionError(absl::StrCat(
        "stale fencing token ", op.fence, " for job ", op.job_id.substr(0, 12), ": the job is ",
        JobStateName(state), " with fence ", fence, "; the result is rejected"));
  }
  {
    SQL_W(st,
          "INSERT INTO results(job_id, fence, worker_id, recorded_ms, model, task, method, "
          "kv_heads, acc, ppl, token_ppl, word_ppl, bits_per_byte, loglik_sum, n, tokens, "
          "words, bytes, fraction_payload, fraction_total, wall_s, tokens_per_s, result_json, "
          "recorded_by) "
          "SELECT job_id, ?2, ?3, ?4, model, task, method, kv_heads, ?5, ?6, ?7, ?8, ?9, ?10, "
          "?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20 FROM jobs WHERE job_id = ?1");
    st->Bind(1, op.job_id).Bind(2, op.fence).Bind(3, op.worker_id).Bind(4, op.now_ms);
    st->Bind(5, m->acc).Bind(6, m->ppl).Bind(7, m->token_ppl).Bind(8, m->word_ppl);
    st->Bind(9, m->bits_per_byte).Bind(10, m->loglik_sum).Bind(11, m->n);
    st->Bind(12, m->tokens).Bind(13, m->words).Bind(14, m->bytes);
    st->Bind(15, m->fraction_payload).Bind(16, m->fraction_total).Bind(17, m->wall_s);
    st->Bind(18, m->tokens_per_s).Bind(19, op.result_json);
    if (op.actor.empty()) {
      st->BindNull(20);
    } else {
      st->Bind(20, op.actor);
    }
    SQL_RUN(st);
  }
  {
    SQL_W(st,
          "UPDATE jobs SET state = 'done', lease_id = NULL, lease_worker = NULL, "
          "lease_deadline_ms = NULL, last_error = NULL, updated_ms = ?2 WHERE job_id = ?1");
    st->Bind(1, op.job_id).Bind(2, op.now_ms);
    SQL_RUN(st);
  }
  {
    SQL_W(st,
          "UPDATE attempts SET outcome = 'done', ended_ms = ?3 WHERE job_id = ?1 AND "
          "fence = ?2");
    st->Bind(1, op.job_id).Bind(2, op.fence).Bind(3, op.now_ms);
    SQL_RUN(st);
  }
  {
    SQL_W(st, "UPDATE workers SET jobs_done = jobs_done + 1 WHERE worker_id = ?");
    st->Bind(1, op.worker_id);
    SQL_RUN(st);
  }
  return absl::OkStatus();
}

absl::Status SqliteWriter::Do(EndLease& op) {
  if (op.new_state == JobState::kLeased || op.new_state == JobState::kDone) {
    return absl::InvalidArgumentError(
        absl::StrCat("EndLease cannot move a job to ", JobStateName(op.new_state)));
  }
  std::optional<std::string> crash;
  if (op.crash_workers) crash = nlohmann::json(*op.crash_workers).dump();
  std::optional<std::string> err;
  if (!op.error.empty()) err = op.error;
  {
    SQL_W(st,
          "UPDATE jobs SET state = ?3, fence = fence + 1, lease_id = NULL, lease_worker = NULL, "
          "lease_deadline_ms = NULL, next_eligible_ms = ?4, attempts = attempts - ?5, "
          "last_error = coalesce(?6, last_error), crash_workers = coalesce(?7, crash_workers), "
          "updated_ms = ?8 WHERE job_id = ?1 AND state = 'leased' AND fence = ?2");
    st->Bind(1, op.job_id).Bind(2, op.fence).Bind(3, JobStateName(op.new_state));
    st->Bind(4, op.next_eligible_ms).Bind(5, op.refund_attempt ? 1 : 0).Bind(6, err);
    st->Bind(7, crash).Bind(8, op.now_ms);
    SQL_RUN(st);
    if (sqlite3_changes(db_) != 1) {
      st->Reset();
      return Explain(op.job_id, "leased", op.fence);
    }
  }
  {
    SQL_W(st,
          "UPDATE attempts SET outcome = ?3, error = ?4, ended_ms = ?5 WHERE job_id = ?1 AND "
          "fence = ?2");
    st->Bind(1, op.job_id).Bind(2, op.fence).Bind(3, AttemptOutcomeName(op.outcome));
    st->Bind(4, err).Bind(5, op.now_ms);
    SQL_RUN(st);
  }
  if (op.outcome == AttemptOutcome::kLost) {
    SQL_W(st,
          "UPDATE workers SET leases_lost = leases_lost + 1 WHERE worker_id = "
          "(SELECT worker_id FROM attempts WHERE job_id = ?1 AND fence = ?2)");
    st->Bind(1, op.job_id).Bind(2, op.fence);
    SQL_RUN(st);
  }
  return absl::OkStatus();
}

absl::Status SqliteWriter::Do(CancelJobs& op) {
  op.cancelled = 0;
  for (const CancelJobs::Expect& e : op.jobs) {
    if (e.state == JobState::kQueued) {
      SQL_W(st,
            "UPDATE jobs SET state = 'cancelled', updated_ms = ?3 WHERE job_id = ?1 AND "
            "state = 'queued' AND fence = ?2");
      st->Bind(1, e.job_id).Bind(2, e.fence).Bind(3, op.now_ms);
      SQL_RUN(st);
      op.cancelled += sqlite3_changes(db_);
    } else if (e.state == JobState::kLeased) {
      SQL_W(st,
            "UPDATE jobs SET state = 'cancelled', fence = fence + 1, lease_id = NULL, "
            "lease_worker = NULL, lease_deadline_ms = NULL, updated_ms = ?3 "
            "WHERE job_id = ?1 AND state = 'leased' AND fence = ?2");
      st->Bind(1, e.job_id).Bind(2, e.fence).Bind(3, op.now_ms);
      SQL_RUN(st);
      if (sqlite3_changes(db_) == 1) {
        ++op.cancelled;
        SQL_W(at,
              "UPDATE attempts SET outcome = 'cancelled', ended_ms = ?3 WHERE job_id = ?1 AND "
              "fence = ?2");
        at->Bind(1, e.job_id).Bind(2, e.fence).Bind(3, op.now_ms);
        SQL_RUN(at);
      }
    }
  }
  SQL_W(st, "UPDATE sweeps SET cancelled = 1, updated_ms = ?2 WHERE name = ?1");
  st->Bind(1, op.sweep).Bind(2, op.now_ms);
  SQL_RUN(st);
  if (sqlite3_changes(db_) != 1) {
    return absl::NotFoundError(absl::StrCat("no sweep named '", op.sweep, "'"));
  }
  return Audit(op.now_ms, op.actor, "cancel", op.sweep,
               nlohmann::json{{"cancelled", op.cancelled}});
}

absl::Status SqliteWriter::Do(RequeueJobs& op) {
  op.requeued.clear();
  for (const std::string& id : op.job_ids) {
    JobState state;
    int64_t fence;
    absl::Status s = JobStateFence(id, &state, &fence);
    if (!hard_error_.ok()) return hard_error_;
    if (!s.ok() || std::find(op.from.begin(), op.from.end(), state) == op.from.end()) continue;
    SQL_W(st,
          "UPDATE jobs SET state = 'queued', attempts = 0, next_eligible_ms = 0, "
          "crash_workers = '[]', updated_ms = ?2 WHERE job_id = ?1");
    st->Bind(1, id).Bind(2, op.now_ms);
    SQL_RUN(st);
    op.requeued.push_back(id);
  }
  std::vector<std::string> from;
  for (JobState f : op.from) from.push_back(JobStateName(f));
  return Audit(op.now_ms, op.actor, "retry", op.sweep,
               nlohmann::json{{"requeued", op.requeued.size()}, {"from", from}});
}

absl::Status SqliteWriter::Do(TouchWorker& op) {
  SQL_W(st,
        "INSERT INTO workers(worker_id, hostname, device, evaluator, pid, first_seen_ms, "
        "last_seen_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) ON CONFLICT(worker_id) DO UPDATE "
        "SET hostname = excluded.hostname, device = excluded.device, "
        "evaluator = excluded.evaluator, pid = excluded.pid, "
        "last_seen_ms = excluded.last_seen_ms");
  st->Bind(1, op.worker.worker_id).Bind(2, op.worker.hostname).Bind(3, op.worker.device);
  st->Bind(4, op.worker.evaluator).Bind(5, op.worker.pid).Bind(6, op.now_ms);
  SQL_RUN(st);
  return absl::OkStatus();
}

}  // namespace kvsweep

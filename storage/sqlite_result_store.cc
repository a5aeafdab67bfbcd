// ResultStore on SQLite: a facade over the store's parts, one connection each.
//
// - SqliteWriter (storage/sqlite_writer.h): the write connection (WAL, synchronous=FULL, every
//   write inside BEGIN IMMEDIATE, prepared statements cached) and the mutations;
// - the read connection here, for the coordinator's own reads (status, export), under rmu_;
// - SqliteQuerySandbox (storage/sqlite_query_sandbox.h): user SQL on a connection opened
//   read-only, with an authorizer and limits;
// - WalCheckpointer (storage/wal_checkpointer.h): checkpoints the WAL in the background.
//
// WAL lets readers run while the committer writes. Schema and migrations:
// storage/sqlite_schema.h.
#include <sqlite3.h>

#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/json_util.h"
#include "common/mutex.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "storage/result_store.h"
#include "storage/sqlite_query_sandbox.h"
#include "storage/sqlite_schema.h"
#include "storage/sqlite_util.h"
#include "storage/sqlite_writer.h"
#include "storage/wal_checkpointer.h"

namespace kvsweep {
namespace {

std::vector<std::string> ParseStringList(const std::string& json_text) {
  std::vector<std::string> out;
  absl::StatusOr<nlohmann::json> j = ParseJson(json_text, "crash_workers");
  if (j.ok() && j->is_array()) {
    for (const auto& e : *j) {
      if (e.is_string()) out.push_back(e.get<std::string>());
    }
  }
  return out;
}

class SqliteResultStore final : public ResultStore {
 public:
  explicit SqliteResultStore(const SqliteOptions& options)
      : options_(options), checkpointer_(options) {}
  ~SqliteResultStore() override {
    checkpointer_.Stop();
    writer_.Checkpoint();
    checkpointer_.Close();
    writer_.Close();
    {
      MutexLock lock(&rmu_);
      sqlite3_close_v2(rdb_);
      rdb_ = nullptr;
    }
    sandbox_.Close();
  }

  absl::Status Open(const std::string& path) {
    const SqliteOptions& o = options_;
    if (o.heap_limit_bytes > 0) sqlite3_hard_heap_limit64(o.heap_limit_bytes);
    if (!o.read_only) {
      KV_RETURN_IF_ERROR(writer_.Open(path, o, &checkpointer_));
      KV_RETURN_IF_ERROR(checkpointer_.Start(path));
    }
    {
      MutexLock lock(&rmu_);
      KV_RETURN_IF_ERROR(
          OpenConnection(path, o.read_only ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE, &rdb_));
      sqlite3_busy_timeout(rdb_, o.busy_timeout_ms);
      KV_RETURN_IF_ERROR(Exec(rdb_, "PRAGMA query_only=ON"));
      // The writer checks the file when it opens it; a read-only open has no writer, and a
      // damaged page can read as no rows at all (an export that comes back empty), so it
      // checks the file here.
      if (o.read_only) KV_RETURN_IF_ERROR(QuickCheck(rdb_, path));
    }
    KV_RETURN_IF_ERROR(sandbox_.Open(path, o.busy_timeout_ms));
    if (o.read_only) {
      // Read-only opens do not migrate; refuse a schema they cannot read.
      MutexLock lock(&rmu_);
      absl::StatusOr<int> v = ReadSchemaVersion(rdb_, path);
      if (!v.ok()) return v.status();
      if (*v == 0) {
        return absl::FailedPreconditionError(
            absl::StrCat("'", path, "' is not a kvsweep database (no schema version)"));
      }
      if (*v > LatestSchemaVersion()) return SchemaTooNew(path, *v);
    }
    return absl::OkStatus();
  }

  absl::Status Apply(std::vector<Mutation>& batch) override { return writer_.Apply(batch); }

  absl::StatusOr<std::vector<ActiveJob>> LoadActiveJobs() override {
    MutexLock lock(&rmu_);
    KV_ASSIGN_OR_RETURN(auto st,
                        Stmt::Prepare(rdb_, absl::StrCat(kActiveColumns, " ORDER BY j.seq")));
    std::vector<ActiveJob> out;
    KV_RETURN_IF_ERROR(ReadActive(st.get(), &out));
    return out;
  }

  absl::StatusOr<std::vector<ActiveJob>> LoadJobs(
      const std::vector<std::string>& job_ids) override {
    MutexLock lock(&rmu_);
    KV_ASSIGN_OR_RETURN(auto st,
                        Stmt::Prepare(rdb_, absl::StrCat(kActiveColumns, " AND j.job_id = ?")));
    std::vector<ActiveJob> out;
    for (const std::string& id : job_ids) {
      st->Reset();
      st->Bind(1, id);
      KV_RETURN_IF_ERROR(ReadActive(st.get(), &out));
    }
    std::sort(out.begin(), out.end(),
              [](const ActiveJob& a, const ActiveJob& b) { return a.seq < b.seq; });
    return out;
  }

  absl::StatusOr<SweepInfo> GetSweep(const std::string& name) override {
    MutexLock lock(&rmu_);
    return GetSweepLocked(name);
  }

  absl::StatusOr<std::vector<SweepInfo>> ListSweeps() override {
    MutexLock lock(&rmu_);
    KV_ASSIGN_OR_RETURN(auto st, Stmt::Prepare(rdb_, "SELECT name FROM sweeps ORDER BY sweep_id"));
    std::vector<std::string> names;
    for (;;) {
      KV_ASSIGN_OR_RETURN(bool row, st->Step());
      if (!row) break;
      names.push_back(st->Text(0));
    }
    std::vector<SweepInfo> out;
    for (const std::string& n : names) {
      KV_ASSIGN_OR_RETURN(SweepInfo i, GetSweepLocked(n));
      out.push_back(std::move(i));
    }
    return out;
  }

  absl::StatusOr<std::vector<SweepJobRef>> SweepJobs(const std::string& sweep,
                                                     const std::vector<JobState>& states) override {
    MutexLock lock(&rmu_);
    KV_ASSIGN_OR_RETURN(int64_t sid, SweepId(sweep));
    KV_ASSIGN_OR_RETURN(
        auto st,
        Stmt::Prepare(rdb_,
                      "SELECT j.job_id, j.state, j.fence, EXISTS(SELECT 1 FROM sweep_jobs o "
                      "JOIN sweeps s2 ON s2.sweep_id = o.sweep_id WHERE o.job_id = j.job_id "
                      "AND o.sweep_id != ?1 AND s2.cancelled = 0) "
                      "FROM sweep_jobs sj JOIN jobs j ON j.job_id = sj.job_id "
                      "WHERE sj.sweep_id = ?1 ORDER BY sj.rowid"));
    st->Bind(1, sid);
    std::vector<SweepJobRef> out;
    for (;;) {
      KV_ASSIGN_OR_RETURN(bool row, st->Step());
      if (!row) break;
      SweepJobRef r;
      r.job_id = st->Text(0);
      KV_ASSIGN_OR_RETURN(r.state, ParseJobState(st->Text(1)));
      r.fence = st->Int(2);
      r.shared_with_live_sweep = st->Int(3) != 0;
      if (!states.empty() && std::find(states.begin(), states.end(), r.state) == states.end()) {
        continue;
      }
      out.push_back(std::move(r));
    }
    return out;
  }

  absl::Status Export(const std::string& sweep, bool include_spec,
                      const std::function<bool(const ExportRow&)>& fn) override {
    // Rows are collected under the lock and handed out after it, so a slow consumer (a gRPC
    // stream) never holds the read connection.
    std::vector<ExportRow> rows;
    {
      MutexLock lock(&rmu_);
      KV_ASSIGN_OR_RETURN(int64_t sid, SweepId(sweep));
      KV_ASSIGN_OR_RETURN(
          auto st, Stmt::Prepare(rdb_,
                                 "SELECT j.job_id, sj.labels, j.state, r.result_json, "
                                 "CASE WHEN ?2 THEN (SELECT spec_json FROM job_specs s WHERE "
                                 "s.job_id = j.job_id) ELSE '' END, j.last_error "
                                 "FROM sweep_jobs sj JOIN jobs j ON j.job_id = sj.job_id "
                                 "LEFT JOIN results r ON r.job_id = sj.job_id "
                                 "WHERE sj.sweep_id = ?1 ORDER BY sj.rowid"));
      st->Bind(1, sid).Bind(2, include_spec ? 1 : 0);
      for (;;) {
        KV_ASSIGN_OR_RETURN(bool row, st->Step());
        if (!row) break;
        ExportRow r;
        r.job_id = st->Text(0);
        r.sweep = sweep;
        r.labels_json = st->Text(1);
        KV_ASSIGN_OR_RETURN(r.state, ParseJobState(st->Text(2)));
        r.result_json = st->Text(3);
        r.spec_json = st->Text(4);
        r.last_error = st->Text(5);
        rows.push_back(std::move(r));
      }
    }
    for (const ExportRow& r : rows) {
      if (!fn(r)) break;
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::optional<int64_t>> ResultFence(const std::string& job_id) override {
    MutexLock lock(&rmu_);
    KV_ASSIGN_OR_RETURN(auto st, Stmt::Prepare(rdb_, "SELECT fence FROM results WHERE job_id = ?"));
    st->Bind(1, job_id);
    KV_ASSIGN_OR_RETURN(bool row, st->Step());
    if (!row) return std::optional<int64_t>();
    return std::optional<int64_t>(st->Int(0));
  }

  absl::StatusOr<std::optional<AttemptLease>> LeaseOfAttempt(const std::string& job_id,
                                                             int64_t fence) override {
    MutexLock lock(&rmu_);
    KV_ASSIGN_OR_RETURN(auto st, Stmt::Prepare(rdb_,
                                               "SELECT lease_id, worker_id FROM attempts "
                                               "WHERE job_id = ? AND fence = ?"));
    st->Bind(1, job_id).Bind(2, fence);
    KV_ASSIGN_OR_RETURN(bool row, st->Step());
    if (!row) return std::optional<AttemptLease>();
    return std::optional<AttemptLease>(AttemptLease{st->Text(0), st->Text(1)});
  }

  absl::StatusOr<int64_t> CountResults() override { return Count("results"); }
  absl::StatusOr<int64_t> CountJobs() override { return Count("jobs"); }

  absl::StatusOr<QueryResult> Query(const std::string& sql, int max_rows, int timeout_ms) override {
    return sandbox_.Query(sql, max_rows, timeout_ms);
  }

  absl::Status IntegrityCheck() override {
    MutexLock lock(&rmu_);
    KV_ASSIGN_OR_RETURN(std::string problem, RunCheckPragma(rdb_, "integrity_check", 100));
    if (!problem.empty()) return absl::DataLossError(absl::StrCat("integrity_check: ", problem));
    KV_ASSIGN_OR_RETURN(auto fk, Stmt::Prepare(rdb_, "PRAGMA foreign_key_check"));
    KV_ASSIGN_OR_RETURN(bool bad_fk, fk->Step());
    if (bad_fk) return absl::DataLossError("foreign_key_check: dangling references");
    // kvsweep's own invariant: a job is done exactly when it has a result.
    KV_ASSIGN_OR_RETURN(auto inv,
                        Stmt::Prepare(rdb_,
                                      "SELECT count(*) FROM jobs j LEFT JOIN results r "
                                      "ON r.job_id = j.job_id "
                                      "WHERE (j.state = 'done') != (r.job_id IS NOT NULL)"));
    KV_ASSIGN_OR_RETURN(bool unused, inv->Step());
    (void)unused;
    if (inv->Int(0) != 0) {
      return absl::DataLossError(
          absl::StrCat(inv->Int(0), " jobs disagree with the results table about being done"));
    }
    return absl::OkStatus();
  }

 private:
  static constexpr const char* kActiveColumns =
      "SELECT j.job_id, s.spec_json, j.model_key, j.state, j.priority, j.attempts, "
      "j.max_attempts, j.next_eligible_ms, j.fence, j.lease_id, j.lease_worker, "
      "j.lease_deadline_ms, j.crash_workers, j.seq, j.task "
      "FROM jobs j JOIN job_specs s ON s.job_id = j.job_id "
      "WHERE j.state IN ('queued','leased')";

  static absl::Status ReadActive(Stmt* st, std::vector<ActiveJob>* out) {
    for (;;) {
      KV_ASSIGN_OR_RETURN(bool row, st->Step());
      if (!row) break;
      ActiveJob j;
      j.job_id = st->Text(0);
      j.spec_json = st->Text(1);
      j.model_key = st->Text(2);
      KV_ASSIGN_OR_RETURN(j.state, ParseJobState(st->Text(3)));
      j.priority = static_cast<int>(st->Int(4));
      j.attempts = static_cast<int>(st->Int(5));
      j.max_attempts = static_cast<int>(st->Int(6));
      j.next_eligible_ms = st->Int(7);
      j.fence = st->Int(8);
      j.lease_id = st->Text(9);
      j.lease_worker = st->Text(10);
      j.lease_deadline_ms = st->Int(11);
      j.crash_workers = ParseStringList(st->Text(12));
      j.seq = st->Int(13);
      j.task = st->Text(14);
      out->push_back(std::move(j));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<int64_t> SweepId(const std::string& name) ABSL_EXCLUSIVE_LOCKS_REQUIRED(rmu_) {
    KV_ASSIGN_OR_RETURN(auto st, Stmt::Prepare(rdb_, "SELECT sweep_id FROM sweeps WHERE name = ?"));
    st->Bind(1, name);
    KV_ASSIGN_OR_RETURN(bool row, st->Step());
    if (!row) return absl::NotFoundError(absl::StrCat("no sweep named '", name, "'"));
    return st->Int(0);
  }

  absl::StatusOr<SweepInfo> GetSweepLocked(const std::string& name)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(rmu_) {
    KV_ASSIGN_OR_RETURN(auto st,
                        Stmt::Prepare(rdb_,
                                      "SELECT sweep_id, priority, created_ms, cancelled FROM "
                                      "sweeps WHERE name = ?"));
    st->Bind(1, name);
    KV_ASSIGN_OR_RETURN(bool row, st->Step());
    if (!row) return absl::NotFoundError(absl::StrCat("no sweep named '", name, "'"));
    SweepInfo info;
    info.name = name;
    const int64_t sid = st->Int(0);
    info.priority = static_cast<int>(st->Int(1));
    info.created_ms = st->Int(2);
    info.cancelled = st->Int(3) != 0;
    KV_ASSIGN_OR_RETURN(auto counts,
                        Stmt::Prepare(rdb_,
                                      "SELECT j.state, count(*) FROM sweep_jobs sj JOIN jobs j "
                                      "ON j.job_id = sj.job_id WHERE sj.sweep_id = ? "
                                      "GROUP BY j.state"));
    counts->Bind(1, sid);
    for (;;) {
      KV_ASSIGN_OR_RETURN(bool r, counts->Step());
      if (!r) break;
      KV_ASSIGN_OR_RETURN(JobState s, ParseJobState(counts->Text(0)));
      info.counts[static_cast<int>(s)] = static_cast<int>(counts->Int(1));
      info.total += static_cast<int>(counts->Int(1));
    }
    KV_ASSIGN_OR_RETURN(auto errs,
                        Stmt::Prepare(rdb_,
                                      "SELECT j.job_id, j.last_error FROM sweep_jobs sj JOIN "
                                      "jobs j ON j.job_id = sj.job_id WHERE sj.sweep_id = ? AND "
                                      "j.state IN ('failed','quarantined') AND j.last_error IS "
                                      "NOT NULL ORDER BY j.updated_ms DESC LIMIT 5"));
    errs->Bind(1, sid);
    for (;;) {
      KV_ASSIGN_OR_RETURN(bool r, errs->Step());
      if (!r) break;
      info.recent_errors.push_back(absl::StrCat(errs->Text(0).substr(0, 12), ": ", errs->Text(1)));
    }
    return info;
  }

  absl::StatusOr<int64_t> Count(const char* table) ABSL_LOCKS_EXCLUDED(rmu_) {
    MutexLock lock(&rmu_);
    KV_ASSIGN_OR_RETURN(auto st, Stmt::Prepare(rdb_, absl::StrCat("SELECT count(*) FROM ", table)));
    KV_ASSIGN_OR_RETURN(bool row, st->Step());
    (void)row;
    return st->Int(0);
  }

  const SqliteOptions options_;
  WalCheckpointer checkpointer_;
  SqliteWriter writer_;
  Mutex rmu_;
  sqlite3* rdb_ ABSL_GUARDED_BY(rmu_) = nullptr;  // coordinator reads
  SqliteQuerySandbox sandbox_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<ResultStore>> NewSqliteResultStore(const std::string& path,
                                                                  const SqliteOptions& options) {
  auto store = std::make_unique<SqliteResultStore>(options);
  absl::Status s = store->Open(path);
  if (!s.ok()) return s;
  return std::unique_ptr<ResultStore>(std::move(store));
}

}  // namespace kvsweep

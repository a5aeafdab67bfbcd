#include "storage/sqlite_schema.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "storage/result_store.h"
#include "storage/sqlite_util.h"

namespace kvsweep {

namespace {

// Schema migrations, applied in order; migration i (1-based) takes the schema from version
// i-1 to i. Append only: never edit a migration that has shipped.
const char* const kMigrations[] = {
    // 1: the core tables.
    R"sql(
CREATE TABLE sweeps(
  sweep_id    INTEGER PRIMARY KEY,
  name        TEXT NOT NULL UNIQUE,
  spec_yaml   TEXT NOT NULL,
  base_dir    TEXT NOT NULL DEFAULT '',
  priority    INTEGER NOT NULL DEFAULT 0,
  cancelled   INTEGER NOT NULL DEFAULT 0,
  created_ms  INTEGER NOT NULL,
  updated_ms  INTEGER NOT NULL);
CREATE TABLE jobs(
  seq               INTEGER PRIMARY KEY,
  job_id            TEXT NOT NULL UNIQUE,
  model_key         TEXT NOT NULL,
  model             TEXT NOT NULL,
  task              TEXT NOT NULL,
  method            TEXT NOT NULL,
  kv_heads          INTEGER NOT NULL,
  state             TEXT NOT NULL CHECK(state IN
                      ('queued','leased','done','failed','quarantined','cancelled')),
  priority          INTEGER NOT NULL DEFAULT 0,
  attempts          INTEGER NOT NULL DEFAULT 0,
  max_attempts      INTEGER NOT NULL,
  next_eligible_ms  INTEGER NOT NULL DEFAULT 0,
  fence             INTEGER NOT NULL DEFAULT 0,
  lease_id          TEXT,
  lease_worker      TEXT,
  lease_deadline_ms INTEGER,
  crash_workers     TEXT NOT NULL DEFAULT '[]',
  last_error        TEXT,
  created_ms        INTEGER NOT NULL,
  updated_ms        INTEGER NOT NULL);
CREATE INDEX jobs_by_state ON jobs(state);
-- Specs live apart from the job rows: a job row changes on every lease and result, and SQLite
-- rewrites a whole row on update.
CREATE TABLE job_specs(
  job_id    TEXT PRIMARY KEY REFERENCES jobs(job_id),
  spec_json TEXT NOT NULL);
CREATE TABLE sweep_jobs(
  sweep_id  INTEGER NOT NULL REFERENCES sweeps(sweep_id),
  job_id    TEXT NOT NULL REFERENCES jobs(job_id),
  labels    TEXT NOT NULL,
  PRIMARY KEY(sweep_id, job_id));
CREATE INDEX sweep_jobs_by_job ON sweep_jobs(job_id);
CREATE TABLE attempts(
  attempt_id  INTEGER PRIMARY KEY,
  job_id      TEXT NOT NULL REFERENCES jobs(job_id),
  fence       INTEGER NOT NULL,
  lease_id    TEXT NOT NULL,
  worker_id   TEXT NOT NULL,
  started_ms  INTEGER NOT NULL,
  ended_ms    INTEGER,
  outcome     TEXT NOT NULL,
  error       TEXT,
  UNIQUE(job_id, fence));
CREATE TABLE results(
  job_id            TEXT NOT NULL UNIQUE REFERENCES jobs(job_id),
  fence             INTEGER NOT NULL,
  worker_id         TEXT NOT NULL,
  recorded_ms       INTEGER NOT NULL,
  model             TEXT NOT NULL,
  task              TEXT NOT NULL,
  method            TEXT NOT NULL,
  kv_heads          INTEGER NOT NULL,
  acc               REAL,
  ppl               REAL,
  token_ppl         REAL,
  word_ppl          REAL,
  bits_per_byte     REAL,
  loglik_sum        REAL,
  n                 INTEGER,
  tokens            INTEGER,
  words             INTEGER,
  bytes             INTEGER,
  fraction_payload  REAL,
  fraction_total    REAL,
  wall_s            REAL,
  tokens_per_s      REAL,
  result_json       TEXT NOT NULL);
CREATE TABLE workers(
  worker_id     TEXT PRIMARY KEY,
  hostname      TEXT NOT NULL,
  device        TEXT NOT NULL,
  evaluator     TEXT NOT NULL,
  pid           INTEGER NOT NULL,
  first_seen_ms INTEGER NOT NULL,
  last_seen_ms  INTEGER NOT NULL,
  jobs_done     INTEGER NOT NULL DEFAULT 0,
  leases_lost   INTEGER NOT NULL DEFAULT 0);
)sql",
    // 2: a view joining results to the sweeps and labels they belong to (for `kvsweep query`).
    R"sql(
CREATE VIEW sweep_results AS
  SELECT s.name AS sweep,
         json_extract(sj.labels, '$.model') AS model_label,
         json_extract(sj.labels, '$.method') AS method_label,
         json_extract(sj.labels, '$.family') AS family,
         json_extract(sj.labels, '$.budget') AS budget,
         r.*
  FROM sweep_jobs sj JOIN sweeps s USING(sweep_id) JOIN results r USING(job_id);
)sql",
    // 3: who did what. audit: submit/cancel/retry by authenticated caller; results.recorded_by:
    // the caller that reported each result (its worker_id is what the worker says it is).
    R"sql(
CREATE TABLE audit(
  audit_id  INTEGER PRIMARY KEY,
  at_ms     INTEGER NOT NULL,
  actor     TEXT NOT NULL,
  action    TEXT NOT NULL,
  sweep     TEXT NOT NULL,
  detail    TEXT NOT NULL DEFAULT '{}');
ALTER TABLE results ADD COLUMN recorded_by TEXT;
)sql",
};
constexpr int kLatestVersion = sizeof(kMigrations) / sizeof(kMigrations[0]);

}  // namespace

int LatestSchemaVersion() { return kLatestVersion; }

absl::Status CheckJournalMode(sqlite3* db, const std::string& path) {
  KV_ASSIGN_OR_RETURN(auto st, Stmt::Prepare(db, "PRAGMA journal_mode"));
  KV_ASSIGN_OR_RETURN(bool row, st->Step());
  if (!row || st->Text(0) != "wal") {
    return absl::FailedPreconditionError(
        absl::StrCat("sqlite: '", path, "' could not be put in WAL mode"));
  }
  return absl::OkStatus();
}

absl::Status SchemaTooNew(const std::string& path, int v) {
  return absl::FailedPreconditionError(absl::StrCat("database '", path, "' has schema version ", v,
                                                    ", newer than this build's ", kLatestVersion,
                                                    "; use a newer kvsweep"));
}

absl::StatusOr<int> ReadSchemaVersion(sqlite3* db, const std::string& path) {
  KV_ASSIGN_OR_RETURN(auto t,
                      Stmt::Prepare(db,
                                    "SELECT count(*) FROM sqlite_master WHERE type = 'table' "
                                    "AND name = 'schema_version'"));
  KV_ASSIGN_OR_RETURN(bool row, t->Step());
  if (!row || t->Int(0) == 0) {
    // A file that has other tables but no version is someone else's database.
    KV_ASSIGN_OR_RETURN(auto any, Stmt::Prepare(db, "SELECT count(*) FROM sqlite_master"));
    KV_ASSIGN_OR_RETURN(bool r2, any->Step());
    if (r2 && any->Int(0) > 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("'", path, "' is a SQLite database but not a kvsweep one"));
    }
    return 0;
  }
  KV_ASSIGN_OR_RETURN(auto v, Stmt::Prepare(db, "SELECT version FROM schema_version"));
  KV_ASSIGN_OR_RETURN(bool r3, v->Step());
  return r3 ? static_cast<int>(v->Int(0)) : 0;
}

absl::Status QuickCheck(sqlite3* db, const std::string& path) {
  absl::StatusOr<std::unique_ptr<Stmt>> st = Stmt::Prepare(db, "PRAGMA quick_check(5)");
  std::vector<std::string> report;
  absl::Status s = st.status();
  while (s.ok()) {
    absl::StatusOr<bool> row = (*st)->Step();
    s = row.status();
    if (!s.ok() || !*row) break;
    report.push_back((*st)->Text(0));
  }
  if (s.ok() && report.size() == 1 && report[0] == "ok") return absl::OkStatus();
  return absl::DataLossError(
      absl::StrCat("database '", path, "' is damaged (quick_check: ",
                   s.ok() ? absl::StrJoin(report, "; ") : std::string(s.message()),
                   "); restore it from a backup or start a new one"));
}

absl::StatusOr<int> MigrateSchema(sqlite3* db, const std::string& path, int max_version) {
  KV_RETURN_IF_ERROR(Exec(db, "BEGIN IMMEDIATE"));
  absl::StatusOr<int> v = ReadSchemaVersion(db, path);
  if (!v.ok()) {
    Exec(db, "ROLLBACK").IgnoreError();
    return v.status();
  }
  if (*v > kLatestVersion) {
    Exec(db, "ROLLBACK").IgnoreError();
    return SchemaTooNew(path, *v);
  }
  const int target = max_version > 0 ? std::min(max_version, kLatestVersion) : kLatestVersion;
  absl::Status s;
  if (*v == 0) {
    s = Exec(db, "CREATE TABLE schema_version(version INTEGER NOT NULL)");
    if (s.ok()) s = Exec(db, "INSERT INTO schema_version VALUES (0)");
  }
  for (int i = *v + 1; s.ok() && i <= target; ++i) {
    s = Exec(db, kMigrations[i - 1]);
    if (s.ok()) s = Exec(db, absl::StrCat("UPDATE schema_version SET version = ", i));
    if (s.ok()) KV_LOG(INFO) << "result store: migrated '" << path << "' to schema v" << i;
  }
  if (s.ok()) s = Exec(db, "COMMIT");
  if (!s.ok()) {
    Exec(db, "ROLLBACK").IgnoreError();
    return s;
  }
  return std::max(*v, target);
}

}  // namespace kvsweep

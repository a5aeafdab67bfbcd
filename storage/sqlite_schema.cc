#include "storage/sqlite_schema.h"

#include <algorithm>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
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

std::string OneLine(absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    const unsigned char u = static_cast<unsigned char>(c);
    out.push_back(u < 0x20 || u == 0x7f ? ' ' : c);
  }
  return out;
}

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

absl::StatusOr<std::string> RunCheckPragma(sqlite3* db, absl::string_view pragma, int max_errors) {
  KV_ASSIGN_OR_RETURN(auto st,
                      Stmt::Prepare(db, absl::StrCat("PRAGMA ", pragma, "(", max_errors, ")")));
  // SQLite reports the problems as rows, but may also pack several into one row, one a line,
  // after a "*** in database main ***" header line.
  std::vector<std::string> problems;
  for (;;) {
    KV_ASSIGN_OR_RETURN(bool row, st->Step());
    if (!row) break;
    for (absl::string_view line : absl::StrSplit(st->Text(0), '\n', absl::SkipWhitespace())) {
      line = absl::StripAsciiWhitespace(line);
      if (absl::StartsWith(line, "*** in database ")) continue;
      problems.emplace_back(line);
    }
  }
  if (problems.size() == 1 && problems[0] == "ok") return std::string();
  if (problems.empty()) return absl::StrCat(pragma, " reported no result");
  std::string out = OneLine(problems[0]);
  if (problems.size() > 1) {
    // At max_errors SQLite stops looking: there may be more.
    absl::StrAppend(&out, " (and ",
                    static_cast<int>(problems.size()) >= max_errors ? "at least " : "",
                    problems.size() - 1, " more)");
  }
  return out;
}

absl::Status QuickCheck(sqlite3* db, const std::string& path) {
  absl::StatusOr<std::string> problem = RunCheckPragma(db, "quick_check", 100);
  // An error from the check itself (SQLITE_CORRUPT, SQLITE_NOTADB) is what is wrong with it.
  if (problem.ok() && problem->empty()) return absl::OkStatus();
  return absl::DataLossError(
      absl::StrCat("database '", path,
                   "' is damaged: ", problem.ok() ? *problem : OneLine(problem.status().message()),
                   "; restore it from a backup or start a new one"));
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

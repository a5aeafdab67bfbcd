// ResultStore on SQLite.
//
// Connections: the write connection (WAL, synchronous=FULL, every write inside
// BEGIN IMMEDIATE, prepared statements cached), a read connection for the coordinator's own
// reads (status, export) and a query connection opened read-only, with an authorizer, for
// user SQL. WAL lets readers run while the committer writes. A fourth connection checkpoints
// the WAL in the background (CheckpointLoop).
#include <sqlite3.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <thread>
#include <cstring>
#include <map>
#include <mutex>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/json_util.h"
#include "common/log.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "storage/result_store.h"

namespace kvsweep {
namespace {

// Maps a SQLite result code to the Status code that tells the caller what to do.
absl::StatusCode CodeFor(int rc) {
  switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return absl::StatusCode::kAborted;  // retry the transaction
    case SQLITE_CONSTRAINT:
      return absl::StatusCode::kAlreadyExists;
    case SQLITE_FULL:
    case SQLITE_NOMEM:
      return absl::StatusCode::kResourceExhausted;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return absl::StatusCode::kDataLoss;
    case SQLITE_IOERR:
    case SQLITE_PROTOCOL:
      return absl::StatusCode::kUnavailable;
    case SQLITE_CANTOPEN:
      return absl::StatusCode::kNotFound;
    case SQLITE_PERM:
    case SQLITE_READONLY:
    case SQLITE_AUTH:
      return absl::StatusCode::kPermissionDenied;
    case SQLITE_INTERRUPT:
      return absl::StatusCode::kDeadlineExceeded;
    case SQLITE_ERROR:
    case SQLITE_RANGE:
    case SQLITE_TOOBIG:
    case SQLITE_MISMATCH:
      return absl::StatusCode::kInvalidArgument;
    default:
      return absl::StatusCode::kInternal;
  }
}

absl::Status SqlError(sqlite3* db, int rc, absl::string_view what) {
  const char* msg = db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  return absl::Status(CodeFor(rc), absl::StrCat("sqlite: ", what, ": ", msg));
}

// A prepared statement, finalized on destruction.
class Stmt {
 public:
  Stmt() = default;
  Stmt(sqlite3* db, sqlite3_stmt* s) : db_(db), s_(s) {}
  ~Stmt() { sqlite3_finalize(s_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  Stmt(Stmt&& o) noexcept : db_(o.db_), s_(o.s_) { o.s_ = nullptr; }

  static absl::StatusOr<std::unique_ptr<Stmt>> Prepare(sqlite3* db, absl::string_view sql) {
    sqlite3_stmt* s = nullptr;
    int rc = sqlite3_prepare_v2(db, sql.data(), static_cast<int>(sql.size()), &s, nullptr);
    if (rc != SQLITE_OK) return SqlError(db, rc, absl::StrCat("prepare '", sql, "'"));
    return std::make_unique<Stmt>(db, s);
  }

  sqlite3_stmt* get() const { return s_; }
  void Reset() {
    sqlite3_reset(s_);
    sqlite3_clear_bindings(s_);
  }
  Stmt& Bind(int i, int64_t v) {
    sqlite3_bind_int64(s_, i, v);
    return *this;
  }
  Stmt& Bind(int i, int v) { return Bind(i, static_cast<int64_t>(v)); }
  Stmt& Bind(int i, double v) {
    sqlite3_bind_double(s_, i, v);
    return *this;
  }
  Stmt& Bind(int i, absl::string_view v) {
    sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& Bind(int i, const std::string& v) { return Bind(i, absl::string_view(v)); }
  Stmt& Bind(int i, const char* v) { return Bind(i, absl::string_view(v)); }
  Stmt& BindNull(int i) {
    sqlite3_bind_null(s_, i);
    return *this;
  }
  template <typename T>
  Stmt& Bind(int i, const std::optional<T>& v) {
    if (!v.has_value()) return BindNull(i);
    return Bind(i, *v);
  }

  // true: a row is available; false: done.
  absl::StatusOr<bool> Step() {
    int rc = sqlite3_step(s_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    return SqlError(db_, rc, "step");
  }
  absl::Status Run() {
    absl::StatusOr<bool> r = Step();
    if (!r.ok()) return r.status();
    return absl::OkStatus();
  }
  int64_t Int(int c) const { return sqlite3_column_int64(s_, c); }
  double Real(int c) const { return sqlite3_column_double(s_, c); }
  bool IsNull(int c) const { return sqlite3_column_type(s_, c) == SQLITE_NULL; }
  std::string Text(int c) const {
    const unsigned char* t = sqlite3_column_text(s_, c);
    if (t == nullptr) return "";
    return std::string(reinterpret_cast<const char*>(t), sqlite3_column_bytes(s_, c));
  }

 private:
  sqlite3* db_ = nullptr;
  sqlite3_stmt* s_ = nullptr;
};

// Resets a cached statement when the scope ends, so it holds no read lock.
class ScopedReset {
 public:
  explicit ScopedReset(Stmt* s) : s_(s) {}
  ~ScopedReset() { s_->Reset(); }
  ScopedReset(const ScopedReset&) = delete;
  ScopedReset& operator=(const ScopedReset&) = delete;

 private:
  Stmt* s_;
};


// Write-path helpers inside SqliteResultStore's mutations. A SQLite failure there is "hard":
// Hard() records it and Apply rolls the whole batch back.
//   SQL_W(st, "SQL")   a cached statement on the write connection, reset at scope end
//   SQL_STEP(row, st)  steps it; `row` says whether a row is available
//   SQL_RUN(st)        steps it to completion
#define SQL_CAT_(a, b) a##b
#define SQL_CAT(a, b) SQL_CAT_(a, b)
#define SQL_W(var, sql)                   \
  KV_ASSIGN_OR_RETURN(Stmt* var, W(sql)); \
  ScopedReset SQL_CAT(reset_, __LINE__)(var)
#define SQL_STEP(var, st)                        \
  bool var = false;                              \
  {                                              \
    absl::StatusOr<bool> kv_r_ = (st)->Step();   \
    if (!kv_r_.ok()) return Hard(kv_r_.status()); \
    var = *kv_r_;                                \
  }
#define SQL_RUN(st)                      \
  do {                                   \
    absl::Status kv_r_ = (st)->Run();    \
    if (!kv_r_.ok()) return Hard(kv_r_); \
  } while (0)

absl::Status Exec(sqlite3* db, absl::string_view sql) {
  char* err = nullptr;
  std::string s(sql);
  int rc = sqlite3_exec(db, s.c_str(), nullptr, nullptr, &err);
  if (rc != SQLITE_OK) {
    std::string msg = err != nullptr ? err : sqlite3_errstr(rc);
    sqlite3_free(err);
    return absl::Status(CodeFor(rc), absl::StrCat("sqlite: ", sql.substr(0, 60), ": ", msg));
  }
  return absl::OkStatus();
}

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

// User SQL (`kvsweep query`) may read kvsweep's tables and views with a fixed set of plain
// functions, nothing else: no attaching files, transactions or pragmas that set anything, and no
// function that reaches outside the data (fts3_tokenizer registers a pointer and leaks
// addresses, load_extension loads code) or makes large values out of nothing (randomblob,
// zeroblob). The connection's limits bound the size of any one value and statement.
constexpr const char* kQueryTables[] = {
    "sweeps",  "jobs",          "job_specs",     "sweep_jobs",   "attempts", "results",
    "workers", "sweep_results", "audit",    "schema_version", "sqlite_master", "sqlite_schema"};
// The longest value user SQL may make or read (results are at most 8 MiB).
constexpr int kQueryMaxValueBytes = 16 << 20;
constexpr const char* kQueryFunctions[] = {
    // aggregate
    "count", "sum", "total", "avg", "min", "max", "group_concat", "json_group_array",
    "json_group_object",
    // scalar
    "abs", "round", "coalesce", "ifnull", "nullif", "iif", "length", "lower", "upper", "substr",
    "substring", "trim", "ltrim", "rtrim", "replace", "instr", "printf", "format", "like",
    "glob", "typeof", "quote", "hex", "char", "unicode", "sign", "exp", "ln", "log", "log10",
    "log2", "sqrt", "pow", "power", "floor", "ceil", "ceiling", "date", "time", "datetime",
    "julianday", "strftime", "unixepoch", "json", "json_extract", "json_type", "json_valid",
    "json_array", "json_object", "json_array_length", "json_quote", "->", "->>",
    // window
    "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile", "lag", "lead",
    "first_value", "last_value", "nth_value"};

constexpr char kWriteDenied[] = "writes";
struct QueryAuth {
  std::string denied;  // what the last refusal was about, for the error message
};

bool InList(const char* name, const char* const* list, size_t n) {
  if (name == nullptr) return false;
  for (size_t i = 0; i < n; ++i) {
    if (absl::EqualsIgnoreCase(name, list[i])) return true;
  }
  return false;
}

int QueryAuthorizer(void* arg, int action, const char* a1, const char* a2, const char* db,
                    const char*) {
  auto* auth = static_cast<QueryAuth*>(arg);
  auto deny = [&](std::string what) {
    auth->denied = std::move(what);
    return SQLITE_DENY;
  };
  switch (action) {
    case SQLITE_SELECT:
    case SQLITE_RECURSIVE:
      return SQLITE_OK;
    case SQLITE_READ:
      // (No database name: a common table expression of the statement itself.)
      if (db == nullptr || InList(a1, kQueryTables, std::size(kQueryTables))) return SQLITE_OK;
      return deny(absl::StrCat("table '", a1 == nullptr ? "" : a1, "'"));
    case SQLITE_FUNCTION:
      if (InList(a2, kQueryFunctions, std::size(kQueryFunctions))) return SQLITE_OK;
      return deny(absl::StrCat("function ", a2 == nullptr ? "" : a2, "()"));
    case SQLITE_PRAGMA: {
      // Introspection and checks: they read and report, and set nothing (a value given to
      // them names a table).
      static const char* const kAllowed[] = {"table_info", "table_xinfo",      "table_list",
                                             "index_list", "index_info",       "foreign_key_list",
                                             "quick_check", "integrity_check"};
      if (InList(a1, kAllowed, std::size(kAllowed))) return SQLITE_OK;
      return deny(absl::StrCat("PRAGMA ", a1 == nullptr ? "" : a1));
    }
    case SQLITE_ATTACH:
    case SQLITE_DETACH:
      return deny("attaching databases");
    case SQLITE_TRANSACTION:
    case SQLITE_SAVEPOINT:
      return deny("transactions");
    default:
      return deny(kWriteDenied);
  }
}

struct Deadline {
  std::chrono::steady_clock::time_point at;
};
int ProgressHandler(void* arg) {
  auto* d = static_cast<Deadline*>(arg);
  return std::chrono::steady_clock::now() > d->at ? 1 : 0;
}

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
  SqliteResultStore() = default;
  ~SqliteResultStore() override {
    if (checkpointer_.joinable()) {
      {
        std::lock_guard<std::mutex> l(ckpt_mu_);
        ckpt_stop_ = true;
      }
      ckpt_cv_.notify_all();
      checkpointer_.join();
    }
    if (wdb_ != nullptr) {
      std::lock_guard<std::mutex> lock(wmu_);
      stmts_.clear();
      Exec(wdb_, "PRAGMA wal_checkpoint(TRUNCATE)").IgnoreError();
    }
    stmts_.clear();
    sqlite3_close_v2(cdb_);
    sqlite3_close_v2(wdb_);
    sqlite3_close_v2(rdb_);
    sqlite3_close_v2(qdb_);
  }

  absl::Status Open(const std::string& path, const SqliteOptions& o) {
    options_ = o;
    path_ = path;
    if (o.heap_limit_bytes > 0) sqlite3_hard_heap_limit64(o.heap_limit_bytes);
    const int busy = o.busy_timeout_ms;
    if (!o.read_only) {
      KV_RETURN_IF_ERROR(OpenConn(path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, &wdb_));
      sqlite3_busy_timeout(wdb_, busy);
      KV_RETURN_IF_ERROR(Exec(wdb_, "PRAGMA journal_mode=WAL"));
      KV_RETURN_IF_ERROR(CheckJournalMode(wdb_));
      // FULL: a COMMIT returns only once the WAL is fsynced, so acknowledged results survive
      // power loss, not just a crash of the process.
      KV_RETURN_IF_ERROR(Exec(wdb_, "PRAGMA synchronous=FULL"));
      KV_RETURN_IF_ERROR(Exec(wdb_, "PRAGMA foreign_keys=ON"));
      // A damaged file is refused at start, not found out by a later write.
      KV_RETURN_IF_ERROR(QuickCheck(wdb_, path));
      KV_RETURN_IF_ERROR(Migrate());
      // Checkpoints copy the WAL into the database file; run on the commit path (SQLite's
      // default) they stall an unlucky commit for tens of ms. A background connection does
      // them instead; commits only append to the WAL.
      KV_RETURN_IF_ERROR(Exec(wdb_, "PRAGMA wal_autocheckpoint=0"));
      sqlite3_wal_hook(wdb_, &SqliteResultStore::OnWalCommit, this);
      // A WAL file that once grew (a big submit, a burst) is cut back to this size when the
      // WAL starts over.
      KV_RETURN_IF_ERROR(Exec(wdb_, "PRAGMA journal_size_limit=67108864"));
      KV_RETURN_IF_ERROR(OpenConn(path, SQLITE_OPEN_READWRITE, &cdb_));
      sqlite3_busy_timeout(cdb_, busy);
      // A connection that has not read the database yet does not know it is in WAL mode:
      // sqlite3_wal_checkpoint_v2 on it does nothing (it reports -1 frames). Read once first.
      KV_RETURN_IF_ERROR(CheckJournalMode(cdb_));
      checkpointer_ = std::thread([this] { CheckpointLoop(); });
    }
    KV_RETURN_IF_ERROR(OpenConn(path, o.read_only ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE, &rdb_));
    sqlite3_busy_timeout(rdb_, busy);
    KV_RETURN_IF_ERROR(Exec(rdb_, "PRAGMA query_only=ON"));
    KV_RETURN_IF_ERROR(OpenConn(path, SQLITE_OPEN_READONLY, &qdb_));
    sqlite3_busy_timeout(qdb_, busy);
    KV_RETURN_IF_ERROR(Exec(qdb_, "PRAGMA query_only=ON"));
    sqlite3_set_authorizer(qdb_, QueryAuthorizer, &query_auth_);
    sqlite3_limit(qdb_, SQLITE_LIMIT_LENGTH, kQueryMaxValueBytes);
    sqlite3_limit(qdb_, SQLITE_LIMIT_SQL_LENGTH, 1 << 20);
    sqlite3_limit(qdb_, SQLITE_LIMIT_COLUMN, 1000);
    sqlite3_limit(qdb_, SQLITE_LIMIT_EXPR_DEPTH, 200);
    sqlite3_limit(qdb_, SQLITE_LIMIT_COMPOUND_SELECT, 100);
    sqlite3_limit(qdb_, SQLITE_LIMIT_FUNCTION_ARG, 100);
    sqlite3_limit(qdb_, SQLITE_LIMIT_ATTACHED, 0);
    if (o.read_only) {
      // Read-only opens do not migrate; refuse a schema they cannot read.
      absl::StatusOr<int> v = ReadVersion(rdb_);
      if (!v.ok()) return v.status();
      if (*v == 0) {
        return absl::FailedPreconditionError(
            absl::StrCat("'", path, "' is not a kvsweep database (no schema version)"));
      }
      if (*v > kLatestVersion) return TooNew(*v);
    }
    return absl::OkStatus();
  }

  absl::Status Apply(std::vector<Mutation>& batch) override {
    if (wdb_ == nullptr) {
      absl::Status s = absl::FailedPreconditionError("result store was opened read-only");
      for (Mutation& m : batch) m.status = s;
      return s;
    }
    std::lock_guard<std::mutex> lock(wmu_);
    hard_error_ = absl::OkStatus();
    if (restart_wanted_.exchange(false)) {
      // The background checkpoint has copied nearly all of a long WAL; copying the rest here,
      // with no transaction in flight, lets the next one start the WAL over.
      int log = 0, done = 0;
      const int rc =
          sqlite3_wal_checkpoint_v2(wdb_, nullptr, SQLITE_CHECKPOINT_PASSIVE, &log, &done);
      if (rc != SQLITE_OK && rc != SQLITE_BUSY) {
        KV_LOG(WARNING) << "result store: checkpoint: " << sqlite3_errmsg(wdb_);
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
      m.status = std::visit([this](auto& op) { return Do(op); }, m.op);
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
      Exec(wdb_, "ROLLBACK").IgnoreError();
      for (Mutation& m : batch) m.status = hard_error_;
      return hard_error_;
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<ActiveJob>> LoadActiveJobs() override {
    std::lock_guard<std::mutex> lock(rmu_);
    KV_ASSIGN_OR_RETURN(auto st, Stmt::Prepare(rdb_, absl::StrCat(kActiveColumns,
                                                                  " ORDER BY j.seq")));
    std::vector<ActiveJob> out;
    KV_RETURN_IF_ERROR(ReadActive(st.get(), &out));
    return out;
  }

  absl::StatusOr<std::vector<ActiveJob>> LoadJobs(
      const std::vector<std::string>& job_ids) override {
    std::lock_guard<std::mutex> lock(rmu_);
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
    std::lock_guard<std::mutex> lock(rmu_);
    return GetSweepLocked(name);
  }

  absl::StatusOr<std::vector<SweepInfo>> ListSweeps() override {
    std::lock_guard<std::mutex> lock(rmu_);
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

  absl::StatusOr<std::vector<SweepJobRef>> SweepJobs(
      const std::string& sweep, const std::vector<JobState>& states) override {
    std::lock_guard<std::mutex> lock(rmu_);
    KV_ASSIGN_OR_RETURN(int64_t sid, SweepId(sweep));
    KV_ASSIGN_OR_RETURN(auto st,
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
      if (!states.empty() &&
          std::find(states.begin(), states.end(), r.state) == states.end()) {
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
      std::lock_guard<std::mutex> lock(rmu_);
      KV_ASSIGN_OR_RETURN(int64_t sid, SweepId(sweep));
      KV_ASSIGN_OR_RETURN(auto st,
                Stmt::Prepare(rdb_,
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
    std::lock_guard<std::mutex> lock(rmu_);
    KV_ASSIGN_OR_RETURN(auto st, Stmt::Prepare(rdb_, "SELECT fence FROM results WHERE job_id = ?"));
    st->Bind(1, job_id);
    KV_ASSIGN_OR_RETURN(bool row, st->Step());
    if (!row) return std::optional<int64_t>();
    return std::optional<int64_t>(st->Int(0));
  }

  absl::StatusOr<std::optional<AttemptLease>> LeaseOfAttempt(const std::string& job_id,
                                                             int64_t fence) override {
    std::lock_guard<std::mutex> lock(rmu_);
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

  absl::StatusOr<QueryResult> Query(const std::string& sql, int max_rows,
                                    int timeout_ms) override {
    std::lock_guard<std::mutex> lock(qmu_);
    query_auth_.denied.clear();
    const char* tail = nullptr;
    sqlite3_stmt* raw = nullptr;
    int rc = sqlite3_prepare_v2(qdb_, sql.c_str(), static_cast<int>(sql.size()), &raw, &tail);
    Stmt st(qdb_, raw);
    if (rc != SQLITE_OK) {
      if (query_auth_.denied == kWriteDenied) {
        return absl::InvalidArgumentError(
            "query: the statement would modify the database; only read-only SQL is allowed");
      }
      if (!query_auth_.denied.empty()) {
        std::string what = std::move(query_auth_.denied);
        query_auth_.denied.clear();
        return absl::InvalidArgumentError(absl::StrCat(
            "query: not authorized: ", what,
            " (SELECT of kvsweep's tables and views, with plain SQL functions)"));
      }
      return absl::InvalidArgumentError(absl::StrCat("query: ", sqlite3_errmsg(qdb_)));
    }
    if (raw == nullptr) return absl::InvalidArgumentError("query: no SQL statement given");
    if (tail != nullptr && !absl::StripAsciiWhitespace(absl::string_view(tail)).empty()) {
      // A trailing ';' alone is fine; a second statement is not.
      absl::string_view rest = absl::StripAsciiWhitespace(absl::string_view(tail));
      while (!rest.empty() && rest.front() == ';') {
        rest = absl::StripAsciiWhitespace(rest.substr(1));
      }
      if (!rest.empty()) {
        return absl::InvalidArgumentError("query: only one SQL statement is allowed");
      }
    }
    if (!sqlite3_stmt_readonly(raw)) {
      return absl::InvalidArgumentError(
          "query: the statement would modify the database; only read-only SQL is allowed");
    }
    QueryResult out;
    const int ncol = sqlite3_column_count(raw);
    for (int c = 0; c < ncol; ++c) out.columns.push_back(sqlite3_column_name(raw, c));
    Deadline deadline{std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms)};
    sqlite3_progress_handler(qdb_, 1000, ProgressHandler, &deadline);
    absl::Status status;
    for (;;) {
      rc = sqlite3_step(raw);
      if (rc == SQLITE_DONE) break;
      if (rc != SQLITE_ROW) {
        status = rc == SQLITE_INTERRUPT
                     ? absl::DeadlineExceededError(
                           absl::StrCat("query: stopped after ", timeout_ms, " ms"))
                     : SqlError(qdb_, rc, "query");
        break;
      }
      if (static_cast<int>(out.rows.size()) >= max_rows) {
        out.truncated = true;
        break;
      }
      std::vector<QueryResult::Value> row;
      for (int c = 0; c < ncol; ++c) {
        switch (sqlite3_column_type(raw, c)) {
          case SQLITE_INTEGER:
            row.emplace_back(static_cast<int64_t>(sqlite3_column_int64(raw, c)));
            break;
          case SQLITE_FLOAT:
            row.emplace_back(sqlite3_column_double(raw, c));
            break;
          case SQLITE_TEXT:
            row.emplace_back(st.Text(c));
            break;
          case SQLITE_BLOB: {
            const auto* b = static_cast<const uint8_t*>(sqlite3_column_blob(raw, c));
            row.emplace_back(std::vector<uint8_t>(b, b + sqlite3_column_bytes(raw, c)));
            break;
          }
          default:
            row.emplace_back(std::monostate());
        }
      }
      out.rows.push_back(std::move(row));
    }
    sqlite3_progress_handler(qdb_, 0, nullptr, nullptr);
    if (!status.ok()) return status;
    return out;
  }

  absl::Status IntegrityCheck() override {
    std::lock_guard<std::mutex> lock(rmu_);
    KV_ASSIGN_OR_RETURN(auto st, Stmt::Prepare(rdb_, "PRAGMA integrity_check"));
    std::vector<std::string> report;
    for (;;) {
      KV_ASSIGN_OR_RETURN(bool row, st->Step());
      if (!row) break;
      report.push_back(st->Text(0));
    }
    if (report.size() != 1 || report[0] != "ok") {
      return absl::DataLossError(
          absl::StrCat("integrity_check: ", absl::StrJoin(report, "; ")));
    }
    KV_ASSIGN_OR_RETURN(auto fk, Stmt::Prepare(rdb_, "PRAGMA foreign_key_check"));
    KV_ASSIGN_OR_RETURN(bool bad_fk, fk->Step());
    if (bad_fk) return absl::DataLossError("foreign_key_check: dangling references");
    // kvsweep's own invariant: a job is done exactly when it has a result.
    KV_ASSIGN_OR_RETURN(auto inv, Stmt::Prepare(rdb_,
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
  absl::Status OpenConn(const std::string& path, int flags, sqlite3** db) {
    int rc = sqlite3_open_v2(path.c_str(), db, flags | SQLITE_OPEN_NOMUTEX, nullptr);
    if (rc != SQLITE_OK) {
      absl::Status s = absl::Status(CodeFor(rc), absl::StrCat("sqlite: cannot open '", path,
                                                              "': ", sqlite3_errmsg(*db)));
      sqlite3_close_v2(*db);
      *db = nullptr;
      return s;
    }
    sqlite3_extended_result_codes(*db, 1);
    return absl::OkStatus();
  }

  // Runs in the committing thread after each commit, with the WAL's length in frames.
  static int OnWalCommit(void* self, sqlite3*, const char*, int frames) {
    auto* store = static_cast<SqliteResultStore*>(self);
    if (frames >= store->options_.checkpoint_frames && !store->ckpt_wanted_.exchange(true)) {
      std::lock_guard<std::mutex> l(store->ckpt_mu_);
      store->ckpt_cv_.notify_all();
    }
    return SQLITE_OK;
  }

  void CheckpointLoop() {
    std::unique_lock<std::mutex> l(ckpt_mu_);
    while (!ckpt_stop_) {
      ckpt_cv_.wait_for(l, std::chrono::milliseconds(options_.checkpoint_ms),
                        [this] { return ckpt_stop_ || ckpt_wanted_.load(); });
      if (ckpt_stop_) break;
      ckpt_wanted_ = false;
      l.unlock();
      int wal_pages = 0, done_pages = 0;
      int rc = sqlite3_wal_checkpoint_v2(cdb_, nullptr, SQLITE_CHECKPOINT_PASSIVE, &wal_pages,
                                         &done_pages);
      if (rc != SQLITE_OK && rc != SQLITE_BUSY) {
        KV_LOG(WARNING) << "result store: checkpoint: " << sqlite3_errmsg(cdb_);
      } else if (wal_pages >= options_.wal_restart_frames) {
        restart_wanted_ = true;
      }
      l.lock();
    }
  }

  absl::Status CheckJournalMode(sqlite3* db) {
    KV_ASSIGN_OR_RETURN(auto st, Stmt::Prepare(db, "PRAGMA journal_mode"));
    KV_ASSIGN_OR_RETURN(bool row, st->Step());
    if (!row || st->Text(0) != "wal") {
      return absl::FailedPreconditionError(
          absl::StrCat("sqlite: '", path_, "' could not be put in WAL mode"));
    }
    return absl::OkStatus();
  }

  absl::Status TooNew(int v) {
    return absl::FailedPreconditionError(
        absl::StrCat("database '", path_, "' has schema version ", v,
                     ", newer than this build's ", kLatestVersion, "; use a newer kvsweep"));
  }

  absl::StatusOr<int> ReadVersion(sqlite3* db) {
    KV_ASSIGN_OR_RETURN(auto t, Stmt::Prepare(db,
                                    "SELECT count(*) FROM sqlite_master WHERE type = 'table' "
                                    "AND name = 'schema_version'"));
    KV_ASSIGN_OR_RETURN(bool row, t->Step());
    if (!row || t->Int(0) == 0) {
      // A file that has other tables but no version is someone else's database.
      KV_ASSIGN_OR_RETURN(auto any, Stmt::Prepare(db, "SELECT count(*) FROM sqlite_master"));
      KV_ASSIGN_OR_RETURN(bool r2, any->Step());
      if (r2 && any->Int(0) > 0) {
        return absl::FailedPreconditionError(
            absl::StrCat("'", path_, "' is a SQLite database but not a kvsweep one"));
      }
      return 0;
    }
    KV_ASSIGN_OR_RETURN(auto v, Stmt::Prepare(db, "SELECT version FROM schema_version"));
    KV_ASSIGN_OR_RETURN(bool r3, v->Step());
    return r3 ? static_cast<int>(v->Int(0)) : 0;
  }

  static absl::Status QuickCheck(sqlite3* db, const std::string& path) {
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
    return absl::DataLossError(absl::StrCat(
        "database '", path, "' is damaged (quick_check: ",
        s.ok() ? absl::StrJoin(report, "; ") : std::string(s.message()),
        "); restore it from a backup or start a new one"));
  }

  absl::Status Migrate() {
    KV_RETURN_IF_ERROR(Exec(wdb_, "BEGIN IMMEDIATE"));
    absl::StatusOr<int> v = ReadVersion(wdb_);
    if (!v.ok()) {
      Exec(wdb_, "ROLLBACK").IgnoreError();
      return v.status();
    }
    if (*v > kLatestVersion) {
      Exec(wdb_, "ROLLBACK").IgnoreError();
      return TooNew(*v);
    }
    const int target =
        options_.max_schema_version > 0 ? std::min(options_.max_schema_version, kLatestVersion)
                                        : kLatestVersion;
    absl::Status s;
    if (*v == 0) {
      s = Exec(wdb_, "CREATE TABLE schema_version(version INTEGER NOT NULL)");
      if (s.ok()) s = Exec(wdb_, "INSERT INTO schema_version VALUES (0)");
    }
    for (int i = *v + 1; s.ok() && i <= target; ++i) {
      s = Exec(wdb_, kMigrations[i - 1]);
      if (s.ok()) s = Exec(wdb_, absl::StrCat("UPDATE schema_version SET version = ", i));
      if (s.ok()) KV_LOG(INFO) << "result store: migrated '" << path_ << "' to schema v" << i;
    }
    if (s.ok()) s = Exec(wdb_, "COMMIT");
    if (!s.ok()) Exec(wdb_, "ROLLBACK").IgnoreError();
    if (s.ok()) schema_ = std::max(*v, target);
    return s;
  }

  // A cached prepared statement on the write connection.
  absl::StatusOr<Stmt*> W(const char* sql) {
    auto it = stmts_.find(sql);
    if (it != stmts_.end()) return it->second.get();
    absl::StatusOr<std::unique_ptr<Stmt>> st = Stmt::Prepare(wdb_, sql);
    if (!st.ok()) return Hard(st.status());
    Stmt* raw = st->get();
    stmts_.emplace(sql, std::move(*st));
    return raw;
  }

  // Runs a transaction-control statement through the statement cache (no re-parse per batch).
  absl::Status Ctl(const char* sql) {
    absl::StatusOr<Stmt*> st = W(sql);
    if (!st.ok()) return st.status();
    absl::Status s = (*st)->Run();
    (*st)->Reset();
    return s;
  }

  // Marks a SQLite failure inside a mutation: the whole batch is rolled back.
  absl::Status Hard(absl::Status s) {
    if (hard_error_.ok()) hard_error_ = s;
    return s;
  }

  // The job's (state, fence), or kNotFound.
  absl::Status JobStateFence(const std::string& job_id, JobState* state, int64_t* fence) {
    SQL_W(st, "SELECT state, fence FROM jobs WHERE job_id = ?");
    st->Bind(1, job_id);
    SQL_STEP(row, st);
    if (!row) return absl::NotFoundError(absl::StrCat("unknown job ", job_id));
    KV_ASSIGN_OR_RETURN(*state, ParseJobState(st->Text(0)));
    *fence = st->Int(1);
    return absl::OkStatus();
  }

  absl::Status Do(SubmitSweep& op) {
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
  absl::Status Audit(int64_t now_ms, const std::string& actor, const char* action,
                     const std::string& sweep, const nlohmann::json& detail) {
    if (schema_ < 3) return absl::OkStatus();  // (tests that stop at an older schema)
    SQL_W(st,
          "INSERT INTO audit(at_ms, actor, action, sweep, detail) VALUES (?1, ?2, ?3, ?4, ?5)");
    st->Bind(1, now_ms).Bind(2, actor.empty() ? std::string("unknown") : actor);
    st->Bind(3, action).Bind(4, sweep).Bind(5, detail.dump());
    SQL_RUN(st);
    return absl::OkStatus();
  }

  absl::Status Do(GrantLease& op) {
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
  absl::Status Explain(const std::string& job_id, absl::string_view want_state,
                       int64_t want_fence) {
    JobState state;
    int64_t fence;
    absl::Status s = JobStateFence(job_id, &state, &fence);
    if (!s.ok()) return s;
    return absl::FailedPreconditionError(absl::StrCat(
        "stale fencing token ", want_fence, " for job ", job_id.substr(0, 12), ": the job is ",
        JobStateName(state), " with fence ", fence, " (expected ", want_state, " with fence ",
        want_fence, ")"));
  }

  absl::Status Do(RecordResult& op) {
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
          "stale fencing token ", op.fence, " for job ", op.job_id.substr(0, 12),
          ": the job is ", JobStateName(state), " with fence ", fence,
          "; the result is rejected"));
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

  absl::Status Do(EndLease& op) {
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
      if (sqlite3_changes(wdb_) != 1) {
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

  absl::Status Do(CancelJobs& op) {
    op.cancelled = 0;
    for (const CancelJobs::Expect& e : op.jobs) {
      if (e.state == JobState::kQueued) {
        SQL_W(st,
             "UPDATE jobs SET state = 'cancelled', updated_ms = ?3 WHERE job_id = ?1 AND "
             "state = 'queued' AND fence = ?2");
        st->Bind(1, e.job_id).Bind(2, e.fence).Bind(3, op.now_ms);
        SQL_RUN(st);
        op.cancelled += sqlite3_changes(wdb_);
      } else if (e.state == JobState::kLeased) {
        SQL_W(st,
             "UPDATE jobs SET state = 'cancelled', fence = fence + 1, lease_id = NULL, "
             "lease_worker = NULL, lease_deadline_ms = NULL, updated_ms = ?3 "
             "WHERE job_id = ?1 AND state = 'leased' AND fence = ?2");
        st->Bind(1, e.job_id).Bind(2, e.fence).Bind(3, op.now_ms);
        SQL_RUN(st);
        if (sqlite3_changes(wdb_) == 1) {
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
    if (sqlite3_changes(wdb_) != 1) {
      return absl::NotFoundError(absl::StrCat("no sweep named '", op.sweep, "'"));
    }
    return Audit(op.now_ms, op.actor, "cancel", op.sweep,
                 nlohmann::json{{"cancelled", op.cancelled}});
  }

  absl::Status Do(RequeueJobs& op) {
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

  absl::Status Do(TouchWorker& op) {
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

  static constexpr const char* kActiveColumns =
      "SELECT j.job_id, s.spec_json, j.model_key, j.state, j.priority, j.attempts, "
      "j.max_attempts, j.next_eligible_ms, j.fence, j.lease_id, j.lease_worker, "
      "j.lease_deadline_ms, j.crash_workers, j.seq, j.task "
      "FROM jobs j JOIN job_specs s ON s.job_id = j.job_id "
      "WHERE j.state IN ('queued','leased')";

  absl::Status ReadActive(Stmt* st, std::vector<ActiveJob>* out) {
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

  absl::StatusOr<int64_t> SweepId(const std::string& name) {
    KV_ASSIGN_OR_RETURN(auto st, Stmt::Prepare(rdb_, "SELECT sweep_id FROM sweeps WHERE name = ?"));
    st->Bind(1, name);
    KV_ASSIGN_OR_RETURN(bool row, st->Step());
    if (!row) return absl::NotFoundError(absl::StrCat("no sweep named '", name, "'"));
    return st->Int(0);
  }

  absl::StatusOr<SweepInfo> GetSweepLocked(const std::string& name) {
    KV_ASSIGN_OR_RETURN(auto st, Stmt::Prepare(rdb_,
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
    KV_ASSIGN_OR_RETURN(auto counts, Stmt::Prepare(rdb_,
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
    KV_ASSIGN_OR_RETURN(auto errs, Stmt::Prepare(rdb_,
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

  absl::StatusOr<int64_t> Count(const char* table) {
    std::lock_guard<std::mutex> lock(rmu_);
    KV_ASSIGN_OR_RETURN(auto st, Stmt::Prepare(rdb_, absl::StrCat("SELECT count(*) FROM ", table)));
    KV_ASSIGN_OR_RETURN(bool row, st->Step());
    (void)row;
    return st->Int(0);
  }


  SqliteOptions options_;
  std::string path_;
  // std::mutex, not absl::Mutex: Debian's Abseil runs deadlock detection on every lock.
  std::mutex wmu_;
  sqlite3* wdb_ = nullptr;  // write connection (committer thread)
  std::map<std::string, std::unique_ptr<Stmt>> stmts_;  // cached statements on wdb_
  absl::Status hard_error_;  // a SQLite failure inside the current batch
  std::mutex rmu_;
  sqlite3* rdb_ = nullptr;   // coordinator reads
  std::mutex qmu_;
  int schema_ = 0;  // the schema version the writer migrated to
  QueryAuth query_auth_;  // guarded by qmu_ (the authorizer runs inside Query's prepare)
  sqlite3* qdb_ = nullptr;   // user SQL: read-only, authorizer
  sqlite3* cdb_ = nullptr;   // background WAL checkpoints
  std::thread checkpointer_;
  std::mutex ckpt_mu_;
  std::condition_variable ckpt_cv_;
  bool ckpt_stop_ = false;
  std::atomic<bool> restart_wanted_{false};
  std::atomic<bool> ckpt_wanted_{false};
};

}  // namespace

int LatestSchemaVersion() { return kLatestVersion; }

absl::StatusOr<std::unique_ptr<ResultStore>> NewSqliteResultStore(const std::string& path,
                                                                  const SqliteOptions& options) {
  auto store = std::make_unique<SqliteResultStore>();
  absl::Status s = store->Open(path, options);
  if (!s.ok()) return s;
  return std::unique_ptr<ResultStore>(std::move(store));
}

}  // namespace kvsweep

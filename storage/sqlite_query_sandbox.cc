#include "storage/sqlite_query_sandbox.h"

#include <chrono>
#include <iterator>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "storage/sqlite_util.h"

namespace kvsweep {

namespace {

// User SQL (`kvsweep query`) may read kvsweep's tables and views with a fixed set of plain
// functions, nothing else: no attaching files, transactions or pragmas that set anything, and no
// function that reaches outside the data (fts3_tokenizer registers a pointer and leaks
// addresses, load_extension loads code) or makes large values out of nothing (randomblob,
// zeroblob). The connection's limits bound the size of any one value and statement.
constexpr const char* kQueryTables[] = {
    "sweeps",  "jobs",          "job_specs", "sweep_jobs",     "attempts",      "results",
    "workers", "sweep_results", "audit",     "schema_version", "sqlite_master", "sqlite_schema"};
// The longest value user SQL may make or read (results are at most 8 MiB).
constexpr int kQueryMaxValueBytes = 16 << 20;
constexpr const char* kQueryFunctions[] = {
    // aggregate
    "count", "sum", "total", "avg", "min", "max", "group_concat", "json_group_array",
    "json_group_object",
    // scalar
    "abs", "round", "coalesce", "ifnull", "nullif", "iif", "length", "lower", "upper", "substr",
    "substring", "trim", "ltrim", "rtrim", "replace", "instr", "printf", "format", "like", "glob",
    "typeof", "quote", "hex", "char", "unicode", "sign", "exp", "ln", "log", "log10", "log2",
    "sqrt", "pow", "power", "floor", "ceil", "ceiling", "date", "time", "datetime", "julianday",
    "strftime", "unixepoch", "json", "json_extract", "json_type", "json_valid", "json_array",
    "json_object", "json_array_length", "json_quote", "->", "->>",
    // window
    "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile", "lag", "lead",
    "first_value", "last_value", "nth_value"};

constexpr char kWriteDenied[] = "writes";

bool InList(const char* name, const char* const* list, size_t n) {
  if (name == nullptr) return false;
  for (size_t i = 0; i < n; ++i) {
    if (absl::EqualsIgnoreCase(name, list[i])) return true;
  }
  return false;
}

int QueryAuthorizer(void* arg, int action, const char* a1, const char* a2, const char* db,
                    const char*) {
  auto* auth = static_cast<SqliteQuerySandbox::Auth*>(arg);
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
      static const char* const kAllowed[] = {"table_info",  "table_xinfo",    "table_list",
                                             "index_list",  "index_info",     "foreign_key_list",
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

}  // namespace

absl::Status SqliteQuerySandbox::Open(const std::string& path, int busy_timeout_ms) {
  MutexLock lock(&mu_);
  KV_RETURN_IF_ERROR(OpenConnection(path, SQLITE_OPEN_READONLY, &db_));
  sqlite3_busy_timeout(db_, busy_timeout_ms);
  KV_RETURN_IF_ERROR(Exec(db_, "PRAGMA query_only=ON"));
  sqlite3_set_authorizer(db_, QueryAuthorizer, &auth_);
  sqlite3_limit(db_, SQLITE_LIMIT_LENGTH, kQueryMaxValueBytes);
  sqlite3_limit(db_, SQLITE_LIMIT_SQL_LENGTH, 1 << 20);
  sqlite3_limit(db_, SQLITE_LIMIT_COLUMN, 1000);
  sqlite3_limit(db_, SQLITE_LIMIT_EXPR_DEPTH, 200);
  sqlite3_limit(db_, SQLITE_LIMIT_COMPOUND_SELECT, 100);
  sqlite3_limit(db_, SQLITE_LIMIT_FUNCTION_ARG, 100);
  sqlite3_limit(db_, SQLITE_LIMIT_ATTACHED, 0);
  return absl::OkStatus();
}

void SqliteQuerySandbox::Close() {
  MutexLock lock(&mu_);
  sqlite3_close_v2(db_);
  db_ = nullptr;
}

absl::StatusOr<QueryResult> SqliteQuerySandbox::Query(const std::string& sql, int max_rows,
                                                      int timeout_ms) {
  MutexLock lock(&mu_);
  auth_.denied.clear();
  const char* tail = nullptr;
  sqlite3_stmt* raw = nullptr;
  int rc = sqlite3_prepare_v2(db_, sql.c_str(), static_cast<int>(sql.size()), &raw, &tail);
  Stmt st(db_, raw);
  if (rc != SQLITE_OK) {
    if (auth_.denied == kWriteDenied) {
      return absl::InvalidArgumentError(
          "query: the statement would modify the database; only read-only SQL is allowed");
    }
    if (!auth_.denied.empty()) {
      std::string what = std::move(auth_.denied);
      auth_.denied.clear();
      return absl::InvalidArgumentError(
          absl::StrCat("query: not authorized: ", what,
                       " (SELECT of kvsweep's tables and views, with plain SQL functions)"));
    }
    return absl::InvalidArgumentError(absl::StrCat("query: ", sqlite3_errmsg(db_)));
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
  sqlite3_progress_handler(db_, 1000, ProgressHandler, &deadline);
  absl::Status status;
  for (;;) {
    rc = sqlite3_step(raw);
    if (rc == SQLITE_DONE) break;
    if (rc != SQLITE_ROW) {
      status = rc == SQLITE_INTERRUPT ? absl::DeadlineExceededError(absl::StrCat(
                                            "query: stopped after ", timeout_ms, " ms"))
                                      : SqlError(db_, rc, "query");
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
  sqlite3_progress_handler(db_, 0, nullptr, nullptr);
  if (!status.ok()) return status;
  return out;
}

}  // namespace kvsweep

// User SQL (`kvsweep query`) on a connection of its own: opened read-only with query_only set,
// an authorizer that allows reading kvsweep's tables and views with plain SQL functions and
// nothing else, limits on the size of values and statements, and a deadline on each query.
// One query at a time.
#ifndef KVSWEEP_STORAGE_SQLITE_QUERY_SANDBOX_H_
#define KVSWEEP_STORAGE_SQLITE_QUERY_SANDBOX_H_

#include <sqlite3.h>

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/mutex.h"
#include "storage/result_store.h"

namespace kvsweep {

class SqliteQuerySandbox {
 public:
  SqliteQuerySandbox() = default;
  ~SqliteQuerySandbox() { Close(); }
  SqliteQuerySandbox(const SqliteQuerySandbox&) = delete;
  SqliteQuerySandbox& operator=(const SqliteQuerySandbox&) = delete;

  // Opens the query connection on `path` with its authorizer and limits (before any Query).
  absl::Status Open(const std::string& path, int busy_timeout_ms) ABSL_LOCKS_EXCLUDED(mu_);
  void Close() ABSL_LOCKS_EXCLUDED(mu_);

  // ResultStore::Query: one read-only statement; kInvalidArgument for anything else (what the
  // authorizer refused, named), kDeadlineExceeded past timeout_ms.
  absl::StatusOr<QueryResult> Query(const std::string& sql, int max_rows, int timeout_ms)
      ABSL_LOCKS_EXCLUDED(mu_);

  struct Auth {
    std::string denied;  // what the last refusal was about, for the error message
  };

 private:
  Mutex mu_;
  sqlite3* db_ ABSL_GUARDED_BY(mu_) = nullptr;
  // Written by the authorizer, which runs inside Query's prepare.
  Auth auth_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvsweep

#endif  // KVSWEEP_STORAGE_SQLITE_QUERY_SANDBOX_H_

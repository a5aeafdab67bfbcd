// The store's write connection and the mutations it applies: WAL mode, synchronous=FULL, the
// schema migrated on open, every batch of mutations in one BEGIN IMMEDIATE transaction with a
// savepoint per mutation (a refused mutation rolls back alone; a SQLite failure rolls back the
// batch), prepared statements cached across batches.
//
// Apply is called by one thread (the scheduler's committer); mu_ makes that a checked rule
// rather than an assumption, and guards the connection and its statement cache.
#ifndef KVSWEEP_STORAGE_SQLITE_WRITER_H_
#define KVSWEEP_STORAGE_SQLITE_WRITER_H_

#include <sqlite3.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/mutex.h"
#include "nlohmann/json_fwd.hpp"
#include "storage/result_store.h"
#include "storage/sqlite_util.h"
#include "storage/wal_checkpointer.h"

namespace kvsweep {

class SqliteWriter {
 public:
  SqliteWriter() = default;
  ~SqliteWriter();  // Close()
  SqliteWriter(const SqliteWriter&) = delete;
  SqliteWriter& operator=(const SqliteWriter&) = delete;

  // Opens (creating if needed) the database at `path` for writing, checks it and migrates its
  // schema. Commits report the WAL's length to `checkpointer` (may be null: SQLite's own
  // checkpoints are off either way), which must outlive the writer.
  absl::Status Open(const std::string& path, const SqliteOptions& options,
                    WalCheckpointer* checkpointer) ABSL_LOCKS_EXCLUDED(mu_);
  // ResultStore::Apply. kFailedPrecondition when not open (a read-only store).
  absl::Status Apply(std::vector<Mutation>& batch) ABSL_LOCKS_EXCLUDED(mu_);
  // Copies the whole WAL into the database and truncates it (on close).
  void Checkpoint() ABSL_LOCKS_EXCLUDED(mu_);
  void Close() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  // A cached prepared statement on the write connection.
  absl::StatusOr<Stmt*> W(const char* sql) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Runs a transaction-control statement through the statement cache (no re-parse per batch).
  absl::Status Ctl(const char* sql) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Marks a SQLite failure inside a mutation: the whole batch is rolled back.
  absl::Status Hard(absl::Status s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The job's (state, fence), or kNotFound.
  absl::Status JobStateFence(const std::string& job_id, JobState* state, int64_t* fence)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // One row of the audit log, in the transaction of what it records.
  absl::Status Audit(int64_t now_ms, const std::string& actor, const char* action,
                     const std::string& sweep, const nlohmann::json& detail)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A precondition failure that says what the job actually is.
  absl::Status Explain(const std::string& job_id, absl::string_view want_state, int64_t want_fence)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // One mutation each, inside Apply's transaction (docs/architecture.md, "Storage").
  absl::Status Do(SubmitSweep& op) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Do(GrantLease& op) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Do(RecordResult& op) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Do(EndLease& op) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Do(CancelJobs& op) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Do(RequeueJobs& op) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Do(TouchWorker& op) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Mutex mu_;
  sqlite3* db_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::map<std::string, std::unique_ptr<Stmt>> stmts_ ABSL_GUARDED_BY(mu_);  // cached on db_
  absl::Status hard_error_ ABSL_GUARDED_BY(mu_);  // a SQLite failure inside the current batch
  int schema_ ABSL_GUARDED_BY(mu_) = 0;           // the schema version Open migrated to
  WalCheckpointer* checkpointer_ ABSL_GUARDED_BY(mu_) = nullptr;
};

}  // namespace kvsweep

#endif  // KVSWEEP_STORAGE_SQLITE_WRITER_H_

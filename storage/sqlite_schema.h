// The store's schema: the migrations that build it, version by version, and the checks made
// when a database file is opened (WAL mode, quick_check, a schema version this build can read).
#ifndef KVSWEEP_STORAGE_SQLITE_SCHEMA_H_
#define KVSWEEP_STORAGE_SQLITE_SCHEMA_H_

#include <sqlite3.h>

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kvsweep {

// The schema version of the file `db` is open on: 0 for an empty file; kFailedPrecondition for
// a SQLite database that is not a kvsweep one.
absl::StatusOr<int> ReadSchemaVersion(sqlite3* db, const std::string& path);
// Migrates `db` (the write connection) to `max_version` (0: the latest) in one transaction;
// returns the version it is at. kFailedPrecondition for a schema newer than this build's.
absl::StatusOr<int> MigrateSchema(sqlite3* db, const std::string& path, int max_version);
// kFailedPrecondition for a schema version newer than this build's.
absl::Status SchemaTooNew(const std::string& path, int version);
// kFailedPrecondition unless `db` is in WAL mode (this also makes a fresh connection read the
// database once).
absl::Status CheckJournalMode(sqlite3* db, const std::string& path);
// Runs PRAGMA `pragma` (quick_check or integrity_check), which stops after `max_errors`
// problems: "" when the file is sound, else one line, "<first problem> (and N more)". Errors
// of the check itself (SQLITE_CORRUPT, SQLITE_NOTADB) are returned as they are.
absl::StatusOr<std::string> RunCheckPragma(sqlite3* db, absl::string_view pragma, int max_errors);
// kDataLoss for a damaged file, with one line: "database 'PATH' is damaged: <first problem>
// (and N more); restore it ...".
absl::Status QuickCheck(sqlite3* db, const std::string& path);
// `text` with control characters (newlines included) replaced by spaces.
std::string OneLine(absl::string_view text);

}  // namespace kvsweep

#endif  // KVSWEEP_STORAGE_SQLITE_SCHEMA_H_

// SQLite helpers shared by the store's parts (storage/ only: sqlite3.h stays out of public
// headers): result codes mapped to Status codes, prepared statements finalized by RAII, and
// opening a connection.
#ifndef KVSWEEP_STORAGE_SQLITE_UTIL_H_
#define KVSWEEP_STORAGE_SQLITE_UTIL_H_

#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace kvsweep {

// Maps a SQLite result code to the Status code that tells the caller what to do.
absl::StatusCode CodeFor(int rc);
// "sqlite: <what>: <SQLite's message>", with CodeFor(rc).
absl::Status SqlError(sqlite3* db, int rc, absl::string_view what);
// Runs `sql` (one or more statements, no parameters).
absl::Status Exec(sqlite3* db, absl::string_view sql);
// sqlite3_open_v2 with SQLITE_OPEN_NOMUTEX (each connection is used under its owner's lock)
// and extended result codes; *db is nullptr on error.
absl::Status OpenConnection(const std::string& path, int flags, sqlite3** db);

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

}  // namespace kvsweep

#endif  // KVSWEEP_STORAGE_SQLITE_UTIL_H_

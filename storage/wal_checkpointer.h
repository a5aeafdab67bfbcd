// The store's WAL checkpointer: a connection of its own and a thread that copies the WAL into
// the database file while the coordinator runs, so that commits only append to the WAL
// (checkpoints on the commit path, SQLite's default, stall an unlucky commit for tens of ms).
//
// It runs when the write connection's commit hook (OnWalCommit) reports a WAL of
// checkpoint_frames frames or more, and every checkpoint_ms. Under writes without a pause it
// never quite catches up with the writer; once it has copied a WAL of wal_restart_frames or
// more it asks the writer (TakeRestartWanted) to finish the checkpoint itself between two
// transactions, so that the WAL can start over.
#ifndef KVSWEEP_STORAGE_WAL_CHECKPOINTER_H_
#define KVSWEEP_STORAGE_WAL_CHECKPOINTER_H_

#include <sqlite3.h>

#include <atomic>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "common/mutex.h"
#include "storage/result_store.h"

namespace kvsweep {

class WalCheckpointer {
 public:
  explicit WalCheckpointer(const SqliteOptions& options) : options_(options) {}
  ~WalCheckpointer();  // Stop(), then closes the connection
  WalCheckpointer(const WalCheckpointer&) = delete;
  WalCheckpointer& operator=(const WalCheckpointer&) = delete;

  // Opens the checkpoint connection on `path` (in WAL mode already) and starts the thread.
  absl::Status Start(const std::string& path);
  // Stops and joins the thread. Idempotent.
  void Stop() ABSL_LOCKS_EXCLUDED(mu_);
  // Closes the connection (after Stop).
  void Close();

  // sqlite3_wal_hook callback for the write connection (`self`: this checkpointer): runs in
  // the committing thread after each commit, with the WAL's length in frames.
  static int OnWalCommit(void* self, sqlite3* db, const char* name, int frames);
  // True once after a checkpoint found the WAL too long to start over by itself.
  bool TakeRestartWanted() { return restart_wanted_.exchange(false); }

 private:
  void Loop() ABSL_LOCKS_EXCLUDED(mu_);

  const SqliteOptions options_;
  sqlite3* db_ = nullptr;  // the checkpoint thread's (opened before it starts)
  std::thread thread_;     // Start/Stop only
  Mutex mu_;
  CondVar cv_;  // stop_ or wanted_
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  // Set by the commit hook without mu_ (it takes mu_ only to wake the thread).
  std::atomic<bool> wanted_{false};
  std::atomic<bool> restart_wanted_{false};
};

}  // namespace kvsweep

#endif  // KVSWEEP_STORAGE_WAL_CHECKPOINTER_H_

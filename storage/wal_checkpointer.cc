#include "storage/wal_checkpointer.h"

#include <chrono>

#include "common/log.h"
#include "common/status_macros.h"
#include "storage/sqlite_schema.h"
#include "storage/sqlite_util.h"

namespace kvsweep {

WalCheckpointer::~WalCheckpointer() {
  Stop();
  Close();
}

absl::Status WalCheckpointer::Start(const std::string& path) {
  KV_RETURN_IF_ERROR(OpenConnection(path, SQLITE_OPEN_READWRITE, &db_));
  sqlite3_busy_timeout(db_, options_.busy_timeout_ms);
  // A connection that has not read the database yet does not know it is in WAL mode:
  // sqlite3_wal_checkpoint_v2 on it does nothing (it reports -1 frames). Read once first.
  KV_RETURN_IF_ERROR(CheckJournalMode(db_, path));
  thread_ = std::thread([this] { Loop(); });
  return absl::OkStatus();
}

void WalCheckpointer::Stop() {
  if (!thread_.joinable()) return;
  {
    MutexLock l(&mu_);
    stop_ = true;
  }
  cv_.SignalAll();
  thread_.join();
}

void WalCheckpointer::Close() {
  sqlite3_close_v2(db_);
  db_ = nullptr;
}

int WalCheckpointer::OnWalCommit(void* self, sqlite3*, const char*, int frames) {
  auto* c = static_cast<WalCheckpointer*>(self);
  if (frames >= c->options_.checkpoint_frames && !c->wanted_.exchange(true)) {
    MutexLock l(&c->mu_);
    c->cv_.SignalAll();
  }
  return SQLITE_OK;
}

void WalCheckpointer::Loop() {
  mu_.Lock();
  while (!stop_) {
    const auto until =
        std::chrono::steady_clock::now() + std::chrono::milliseconds(options_.checkpoint_ms);
    while (!stop_ && !wanted_.load() && cv_.WaitUntil(&mu_, until)) {
    }
    if (stop_) break;
    wanted_ = false;
    mu_.Unlock();
    int wal_pages = 0, done_pages = 0;
    int rc =
        sqlite3_wal_checkpoint_v2(db_, nullptr, SQLITE_CHECKPOINT_PASSIVE, &wal_pages, &done_pages);
    if (rc != SQLITE_OK && rc != SQLITE_BUSY) {
      KV_LOG(WARNING) << "result store: checkpoint: " << sqlite3_errmsg(db_);
    } else if (wal_pages >= options_.wal_restart_frames) {
      restart_wanted_ = true;
    }
    mu_.Lock();
  }
  mu_.Unlock();
}

}  // namespace kvsweep

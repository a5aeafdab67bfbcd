// The worker's spool of finished results: each result is written to local disk (fsynced)
// before it is reported, and removed once the coordinator has answered for it for good
// (recorded, a duplicate, or refused). A result is therefore never lost to a coordinator
// outage, a full disk at the coordinator or a restart of the worker itself: a worker started
// again with the same --worker-id reports what its spool holds before taking a new lease.
//
// The spool holds lease secrets, so its directory is created 0700 and its files 0600.
#ifndef KVSWEEP_WORKER_RESULT_SPOOL_H_
#define KVSWEEP_WORKER_RESULT_SPOOL_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kvsweep/v1/coordinator.pb.h"

namespace kvsweep {

struct SpooledResult {
  v1::CompleteRequest request;    // without `next`
  int heartbeat_interval_ms = 0;  // of the lease it was made under
  std::string path;
};

class ResultSpool {
 public:
  // `dir` is created (0700) if missing. Errors name the directory.
  static absl::StatusOr<ResultSpool> Open(const std::string& dir);

  // Writes `request` (its `next` cleared) durably: file and directory fsynced.
  absl::Status Put(const v1::CompleteRequest& request, int heartbeat_interval_ms);
  // Removes the result of (job, fence); OK if it is not there.
  absl::Status Remove(const std::string& job_id, int64_t fence);
  // The results spooled by `worker_id`, oldest first. Unreadable files are skipped (logged).
  std::vector<SpooledResult> List(const std::string& worker_id) const;

  const std::string& dir() const { return dir_; }

 private:
  explicit ResultSpool(std::string dir) : dir_(std::move(dir)) {}
  std::string PathOf(const std::string& job_id, int64_t fence) const;
  std::string dir_;
};

// $KVSWEEP_SPOOL_DIR, else $XDG_STATE_HOME/kvsweep/spool, else ~/.local/state/kvsweep/spool.
std::string DefaultSpoolDir();

}  // namespace kvsweep

#endif  // KVSWEEP_WORKER_RESULT_SPOOL_H_

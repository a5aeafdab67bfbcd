// The reaper: a thread that calls `expire` (Scheduler::ExpireLeases) every `period_ms` until
// stopped, so that leases past their deadline end even when no worker calls.
#ifndef KVSWEEP_COORDINATOR_LEASE_REAPER_H_
#define KVSWEEP_COORDINATOR_LEASE_REAPER_H_

#include <functional>
#include <thread>

#include "common/mutex.h"

namespace kvsweep {

class LeaseReaper {
 public:
  LeaseReaper(int period_ms, std::function<void()> expire);
  ~LeaseReaper();  // Stop()
  LeaseReaper(const LeaseReaper&) = delete;
  LeaseReaper& operator=(const LeaseReaper&) = delete;

  void Start();
  // Wakes the thread and joins it; `expire` is not called again. Idempotent.
  void Stop() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void Loop() ABSL_LOCKS_EXCLUDED(mu_);

  const int period_ms_;
  const std::function<void()> expire_;
  Mutex mu_;
  CondVar cv_;  // stop_
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;  // Start/Stop only
};

}  // namespace kvsweep

#endif  // KVSWEEP_COORDINATOR_LEASE_REAPER_H_

// The worker's heartbeat thread: while a job runs (and until the coordinator has its result),
// renews its lease every lease.heartbeat_interval_ms with a Heartbeat call, and notes when the
// coordinator answers that the lease is gone (cancelled, expired, handed to another worker).
//
// One thread for the whole life of a WorkerLoop::Run, not one per job: between jobs it waits,
// and a new job wakes it only if the job must beat sooner than the thread's next wake-up
// (no wake-ups, no context switches, per job). A beat in flight is waited out by StopJob, so
// no beat of a finished job reaches the coordinator after StopJob returns.
#ifndef KVSWEEP_WORKER_HEARTBEATER_H_
#define KVSWEEP_WORKER_HEARTBEATER_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <thread>

#include "common/mutex.h"
#include "kvsweep/v1/coordinator.grpc.pb.h"
#include "rpc/rpc_util.h"
#include "worker/worker_observer.h"

namespace kvsweep {

class Heartbeater {
 public:
  // `stub` must outlive the heartbeater. Each beat's deadline is the lesser of the job's
  // interval and `rpc_timeout_ms`.
  // `observer` (may be null) hears of each beat's status.
  Heartbeater(v1::WorkerService::Stub* stub, const ClientConfig& coordinator, int rpc_timeout_ms,
              std::string worker_id, WorkerObserver* observer = nullptr);
  ~Heartbeater();  // Quit()
  Heartbeater(const Heartbeater&) = delete;
  Heartbeater& operator=(const Heartbeater&) = delete;

  // Starts the thread.
  void Start();
  // Stops and joins the thread (a beat in flight finishes first). Idempotent.
  void Quit() ABSL_LOCKS_EXCLUDED(mu_);

  // Beats for `lease` from now on, the first beat one interval from now (replaces the job
  // before, if StopJob was not called for it).
  void StartJob(const v1::LeaseResponse& lease) ABSL_LOCKS_EXCLUDED(mu_);
  // Stops beating for the current job, waiting out a beat in flight. Returns true (and the
  // coordinator's reason) when a beat was told the lease is lost.
  bool StopJob(std::string* reason) ABSL_LOCKS_EXCLUDED(mu_);
  // The current job's progress in [0, 1], sent with the next beat.
  void SetProgress(double fraction) { progress_ = fraction; }
  // A beat for the current job was told the lease is lost.
  bool lost() const { return lost_.load(); }

 private:
  void Loop() ABSL_LOCKS_EXCLUDED(mu_);

  v1::WorkerService::Stub* const stub_;
  const ClientConfig coordinator_;
  const int rpc_timeout_ms_;
  const std::string worker_id_;
  WorkerObserver* const observer_;

  std::thread thread_;  // Start/Quit only
  Mutex mu_;
  // Signalled on quit_, a new job (when it must beat sooner), the end of a beat in flight and
  // a lost lease.
  CondVar cv_;
  bool quit_ ABSL_GUARDED_BY(mu_) = false;
  bool active_ ABSL_GUARDED_BY(mu_) = false;     // a job is beating
  bool in_flight_ ABSL_GUARDED_BY(mu_) = false;  // a Heartbeat call is running, mu_ released
  // The thread is waiting for a job (idle_) or until wake_at_; StartJob wakes it only if the
  // new job must beat sooner than that.
  bool idle_ ABSL_GUARDED_BY(mu_) = false;
  std::chrono::steady_clock::time_point started_ ABSL_GUARDED_BY(mu_);
  std::chrono::steady_clock::time_point wake_at_ ABSL_GUARDED_BY(mu_);
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;  // bumped by every StartJob
  std::string job_id_ ABSL_GUARDED_BY(mu_);
  std::string lease_id_ ABSL_GUARDED_BY(mu_);
  std::string lost_reason_ ABSL_GUARDED_BY(mu_);
  int64_t fence_ ABSL_GUARDED_BY(mu_) = 0;
  int interval_ms_ ABSL_GUARDED_BY(mu_) = 10000;
  // Read without mu_ by the job thread's progress callback (every evaluation step).
  std::atomic<bool> lost_{false};
  std::atomic<double> progress_{0.0};
};

}  // namespace kvsweep

#endif  // KVSWEEP_WORKER_HEARTBEATER_H_

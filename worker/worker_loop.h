// The worker's job loop: pull a job under a lease, run it through an Evaluator while a
// separate thread heartbeats the lease, report the result (or the failure), repeat.
//
// - A heartbeat that says the lease is gone (cancelled, expired, handed to another worker)
//   makes the progress callback return false: the evaluator stops, nothing is reported.
// - Complete is retried until the coordinator gives a definitive answer (it is idempotent under
//   the same fencing token), so a coordinator restart mid-report loses nothing.
// - Drain (SIGTERM): take no new lease; finish the current job if it ends within the drain
//   timeout, else stop it and hand it back (the job is requeued at once, no attempt used).
//   A second request stops at once.
// - Exit when idle (options.exit_when_idle_ms > 0): once every Lease answer for that long has
//   been "no job" (steady clock, from the first empty answer after the last job), the worker
//   exits as if drained. An unreachable coordinator is not idleness: it may come back with jobs.
// - The coordinator being down is waited out with capped exponential backoff.
// - Model affinity: each Lease advertises the model of the last job, so the coordinator can
//   keep this worker (and the evaluator's loaded model and bases) on it.
//
// Threads: the job loop (Run) and the heartbeat thread (worker/heartbeater.h); RequestDrain and
// stats() may be called from any thread. Test-only faults: worker/fault_injection.h.
#ifndef KVSWEEP_WORKER_WORKER_LOOP_H_
#define KVSWEEP_WORKER_WORKER_LOOP_H_

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/mutex.h"
#include "kvsweep/v1/coordinator.grpc.pb.h"
#include "rpc/rpc_util.h"
#include "worker/evaluator.h"
#include "worker/fault_injection.h"
#include "worker/file_stager.h"
#include "worker/heartbeater.h"
#include "worker/result_spool.h"
#include "worker/worker_observer.h"

namespace kvsweep {

// Who a worker is, as it tells the coordinator (WorkerLoop, and the load benchmark's
// simulated workers).
struct WorkerIdentity {
  std::string worker_id;
  std::string hostname;
  std::string device;
  std::string evaluator;
  std::string session;  // random per process run: tells a restarted worker from a stuck one
};
// A Lease request from `who`, which last ran a job on `held_model` ("" = none).
v1::LeaseRequest MakeLeaseRequest(const WorkerIdentity& who, const std::string& held_model);
// Adds provenance.worker (who ran it: worker, attempt, fencing token) and the job id to an
// evaluator's result object.
void AddWorkerProvenance(const WorkerIdentity& who, const v1::LeaseResponse& lease,
                         nlohmann::json* result);

struct WorkerOptions {
  ClientConfig coordinator;
  std::string worker_id;  // "" = <hostname>-<pid>
  std::string device = "cpu";
  std::string evaluator_name;    // reported to the coordinator ("engine", "fake")
  int drain_timeout_ms = 60000;  // on drain, let the current job run this long, then hand back
  // Exit (as drained, Run returns OK) after this long without a job; 0 = never.
  int64_t exit_when_idle_ms = 0;
  int rpc_timeout_ms = 10000;
  int reconnect_max_ms = 5000;  // backoff cap while the coordinator is unreachable
  std::string journal_path;     // append "<unix_ms> <event> <job_id> <fence> ..." lines
  // Finished results are kept here (fsynced) until the coordinator has answered for them, and
  // a worker started with the same worker id reports what it finds here first
  // (worker/result_spool.h). "" = no spool.
  std::string spool_dir;
  WorkerFaults faults;
  // Input files missing here are fetched from the coordinator into a cache and the job runs on
  // them (worker/file_stager.h); kNever (the default here) runs on the spec's paths as they are.
  StagingOptions staging;
  // Called after each Lease ("lease" / "lease-empty") and Complete ("complete", or
  // "complete+lease" when it also brought the next job) with its latency in ms (the load
  // benchmark's measurements). May be empty.
  std::function<void(const char* rpc, double ms)> observe_rpc;
  // Told of every call to the coordinator and every job (the /metrics endpoint); may be null.
  // Must outlive the loop.
  WorkerObserver* observer = nullptr;
};

struct WorkerStats {
  int64_t leased = 0, recorded = 0, duplicates = 0, rejected = 0, failed = 0, abandoned = 0,
          handed_back = 0;
};

class WorkerLoop {
 public:
  // `evaluator` must outlive the loop.
  WorkerLoop(const WorkerOptions& options, Evaluator* evaluator);
  ~WorkerLoop();
  WorkerLoop(const WorkerLoop&) = delete;
  WorkerLoop& operator=(const WorkerLoop&) = delete;

  // Runs until drained. OK on a clean exit; kUnauthenticated / kPermissionDenied /
  // kInvalidArgument when the coordinator refuses this worker outright (no point retrying).
  absl::Status Run();
  // First call: drain (see file comment). Second call: stop the current job now.
  void RequestDrain();

  WorkerStats stats() const ABSL_LOCKS_EXCLUDED(stats_mu_);
  const std::string& worker_id() const { return worker_id_; }

 private:
  // Runs one job and reports it. When the report also brought the next lease
  // (complete-and-lease), it is left in next_lease_.
  absl::Status RunJob(const v1::LeaseResponse& lease);
  void ReportFail(const v1::LeaseResponse& lease, v1::FailureKind kind, const std::string& error);
  WorkerIdentity Identity() const;
  // Sleeps up to `ms`, returning early on drain. Returns false if draining.
  bool SleepUnlessDraining(int ms);
  void Journal(const std::string& event, const std::string& job_id, int64_t fence,
               const std::string& extra = "");
  // Reports a finished result (heartbeats for its lease must be running), retrying while the
  // coordinator is unreachable or its disk is full. Returns true once the coordinator has
  // answered for good (recorded, duplicate, refused, lease lost); false if the worker was
  // told to stop first.
  bool ReportResult(const v1::LeaseResponse& lease, const v1::CompleteRequest& req);
  // Reports what the spool holds from an earlier run under this worker id.
  void ReportSpooled();
  // Retries `call` while the coordinator is unreachable (or out of disk); returns its final
  // status, or the last one once `give_up` holds or the worker drains (stops, if until_stop).
  template <typename Call>
  grpc::Status Retrying(const char* what, Call call, bool until_stop,
                        const std::function<bool()>& give_up = nullptr);

  WorkerOptions options_;
  Evaluator* evaluator_;
  std::string hostname_;
  std::string worker_id_;
  std::string session_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::WorkerService::Stub> stub_;
  // Staging (options_.staging), set up by the first job that needs it.
  std::unique_ptr<v1::FileService::Stub> files_stub_;
  std::unique_ptr<FileCache> file_cache_;
  std::unique_ptr<FileStager> stager_;
  std::string held_model_;
  std::optional<v1::LeaseResponse> next_lease_;
  std::optional<ResultSpool> spool_;
  int journal_fd_ = -1;

  FaultInjector faults_;
  // Run only: the heartbeat thread for the jobs of this run (it needs stub_).
  std::optional<Heartbeater> heartbeats_;

  // Waits that end early on a drain or stop request. Guards no data: draining_, stop_now_ and
  // drain_deadline_ms_ are atomics, read without it on the job thread's hot path.
  Mutex drain_mu_;
  CondVar drain_cv_;
  std::atomic<bool> draining_{false};
  std::atomic<bool> stop_now_{false};
  std::atomic<int64_t> drain_deadline_ms_{0};

  mutable Mutex stats_mu_;
  WorkerStats stats_ ABSL_GUARDED_BY(stats_mu_);
};

}  // namespace kvsweep

#endif  // KVSWEEP_WORKER_WORKER_LOOP_H_

// The coordinator's gRPC services. Handlers validate the request, call the scheduler or the
// store, and convert the status back; they hold no state of their own.
#ifndef KVSWEEP_COORDINATOR_SERVICE_H_
#define KVSWEEP_COORDINATOR_SERVICE_H_

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/latency_histogram.h"
#include "common/mutex.h"
#include "coordinator/scheduler.h"
#include "coordinator/submissions.h"
#include "kvsweep/v1/coordinator.grpc.pb.h"
#include "rpc/auth.h"
#include "storage/result_store.h"

namespace kvsweep {

struct ServiceOptions {
  BearerTokens tokens;  // who may call what (none: everyone, everything)
  int max_jobs_per_sweep = 200000;
  int query_timeout_ms = 10000;
  // --allow-path roots for sweep paths (empty: the sweep file's directory); KVSWEEP_ASSETS is
  // always allowed (common/path_policy.h SweepPathRoots).
  std::vector<std::string> allowed_paths;
};

// SweepService: synchronous handlers (low rate; Watch blocks its thread while streaming).
class SweepServiceImpl final : public v1::SweepService::Service {
 public:
  SweepServiceImpl(ResultStore* store, Scheduler* scheduler, const ServiceOptions& options);
  // Makes running Watch streams return and stops preparing submissions (server shutdown);
  // call before the scheduler stops.
  void Shutdown();

  // Starts the submission (coordinator/submissions.h) and waits for it at most 2 s or half the
  // call's deadline.
  grpc::Status SubmitSweep(grpc::ServerContext* ctx, const v1::SubmitSweepRequest* req,
                           v1::SubmitSweepResponse* resp) override;
  grpc::Status GetSubmission(grpc::ServerContext* ctx, const v1::GetSubmissionRequest* req,
                             v1::SubmitSweepResponse* resp) override;
  grpc::Status GetStatus(grpc::ServerContext* ctx, const v1::GetStatusRequest* req,
                         v1::GetStatusResponse* resp) override;
  grpc::Status Watch(grpc::ServerContext* ctx, const v1::WatchRequest* req,
                     grpc::ServerWriter<v1::SweepStatus>* writer) override;
  grpc::Status Cancel(grpc::ServerContext* ctx, const v1::CancelRequest* req,
                      v1::CancelResponse* resp) override;
  grpc::Status Retry(grpc::ServerContext* ctx, const v1::RetryRequest* req,
                     v1::RetryResponse* resp) override;
  grpc::Status Query(grpc::ServerContext* ctx, const v1::QueryRequest* req,
                     v1::QueryResponse* resp) override;
  grpc::Status Export(grpc::ServerContext* ctx, const v1::ExportRequest* req,
                      grpc::ServerWriter<v1::ExportRecord>* writer) override;

 private:
  // Expands the sweep and enqueues its jobs: what a submission runs, off the RPC.
  absl::StatusOr<v1::SubmitSweepResponse> Prepare(const v1::SubmitSweepRequest& req,
                                                  const std::string& caller);

  ResultStore* store_;
  Scheduler* scheduler_;
  const ServiceOptions options_;
  Mutex mu_;
  CondVar cv_;  // shutdown_ (Watch streams wait on it between updates)
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  Submissions submissions_;  // last: its threads call Prepare, which uses the members above
};

// Told of every WorkerService answer the latency histograms below record (the /metrics
// endpoint). Called on the committer thread: implementations must be cheap and never block on
// the scheduler.
class WorkerServiceObserver {
 public:
  virtual ~WorkerServiceObserver() = default;
  virtual void LeaseAnswered(double ms) = 0;
  // `recorded`: the call recorded a new result (not a duplicate).
  virtual void CompleteAnswered(double ms, bool recorded) = 0;
};

// WorkerService: callback handlers; a lease or result is answered from the committer thread
// once it is durable, so no gRPC thread waits on an fsync.
class WorkerServiceImpl final : public v1::WorkerService::CallbackService {
 public:
  WorkerServiceImpl(Scheduler* scheduler, const ServiceOptions& options);

  grpc::ServerUnaryReactor* Lease(grpc::CallbackServerContext* ctx, const v1::LeaseRequest* req,
                                  v1::LeaseResponse* resp) override;
  grpc::ServerUnaryReactor* Heartbeat(grpc::CallbackServerContext* ctx,
                                      const v1::HeartbeatRequest* req,
                                      v1::HeartbeatResponse* resp) override;
  grpc::ServerUnaryReactor* Complete(grpc::CallbackServerContext* ctx,
                                     const v1::CompleteRequest* req,
                                     v1::CompleteResponse* resp) override;
  grpc::ServerUnaryReactor* Fail(grpc::CallbackServerContext* ctx, const v1::FailRequest* req,
                                 v1::FailResponse* resp) override;

  // Time from a handler's start to its answer, as the coordinator sees it (excludes the
  // network and gRPC's queue before the handler): Lease calls, and Complete calls (which carry
  // the next lease when the worker asks for one). Logged when the server stops.
  const LatencyHistogram& lease_latency() const { return lease_ms_; }
  const LatencyHistogram& complete_latency() const { return complete_ms_; }
  // Set before the server starts (not synchronized); must outlive the service's calls.
  void set_observer(WorkerServiceObserver* observer) { observer_ = observer; }

 private:
  Scheduler* scheduler_;
  const ServiceOptions options_;
  LatencyHistogram lease_ms_, complete_ms_;
  WorkerServiceObserver* observer_ = nullptr;
};

// Field validators shared with tests: kInvalidArgument naming the field.
absl::Status ValidateWorkerId(const std::string& id, const char* field);
absl::Status ValidateJobId(const std::string& id);
absl::Status ValidateLeaseId(const std::string& id);
absl::Status ValidateFence(int64_t fence);
absl::Status ValidateLeaseRequest(const v1::LeaseRequest& req, const std::string& prefix);

}  // namespace kvsweep

#endif  // KVSWEEP_COORDINATOR_SERVICE_H_

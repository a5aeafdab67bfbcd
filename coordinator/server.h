// A whole coordinator: the SQLite store, the scheduler and the gRPC server over them. Used by
// `kvsweep-coordinator` and embedded by `kvsweep demo`.
#ifndef KVSWEEP_COORDINATOR_SERVER_H_
#define KVSWEEP_COORDINATOR_SERVER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "coordinator/file_server.h"
#include "coordinator/http_dashboard.h"
#include "coordinator/metrics.h"
#include "coordinator/scheduler.h"
#include "coordinator/service.h"
#include "grpcpp/grpcpp.h"
#include "rpc/rpc_util.h"
#include "storage/result_store.h"

namespace kvsweep {

struct CoordinatorOptions {
  std::string db_path;
  std::string listen = kDefaultListen;  // host:port; port 0 picks a free one
  TlsFiles tls;                         // cert + key (+ ca: require client certificates)
  BearerTokens tokens;                  // none: every caller may do everything (loopback)
  SchedulerOptions scheduler;
  ServiceOptions service;  // its tokens are filled from `tokens`
  // Prometheus /metrics on this address (rpc/http_listen.h ParseListenAddress); empty: off.
  std::string metrics_listen;
  // grpc.health.v1 alone, in plaintext, on this host:port (port 0 picks one); empty: off. For
  // probes that cannot do TLS (Kubernetes' grpc probes) when --listen requires it: this server
  // has no other service, so it bypasses neither TLS nor the tokens.
  std::string health_listen;
  // The read-only web dashboard (coordinator/http_dashboard.h) on this HOST:PORT (port 0 picks
  // one), with `tls` and `tokens` as the gRPC listener has them; empty: off.
  std::string http_listen;
};

// The services the grpc.health.v1 service reports on (besides "", the whole server): SERVING
// once the scheduler runs, NOT_SERVING from Shutdown on.
inline constexpr const char* kHealthServiceNames[] = {
    "", "kvsweep.v1.SweepService", "kvsweep.v1.WorkerService", "kvsweep.v1.FileService"};

class CoordinatorServer {
 public:
  // Opens the store, loads the schedule and starts serving (with grpc.health.v1, server
  // reflection where gRPC has it, /metrics and the dashboard when asked). Errors:
  // kFailedPrecondition for a non-loopback address without TLS and tokens, or a database
  // another coordinator holds; kUnavailable if the address cannot be bound; store errors.
  static absl::StatusOr<std::unique_ptr<CoordinatorServer>> Start(const CoordinatorOptions& o);
  ~CoordinatorServer();
  CoordinatorServer(const CoordinatorServer&) = delete;
  CoordinatorServer& operator=(const CoordinatorServer&) = delete;

  int port() const { return port_; }
  // The plaintext health port (health_listen); 0 when off.
  int health_port() const { return health_port_; }
  // The /metrics port; 0 when not serving metrics.
  int metrics_port() const { return metrics_ ? metrics_->port() : 0; }
  // The dashboard's port; 0 when off.
  int http_port() const { return http_port_; }
  // "127.0.0.1:<port>" style address clients can dial.
  std::string address() const { return address_; }
  // Stops accepting calls, answers what is in flight, commits and closes. Idempotent.
  void Shutdown();
  void Wait();  // until Shutdown
  Scheduler* scheduler() { return scheduler_.get(); }
  ResultStore* store() { return store_.get(); }

 private:
  CoordinatorServer() = default;
  std::unique_ptr<ResultStore> store_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<SweepServiceImpl> sweep_service_;
  std::unique_ptr<WorkerServiceImpl> worker_service_;
  std::unique_ptr<FileServiceImpl> file_service_;  // input files for workers without them
  std::unique_ptr<MetricsServer> metrics_;  // observes worker_service_: outlives server_'s calls
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<grpc::Server> health_server_;  // health_listen: grpc.health.v1 only
  std::unique_ptr<DashboardServer> dashboard_;   // reads store_: goes before it
  int lock_fd_ = -1;
  int port_ = 0;
  int health_port_ = 0;
  int http_port_ = 0;
  std::string address_;
  bool shut_down_ = false;
};

}  // namespace kvsweep

#endif  // KVSWEEP_COORDINATOR_SERVER_H_

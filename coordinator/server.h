// A whole coordinator: the SQLite store, the scheduler and the gRPC server over them. Used by
// `kvsweep-coordinator` and embedded by `kvsweep demo`.
#ifndef KVSWEEP_COORDINATOR_SERVER_H_
#define KVSWEEP_COORDINATOR_SERVER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
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
  ServiceOptions service;               // its tokens are filled from `tokens`
};

class CoordinatorServer {
 public:
  // Opens the store, loads the schedule and starts serving. Errors:
  // kFailedPrecondition for a non-loopback address without TLS and tokens, or a database
  // another coordinator holds; kUnavailable if the address cannot be bound; store errors.
  static absl::StatusOr<std::unique_ptr<CoordinatorServer>> Start(const CoordinatorOptions& o);
  ~CoordinatorServer();
  CoordinatorServer(const CoordinatorServer&) = delete;
  CoordinatorServer& operator=(const CoordinatorServer&) = delete;

  int port() const { return port_; }
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
  std::unique_ptr<grpc::Server> server_;
  int lock_fd_ = -1;
  int port_ = 0;
  std::string address_;
  bool shut_down_ = false;
};

}  // namespace kvsweep

#endif  // KVSWEEP_COORDINATOR_SERVER_H_

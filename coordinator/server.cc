#include "coordinator/server.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <chrono>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/log.h"
#include "grpcpp/health_check_service_interface.h"
#ifdef KVSWEEP_WITH_GRPC_REFLECTION
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#endif

namespace kvsweep {

absl::StatusOr<std::unique_ptr<CoordinatorServer>> CoordinatorServer::Start(
    const CoordinatorOptions& o) {
  if (o.db_path.empty()) return absl::InvalidArgumentError("--db: no database path given");
  absl::StatusOr<bool> loopback = IsLoopbackAddress(o.listen);
  if (!loopback.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--listen: ", loopback.status().message()));
  }
  if (absl::Status t = o.tokens.Validate(); !t.ok()) return t;
  if (!*loopback && (o.tls.cert.empty() || o.tls.key.empty() || o.tokens.empty())) {
    return absl::FailedPreconditionError(absl::StrCat(
        "refusing to listen on non-loopback address ", o.listen,
        " without TLS and a bearer token (pass --tls-cert, --tls-key and --token-file)"));
  }
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> creds = MakeServerCredentials(o.tls);
  if (!creds.ok()) return creds.status();

  std::unique_ptr<CoordinatorServer> s(new CoordinatorServer());
  // One coordinator per database: two would both think they own every lease. The lock is on
  // the database file itself (its inode), so a second coordinator reaching it through a symlink
  // or a hard link is refused too. (flock locks are apart from SQLite's fcntl locks; this fd is
  // closed only after the store, since closing any fd of the file drops the process's fcntl
  // locks.)
  s->lock_fd_ = ::open(o.db_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (s->lock_fd_ < 0) {
    return ErrnoToStatus(errno, "open database", o.db_path);
  }
  if (::flock(s->lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("database '", o.db_path, "' is in use by another kvsweep-coordinator"));
  }
  SqliteOptions sqlite;
  sqlite.heap_limit_bytes = int64_t{1} << 30;
  absl::StatusOr<std::unique_ptr<ResultStore>> store = NewSqliteResultStore(o.db_path, sqlite);
  if (!store.ok()) return store.status();
  s->store_ = std::move(*store);
  s->scheduler_ = std::make_unique<Scheduler>(s->store_.get(), SystemClock(), o.scheduler);
  absl::Status started = s->scheduler_->Start();
  if (!started.ok()) return started;

  ServiceOptions so = o.service;
  so.tokens = o.tokens;
  s->sweep_service_ = std::make_unique<SweepServiceImpl>(s->store_.get(), s->scheduler_.get(), so);
  s->worker_service_ = std::make_unique<WorkerServiceImpl>(s->scheduler_.get(), so);
  s->file_service_ = std::make_unique<FileServiceImpl>(s->store_.get(), s->scheduler_.get(), so);
  if (!o.metrics_listen.empty()) {
    absl::StatusOr<std::unique_ptr<MetricsServer>> m =
        StartMetricsServer(o.metrics_listen, s->store_.get(), s->scheduler_.get());
    if (!m.ok()) return m.status();
    s->metrics_ = std::move(*m);
    s->worker_service_->set_observer(s->metrics_.get());
  }
  // Both are process-wide switches read when a server is built.
  grpc::EnableDefaultHealthCheckService(true);
#ifdef KVSWEEP_WITH_GRPC_REFLECTION
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
#endif
  grpc::ServerBuilder builder;
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  builder.SetMaxSendMessageSize(kMaxMessageBytes);
  // gRPC sets SO_REUSEPORT by default: a second coordinator on the same port would start and
  // silently take half of the connections.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddListeningPort(o.listen, *creds, &s->port_);
  builder.RegisterService(s->sweep_service_.get());
  builder.RegisterService(s->worker_service_.get());
  builder.RegisterService(s->file_service_.get());
  s->server_ = builder.BuildAndStart();
  if (s->server_ == nullptr || s->port_ == 0) {
    s->scheduler_->Stop();
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on ", o.listen, " (address in use by another process, or not local)"));
  }
  if (!o.health_listen.empty()) {
    // A server of its own, with nothing but the default health service (and reflection, which
    // lists just that): a plaintext port on the main server would serve every service without
    // TLS.
    grpc::ServerBuilder health_builder;
    health_builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    health_builder.AddListeningPort(o.health_listen, grpc::InsecureServerCredentials(),
                                    &s->health_port_);
    s->health_server_ = health_builder.BuildAndStart();
    if (s->health_server_ == nullptr || s->health_port_ == 0) {
      s->server_->Shutdown();
      s->scheduler_->Stop();
      return absl::UnavailableError(
          absl::StrCat("--health-listen: cannot listen on ", o.health_listen));
    }
  }
  if (!o.http_listen.empty()) {
    DashboardOptions d;
    d.listen = o.http_listen;
    d.tls = o.tls;
    d.tokens = o.tokens;
    absl::StatusOr<std::unique_ptr<DashboardServer>> dashboard = StartDashboard(d, s->store_.get());
    if (!dashboard.ok()) {
      s->server_->Shutdown();
      if (s->health_server_ != nullptr) s->health_server_->Shutdown();
      s->scheduler_->Stop();
      return dashboard.status();
    }
    s->dashboard_ = std::move(*dashboard);
    s->http_port_ = s->dashboard_->port();
  }
  // The scheduler is running (Start above): ready for workers and clients.
  for (grpc::Server* server : {s->server_.get(), s->health_server_.get()}) {
    if (server == nullptr) continue;
    if (grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService()) {
      for (const char* name : kHealthServiceNames) health->SetServingStatus(name, true);
    }
  }
  const std::string host = o.listen.substr(0, o.listen.rfind(':'));
  s->address_ = absl::StartsWith(o.listen, "unix") ? o.listen : absl::StrCat(host, ":", s->port_);
  KV_LOG(INFO) << "kvsweep-coordinator: listening on " << s->address_ << " ("
               << (o.tls.enabled() ? (o.tls.ca.empty() ? "TLS" : "mTLS") : "plaintext")
               << (o.tokens.empty() ? "" : ", bearer tokens") << "), database " << o.db_path;
  if (s->health_server_ != nullptr) {
    KV_LOG(INFO) << "kvsweep-coordinator: grpc.health.v1 alone, plaintext, on port "
                 << s->health_port_;
  }
  if (s->dashboard_ != nullptr) {
    KV_LOG(INFO) << "kvsweep-coordinator: dashboard at " << s->dashboard_->url()
                 << (o.tokens.empty() ? "" : " (a token with the read role)");
  }
  if (s->metrics_ != nullptr) {
    KV_LOG(INFO) << "kvsweep-coordinator: Prometheus metrics on port " << s->metrics_->port()
                 << " (/metrics)";
  }
  return s;
}

CoordinatorServer::~CoordinatorServer() {
  Shutdown();
  server_.reset();
  health_server_.reset();
  dashboard_.reset();
  metrics_.reset();
  file_service_.reset();
  worker_service_.reset();
  sweep_service_.reset();
  scheduler_.reset();
  store_.reset();  // before the lock's fd: see Start
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

void CoordinatorServer::Shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  // Probes see NOT_SERVING while calls in flight are answered.
  for (grpc::Server* server : {server_.get(), health_server_.get()}) {
    if (server == nullptr) continue;
    if (grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService()) {
      for (const char* name : kHealthServiceNames) health->SetServingStatus(name, false);
    }
  }
  if (sweep_service_) sweep_service_->Shutdown();
  dashboard_.reset();  // stops serving pages; answers what it is writing
  if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  if (health_server_) health_server_->Shutdown(std::chrono::system_clock::now());
  if (scheduler_) scheduler_->Stop();
  if (worker_service_ != nullptr) {
    const LatencyHistogram& lease = worker_service_->lease_latency();
    const LatencyHistogram& complete = worker_service_->complete_latency();
    if (lease.Count() + complete.Count() > 0) {
      KV_LOG(INFO) << "rpc latency in the coordinator: lease " << lease.Summary() << "; complete "
                   << complete.Summary();
    }
  }
}

void CoordinatorServer::Wait() {
  if (server_) server_->Wait();
}

}  // namespace kvsweep

// kvsweep-coordinator: serves sweeps to workers and clients from one SQLite database.
//
//   kvsweep-coordinator --db sweeps.db [--listen 127.0.0.1:50551] [--port-file FILE]
//       [--tls-cert F --tls-key F [--tls-client-ca F]] [--token-file F]
//       [--worker-token-file F] [--client-token-file F] [--reader-token-file F]
//       [--lease-ttl-ms 30000] [--retry-base-ms 2000] [--retry-max-ms 300000]
//       [--max-attempts-default ...] [--quarantine-after 3] [--allow-path DIR]...
//       [--metrics-listen [HOST:]PORT] [--health-listen HOST:PORT]
//       [--http [HOST:]PORT [--http-port-file FILE]] [--config FILE]
//
// The deployment settings (--db, --listen, --tls-*, --*token-file, --metrics-listen,
// --health-listen, --http) also come from KVSWEEP_<FLAG> variables (KVSWEEP_DB,
// KVSWEEP_TLS_CLIENT_CA, ...) and from --config FILE (`db = "..."`); the command line wins over the
// environment, which wins over the file.
//
// SIGTERM/SIGINT: stop accepting calls, answer those in flight, commit, exit 0. kill -9 at any
// point loses nothing that was acknowledged (docs/protocol.md).
#include <signal.h>

#include <cstdio>
#include <iostream>
#include <thread>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "common/cli_config.h"
#include "common/file_util.h"
#include "common/log.h"
#include "common/signals.h"
#include "coordinator/server.h"
#include "rpc/rpc_util.h"

namespace {

int Fail(const std::string& msg) {
  std::cerr << "kvsweep-coordinator: " << msg << "\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace kvsweep;
  InitRpcProcess();
  CoordinatorOptions o;
  std::string port_file, token_file, log_level;
  CLI::App app{"kvsweep-coordinator: hands sweep jobs to workers, records results in SQLite"};
  app.set_version_flag("--version", "kvsweep-coordinator " KVSWEEP_VERSION);
  WithEnv(app.add_option("--db", o.db_path, "SQLite database file (created if missing)"))
      ->required();
  WithEnv(app.add_option("--listen", o.listen,
                         "address to serve on (host:port; port 0 picks one). Non-loopback "
                         "addresses need --tls-cert, --tls-key and --token-file"))
      ->capture_default_str();
  app.add_option("--port-file", port_file, "write the bound port here once serving (tests)");
  WithEnv(app.add_option("--tls-cert", o.tls.cert, "server certificate (PEM)"));
  WithEnv(app.add_option("--tls-key", o.tls.key, "server private key (PEM)"));
  WithEnv(app.add_option("--tls-client-ca", o.tls.ca,
                         "require client certificates signed by this CA (mTLS)"));
  std::string worker_token_file, client_token_file, reader_token_file;
  WithEnv(app.add_option("--token-file", token_file,
                         "bearer token allowed every call (with the role tokens below, the "
                         "admin's)"));
  WithEnv(app.add_option("--worker-token-file", worker_token_file,
                         "bearer token of workers: lease, heartbeat, complete, fail only"));
  WithEnv(app.add_option("--client-token-file", client_token_file,
                         "bearer token of users: submit, cancel, retry, status, watch, query, "
                         "export"));
  WithEnv(app.add_option("--reader-token-file", reader_token_file,
                         "bearer token of read-only users: status, watch, query, export"));
  app.add_option("--lease-ttl-ms", o.scheduler.lease_ttl_ms, "lease duration; heartbeats renew it")
      ->check(CLI::Range(100, 3600000))
      ->capture_default_str();
  app.add_option("--retry-base-ms", o.scheduler.retry_base_ms, "backoff after the first failure")
      ->check(CLI::Range(0, 86400000))
      ->capture_default_str();
  app.add_option("--retry-max-ms", o.scheduler.retry_max_ms, "backoff cap")
      ->check(CLI::Range(0, 86400000))
      ->capture_default_str();
  app.add_option("--quarantine-after", o.scheduler.quarantine_after,
                 "quarantine a job after it lost leases on this many different workers")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  app.add_option("--idle-retry-ms", o.scheduler.idle_retry_ms,
                 "how long workers wait before asking again when there is no job")
      ->check(CLI::Range(10, 60000))
      ->capture_default_str();
  app.add_option("--allow-path", o.service.allowed_paths,
                 "a directory whose files sweeps may name (models, tokenizers, data, "
                 "calibration); repeatable. Default: the submitted sweep file's directory. "
                 "KVSWEEP_ASSETS is always allowed");
  WithEnv(app.add_option("--metrics-listen", o.metrics_listen,
                         "serve Prometheus metrics at http://HOST:PORT/metrics (a bare PORT: "
                         "loopback; no authentication, so bind another address only on a "
                         "trusted network). Default: off"));
  WithEnv(app.add_option("--health-listen", o.health_listen,
                         "also serve grpc.health.v1 alone, in plaintext, on this host:port, for "
                         "probes that cannot do TLS (Kubernetes grpc probes). Default: off"));
  std::string http_port_file;
  WithEnv(app.add_option("--http", o.http_listen,
                         "serve the read-only web dashboard (sweeps, progress, jobs, tables, "
                         "plots, JSON under /api/) at http://HOST:PORT/ (a bare PORT: loopback; "
                         "port 0 picks one). It has --listen's TLS and tokens (a read token "
                         "needed when tokens are set); off loopback it needs TLS and a token. "
                         "Default: off"));
  app.add_option("--http-port-file", http_port_file,
                 "write the dashboard's bound port here once serving (tests)");
  app.add_option("--log-tag", log_level, "tag printed on every log line");
  AddConfigFile(&app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    return Fail(e.what());
  }
  if (!log_level.empty()) SetLogTag(log_level);
  for (auto [file, token] : {std::pair{&token_file, &o.tokens.all},
                             {&worker_token_file, &o.tokens.worker},
                             {&client_token_file, &o.tokens.client},
                             {&reader_token_file, &o.tokens.reader}}) {
    if (file->empty()) continue;
    absl::StatusOr<std::string> t = ReadTokenFile(*file);
    if (!t.ok()) return Fail(std::string(t.status().message()));
    *token = *t;
  }

  for (std::string& p : o.service.allowed_paths) {
    if (!IsDirectory(p)) return Fail(absl::StrCat("--allow-path: '", p, "' is not a directory"));
    p = RealPath(p);
  }

  signal(SIGPIPE, SIG_IGN);
  absl::StatusOr<std::unique_ptr<CoordinatorServer>> server = CoordinatorServer::Start(o);
  if (!server.ok()) return Fail(std::string(server.status().message()));
  if (!port_file.empty()) {
    absl::Status w = WriteFileAtomic(port_file, absl::StrCat((*server)->port(), "\n"));
    if (!w.ok()) return Fail(std::string(w.message()));
  }
  if (!http_port_file.empty() && (*server)->http_port() > 0) {
    absl::Status w = WriteFileAtomic(http_port_file, absl::StrCat((*server)->http_port(), "\n"));
    if (!w.ok()) return Fail(std::string(w.message()));
  }
  // SIGTERM/SIGINT: stop serving (answer what is in flight, commit), then exit 0.
  std::thread stopper;
  CoordinatorServer* srv = server->get();
  absl::StatusOr<std::unique_ptr<ShutdownSignals>> signals =
      ShutdownSignals::Install([&stopper, srv](int sig) {
        if (stopper.joinable()) return;  // already shutting down
        KV_LOG(INFO) << "kvsweep-coordinator: signal " << sig << ", shutting down";
        stopper = std::thread([srv] { srv->Shutdown(); });
      });
  if (!signals.ok()) return Fail(std::string(signals.status().message()));
  (*server)->Wait();
  signals->reset();
  if (stopper.joinable()) stopper.join();
  server->reset();
  KV_LOG(INFO) << "kvsweep-coordinator: exited cleanly";
  return 0;
}

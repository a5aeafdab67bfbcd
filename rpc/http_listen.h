// The HTTP listeners beside the gRPC server (the coordinator's /metrics and dashboard, the
// worker's /metrics): one reading of their address flags, one start-up of a cpp-httplib server
// on its own thread, and the Prometheus /metrics endpoint both binaries serve with it.
//
// /metrics is served by cpp-httplib rather than prometheus-cpp's civetweb exposer: civetweb
// starts its threads with a 100 KiB stack, too small for a process that links libtorch (its
// static thread-local storage alone is larger), so the exposer cannot start in the worker.
#ifndef KVSWEEP_RPC_HTTP_LISTEN_H_
#define KVSWEEP_RPC_HTTP_LISTEN_H_

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

#ifdef KVSWEEP_WITH_HTTPLIB
#include "httplib.h"
#endif
#ifdef KVSWEEP_WITH_PROMETHEUS
#include "prometheus/registry.h"
#endif

namespace kvsweep {

struct ListenAddress {
  std::string host;       // without brackets: what a socket binds ("127.0.0.1", "::1")
  int port = 0;           // 0: the system picks one
  std::string host_port;  // "HOST:PORT" ("[V6]:PORT"), as IsLoopbackAddress reads it
};

// "HOST:PORT", "[V6]:PORT" or a bare "PORT" (then 127.0.0.1); "localhost" becomes 127.0.0.1.
// kInvalidArgument naming `flag` ("--metrics-listen: '...' has no valid port") otherwise.
absl::StatusOr<ListenAddress> ParseListenAddress(absl::string_view flag, const std::string& listen);

#ifdef KVSWEEP_WITH_HTTPLIB
// Binds `server` to `address` (SO_REUSEADDR, not SO_REUSEPORT: a port in use is refused) and
// runs its accept loop on *thread (join it after server.stop()); returns the bound port.
// kUnavailable naming `flag` if it cannot be bound.
absl::StatusOr<int> ServeInBackground(httplib::Server& server, const ListenAddress& address,
                                      absl::string_view flag, std::thread* thread);
#endif

// A Prometheus /metrics endpoint: GET /metrics answers the text exposition format of a
// registry, refreshed first by a callback (for values read when scraped).
class MetricsHttpServer {
 public:
  MetricsHttpServer() = default;
  virtual ~MetricsHttpServer() = default;  // stops serving
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;
  // The bound port (the one asked for, or the one picked for port 0).
  virtual int port() const = 0;
};

#if defined(KVSWEEP_WITH_PROMETHEUS) && defined(KVSWEEP_WITH_HTTPLIB)
// Serves `registry` at http://<listen>/metrics (two threads) until the result is destroyed;
// `refresh` runs (on a server thread, one scrape at a time) before each answer.
// kInvalidArgument for a malformed address, kUnavailable naming `flag` when it cannot be bound.
absl::StatusOr<std::unique_ptr<MetricsHttpServer>> StartMetricsHttp(
    absl::string_view flag, const std::string& listen,
    std::shared_ptr<prometheus::Registry> registry, std::function<void()> refresh);
#endif

// What a binary built without prometheus-cpp or cpp-httplib answers to `flag`: the address
// error if `listen` is malformed, else kUnimplemented naming the Debian packages.
absl::Status MetricsUnavailable(absl::string_view flag, absl::string_view binary,
                                const std::string& listen);

}  // namespace kvsweep

#endif  // KVSWEEP_RPC_HTTP_LISTEN_H_

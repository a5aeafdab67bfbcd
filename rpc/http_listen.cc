#include "rpc/http_listen.h"

#include <chrono>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/mutex.h"

#ifdef KVSWEEP_WITH_PROMETHEUS
#include "prometheus/text_serializer.h"
#endif

namespace kvsweep {

absl::StatusOr<ListenAddress> ParseListenAddress(absl::string_view flag,
                                                 const std::string& listen) {
  std::string host = "127.0.0.1", port = listen;
  const size_t colon = listen.rfind(':');
  if (colon != std::string::npos) {
    host = listen.substr(0, colon);
    port = listen.substr(colon + 1);
    const bool bracketed = absl::StartsWith(host, "[") && absl::EndsWith(host, "]");
    if (host.empty() || (!bracketed && host.find(':') != std::string::npos)) {
      return absl::InvalidArgumentError(
          absl::StrCat(flag, ": '", listen, "' is not HOST:PORT (IPv6 hosts in brackets)"));
    }
    if (host == "localhost") host = "127.0.0.1";
  }
  ListenAddress a;
  if (!absl::SimpleAtoi(port, &a.port) || a.port < 0 || a.port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(flag, ": '", listen, "' has no valid port"));
  }
  a.host_port = absl::StrCat(host, ":", a.port);
  a.host = absl::StartsWith(host, "[") ? host.substr(1, host.size() - 2) : host;
  return a;
}

#ifdef KVSWEEP_WITH_HTTPLIB
absl::StatusOr<int> ServeInBackground(httplib::Server& server, const ListenAddress& address,
                                      absl::string_view flag, std::thread* thread) {
  // cpp-httplib's default also sets SO_REUSEPORT, with which a second process binds a port in
  // use and the kernel shares the connections between the two: an address in use must be an
  // error instead.
  server.set_socket_options([](socket_t sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, reinterpret_cast<const void*>(&yes), sizeof(yes));
  });
  const int port = address.port == 0
                       ? server.bind_to_any_port(address.host)
                       : (server.bind_to_port(address.host, address.port) ? address.port : -1);
  if (port <= 0) {
    return absl::UnavailableError(absl::StrCat(flag, ": cannot listen on ", address.host_port,
                                               " (address in use, or not local)"));
  }
  *thread = std::thread([&server] { server.listen_after_bind(); });
  // stop() only ends a server that has started its accept loop: wait for it, so that a server
  // destroyed at once still stops.
  for (int i = 0; i < 5000 && !server.is_running(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return port;
}
#endif

#if defined(KVSWEEP_WITH_PROMETHEUS) && defined(KVSWEEP_WITH_HTTPLIB)
namespace {

class HttplibMetricsServer final : public MetricsHttpServer {
 public:
  HttplibMetricsServer(std::shared_ptr<prometheus::Registry> registry,
                       std::function<void()> refresh)
      : registry_(std::move(registry)), refresh_(std::move(refresh)) {
    server_.new_task_queue = [] { return new httplib::ThreadPool(2); };
    server_.set_payload_max_length(4096);  // GET only
    server_.set_read_timeout(5, 0);
    server_.set_keep_alive_max_count(1);
    server_.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      std::string body;
      {
        MutexLock lock(&scrape_mu_);
        if (refresh_) refresh_();
        std::ostringstream out;
        prometheus::TextSerializer().Serialize(out, registry_->Collect());
        body = out.str();
      }
      res.set_content(body, "text/plain; version=0.0.4; charset=utf-8");
    });
  }
  ~HttplibMetricsServer() override {
    server_.stop();
    if (thread_.joinable()) thread_.join();
  }

  absl::Status Listen(absl::string_view flag, const ListenAddress& address) {
    absl::StatusOr<int> port = ServeInBackground(server_, address, flag, &thread_);
    if (!port.ok()) return port.status();
    port_ = *port;
    return absl::OkStatus();
  }
  int port() const override { return port_; }

 private:
  const std::shared_ptr<prometheus::Registry> registry_;
  const std::function<void()> refresh_;
  Mutex scrape_mu_;  // one scrape at a time runs `refresh_` (guards no data of its own)
  int port_ = 0;
  httplib::Server server_;
  std::thread thread_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> StartMetricsHttp(
    absl::string_view flag, const std::string& listen,
    std::shared_ptr<prometheus::Registry> registry, std::function<void()> refresh) {
  absl::StatusOr<ListenAddress> address = ParseListenAddress(flag, listen);
  if (!address.ok()) return address.status();
  auto server = std::make_unique<HttplibMetricsServer>(std::move(registry), std::move(refresh));
  if (absl::Status s = server->Listen(flag, *address); !s.ok()) return s;
  return server;
}
#endif

absl::Status MetricsUnavailable(absl::string_view flag, absl::string_view binary,
                                const std::string& listen) {
  absl::StatusOr<ListenAddress> address = ParseListenAddress(flag, listen);
  if (!address.ok()) return address.status();
  return absl::UnimplementedError(
      absl::StrCat(flag, ": this ", binary,
                   " was built without prometheus-cpp or cpp-httplib (Debian packages "
                   "prometheus-cpp-dev, libcpp-httplib-dev)"));
}

}  // namespace kvsweep

// The coordinator's read-only web dashboard (kvsweep-coordinator --http ADDR): sweeps with live
// progress, a sweep's jobs and attempts, its comparison table and plot, and the JSON behind them.
//
//   GET /                      every sweep with a progress bar and its job counts
//   GET /sweep/NAME            counts, recent errors, the comparison table (kvsweep table's
//                              cells; --delta none when the sweep has a `none` method), the plot
//                              (kvsweep plot's SVG, inline), the jobs with their attempts
//   GET /sweep/NAME/plot.svg   the plot alone
//   GET /api/sweeps            JSON: the sweeps and their counts
//   GET /api/sweep/NAME        JSON: the sweep, its jobs and attempts, the table (kvsweep table
//                              --format json)
//
// Query parameters, bounded (400 beyond the bounds): jobs=N (jobs listed, 1..2000, default 200),
// metric=NAME (the table's and the plot's metric, [A-Za-z0-9_]{1,64}, default auto),
// log_y=0|1 (the plot's y axis; default log where every value is positive), refresh=S (0 or 2..3600
// seconds, default 5).
//
// Pages are rendered on the server, with no JavaScript (the Content-Security-Policy forbids
// scripts): tables and bars read the same with JavaScript off. While a sweep on the page is
// unfinished, <meta http-equiv="refresh"> reloads the page every `refresh` seconds.
//
// Security, the gRPC listener's rules: with TLS configured (cert and key) the dashboard speaks
// HTTPS with the same certificate, and requires client certificates when the gRPC listener does
// (a client CA); an address off loopback is refused without TLS and tokens. With tokens
// configured every request needs one with the read role, as `Authorization: Bearer <token>`
// (rpc/auth.h AuthenticateHeader), or as the password of HTTP Basic authentication so that a
// browser can ask for it (the user name is ignored): 401 without a known token, 403 for a token
// without the read role (a worker's). Every text from the store (sweep YAML labels, errors) is
// escaped; lease secrets never leave the coordinator (the store keeps only their keys, and the
// dashboard shows no lease key either).
//
// Cost: each request reads the store's read and query connections; tables and plots (paired
// bootstrap intervals) are built once per sweep, view, set of jobs and count of finished jobs,
// and kept (with each job's metric) for the next request, which then parses no result object.
// Requests are served by four threads, one request per connection.
#ifndef KVSWEEP_COORDINATOR_HTTP_DASHBOARD_H_
#define KVSWEEP_COORDINATOR_HTTP_DASHBOARD_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "rpc/auth.h"
#include "rpc/rpc_util.h"
#include "storage/result_store.h"

namespace kvsweep {

struct DashboardOptions {
  std::string listen;   // HOST:PORT, [V6]:PORT or a bare PORT (then 127.0.0.1); port 0 picks one
  TlsFiles tls;         // the gRPC listener's: cert + key (HTTPS), ca (client certificates)
  BearerTokens tokens;  // empty: every caller may read (the loopback default)
  int threads = 4;      // requests served at once
};

class DashboardServer {
 public:
  DashboardServer() = default;
  virtual ~DashboardServer() = default;  // stops serving
  DashboardServer(const DashboardServer&) = delete;
  DashboardServer& operator=(const DashboardServer&) = delete;

  // The bound port (the one asked for, or the one picked for port 0).
  virtual int port() const = 0;
  // "https://HOST:PORT/" with TLS, else "http://HOST:PORT/".
  virtual std::string url() const = 0;
};

// Serves the dashboard on options.listen until destroyed; `store` must outlive the result.
// Errors: kInvalidArgument for a malformed address; kFailedPrecondition for an address off
// loopback without TLS and tokens, or TLS files that cannot be loaded; kUnavailable if the
// address cannot be bound; kUnimplemented when kvsweep was built without cpp-httplib.
absl::StatusOr<std::unique_ptr<DashboardServer>> StartDashboard(const DashboardOptions& options,
                                                                ResultStore* store);

}  // namespace kvsweep

#endif  // KVSWEEP_COORDINATOR_HTTP_DASHBOARD_H_

// What every gRPC party of kvsweep shares: message size limits, absl <-> grpc status
// conversion, TLS/mTLS credentials, the bearer token, and the loopback rule.
//
// Security model (docs/protocol.md, "Transport and security"): the coordinator listens on loopback
// unless told otherwise, and refuses a non-loopback address unless it has a TLS certificate and key
// and a bearer token. Clients and workers send the token as `authorization: Bearer <token>` on
// every call (per-call metadata, so it also works on a plaintext loopback channel).
#ifndef KVSWEEP_RPC_RPC_UTIL_H_
#define KVSWEEP_RPC_RPC_UTIL_H_

#include <chrono>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "grpcpp/grpcpp.h"

namespace kvsweep {

// Transport limit on one message, both directions, both ends. Larger messages fail with
// RESOURCE_EXHAUSTED in gRPC before any handler sees them.
inline constexpr int kMaxMessageBytes = 16 << 20;
// Field limits checked by the handlers (INVALID_ARGUMENT beyond them).
inline constexpr size_t kMaxSweepYamlBytes = 1 << 20;
inline constexpr size_t kMaxResultJsonBytes = 8 << 20;
inline constexpr size_t kMaxSqlBytes = 64 << 10;
inline constexpr size_t kMaxErrorBytes = 4 << 10;
inline constexpr char kDefaultListen[] = "127.0.0.1:50551";

grpc::Status ToGrpc(const absl::Status& s);
absl::Status FromGrpc(const grpc::Status& s);

// Files holding PEM text. Server: cert + key, plus client_ca to require client certificates
// (mTLS). Client: ca to verify the server (empty: the system roots), plus cert + key for mTLS.
struct TlsFiles {
  std::string cert, key, ca;
  bool enabled() const { return !cert.empty() || !key.empty() || !ca.empty(); }
};

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const TlsFiles& tls);

// How a client or worker reaches the coordinator.
struct ClientConfig {
  std::string address = kDefaultListen;
  std::string token;  // bearer token ("" = none)
  bool tls = false;   // use TLS even without files (system roots)
  TlsFiles tls_files;
  std::string tls_server_name;  // override the name checked in the server certificate
  // gRPC's own reconnect backoff grows to 120 s by default: a coordinator back after an outage
  // would be noticed minutes late. Capped here.
  int max_reconnect_backoff_ms = 5000;
};

// kInvalidArgument for an address ValidateAddress refuses; kFailedPrecondition for a bearer
// token without TLS to an address that is not loopback.
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const ClientConfig& config);

// Once per process, before any RPC: turns off Abseil's mutex deadlock detection, which
// Debian's Abseil build leaves on and which gRPC's mutexes pay for on every lock (a graph
// update and a stack trace; 2-5% of the coordinator's CPU under load). Idempotent.
void InitRpcProcess();
// For command-line tools, once, before any RPC: turns off gRPC's own log lines (e.g. "E...
// ssl_transport_security.cc ... Handshake failed"), which reach stderr before the tool's
// one-line error that says the same in its terms. They stay on when the user asks for them:
// GRPC_VERBOSITY or GRPC_TRACE set, or KVSWEEP_LOG_LEVEL=debug. Servers keep them.
void QuietGrpcLogsUnlessAsked();
// A call that failed this way may succeed if retried (the coordinator is restarting, busy or
// briefly unreachable).
bool IsTransient(grpc::StatusCode code);
// Adds the bearer token and a deadline `timeout` from now to a call's context.
void PrepareContext(grpc::ClientContext* ctx, const ClientConfig& config,
                    std::chrono::milliseconds timeout);

// Reads a token file (trailing whitespace stripped). kInvalidArgument if empty or not
// printable ASCII; file errors as ReadFile.
absl::StatusOr<std::string> ReadTokenFile(const std::string& path);

// The one check of an address that every binary applies (the coordinator's --listen, the
// client's and the worker's --coordinator): host:port, [v6]:port or unix:path, with the port a
// decimal number in [0, 65535] (gRPC itself would take 115xx mod 65536, reaching another port).
// kInvalidArgument otherwise: "bad address '...'" or "bad port in address '...'".
absl::Status ValidateAddress(const std::string& address);

// True for 127.0.0.0/8, ::1, localhost and unix: sockets. `address` is host:port, [v6]:port
// or unix:path. kInvalidArgument for something that is none of these (ValidateAddress).
absl::StatusOr<bool> IsLoopbackAddress(const std::string& address);

// kInvalidArgument "WHAT: not valid UTF-8 at byte N" (and " (line L)" where `text` has several
// lines) unless `text` is valid UTF-8,
// which every protobuf `string` field must be (protobuf refuses to send one that is not, with a
// log line of its own and no message). Callers check user text before building a request.
absl::Status CheckUtf8(absl::string_view text, absl::string_view what);

}  // namespace kvsweep

#endif  // KVSWEEP_RPC_RPC_UTIL_H_

#include "rpc/rpc_util.h"

#include <openssl/crypto.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "common/file_util.h"
#include "common/utf8.h"
#include "grpc/support/log.h"

namespace kvsweep {

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

absl::Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

namespace {
absl::StatusOr<std::string> Pem(const std::string& path, const char* what) {
  absl::StatusOr<std::string> text = ReadFile(path);
  if (!text.ok()) {
    return absl::Status(text.status().code(), absl::StrCat(what, ": ", text.status().message()));
  }
  if (!absl::StrContains(*text, "-----BEGIN")) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": '", path, "' is not PEM"));
  }
  return text;
}
}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const TlsFiles& tls) {
  if (!tls.enabled()) return grpc::InsecureServerCredentials();
  if (tls.cert.empty() || tls.key.empty()) {
    return absl::InvalidArgumentError("TLS needs both --tls-cert and --tls-key");
  }
  grpc::SslServerCredentialsOptions o;
  absl::StatusOr<std::string> cert = Pem(tls.cert, "--tls-cert");
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key = Pem(tls.key, "--tls-key");
  if (!key.ok()) return key.status();
  o.pem_key_cert_pairs.push_back({*key, *cert});
  if (!tls.ca.empty()) {
    absl::StatusOr<std::string> ca = Pem(tls.ca, "--tls-client-ca");
    if (!ca.ok()) return ca.status();
    o.pem_root_certs = *ca;
    o.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(o);
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const ClientConfig& config) {
  if (absl::Status a = ValidateAddress(config.address); !a.ok()) return a;
  if (!config.token.empty() && !config.tls && !config.tls_files.enabled()) {
    // A bearer token in clear crosses the network for anyone on the path to read.
    absl::StatusOr<bool> loopback = IsLoopbackAddress(config.address);
    if (!loopback.ok()) return loopback.status();
    if (!*loopback) {
      return absl::FailedPreconditionError(
          absl::StrCat("refusing to send the bearer token in clear to ", config.address,
                       " (use --tls, or a loopback address)"));
    }
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  args.SetMaxSendMessageSize(kMaxMessageBytes);
  // Every worker gets its own connection (the load benchmark runs many in one process).
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS,
              std::min(1000, config.max_reconnect_backoff_ms));
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, std::min(1000, config.max_reconnect_backoff_ms));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, config.max_reconnect_backoff_ms);
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (config.tls || config.tls_files.enabled()) {
    grpc::SslCredentialsOptions o;
    if (!config.tls_files.ca.empty()) {
      absl::StatusOr<std::string> ca = Pem(config.tls_files.ca, "--tls-ca");
      if (!ca.ok()) return ca.status();
      o.pem_root_certs = *ca;
    }
    if (!config.tls_files.cert.empty() || !config.tls_files.key.empty()) {
      if (config.tls_files.cert.empty() || config.tls_files.key.empty()) {
        return absl::InvalidArgumentError(
            "a client certificate needs both --tls-cert and --tls-key");
      }
      absl::StatusOr<std::string> cert = Pem(config.tls_files.cert, "--tls-cert");
      if (!cert.ok()) return cert.status();
      absl::StatusOr<std::string> key = Pem(config.tls_files.key, "--tls-key");
      if (!key.ok()) return key.status();
      o.pem_cert_chain = *cert;
      o.pem_private_key = *key;
    }
    creds = grpc::SslCredentials(o);
    if (!config.tls_server_name.empty()) {
      args.SetSslTargetNameOverride(config.tls_server_name);
    }
  } else {
    creds = grpc::InsecureChannelCredentials();
  }
  return grpc::CreateCustomChannel(config.address, creds, args);
}

bool IsTransient(grpc::StatusCode c) {
  return c == grpc::StatusCode::UNAVAILABLE || c == grpc::StatusCode::DEADLINE_EXCEEDED ||
         c == grpc::StatusCode::ABORTED || c == grpc::StatusCode::INTERNAL ||
         c == grpc::StatusCode::UNKNOWN;
}

void PrepareContext(grpc::ClientContext* ctx, const ClientConfig& config,
                    std::chrono::milliseconds timeout) {
  if (!config.token.empty()) ctx->AddMetadata("authorization", "Bearer " + config.token);
  ctx->set_deadline(std::chrono::system_clock::now() + timeout);
}

absl::StatusOr<std::string> ReadTokenFile(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFile(path);
  if (!text.ok()) return text.status();
  std::string token(absl::StripAsciiWhitespace(*text));
  if (token.empty())
    return absl::InvalidArgumentError(absl::StrCat("token file '", path, "' is empty"));
  for (char c : token) {
    if (c < 0x21 || c > 0x7e) {
      return absl::InvalidArgumentError(
          absl::StrCat("token file '", path, "' must hold one printable ASCII word"));
    }
  }
  return token;
}

namespace {

// An address split as ValidateAddress reads it; `host` is empty for unix sockets.
struct ParsedAddress {
  bool unix_socket = false;
  std::string host;
};

absl::StatusOr<ParsedAddress> ParseAddress(const std::string& address) {
  ParsedAddress out;
  if (absl::StartsWith(address, "unix:") || absl::StartsWith(address, "unix-abstract:")) {
    out.unix_socket = true;
    return out;
  }
  std::string port;
  if (absl::StartsWith(address, "[")) {
    size_t close = address.find(']');
    if (close == std::string::npos || close + 1 >= address.size() || address[close + 1] != ':') {
      return absl::InvalidArgumentError(absl::StrCat("bad address '", address, "'"));
    }
    out.host = address.substr(1, close - 1);
    port = address.substr(close + 2);
  } else {
    size_t colon = address.rfind(':');
    if (colon == std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad address '", address, "' (expected host:port)"));
    }
    out.host = address.substr(0, colon);
    port = address.substr(colon + 1);
  }
  // Digits only (SimpleAtoi would also take "+80" and " 80"); at most 65535, which gRPC does
  // not check: it keeps the low 16 bits and dials another port.
  int p = -1;
  if (port.empty() || port.size() > 5 ||
      !std::all_of(port.begin(), port.end(), [](char c) { return absl::ascii_isdigit(c); }) ||
      !absl::SimpleAtoi(port, &p) || p > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("bad port in address '", address, "'"));
  }
  return out;
}

}  // namespace

absl::Status ValidateAddress(const std::string& address) { return ParseAddress(address).status(); }

absl::StatusOr<bool> IsLoopbackAddress(const std::string& address) {
  absl::StatusOr<ParsedAddress> parsed = ParseAddress(address);
  if (!parsed.ok()) return parsed.status();
  if (parsed->unix_socket) return true;
  const std::string& host = parsed->host;
  if (host == "localhost" || host == "::1" || host == "ip6-localhost") return true;
  std::vector<std::string> octets = absl::StrSplit(host, '.');
  if (octets.size() == 4 && octets[0] == "127") {
    for (const std::string& o : octets) {
      int v = -1;
      if (!absl::SimpleAtoi(o, &v) || v < 0 || v > 255) return false;
    }
    return true;
  }
  return false;
}

absl::Status CheckUtf8(absl::string_view text, absl::string_view what) {
  const int64_t i = FirstInvalidUtf8Byte(text);
  if (i < 0) return absl::OkStatus();
  std::string where = absl::StrCat("byte ", i);
  if (text.find('\n') != absl::string_view::npos) {  // a file: its line too
    absl::StrAppend(&where, " (line ", 1 + std::count(text.begin(), text.begin() + i, '\n'), ")");
  }
  return absl::InvalidArgumentError(absl::StrCat(what, ": not valid UTF-8 at ", where));
}

void InitRpcProcess() { absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore); }

namespace {
void DropGrpcLog(gpr_log_func_args*) {}
}  // namespace

void QuietGrpcLogsUnlessAsked() {
  const char* verbosity = std::getenv("GRPC_VERBOSITY");
  const char* trace = std::getenv("GRPC_TRACE");
  const char* level = std::getenv("KVSWEEP_LOG_LEVEL");
  if ((verbosity != nullptr && *verbosity != '\0') || (trace != nullptr && *trace != '\0') ||
      (level != nullptr && absl::EqualsIgnoreCase(level, "debug"))) {
    return;
  }
  gpr_set_log_function(DropGrpcLog);
}

}  // namespace kvsweep

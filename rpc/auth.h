// Who may call what: bearer tokens with roles, and the name a caller is recorded under.
//
// Roles: kRead (status, watch, query, export), kSubmit (submit, cancel, retry: the client
// role, which also reads) and kWork (lease, heartbeat, complete, fail: the worker role). A
// coordinator may hold one token per role plus an all-roles token (--token-file, the
// single-token setup). With no token configured every caller has every role (the loopback
// default). A token that matches none is UNAUTHENTICATED; a known token used for something its
// role does not allow is PERMISSION_DENIED.
#ifndef KVSWEEP_RPC_AUTH_H_
#define KVSWEEP_RPC_AUTH_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "grpcpp/grpcpp.h"

namespace kvsweep {

enum Role : int { kRoleRead = 1, kRoleSubmit = 2, kRoleWork = 4 };
inline constexpr int kAllRoles = kRoleRead | kRoleSubmit | kRoleWork;

struct BearerTokens {
  std::string all;     // every role
  std::string worker;  // kWork
  std::string client;  // kSubmit | kRead
  std::string reader;  // kRead
  bool empty() const { return all.empty() && worker.empty() && client.empty() && reader.empty(); }
  // kInvalidArgument if two roles share a token (a caller could not be told apart).
  absl::Status Validate() const;
};

struct Caller {
  int roles = 0;
  // For the audit log: the token's role ("admin", "client", "reader", "worker", "anonymous"),
  // the client certificate's common name when there is one, and the peer address.
  std::string name;
  // `name` without the peer address: the same for every connection of one credential (what a
  // submission's owner is).
  std::string principal;
};

// Matches the call's `authorization: Bearer <token>` metadata against `tokens` (constant time
// per comparison).
absl::StatusOr<Caller> Authenticate(const grpc::ServerContextBase& ctx, const BearerTokens& tokens);
// The same match for an HTTP `Authorization` header's value ("Bearer <token>"; "" when the
// request has none): for listeners other than gRPC (the coordinator's dashboard). `peer` goes
// into the caller's name. Errors as Authenticate.
absl::StatusOr<Caller> AuthenticateHeader(absl::string_view authorization,
                                          const BearerTokens& tokens, absl::string_view peer);
// kPermissionDenied unless `caller` has `role`; `what` names the call ("submit sweeps").
absl::Status Require(const Caller& caller, int role, absl::string_view what);

}  // namespace kvsweep

#endif  // KVSWEEP_RPC_AUTH_H_

#include "rpc/auth.h"

#include <openssl/crypto.h>

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace kvsweep {
namespace {

bool SameToken(const std::string& got, const std::string& token) {
  if (token.empty()) return false;
  const std::string want = "Bearer " + token;
  return got.size() == want.size() && CRYPTO_memcmp(got.data(), want.data(), got.size()) == 0;
}

Caller MakeCaller(const grpc::ServerContextBase& ctx, int roles, absl::string_view role) {
  Caller c;
  c.roles = roles;
  c.principal = std::string(role);
  std::shared_ptr<const grpc::AuthContext> auth = ctx.auth_context();
  if (auth != nullptr) {
    std::vector<grpc::string_ref> cn = auth->FindPropertyValues("x509_common_name");
    if (!cn.empty()) {
      absl::StrAppend(&c.principal, " cn=", std::string(cn[0].data(), cn[0].size()));
    }
  }
  c.name = absl::StrCat(c.principal, " peer=", ctx.peer());
  return c;
}

}  // namespace

absl::Status BearerTokens::Validate() const {
  const std::pair<const char*, const std::string*> all_tokens[] = {
      {"--token-file", &all},
      {"--worker-token-file", &worker},
      {"--client-token-file", &client},
      {"--reader-token-file", &reader}};
  for (size_t i = 0; i < 4; ++i) {
    for (size_t j = i + 1; j < 4; ++j) {
      if (!all_tokens[i].second->empty() && *all_tokens[i].second == *all_tokens[j].second) {
        return absl::InvalidArgumentError(absl::StrCat(
            all_tokens[i].first, " and ", all_tokens[j].first, " hold the same token"));
      }
    }
  }
  return absl::OkStatus();
}

namespace {

// The roles and role name of a header value, trying every token. 0 roles: none matched.
std::pair<int, const char*> MatchToken(const std::string& got, const BearerTokens& tokens) {
  // Every comparison runs, so the time taken does not tell which role matched.
  const bool all = SameToken(got, tokens.all);
  const bool worker = SameToken(got, tokens.worker);
  const bool client = SameToken(got, tokens.client);
  const bool reader = SameToken(got, tokens.reader);
  if (all) return {kAllRoles, "admin"};
  if (client) return {kRoleSubmit | kRoleRead, "client"};
  if (worker) return {kRoleWork, "worker"};
  if (reader) return {kRoleRead, "reader"};
  return {0, ""};
}

}  // namespace

absl::StatusOr<Caller> Authenticate(const grpc::ServerContextBase& ctx,
                                    const BearerTokens& tokens) {
  if (tokens.empty()) return MakeCaller(ctx, kAllRoles, "anonymous");
  const auto& md = ctx.client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) {
    return absl::UnauthenticatedError("missing bearer token (authorization metadata)");
  }
  const std::string got(it->second.data(), it->second.size());
  const auto [roles, role] = MatchToken(got, tokens);
  if (roles == 0) return absl::UnauthenticatedError("wrong bearer token");
  return MakeCaller(ctx, roles, role);
}

absl::StatusOr<Caller> AuthenticateHeader(absl::string_view authorization,
                                          const BearerTokens& tokens, absl::string_view peer) {
  auto caller = [&](int roles, absl::string_view role) {
    Caller c;
    c.roles = roles;
    c.principal = std::string(role);
    c.name = absl::StrCat(c.principal, " peer=", peer);
    return c;
  };
  if (tokens.empty()) return caller(kAllRoles, "anonymous");
  if (authorization.empty()) {
    return absl::UnauthenticatedError("missing bearer token (Authorization header)");
  }
  const auto [roles, role] = MatchToken(std::string(authorization), tokens);
  if (roles == 0) return absl::UnauthenticatedError("wrong bearer token");
  return caller(roles, role);
}

absl::Status Require(const Caller& caller, int role, absl::string_view what) {
  if ((caller.roles & role) == role) return absl::OkStatus();
  const std::string who = caller.name.substr(0, caller.name.find(' '));
  return absl::PermissionDeniedError(absl::StrCat("a ", who, " token may not ", what));
}

}  // namespace kvsweep

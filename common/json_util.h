// JSON helpers on nlohmann::json. Canonical form = keys sorted (nlohmann's object is an ordered
// std::map), no whitespace; it is what job identity hashes.
#ifndef KVSWEEP_COMMON_JSON_UTIL_H_
#define KVSWEEP_COMMON_JSON_UTIL_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace kvsweep {

std::string CanonicalJson(const nlohmann::json& j);
// sha256 hex of CanonicalJson(j).
std::string CanonicalJsonHash(const nlohmann::json& j);

// Parses `text`; on failure kInvalidArgument "<what>: invalid JSON: <parser message>".
absl::StatusOr<nlohmann::json> ParseJson(absl::string_view text, absl::string_view what);
// ReadFile + ParseJson, with the path as `what`.
absl::StatusOr<nlohmann::json> ReadJsonFile(const std::string& path);

}  // namespace kvsweep

#endif  // KVSWEEP_COMMON_JSON_UTIL_H_

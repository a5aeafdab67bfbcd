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

// Parses `text`; on failure kInvalidArgument "<what>: invalid JSON at byte N" (0-based offset of
// the first byte the parser could not take; "... at byte SIZE (end of input)" when `text` ends
// early). The message never quotes `text`: it may be the content of any file a path names.
absl::StatusOr<nlohmann::json> ParseJson(absl::string_view text, absl::string_view what);
// ReadFile (regular files of at most kMaxTextFileBytes) + ParseJson, with the path as `what`.
absl::StatusOr<nlohmann::json> ReadJsonFile(const std::string& path);

}  // namespace kvsweep

#endif  // KVSWEEP_COMMON_JSON_UTIL_H_

#include "common/json_util.h"

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/hash.h"

namespace kvsweep {

std::string CanonicalJson(const nlohmann::json& j) {
  // error_handler replace: never throw on invalid UTF-8 in strings.
  return j.dump(-1, ' ', /*ensure_ascii=*/false, nlohmann::json::error_handler_t::replace);
}

std::string CanonicalJsonHash(const nlohmann::json& j) { return Sha256Hex(CanonicalJson(j)); }

absl::StatusOr<nlohmann::json> ParseJson(absl::string_view text, absl::string_view what) {
  nlohmann::json j = nlohmann::json::parse(text.begin(), text.end(), nullptr,
                                           /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    // Re-parse with exceptions only to learn where it failed. The parser's own message is not
    // used: it quotes the bytes last read, and `text` may be any file a path names.
    size_t count = text.size() + 1;  // characters read, the failing one included
    try {
      nlohmann::json ignored = nlohmann::json::parse(text.begin(), text.end());
      (void)ignored;
    } catch (const nlohmann::json::parse_error& e) {
      count = e.byte;
    } catch (const nlohmann::json::out_of_range&) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": invalid JSON: a number is out of range"));
    } catch (const nlohmann::json::exception&) {
    }
    const size_t offset = count == 0 ? 0 : count - 1;
    if (offset >= text.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": invalid JSON at byte ", text.size(), " (end of input)"));
    }
    return absl::InvalidArgumentError(absl::StrCat(what, ": invalid JSON at byte ", offset));
  }
  return j;
}

absl::StatusOr<nlohmann::json> ReadJsonFile(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFile(path, kMaxTextFileBytes);
  if (!text.ok()) return text.status();
  return ParseJson(*text, path);
}

}  // namespace kvsweep

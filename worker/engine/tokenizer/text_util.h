// UTF-8 helpers and a PCRE2 regex wrapper shared by the tokenizer implementations.
// Internal to worker/engine/tokenizer.
#ifndef KVSWEEP_WORKER_ENGINE_TOKENIZER_TEXT_UTIL_H_
#define KVSWEEP_WORKER_ENGINE_TOKENIZER_TEXT_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kvsweep::engine::tokenizer_internal {

// Byte length of the UTF-8 sequence that starts with `lead` (valid UTF-8 assumed).
inline size_t Utf8SeqLen(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead >> 5) == 0x6) return 2;
  if ((lead >> 4) == 0xE) return 3;
  return 4;
}

bool IsValidUtf8(absl::string_view s);
// Replaces every maximal invalid subsequence by U+FFFD (Unicode's "substitution of maximal
// subparts", as Rust's String::from_utf8_lossy and Python's decode(errors="replace") do).
std::string ToValidUtf8(absl::string_view s);
void AppendUtf8(uint32_t code_point, std::string* out);
// Decodes the code point at s[*i] (valid UTF-8) and advances *i past it.
uint32_t NextCodePoint(absl::string_view s, size_t* i);

// A compiled PCRE2 pattern (UTF + UCP). Immutable, thread-safe (match data per call).
// `\s` / `\S` are rewritten to \p{White_Space} / \P{White_Space}: that is what Oniguruma and
// Rust's regex mean by \s (PCRE2's UCP \s also takes U+180E).
class Regex {
 public:
  // kInvalidArgument with PCRE2's message if `pattern` does not compile.
  static absl::StatusOr<std::unique_ptr<Regex>> Compile(absl::string_view pattern);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // All non-overlapping, non-empty matches [begin, end) in byte offsets, left to right.
  // kInternal if PCRE2 reports an error (e.g. a resource limit).
  absl::StatusOr<std::vector<std::pair<size_t, size_t>>> FindAll(absl::string_view text) const;
  // True if the pattern matches somewhere in `text` (errors count as no match).
  bool PartialMatch(absl::string_view text) const;
  const std::string& pattern() const { return pattern_; }

 private:
  Regex(std::string pattern, void* code, bool jit)
      : pattern_(std::move(pattern)), code_(code), jit_(jit) {}
  std::string pattern_;
  void* code_;  // pcre2_code_8*; kept opaque so pcre2.h stays out of headers.
  bool jit_;
};

}  // namespace kvsweep::engine::tokenizer_internal

#endif  // KVSWEEP_WORKER_ENGINE_TOKENIZER_TEXT_UTIL_H_

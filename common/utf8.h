// UTF-8 decoding for the checks of user text (labels, sweep files, names sent over gRPC).
#ifndef KVSWEEP_COMMON_UTF8_H_
#define KVSWEEP_COMMON_UTF8_H_

#include <cstddef>
#include <cstdint>

#include "absl/strings/string_view.h"

namespace kvsweep {

// The code point of the UTF-8 sequence at text[i] and its length in *len; -1 (with *len = 1)
// where the bytes there are not UTF-8 (RFC 3629: overlong forms, surrogates and anything above
// U+10FFFF included).
int32_t DecodeUtf8(absl::string_view text, size_t i, size_t* len);

// The offset of the first byte of `text` that does not start a UTF-8 sequence; -1 if none.
int64_t FirstInvalidUtf8Byte(absl::string_view text);

}  // namespace kvsweep

#endif  // KVSWEEP_COMMON_UTF8_H_

#include "common/utf8.h"

namespace kvsweep {

int32_t DecodeUtf8(absl::string_view text, size_t i, size_t* len) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(text[k]); };
  const unsigned char b0 = byte(i);
  *len = 1;
  if (b0 < 0x80) return b0;
  size_t n = 0;
  int32_t cp = 0, min = 0;
  if ((b0 & 0xE0) == 0xC0) {
    n = 2, cp = b0 & 0x1F, min = 0x80;
  } else if ((b0 & 0xF0) == 0xE0) {
    n = 3, cp = b0 & 0x0F, min = 0x800;
  } else if ((b0 & 0xF8) == 0xF0) {
    n = 4, cp = b0 & 0x07, min = 0x10000;
  } else {
    return -1;
  }
  if (i + n > text.size()) return -1;
  for (size_t k = 1; k < n; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return -1;
    cp = (cp << 6) | (byte(i + k) & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return -1;
  *len = n;
  return cp;
}

int64_t FirstInvalidUtf8Byte(absl::string_view text) {
  for (size_t i = 0, len = 0; i < text.size(); i += len) {
    if (DecodeUtf8(text, i, &len) < 0) return static_cast<int64_t>(i);
  }
  return -1;
}

}  // namespace kvsweep

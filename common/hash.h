// SHA-256 (OpenSSL's libcrypto) for content-addressed job identity and fixture checks.
#ifndef KVSWEEP_COMMON_HASH_H_
#define KVSWEEP_COMMON_HASH_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kvsweep {

// Incremental SHA-256. Copying is deleted.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void Update(const void* data, size_t n);
  void Update(absl::string_view s) { Update(s.data(), s.size()); }
  // Lower-case hex digest; the object must not be updated afterwards.
  std::string HexDigest();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

std::string Sha256Hex(absl::string_view bytes);
// Streams the file; errors as in ReadFile (kNotFound, kPermissionDenied, ...).
absl::StatusOr<std::string> Sha256File(const std::string& path);

// Exactly `length` lower-case hex digits: the spelling Sha256Hex (64) and git (40) write.
bool IsLowerHex(absl::string_view s, size_t length);

}  // namespace kvsweep

#endif  // KVSWEEP_COMMON_HASH_H_

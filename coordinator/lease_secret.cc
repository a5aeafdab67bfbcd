#include "coordinator/lease_secret.h"

#include <sys/random.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>

#include "absl/strings/escaping.h"
#include "common/hash.h"
#include "common/log.h"

namespace kvsweep {
namespace {

bool IsKey(absl::string_view k) { return IsLowerHex(k, 64); }

bool ConstantTimeEqual(absl::string_view a, absl::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

}  // namespace

std::string NewLeaseSecret() {
  uint8_t bytes[16];
  size_t got = 0;
  while (got < sizeof(bytes)) {
    ssize_t n = ::getrandom(bytes + got, sizeof(bytes) - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      // No kernel randomness: a guessable lease would let any client act for a worker.
      KV_LOG(ERROR) << "getrandom failed (errno " << errno << "); cannot make a lease secret";
      std::abort();
    }
    got += static_cast<size_t>(n);
  }
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(bytes), sizeof(bytes)));
}

std::string LeaseKey(absl::string_view secret) { return Sha256Hex(secret); }

bool LeaseMatches(absl::string_view key, absl::string_view secret) {
  if (IsKey(key)) return ConstantTimeEqual(key, LeaseKey(secret));
  return ConstantTimeEqual(key, secret);
}

}  // namespace kvsweep

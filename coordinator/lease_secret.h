// Lease secrets: what binds a worker's Heartbeat, Complete and Fail to the lease it was granted.
//
// A lease's id is a 128-bit random secret that only the leasing worker receives (in its
// LeaseResponse). The store keeps only its key, LeaseKey(secret), so that nothing readable
// through `kvsweep query` (jobs.lease_id, attempts.lease_id) lets anyone act for the worker;
// knowing a job id and its fencing token is not enough to record, fail or renew it.
#ifndef KVSWEEP_COORDINATOR_LEASE_SECRET_H_
#define KVSWEEP_COORDINATOR_LEASE_SECRET_H_

#include <string>

#include "absl/strings/string_view.h"

namespace kvsweep {

// 32 lower-case hex digits from the kernel's random source (getrandom).
std::string NewLeaseSecret();
// sha256 hex of the secret: what the store keeps.
std::string LeaseKey(absl::string_view secret);
// Whether `secret` is the lease whose stored key is `key` (constant time in the key's length).
// A key that is not 64 hex digits is a lease granted before keys were stored (the store held
// the id itself): it matches the same id.
bool LeaseMatches(absl::string_view key, absl::string_view secret);

}  // namespace kvsweep

#endif  // KVSWEEP_COORDINATOR_LEASE_SECRET_H_

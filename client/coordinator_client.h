// The client's side of the coordinator's API (proto/kvsweep/v1/coordinator.proto), shared by
// the `kvsweep` commands and `kvsweep demo`: the connection, submitting a sweep (following a
// submission the coordinator is still preparing), and reading a sweep's jobs and results from
// the coordinator (Export) or from a database file.
#ifndef KVSWEEP_CLIENT_COORDINATOR_CLIENT_H_
#define KVSWEEP_CLIENT_COORDINATOR_CLIENT_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/progress.h"
#include "kvsweep/v1/coordinator.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "rpc/rpc_util.h"
#include "spec/job_result.h"

namespace kvsweep {

struct CoordinatorConnection {
  ClientConfig cfg;
  std::string token_file;  // read into cfg.token on first use
  int timeout_ms = 60000;  // per call
};

// An RPC failure as one line; names the address when the coordinator is unreachable (and
// when gRPC gave no message).
absl::Status RpcError(const grpc::Status& s, const ClientConfig& cfg);

// kInvalidArgument "--coordinator: ..." for an address ValidateAddress refuses.
absl::StatusOr<std::unique_ptr<v1::SweepService::Stub>> Stub(CoordinatorConnection& g);

// A job of a sweep, from the coordinator (Export) or a database file.
struct Item {
  std::string job_id, sweep, state, last_error;
  nlohmann::json labels;
  std::optional<JobResult> result;
  std::optional<nlohmann::json> spec;
};

// The jobs of `sweep`: from the database file `db` when it is not empty (read-only), else from
// the coordinator. A result that does not parse (JobResult::Parse) is an error.
absl::StatusOr<std::vector<Item>> FetchItems(CoordinatorConnection& g, const std::string& db,
                                             const std::string& sweep, bool include_spec);

// Submits, then follows a pending submission (the coordinator hashing inputs it has not seen
// before) until its final answer, with a progress line on stderr. Every call has its own
// timeout_ms deadline; the preparation itself has none. A call that ends in DEADLINE_EXCEEDED or
// UNAVAILABLE is tried again (submitting again joins the submission already running).
absl::StatusOr<v1::SubmitSweepResponse> SubmitAndFollow(CoordinatorConnection& g,
                                                        const v1::SubmitSweepRequest& req);

// A sweep's job counts as the progress bar shows them.
ProgressCounts Counts(const v1::SweepStatus& s);

}  // namespace kvsweep

#endif  // KVSWEEP_CLIENT_COORDINATOR_CLIENT_H_

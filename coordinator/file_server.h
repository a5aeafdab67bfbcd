// FileService: the input files of leased jobs, for workers that do not share the coordinator's
// filesystem (docs/deploy.md, "Without a shared filesystem"; the call: docs/protocol.md).
//
// A file is named by its sha256 and served only to the worker that holds the current lease of
// a job whose spec records that hash (JobSpec::input_sha256): never by path, never a file of
// another job. Its bytes are hashed again as they are sent, so a file changed since it was
// hashed is refused (before the first byte when its size or mtime changed, at the end of the
// stream otherwise), never served under the old hash. Holds no state of its own beyond a count
// of transfers in flight: the lease is the scheduler's, the spec the store's.
#ifndef KVSWEEP_COORDINATOR_FILE_SERVER_H_
#define KVSWEEP_COORDINATOR_FILE_SERVER_H_

#include <atomic>
#include <cstdint>

#include "coordinator/scheduler.h"
#include "coordinator/service.h"
#include "kvsweep/v1/coordinator.grpc.pb.h"
#include "storage/result_store.h"

namespace kvsweep {

// The largest chunk FetchFile sends (and its default).
inline constexpr int kMaxFileChunkBytes = 1 << 20;
// Transfers served at once; one more is RESOURCE_EXHAUSTED (the worker retries after a pause).
inline constexpr int kMaxFileTransfers = 16;

// Synchronous handlers: a transfer holds its thread while gRPC's flow control paces it.
class FileServiceImpl final : public v1::FileService::Service {
 public:
  // `store` and `scheduler` must outlive the service.
  FileServiceImpl(ResultStore* store, Scheduler* scheduler, const ServiceOptions& options);

  grpc::Status FetchFile(grpc::ServerContext* ctx, const v1::FetchFileRequest* req,
                         grpc::ServerWriter<v1::FileChunk>* writer) override;

 private:
  ResultStore* store_;
  Scheduler* scheduler_;
  const ServiceOptions options_;
  std::atomic<int> transfers_{0};
};

}  // namespace kvsweep

#endif  // KVSWEEP_COORDINATOR_FILE_SERVER_H_

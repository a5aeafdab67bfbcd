// Staging: running a job whose input files are not on this machine (docs/deploy.md, "Without a
// shared filesystem").
//
// A job spec names its inputs by path and records each file's sha256 (JobSpec::input_sha256).
// When a path is missing here (or staging is forced), every input file is fetched by its hash
// from the coordinator (FileService.FetchFile) into the worker's FileCache, and the job runs on
// a view: a directory per original directory, holding symlinks named as the originals to the
// cached blobs, so a model directory keeps its layout (config.json, weights, tokenizer files
// beside each other). Views are named by their content (directory name and the files' names
// and hashes), so jobs on the same inputs run on the same paths. The staged spec differs from
// the leased one in paths only: its job id is the same, and before the job runs its inputs are
// verified against the spec's hashes (VerifyJobInputs: each file, and the model and tokenizer
// fingerprints over names and hashes), so the result is bound to exactly the hashed bytes.
#ifndef KVSWEEP_WORKER_FILE_STAGER_H_
#define KVSWEEP_WORKER_FILE_STAGER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kvsweep/v1/coordinator.grpc.pb.h"
#include "rpc/rpc_util.h"
#include "spec/job_spec.h"
#include "worker/file_cache.h"

namespace kvsweep {

enum class StageMode {
  kNever,   // run on the spec's paths as they are (a shared filesystem)
  kAuto,    // stage when any input path is missing here
  kAlways,  // always run on staged copies
};
// "never" | "auto" | "always"; kInvalidArgument otherwise.
absl::StatusOr<StageMode> ParseStageMode(const std::string& text);

struct StagingOptions {
  StageMode mode = StageMode::kNever;  // kvsweep-worker: --stage, default auto
  std::string cache_dir;               // "" = DefaultFileCacheDir()
  int64_t cache_max_bytes = int64_t{20} << 30;
};
// <kvsweep's cache directory (common/fingerprint.h KvsweepCacheDir)>/files.
std::string DefaultFileCacheDir();

// Where a job's input files come from, by hash.
class FileSource {
 public:
  virtual ~FileSource() = default;
  // As FetchFn (worker/file_cache.h): the file's bytes from `offset` on, chunk by chunk.
  virtual absl::Status Fetch(const std::string& sha256, int64_t offset, const ChunkSink& sink) = 0;
};

// FetchFile on the coordinator under a job's lease, with `config`'s token. Each call may last
// 30 x timeout_ms (at least a minute); a longer transfer is resumed by the next call
// (FileCache::Get retries).
class GrpcFileSource final : public FileSource {
 public:
  // Every argument must outlive the source.
  GrpcFileSource(v1::FileService::Stub* stub, const ClientConfig& config,
                 const std::string& worker_id, const v1::LeaseResponse& lease, int timeout_ms)
      : stub_(stub),
        config_(config),
        worker_id_(worker_id),
        lease_(lease),
        timeout_ms_(timeout_ms) {}
  absl::Status Fetch(const std::string& sha256, int64_t offset, const ChunkSink& sink) override;

 private:
  v1::FileService::Stub* stub_;
  const ClientConfig& config_;
  const std::string& worker_id_;
  const v1::LeaseResponse& lease_;
  int timeout_ms_;
};

// A job ready to run on staged files. The pins keep its blobs from eviction: keep it alive
// until the job has finished.
struct StagedJob {
  JobSpec spec;  // paths point into views of the cache
  std::vector<FileCache::Pin> pins;
  int files = 0;          // distinct input files
  int files_fetched = 0;  // of which fetched now (the rest were cached)
  int64_t bytes_fetched = 0;
};

// Whether `spec` runs on staged files (the mode, and for kAuto whether an input is missing).
bool NeedsStaging(StageMode mode, const JobSpec& spec);

class FileStager {
 public:
  // `cache` must outlive the stager.
  explicit FileStager(FileCache* cache) : cache_(cache) {}

  // Fetches what the cache lacks, builds the views, verifies. `keep_going` (may be empty) is
  // asked between files and while waiting to retry. Errors: kFailedPrecondition (a spec that
  // records no per-file hashes, or a path that cannot be mirrored), kDataLoss (bytes that do
  // not hash as recorded; nothing kept), kResourceExhausted (the cache is too small), the
  // source's errors (kNotFound: the coordinator has no such input), VerifyJobInputs' errors,
  // kCancelled.
  absl::StatusOr<StagedJob> Stage(const JobSpec& spec, FileSource* source,
                                  const std::function<bool()>& keep_going = nullptr);

 private:
  FileCache* cache_;
};

}  // namespace kvsweep

#endif  // KVSWEEP_WORKER_FILE_STAGER_H_

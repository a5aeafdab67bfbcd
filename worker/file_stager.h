// Staging: running a job whose input files are not on this machine, or not as the job recorded
// them (docs/deploy.md, "Without a shared filesystem").
//
// A job spec names its inputs by path and records each file's sha256 (JobSpec::input_sha256).
// PlanStaging decides per file: under --stage auto a file is used where it is when it exists here
// and its bytes hash to the recorded sha256; any other file (missing, or a local copy with other
// content) is fetched by its hash from the coordinator (FileService.FetchFile) into the worker's
// FileCache. The job then runs on views: a directory per original directory, holding symlinks
// named as the originals, to the cached blobs or to the local files that matched, so a model
// directory keeps its layout (config.json, weights, tokenizer files beside each other). Views are
// named by their content (directory name, the files' names, hashes and link targets), so jobs on
// the same inputs run on the same paths. The staged spec differs from the leased one in paths
// only: its job id is the same, and before the job runs its inputs are verified against the
// spec's hashes (VerifyJobInputs: each file, and the model and tokenizer fingerprints over names
// and hashes), so the result is bound to exactly the hashed bytes.
//
// Views live as long as a job uses them: each job holds its views (a shared flock on
// <cache>/views/<key>.lock, ViewHold) and, when it ends whichever way (result, failure,
// cancellation, lost lease), the last process holding a view removes it. Views that a crashed
// worker left behind are removed by RemoveStaleViews (a worker starting on the cache); a view
// another process holds is never removed.
#ifndef KVSWEEP_WORKER_FILE_STAGER_H_
#define KVSWEEP_WORKER_FILE_STAGER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "kvsweep/v1/coordinator.grpc.pb.h"
#include "rpc/rpc_util.h"
#include "spec/job_spec.h"
#include "worker/file_cache.h"

namespace kvsweep {

enum class StageMode {
  kNever,   // run on the spec's paths as they are (a shared filesystem)
  kAuto,    // stage the input files missing here or whose content differs from the spec's hash
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
// The cache directory `options` name: cache_dir, or DefaultFileCacheDir() when empty.
std::string StagingCacheDir(const StagingOptions& options);

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

// A view held in use (a shared flock on its lock file). Move-only. Destroying the last hold of a
// view, in any process, removes the view.
class ViewHold {
 public:
  ViewHold() = default;
  // Takes over `fd`, open on <views_dir>/<key>.lock with a shared flock on it.
  ViewHold(int fd, std::string views_dir, std::string key)
      : fd_(fd), views_dir_(std::move(views_dir)), key_(std::move(key)) {}
  ViewHold(ViewHold&& o) noexcept;
  ViewHold& operator=(ViewHold&& o) noexcept;
  ~ViewHold();
  // <cache>/views/<key>: the view's directory (which holds the one directory the job reads).
  std::string path() const;

 private:
  void Release();
  int fd_ = -1;
  std::string views_dir_;
  std::string key_;
};

// A job ready to run on staged files. The pins keep its blobs from eviction and the holds keep
// its views: keep it alive until the job has ended; destroying it removes the views no other
// job uses.
struct StagedJob {
  JobSpec spec;  // paths point into views of the cache
  std::vector<FileCache::Pin> pins;
  std::vector<ViewHold> views;  // after `pins`: destroyed (removed) before the pins let go
  int files = 0;                // distinct input files
  int files_local = 0;          // of which used where they are (their content matched)
  int files_fetched = 0;        // of which fetched now (the rest were cached)
  int64_t bytes_fetched = 0;
};

// Which inputs of a job this worker stages.
struct StagingPlan {
  bool stage = false;  // run on a staged spec
  // Input paths (keys of JobSpec::input_sha256) used where they are: present here with bytes
  // that hash to the recorded sha256. The others are fetched.
  std::set<std::string> local;
};

// kNever: no staging. kAlways: every input fetched. kAuto: staged when a path of the job is
// missing here, or an input file's bytes do not hash to its recorded sha256, or the local files
// do not verify as a whole (VerifyJobInputs: a model directory resolving to another set of
// files); the files that match are used where they are. Local files are hashed through
// FileSha256Cached (once per real path, size and mtime), so the check the job itself makes later
// finds their hashes cached. A spec without per-file hashes (an older coordinator's) is staged
// when a path is missing (Stage then refuses it).
StagingPlan PlanStaging(StageMode mode, const JobSpec& spec);
// PlanStaging(mode, spec).stage.
bool NeedsStaging(StageMode mode, const JobSpec& spec);

// Removes the views under `cache_dir` that no process holds (a crashed worker's, or views
// without a lock file), with their lock files and half-built copies. A view in
// use (held by this or another process) is left alone. Returns the number of views removed; 0
// when the cache has no views directory. Errors: the errno's status when the directory cannot
// be listed.
absl::StatusOr<int> RemoveStaleViews(const std::string& cache_dir);

class FileStager {
 public:
  // `cache` must outlive the stager.
  explicit FileStager(FileCache* cache) : cache_(cache) {}

  // Fetches what the cache lacks (the inputs not in `local`: see StagingPlan), builds and holds
  // the views, verifies. `keep_going` (may be empty) is asked between files and while waiting
  // to retry. Errors: kFailedPrecondition (a spec that records no per-file hashes, or a path
  // that cannot be mirrored), kDataLoss (bytes that do not hash as recorded; nothing kept),
  // kResourceExhausted (the cache is too small), the source's errors (kNotFound: the
  // coordinator has no such input), VerifyJobInputs' errors, kCancelled.
  absl::StatusOr<StagedJob> Stage(const JobSpec& spec, FileSource* source,
                                  const std::function<bool()>& keep_going = nullptr,
                                  const std::set<std::string>& local = {});

 private:
  FileCache* cache_;
};

}  // namespace kvsweep

#endif  // KVSWEEP_WORKER_FILE_STAGER_H_

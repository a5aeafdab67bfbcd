#include "worker/file_stager.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <map>
#include <set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/file_util.h"
#include "common/fingerprint.h"
#include "common/hash.h"
#include "common/log.h"

namespace kvsweep {
namespace {

constexpr int kChunkBytes = 1 << 20;

absl::Status Annotate(const absl::Status& s, const std::string& what) {
  return absl::Status(s.code(), absl::StrCat(what, ": ", s.message()));
}

// A file name that names a file inside its view directory.
bool PlainName(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos;
}

std::string StripTrailingSlashes(std::string p) {
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}

void RemoveTree(const std::string& dir) {
  // Views hold one level of directories and symlinks only.
  if (DIR* d = ::opendir(dir.c_str())) {
    std::vector<std::string> names;
    while (struct dirent* e = ::readdir(d)) {
      const std::string n = e->d_name;
      if (n != "." && n != "..") names.push_back(n);
    }
    ::closedir(d);
    for (const std::string& n : names) {
      const std::string p = JoinPath(dir, n);
      struct stat st;
      if (::lstat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
        RemoveTree(p);
      } else {
        ::unlink(p.c_str());
      }
    }
  }
  ::rmdir(dir.c_str());
}

std::string ViewLockPath(const std::string& views, const std::string& key) {
  return JoinPath(views, absl::StrCat(key, ".lock"));
}

// Whether `fd` is the file `path` names now (a remover unlinks a lock file it holds; whoever
// opened it before then must open the new one).
bool StillNamed(int fd, const std::string& path) {
  struct stat held, named;
  return ::fstat(fd, &held) == 0 && ::stat(path.c_str(), &named) == 0 &&
         named.st_ino == held.st_ino && named.st_dev == held.st_dev;
}

// A shared flock on the view's lock file (made if missing): the view is not removed while it
// is held.
absl::StatusOr<ViewHold> HoldView(const std::string& views, const std::string& key) {
  const std::string path = ViewLockPath(views, key);
  for (int attempt = 0; attempt < 100; ++attempt) {
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return ErrnoToStatus(errno, "open", path);
    if (FlockRetry(fd, LOCK_SH) != 0) {
      const absl::Status e = ErrnoToStatus(errno, "flock", path);
      ::close(fd);
      return e;
    }
    if (StillNamed(fd, path)) return ViewHold(fd, views, key);
    ::close(fd);  // removed meanwhile: take the new one
  }
  return absl::UnavailableError(absl::StrCat(path, " keeps being removed"));
}

// Removes view `key` (its directory, half-built copies and lock file) if no process holds it.
bool RemoveViewIfUnused(const std::string& views, const std::string& key) {
  const std::string lock = ViewLockPath(views, key);
  const int fd = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return false;
  if (FlockRetry(fd, LOCK_EX | LOCK_NB) != 0 || !StillNamed(fd, lock)) {
    ::close(fd);  // in use, or being removed by another process
    return false;
  }
  const std::string top = JoinPath(views, key);
  const bool existed = IsDirectory(top);
  RemoveTree(top);
  const std::string tmp_prefix = absl::StrCat(".tmp-", key, "-");
  if (DIR* d = ::opendir(views.c_str())) {
    std::vector<std::string> names;
    while (struct dirent* e = ::readdir(d)) {
      if (absl::StartsWith(e->d_name, tmp_prefix)) names.push_back(e->d_name);
    }
    ::closedir(d);
    for (const std::string& n : names) RemoveTree(JoinPath(views, n));
  }
  ::unlink(lock.c_str());  // while held: who waits for it finds it unlinked and starts over
  ::close(fd);
  return existed;
}

// One directory of original inputs: its files' names, hashes and, for a file used where it is,
// its real path ("" = the cache's blob).
struct Entry {
  std::string sha256;
  std::string local;
};
using Group = std::map<std::string, Entry>;  // name -> entry

// The view of `dir` holding `files`: <cache>/views/<key>/<dir's name>, held, made if missing
// (atomically: built aside, then renamed into place) and repaired if an entry is wrong.
absl::StatusOr<std::pair<ViewHold, std::string>> EnsureView(const FileCache& cache,
                                                            const std::string& dir,
                                                            const Group& files) {
  std::string key_text = absl::StrCat(dir, std::string(1, '\0'));
  for (const auto& [name, e] : files) {
    absl::StrAppend(&key_text, name, "\t", e.sha256, "\t", e.local, "\n");
  }
  auto target = [&](const Entry& e) {
    return e.local.empty() ? cache.BlobPath(e.sha256) : e.local;
  };
  const std::string views = JoinPath(cache.dir(), "views");
  if (::mkdir(views.c_str(), 0755) != 0 && errno != EEXIST) {
    return ErrnoToStatus(errno, "mkdir", views);
  }
  const std::string key = Sha256Hex(key_text);
  absl::StatusOr<ViewHold> hold = HoldView(views, key);
  if (!hold.ok()) return hold.status();
  const std::string top = JoinPath(views, key);
  // The directory's own name, so a model directory keeps it (model names default to it).
  std::string base = BaseName(dir);
  if (!PlainName(base)) base = "dir";
  const std::string view = JoinPath(top, base);
  if (!IsDirectory(view)) {
    static std::atomic<int> counter{0};
    const std::string tmp =
        JoinPath(views, absl::StrCat(".tmp-", key, "-", ::getpid(), "-", counter.fetch_add(1), "-",
                                     std::chrono::steady_clock::now().time_since_epoch().count()));
    const std::string tmp_view = JoinPath(tmp, base);
    if (::mkdir(tmp.c_str(), 0755) != 0) return ErrnoToStatus(errno, "mkdir", tmp);
    if (::mkdir(tmp_view.c_str(), 0755) != 0) {
      const absl::Status e = ErrnoToStatus(errno, "mkdir", tmp_view);
      RemoveTree(tmp);
      return e;
    }
    for (const auto& [name, e] : files) {
      const std::string link = JoinPath(tmp_view, name);
      if (::symlink(target(e).c_str(), link.c_str()) != 0) {
        const absl::Status err = ErrnoToStatus(errno, "symlink", link);
        RemoveTree(tmp);
        return err;
      }
    }
    if (::rename(tmp.c_str(), top.c_str()) != 0) {
      const int err = errno;
      RemoveTree(tmp);
      if (err != EEXIST && err != ENOTEMPTY) return ErrnoToStatus(err, "rename", top);
    }
  }
  // Another process's view (or one made earlier) is used as it is, unless an entry is wrong.
  for (const auto& [name, e] : files) {
    const std::string link = JoinPath(view, name);
    const std::string want = target(e);
    char buf[4096];
    const ssize_t n = ::readlink(link.c_str(), buf, sizeof(buf));
    if (n >= 0 && std::string(buf, static_cast<size_t>(n)) == want) continue;
    const std::string fix = absl::StrCat(link, ".fix-", ::getpid());
    ::unlink(fix.c_str());
    if (::symlink(want.c_str(), fix.c_str()) != 0 || ::rename(fix.c_str(), link.c_str()) != 0) {
      return ErrnoToStatus(errno, "repair", link);
    }
    KV_LOG(WARNING) << "staging: repaired " << link;
  }
  return std::make_pair(*std::move(hold), view);
}

}  // namespace

absl::StatusOr<StageMode> ParseStageMode(const std::string& text) {
  if (text == "never") return StageMode::kNever;
  if (text == "auto") return StageMode::kAuto;
  if (text == "always") return StageMode::kAlways;
  return absl::InvalidArgumentError(
      absl::StrCat("--stage: '", text, "' is not never, auto or always"));
}

std::string DefaultFileCacheDir() {
  const std::string base = KvsweepCacheDir();
  return base.empty() ? "kvsweep-files" : JoinPath(base, "files");
}

std::string StagingCacheDir(const StagingOptions& options) {
  return options.cache_dir.empty() ? DefaultFileCacheDir() : options.cache_dir;
}

absl::Status GrpcFileSource::Fetch(const std::string& sha256, int64_t offset,
                                   const ChunkSink& sink) {
  v1::FetchFileRequest req;
  req.set_worker_id(worker_id_);
  req.set_job_id(lease_.job_id());
  req.set_lease_id(lease_.lease_id());
  req.set_fencing_token(lease_.fencing_token());
  req.set_sha256(sha256);
  req.set_offset(offset);
  req.set_chunk_bytes(kChunkBytes);
  grpc::ClientContext ctx;
  PrepareContext(&ctx, config_,
                 std::chrono::milliseconds(std::max<int64_t>(int64_t{30} * timeout_ms_, 60000)));
  std::unique_ptr<grpc::ClientReader<v1::FileChunk>> reader = stub_->FetchFile(&ctx, req);
  v1::FileChunk chunk;
  while (reader->Read(&chunk)) {
    absl::Status s;
    if (chunk.data().size() > static_cast<size_t>(kChunkBytes)) {
      s = absl::DataLossError(absl::StrCat("the coordinator sent a chunk of ", chunk.data().size(),
                                           " bytes (asked for at most ", kChunkBytes, ")"));
    } else {
      s = sink(chunk.size(), chunk.offset(), chunk.data());
    }
    if (!s.ok()) {
      ctx.TryCancel();
      while (reader->Read(&chunk)) {
      }
      (void)reader->Finish();
      return s;
    }
  }
  return FromGrpc(reader->Finish());
}

ViewHold::ViewHold(ViewHold&& o) noexcept
    : fd_(o.fd_), views_dir_(std::move(o.views_dir_)), key_(std::move(o.key_)) {
  o.fd_ = -1;
}

ViewHold& ViewHold::operator=(ViewHold&& o) noexcept {
  if (this != &o) {
    Release();
    fd_ = o.fd_;
    views_dir_ = std::move(o.views_dir_);
    key_ = std::move(o.key_);
    o.fd_ = -1;
  }
  return *this;
}

ViewHold::~ViewHold() { Release(); }

std::string ViewHold::path() const { return JoinPath(views_dir_, key_); }

void ViewHold::Release() {
  if (fd_ < 0) return;
  // Let go first, then try to remove: of several holders letting go at once, the last to try
  // finds the view unheld.
  ::close(fd_);
  fd_ = -1;
  RemoveViewIfUnused(views_dir_, key_);
}

StagingPlan PlanStaging(StageMode mode, const JobSpec& spec) {
  StagingPlan plan;
  if (mode == StageMode::kNever) return plan;
  plan.stage = true;
  if (mode == StageMode::kAlways) return plan;
  for (const auto& [path, sha] : spec.input_sha256) {
    absl::StatusOr<std::string> h = FileSha256Cached(path);
    if (h.ok() && *h == sha) plan.local.insert(path);
  }
  const bool paths_exist = PathExists(spec.model_path) && PathExists(spec.data_path);
  if (spec.input_sha256.empty()) {
    plan.stage = !paths_exist;
    return plan;
  }
  if (paths_exist && plan.local.size() == spec.input_sha256.size()) {
    // Every file matches; as a whole too (the hashes are cached now: this costs stats)?
    plan.stage = !VerifyJobInputs(spec).ok();
  }
  return plan;
}

bool NeedsStaging(StageMode mode, const JobSpec& spec) { return PlanStaging(mode, spec).stage; }

absl::StatusOr<int> RemoveStaleViews(const std::string& cache_dir) {
  const std::string views = JoinPath(cache_dir, "views");
  if (!IsDirectory(views)) return 0;
  DIR* d = ::opendir(views.c_str());
  if (d == nullptr) return ErrnoToStatus(errno, "opendir", views);
  std::set<std::string> keys;
  while (struct dirent* e = ::readdir(d)) {
    absl::string_view n = e->d_name;
    if (absl::ConsumePrefix(&n, ".tmp-")) {
      n = n.substr(0, 64);
    } else {
      absl::ConsumeSuffix(&n, ".lock");
    }
    if (IsLowerHex(n, 64)) keys.insert(std::string(n));
  }
  ::closedir(d);
  int removed = 0;
  for (const std::string& key : keys) {
    if (RemoveViewIfUnused(views, key)) ++removed;
  }
  return removed;
}

absl::StatusOr<StagedJob> FileStager::Stage(const JobSpec& spec, FileSource* source,
                                            const std::function<bool()>& keep_going,
                                            const std::set<std::string>& local) {
  if (spec.input_sha256.empty()) {
    return absl::FailedPreconditionError(
        "staging: the job spec records no per-file hashes (resolved by an older coordinator), "
        "so its inputs cannot be fetched; resubmit the sweep, or run it where its paths exist");
  }
  std::map<std::string, Group> groups;  // original directory -> its input files
  std::set<std::string> shas;
  for (const auto& [path, sha] : spec.input_sha256) {
    if (!PlainName(BaseName(path))) {
      return absl::FailedPreconditionError(
          absl::StrCat("staging: input path '", path, "' does not name a file"));
    }
    // A local file is linked by its real path: the one its hash is cached under.
    groups[DirName(path)][BaseName(path)] = {sha, local.count(path) != 0 ? RealPath(path) : ""};
    shas.insert(sha);
  }

  StagedJob out;
  std::map<std::string, size_t> pinned;  // sha -> index in out.pins
  for (const auto& entry : spec.input_sha256) {
    // Not a structured binding: a lambda may not capture one in C++17 (clang refuses it).
    const std::string& path = entry.first;
    const std::string& sha = entry.second;
    if (local.count(path) != 0 || pinned.count(sha) != 0) continue;
    if (keep_going && !keep_going()) return absl::CancelledError("stopped while staging");
    CacheGetStats st;
    absl::StatusOr<FileCache::Pin> pin = cache_->Get(
        sha,
        [&](int64_t offset, const ChunkSink& sink) { return source->Fetch(sha, offset, sink); },
        keep_going, &st);
    if (!pin.ok()) return Annotate(pin.status(), absl::StrCat("staging ", path));
    if (!st.hit) ++out.files_fetched;
    out.bytes_fetched += st.bytes_fetched;
    pinned[sha] = out.pins.size();
    out.pins.push_back(*std::move(pin));
  }
  out.files = static_cast<int>(shas.size());
  out.files_local = static_cast<int>(shas.size() - pinned.size());

  std::map<std::string, std::string> view_of;  // original directory -> view
  for (const auto& [dir, files] : groups) {
    auto v = EnsureView(*cache_, dir, files);
    if (!v.ok()) return Annotate(v.status(), absl::StrCat("staging ", dir));
    out.views.push_back(std::move(v->first));
    view_of[dir] = v->second;
  }
  auto staged_file = [&](const std::string& path) {
    return JoinPath(view_of.at(DirName(path)), BaseName(path));
  };
  // A model or tokenizer path is a file input (llama2.c .bin, tokenizer.json, ...) or the
  // directory its files are in.
  auto staged_path = [&](const std::string& path, const char* what) -> absl::StatusOr<std::string> {
    if (spec.input_sha256.count(path) != 0) return staged_file(path);
    auto it = view_of.find(StripTrailingSlashes(path));
    if (it == view_of.end()) {
      return absl::FailedPreconditionError(absl::StrCat("staging: the job's ", what, " path '",
                                                        path, "' holds none of its input files"));
    }
    return it->second;
  };

  JobSpec staged = spec;
  staged.input_sha256.clear();
  for (const auto& [path, sha] : spec.input_sha256) staged.input_sha256[staged_file(path)] = sha;
  absl::StatusOr<std::string> model = staged_path(spec.model_path, "model");
  if (!model.ok()) return model.status();
  staged.model_path = *model;
  if (!spec.tokenizer_path.empty()) {
    absl::StatusOr<std::string> tok = staged_path(spec.tokenizer_path, "tokenizer");
    if (!tok.ok()) return tok.status();
    staged.tokenizer_path = *tok;
  }
  for (std::string* p :
       {&staged.data_path, staged.calibration ? &staged.calibration->path : nullptr}) {
    if (p == nullptr) continue;
    if (spec.input_sha256.count(*p) == 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("staging: '", *p, "' has no recorded sha256 in the job spec"));
    }
    *p = staged_file(*p);
  }
  if (staged.JobId() != spec.JobId()) {
    return absl::InternalError("staging changed the job's identity (a bug)");
  }
  // The bytes the job will read are the bytes its identity hashed.
  if (absl::Status v = VerifyJobInputs(staged); !v.ok()) {
    return Annotate(v, "staged inputs do not verify");
  }
  out.spec = std::move(staged);
  return out;
}

}  // namespace kvsweep

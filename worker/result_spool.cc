#include "worker/result_spool.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <filesystem>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/json_util.h"
#include "common/log.h"

namespace kvsweep {
namespace {

absl::Status WriteDurably(const std::string& dir, const std::string& path,
                          const std::string& data) {
  const std::string tmp = absl::StrCat(path, ".tmp");
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return ErrnoToStatus(errno, "create", tmp);
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      return ErrnoToStatus(err, "write", tmp);
    }
    off += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    return ErrnoToStatus(err, "fsync", tmp);
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return ErrnoToStatus(err, "rename to", path);
  }
  // The rename is durable once the directory is.
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return ErrnoToStatus(errno, "open", dir);
  const int rc = ::fsync(dfd);
  const int err = errno;
  ::close(dfd);
  if (rc != 0) return ErrnoToStatus(err, "fsync", dir);
  return absl::OkStatus();
}

}  // namespace

std::string DefaultSpoolDir() {
  if (const char* d = std::getenv("KVSWEEP_SPOOL_DIR"); d != nullptr && *d) return d;
  if (const char* x = std::getenv("XDG_STATE_HOME"); x != nullptr && *x) {
    return JoinPath(JoinPath(x, "kvsweep"), "spool");
  }
  if (const char* h = std::getenv("HOME"); h != nullptr && *h) {
    return JoinPath(JoinPath(JoinPath(h, ".local/state"), "kvsweep"), "spool");
  }
  return "kvsweep-spool";
}

absl::StatusOr<ResultSpool> ResultSpool::Open(const std::string& dir) {
  if (dir.empty()) return absl::InvalidArgumentError("--spool-dir: empty");
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("--spool-dir: cannot create '", dir, "': ", ec.message()));
  }
  std::filesystem::permissions(dir, std::filesystem::perms::owner_all,
                               std::filesystem::perm_options::replace, ec);
  if (::access(dir.c_str(), W_OK | X_OK) != 0) {
    return ErrnoToStatus(errno, "--spool-dir: cannot write to", dir);
  }
  return ResultSpool(dir);
}

std::string ResultSpool::PathOf(const std::string& job_id, int64_t fence) const {
  return JoinPath(dir_, absl::StrCat(job_id, "-", fence, ".result"));
}

absl::Status ResultSpool::Put(const v1::CompleteRequest& request, int heartbeat_interval_ms) {
  v1::CompleteRequest r = request;
  r.clear_next();
  nlohmann::json j = {{"worker_id", r.worker_id()},
                      {"job_id", r.job_id()},
                      {"fence", r.fencing_token()},
                      {"heartbeat_interval_ms", heartbeat_interval_ms},
                      {"request", absl::Base64Escape(r.SerializeAsString())}};
  return WriteDurably(dir_, PathOf(r.job_id(), r.fencing_token()), j.dump());
}

absl::Status ResultSpool::Remove(const std::string& job_id, int64_t fence) {
  const std::string p = PathOf(job_id, fence);
  if (::unlink(p.c_str()) != 0 && errno != ENOENT) return ErrnoToStatus(errno, "remove", p);
  return absl::OkStatus();
}

std::vector<SpooledResult> ResultSpool::List(const std::string& worker_id) const {
  std::vector<std::pair<std::filesystem::file_time_type, SpooledResult>> found;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir_, ec)) {
    const std::string path = e.path().string();
    if (!e.is_regular_file() || !absl::EndsWith(path, ".result")) continue;
    absl::StatusOr<nlohmann::json> j = ReadJsonFile(path);
    SpooledResult r;
    std::string bytes;
    if (!j.ok() || !j->is_object() || !j->contains("request") || !(*j)["request"].is_string() ||
        !absl::Base64Unescape((*j)["request"].get<std::string>(), &bytes) ||
        !r.request.ParseFromString(bytes)) {
      KV_LOG(WARNING) << "spool: skipping unreadable " << path;
      continue;
    }
    if (r.request.worker_id() != worker_id) continue;
    r.heartbeat_interval_ms = j->value("heartbeat_interval_ms", 10000);
    r.path = path;
    found.emplace_back(e.last_write_time(ec), std::move(r));
  }
  std::sort(found.begin(), found.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<SpooledResult> out;
  for (auto& f : found) out.push_back(std::move(f.second));
  return out;
}

}  // namespace kvsweep

#include "coordinator/file_server.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/fingerprint.h"
#include "common/hash.h"
#include "common/json_util.h"
#include "common/log.h"
#include "rpc/auth.h"
#include "rpc/rpc_util.h"
#include "spec/job_spec.h"

namespace kvsweep {
namespace {

grpc::Status Error(grpc::StatusCode code, const std::string& msg) {
  return grpc::Status(code, msg);
}

grpc::Status Changed(const std::string& path, const std::string& why) {
  return Error(grpc::StatusCode::FAILED_PRECONDITION,
               absl::StrCat("input changed since submit: ", path, " (", why, ")"));
}

// Closes the descriptor and releases the transfer slot on every way out.
struct TransferGuard {
  std::atomic<int>* transfers;
  int fd = -1;
  ~TransferGuard() {
    if (fd >= 0) ::close(fd);
    transfers->fetch_sub(1);
  }
};

}  // namespace

FileServiceImpl::FileServiceImpl(ResultStore* store, Scheduler* scheduler,
                                 const ServiceOptions& options)
    : store_(store), scheduler_(scheduler), options_(options) {}

grpc::Status FileServiceImpl::FetchFile(grpc::ServerContext* ctx, const v1::FetchFileRequest* req,
                                        grpc::ServerWriter<v1::FileChunk>* writer) {
  absl::StatusOr<Caller> caller = Authenticate(*ctx, options_.tokens);
  if (!caller.ok()) return ToGrpc(caller.status());
  if (absl::Status r = Require(*caller, kRoleWork, "fetch input files"); !r.ok()) return ToGrpc(r);
  for (const absl::Status& v :
       {ValidateWorkerId(req->worker_id(), "worker_id"), ValidateJobId(req->job_id()),
        ValidateLeaseId(req->lease_id()), ValidateFence(req->fencing_token())}) {
    if (!v.ok()) return ToGrpc(v);
  }
  if (!IsLowerHex(req->sha256(), 64)) {
    return Error(grpc::StatusCode::INVALID_ARGUMENT, "sha256: must be 64 lower-case hex digits");
  }
  if (req->offset() < 0) {
    return Error(grpc::StatusCode::INVALID_ARGUMENT,
                 absl::StrCat("offset: ", req->offset(), " is negative"));
  }
  if (req->chunk_bytes() < 0 || req->chunk_bytes() > kMaxFileChunkBytes) {
    return Error(grpc::StatusCode::INVALID_ARGUMENT,
                 absl::StrCat("chunk_bytes: ", req->chunk_bytes(), " is out of range [0, ",
                              kMaxFileChunkBytes, "]"));
  }
  const int chunk = req->chunk_bytes() == 0 ? kMaxFileChunkBytes : req->chunk_bytes();

  // The lease must be current (and the call renews it, as a heartbeat does).
  absl::StatusOr<HeartbeatReply> hb =
      scheduler_->Heartbeat(req->worker_id(), req->job_id(), req->lease_id(), req->fencing_token());
  if (!hb.ok()) return ToGrpc(hb.status());
  if (!hb->keep_going) {
    return Error(grpc::StatusCode::FAILED_PRECONDITION,
                 absl::StrCat("job ", req->job_id().substr(0, 12), ": the lease is not current (",
                              hb->reason, ")"));
  }
  absl::StatusOr<std::vector<ActiveJob>> jobs = store_->LoadJobs({req->job_id()});
  if (!jobs.ok()) return ToGrpc(jobs.status());
  if (jobs->empty()) {
    return Error(grpc::StatusCode::NOT_FOUND,
                 absl::StrCat("job ", req->job_id().substr(0, 12), " is not queued or leased"));
  }
  absl::StatusOr<nlohmann::json> sj = ParseJson(jobs->front().spec_json, "job spec");
  absl::StatusOr<JobSpec> spec =
      sj.ok() ? JobSpec::FromJson(*sj) : absl::StatusOr<JobSpec>(sj.status());
  if (!spec.ok()) return ToGrpc(spec.status());
  std::string path;
  for (const auto& [p, h] : spec->input_sha256) {
    if (h == req->sha256()) {
      path = p;
      break;
    }
  }
  if (path.empty()) {
    return Error(grpc::StatusCode::NOT_FOUND,
                 absl::StrCat("no input file of job ", req->job_id().substr(0, 12), " has sha256 ",
                              req->sha256()));
  }

  if (transfers_.fetch_add(1) >= kMaxFileTransfers) {
    transfers_.fetch_sub(1);
    return Error(grpc::StatusCode::RESOURCE_EXHAUSTED,
                 absl::StrCat("the coordinator is serving ", kMaxFileTransfers,
                              " file transfers already; retry after a pause"));
  }
  TransferGuard guard{&transfers_};

  // Cheap first check (a stat when the hash cache knows the file's size and mtime).
  absl::StatusOr<std::string> cached = FileSha256Cached(path);
  if (!cached.ok()) {
    if (absl::IsNotFound(cached.status())) {
      return Error(grpc::StatusCode::NOT_FOUND,
                   absl::StrCat("input file ", path, " no longer exists"));
    }
    return ToGrpc(cached.status());
  }
  if (*cached != req->sha256()) return Changed(path, "its sha256 differs from the recorded one");

  guard.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (guard.fd < 0) return ToGrpc(ErrnoToStatus(errno, "open", path));
  struct stat st;
  if (::fstat(guard.fd, &st) != 0) return ToGrpc(ErrnoToStatus(errno, "stat", path));
  if (!S_ISREG(st.st_mode)) return Changed(path, "not a regular file");
  const int64_t size = st.st_size;
  if (req->offset() > size) {
    return Error(
        grpc::StatusCode::OUT_OF_RANGE,
        absl::StrCat("offset: ", req->offset(), " is past the end of the file (", size, " bytes)"));
  }

  // Every byte is hashed, those before the offset too, so that what was sent is known to be
  // the recorded file once the stream ends OK.
  Sha256 sha;
  std::string buf(static_cast<size_t>(chunk), '\0');
  int64_t pos = 0;
  bool sent_any = false;
  while (pos < size) {
    if (ctx->IsCancelled()) return grpc::Status::CANCELLED;
    const size_t want = static_cast<size_t>(std::min<int64_t>(chunk, size - pos));
    const ssize_t n = ::pread(guard.fd, buf.data(), want, pos);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ToGrpc(ErrnoToStatus(errno, "read", path));
    }
    if (n == 0) return Changed(path, "it shrank while being sent");
    sha.Update(buf.data(), static_cast<size_t>(n));
    const int64_t end = pos + n;
    if (end > req->offset()) {
      const int64_t from = std::max(pos, req->offset());
      v1::FileChunk c;
      c.set_offset(from);
      c.set_size(size);
      c.set_data(buf.data() + (from - pos), static_cast<size_t>(end - from));
      if (!writer->Write(c)) return grpc::Status::CANCELLED;  // the worker went away
      sent_any = true;
    }
    pos = end;
  }
  if (!sent_any) {  // an empty file, or an offset at the end: the size alone
    v1::FileChunk c;
    c.set_offset(size);
    c.set_size(size);
    if (!writer->Write(c)) return grpc::Status::CANCELLED;
  }
  struct stat after;
  if (::fstat(guard.fd, &after) == 0 && after.st_size != size) {
    return Changed(path, "its size changed while being sent");
  }
  if (sha.HexDigest() != req->sha256()) {
    return Changed(path, "its bytes no longer hash to the recorded sha256");
  }
  KV_LOG(DEBUG) << "sent " << path << " (" << size - req->offset() << " bytes from "
                << req->offset() << ") to " << req->worker_id() << " for job "
                << req->job_id().substr(0, 12);
  return grpc::Status::OK;
}

}  // namespace kvsweep

#include "worker/worker_loop.h"

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/json_util.h"
#include "common/log.h"
#include "common/unix_time.h"
#include "spec/job_result.h"

namespace kvsweep {

namespace {

// Errors of a job that no retry can fix.
bool Permanent(absl::StatusCode c) {
  return c == absl::StatusCode::kInvalidArgument || c == absl::StatusCode::kNotFound ||
         c == absl::StatusCode::kFailedPrecondition || c == absl::StatusCode::kUnimplemented ||
         c == absl::StatusCode::kOutOfRange || c == absl::StatusCode::kPermissionDenied;
}

std::string HostName() {
  char host[256] = {0};
  ::gethostname(host, sizeof(host) - 1);
  return host;
}

// What became of a job, from the WorkerStats counter it moved (RunJob moves exactly one).
const char* Outcome(const WorkerStats& b, const WorkerStats& a) {
  if (a.recorded > b.recorded) return "recorded";
  if (a.duplicates > b.duplicates) return "duplicate";
  if (a.rejected > b.rejected) return "rejected";
  if (a.abandoned > b.abandoned) return "abandoned";
  if (a.handed_back > b.handed_back) return "handed_back";
  return "failed";
}

std::string OneLine(std::string s) {
  for (char& c : s) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  if (s.size() > 2000) s.resize(2000);
  return s;
}

}  // namespace

WorkerLoop::WorkerLoop(const WorkerOptions& options, Evaluator* evaluator)
    : options_(options),
      evaluator_(evaluator),
      hostname_(HostName()),
      worker_id_(options_.worker_id.empty() ? absl::StrCat(hostname_, "-", ::getpid())
                                            : options_.worker_id),
      faults_(options_.faults, worker_id_,
              [this](const std::string& event, const std::string& job_id, int64_t fence) {
                Journal(event, job_id, fence);
              }) {
  std::mt19937_64 rng(std::random_device{}());
  session_ = absl::StrCat(absl::Hex(rng(), absl::kZeroPad16));
  if (!options_.journal_path.empty()) {
    journal_fd_ =
        ::open(options_.journal_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (journal_fd_ < 0) KV_LOG(ERROR) << "cannot open journal " << options_.journal_path;
  }
}

WorkerLoop::~WorkerLoop() {
  if (journal_fd_ >= 0) ::close(journal_fd_);
}

void WorkerLoop::Journal(const std::string& event, const std::string& job_id, int64_t fence,
                         const std::string& extra) {
  if (journal_fd_ < 0) return;
  std::string line = absl::StrCat(NowMs(), " ", event, " ", job_id.empty() ? "-" : job_id, " ",
                                  fence, extra.empty() ? "" : " ", OneLine(extra), "\n");
  // One write(2) per line with O_APPEND: whole lines even if the process dies right after.
  ssize_t unused = ::write(journal_fd_, line.data(), line.size());
  (void)unused;
}

void WorkerLoop::RequestDrain() {
  if (draining_.exchange(true)) {
    stop_now_ = true;
    KV_LOG(WARNING) << "worker " << worker_id_ << ": second stop request, handing back now";
  } else {
    drain_deadline_ms_ = NowMs() + options_.drain_timeout_ms;
    KV_LOG(INFO) << "worker " << worker_id_ << ": draining (no new leases; current job gets "
                 << options_.drain_timeout_ms << " ms)";
  }
  MutexLock lock(&drain_mu_);
  drain_cv_.SignalAll();
}

bool WorkerLoop::SleepUnlessDraining(int ms) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  MutexLock lock(&drain_mu_);
  while (!draining_.load() && drain_cv_.WaitUntil(&drain_mu_, until)) {
  }
  return !draining_;
}

WorkerStats WorkerLoop::stats() const {
  MutexLock lock(&stats_mu_);
  return stats_;
}

template <typename Call>
grpc::Status WorkerLoop::Retrying(const char* what, Call call, bool until_stop,
                                  const std::function<bool()>& give_up) {
  int backoff = 100;
  int64_t last_log = 0;
  for (;;) {
    grpc::ClientContext ctx;
    PrepareContext(&ctx, options_.coordinator, std::chrono::milliseconds(options_.rpc_timeout_ms));
    grpc::Status s = call(&ctx);
    if (options_.observer != nullptr) options_.observer->RpcDone(what, s.error_code());
    // RESOURCE_EXHAUSTED: the coordinator's disk is full; the call succeeds once it is not.
    if (s.ok() ||
        !(IsTransient(s.error_code()) || s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED)) {
      return s;
    }
    if (give_up && give_up()) return s;
    if (NowMs() - last_log > 5000) {
      KV_LOG(WARNING) << "worker " << worker_id_ << ": " << what << ": " << s.error_message()
                      << " (code " << s.error_code() << "); retrying";
      last_log = NowMs();
    }
    if (until_stop ? stop_now_.load() : draining_.load()) return s;
    {
      const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(backoff);
      MutexLock lock(&drain_mu_);
      while (!(until_stop ? stop_now_.load() : draining_.load()) &&
             drain_cv_.WaitUntil(&drain_mu_, until)) {
      }
    }
    backoff = std::min(backoff * 2, options_.reconnect_max_ms);
  }
}

v1::LeaseRequest MakeLeaseRequest(const WorkerIdentity& who, const std::string& held_model) {
  v1::LeaseRequest req;
  v1::WorkerInfo* w = req.mutable_worker();
  w->set_worker_id(who.worker_id);
  w->set_hostname(who.hostname);
  w->set_device(who.device);
  w->set_evaluator(who.evaluator);
  w->set_pid(::getpid());
  w->set_session(who.session);
  req.set_held_model(held_model);
  return req;
}

void AddWorkerProvenance(const WorkerIdentity& who, const v1::LeaseResponse& lease,
                         nlohmann::json* result) {
  nlohmann::json& r = *result;
  if (!r.contains("provenance") || !r["provenance"].is_object()) {
    r["provenance"] = nlohmann::json::object();
  }
  // The lease id is the lease's secret: it never goes into anything stored.
  r["provenance"]["worker"] = {{"worker_id", who.worker_id}, {"hostname", who.hostname},
                               {"device", who.device},       {"evaluator", who.evaluator},
                               {"attempt", lease.attempt()}, {"fence", lease.fencing_token()}};
  r["job_id"] = lease.job_id();
}

WorkerIdentity WorkerLoop::Identity() const {
  return WorkerIdentity{worker_id_, hostname_, options_.device, options_.evaluator_name, session_};
}

void WorkerLoop::ReportFail(const v1::LeaseResponse& lease, v1::FailureKind kind,
                            const std::string& error) {
  v1::FailRequest req;
  req.set_worker_id(worker_id_);
  req.set_job_id(lease.job_id());
  req.set_lease_id(lease.lease_id());
  req.set_fencing_token(lease.fencing_token());
  req.set_kind(kind);
  req.set_error(OneLine(error).substr(0, kMaxErrorBytes));
  v1::FailResponse resp;
  grpc::Status s = Retrying(
      "fail", [&](grpc::ClientContext* ctx) { return stub_->Fail(ctx, req, &resp); },
      /*until_stop=*/true);
  MutexLock l(&stats_mu_);
  if (kind == v1::FAILURE_KIND_HANDED_BACK) {
    ++stats_.handed_back;
    Journal("handed_back", lease.job_id(), lease.fencing_token(), s.ok() ? "" : s.error_message());
  } else {
    ++stats_.failed;
    Journal(
        "failed", lease.job_id(), lease.fencing_token(),
        absl::StrCat(s.ok() ? v1::JobState_Name(resp.new_state()) : s.error_message(), " ", error));
  }
}

absl::Status WorkerLoop::Run() {
  ClientConfig channel_config = options_.coordinator;
  channel_config.max_reconnect_backoff_ms = options_.reconnect_max_ms;
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = MakeChannel(channel_config);
  if (!channel.ok()) return channel.status();
  channel_ = *channel;
  stub_ = v1::WorkerService::NewStub(channel_);
  KV_LOG(INFO) << "worker " << worker_id_ << " (" << options_.device << ", "
               << options_.evaluator_name << ") pulling from " << options_.coordinator.address;
  // Connect before the first lease (a coordinator that is not up yet is waited for by the
  // lease retries below, so this only bounds the wait), in steps that notice a drain request.
  const auto connect_until = std::chrono::system_clock::now() +
                             std::chrono::milliseconds(std::min(options_.rpc_timeout_ms, 2000));
  while (!draining_ && std::chrono::system_clock::now() < connect_until &&
         !channel_->WaitForConnected(std::min(
             connect_until, std::chrono::system_clock::now() + std::chrono::milliseconds(50)))) {
  }
  if (!options_.spool_dir.empty()) {
    absl::StatusOr<ResultSpool> spool = ResultSpool::Open(options_.spool_dir);
    if (!spool.ok()) return spool.status();
    spool_ = *std::move(spool);
  }
  if (options_.staging.mode != StageMode::kNever) {
    // Views that a crashed worker on this cache left (a view in use by a live one stays).
    const std::string cache_dir = StagingCacheDir(options_.staging);
    absl::StatusOr<int> stale = RemoveStaleViews(cache_dir);
    if (!stale.ok()) {
      KV_LOG(WARNING) << "worker " << worker_id_ << ": stale views in " << cache_dir
                      << " not removed: " << stale.status();
    } else if (*stale > 0) {
      KV_LOG(INFO) << "worker " << worker_id_ << ": removed " << *stale << " stale views from "
                   << cache_dir;
    }
  }
  heartbeats_.emplace(stub_.get(), options_.coordinator, options_.rpc_timeout_ms, worker_id_,
                      options_.observer);
  heartbeats_->Start();
  struct StopHeartbeatThread {
    WorkerLoop* self;
    ~StopHeartbeatThread() { self->heartbeats_->Quit(); }
  } stop_heartbeat_thread{this};
  ReportSpooled();
  // Start of the current run of "no job" answers (exit_when_idle_ms).
  std::optional<std::chrono::steady_clock::time_point> idle_since;
  while (!draining_) {
    if (next_lease_) {
      v1::LeaseResponse lease = std::move(*next_lease_);
      next_lease_.reset();
      absl::Status js = RunJob(lease);
      if (!js.ok()) return js;
      continue;
    }
    v1::LeaseRequest req = MakeLeaseRequest(Identity(), held_model_);
    v1::LeaseResponse resp;
    const auto t0 = std::chrono::steady_clock::now();
    grpc::Status s = Retrying(
        "lease", [&](grpc::ClientContext* ctx) { return stub_->Lease(ctx, req, &resp); },
        /*until_stop=*/false);
    if (options_.observe_rpc && s.ok()) {
      options_.observe_rpc(
          resp.has_job() ? "lease" : "lease-empty",
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    if (draining_) {
      // A lease granted while we started draining goes straight back.
      if (s.ok() && resp.has_job()) ReportFail(resp, v1::FAILURE_KIND_HANDED_BACK, "draining");
      break;
    }
    if (!s.ok()) {
      if (s.error_code() == grpc::StatusCode::UNAUTHENTICATED ||
          s.error_code() == grpc::StatusCode::PERMISSION_DENIED ||
          s.error_code() == grpc::StatusCode::INVALID_ARGUMENT ||
          s.error_code() == grpc::StatusCode::UNIMPLEMENTED) {
        return FromGrpc(s);
      }
      KV_LOG(WARNING) << "worker " << worker_id_ << ": lease: " << s.error_message();
      SleepUnlessDraining(1000);
      continue;
    }
    if (!resp.has_job()) {
      const auto now = std::chrono::steady_clock::now();
      if (!idle_since) idle_since = now;
      if (options_.exit_when_idle_ms > 0 &&
          now - *idle_since >= std::chrono::milliseconds(options_.exit_when_idle_ms)) {
        const std::string why = absl::StrCat(
            "idle for ",
            std::round(std::chrono::duration<double>(now - *idle_since).count() * 10) / 10,
            " s, exiting");
        Journal("idle", "", 0, why);
        KV_LOG(INFO) << "worker " << worker_id_ << ": " << why;
        break;
      }
      SleepUnlessDraining(std::clamp(resp.retry_after_ms(), 10, 5000));
      continue;
    }
    idle_since.reset();
    absl::Status js = RunJob(resp);
    if (!js.ok()) return js;
  }
  if (next_lease_) {
    ReportFail(*next_lease_, v1::FAILURE_KIND_HANDED_BACK, "draining");
    next_lease_.reset();
  }
  Journal("drained", "", 0);
  KV_LOG(INFO) << "worker " << worker_id_ << ": drained, exiting";
  return absl::OkStatus();
}

absl::Status WorkerLoop::RunJob(const v1::LeaseResponse& lease) {
  const std::string& job_id = lease.job_id();
  const int64_t fence = lease.fencing_token();
  {
    MutexLock l(&stats_mu_);
    ++stats_.leased;
  }
  // The observer hears of the job's end whichever way RunJob returns.
  const WorkerStats stats_before = stats();
  const auto job_start = std::chrono::steady_clock::now();
  std::string task;       // once the spec is read
  nlohmann::json timing;  // the evaluator's, once it has a result
  if (options_.observer != nullptr) options_.observer->JobStarted();
  struct JobEnd {
    std::function<void()> fn;
    ~JobEnd() { fn(); }
  } job_end{[&] {
    if (options_.observer == nullptr) return;
    options_.observer->JobEnded(
        task, Outcome(stats_before, stats()),
        std::chrono::duration<double>(std::chrono::steady_clock::now() - job_start).count(),
        timing);
  }};
  Journal("lease", job_id, fence, absl::StrCat("attempt=", lease.attempt()));
  KV_LOG(DEBUG) << "worker " << worker_id_ << ": job " << job_id.substr(0, 12) << " fence "
                << fence;

  // FOR TESTS: faults that make this worker die or hang on a job.
  faults_.OnJobStart(job_id, fence, lease.spec_json());

  absl::StatusOr<nlohmann::json> spec_json = ParseJson(lease.spec_json(), "job spec");
  absl::StatusOr<JobSpec> spec =
      spec_json.ok() ? JobSpec::FromJson(*spec_json) : absl::StatusOr<JobSpec>(spec_json.status());
  if (!spec.ok()) {
    ReportFail(lease, v1::FAILURE_KIND_PERMANENT, std::string(spec.status().message()));
    return absl::OkStatus();
  }
  task = spec->task;

  // Heartbeats from their own thread, so a long forward pass never lets the lease lapse. They go
  // on until the coordinator has the result: a finished result keeps its lease alive through a
  // coordinator outage.
  Heartbeater& heartbeats = *heartbeats_;
  heartbeats.StartJob(lease);
  std::string lost_reason;
  bool lost = false, beating = true;
  auto stop_heartbeat = [&] {
    if (!beating) return;
    beating = false;
    lost = heartbeats.StopJob(&lost_reason);
  };
  auto handing_back = [&] {
    return stop_now_.load() || (draining_.load() && NowMs() > drain_deadline_ms_.load());
  };
  ProgressFn on_progress = [&](double fraction) {
    heartbeats.SetProgress(fraction);
    if (options_.observer != nullptr) options_.observer->JobProgress(fraction);
    return !heartbeats.lost() && !handing_back();
  };

  faults_.BeforeEvaluate([&] { return on_progress(0.0); });
  // Inputs missing here (or here with other content): fetched by hash and run on from the
  // cache (its pins and views live as long).
  std::optional<StagedJob> staged;
  absl::Status staging;
  const StagingPlan plan = PlanStaging(options_.staging.mode, *spec);
  if (plan.stage && stager_ == nullptr) {
    // The cache is opened on first need: a worker that never stages needs no writable cache.
    const std::string dir = StagingCacheDir(options_.staging);
    absl::StatusOr<std::unique_ptr<FileCache>> cache =
        FileCache::Open(dir, options_.staging.cache_max_bytes);
    if (cache.ok()) {
      file_cache_ = *std::move(cache);
      stager_ = std::make_unique<FileStager>(file_cache_.get());
      files_stub_ = v1::FileService::NewStub(channel_);
    } else {  // this worker's setup, not the job's: another worker may run it
      staging =
          absl::UnavailableError(absl::StrCat("--cache-dir ", dir, ": ", cache.status().message()));
    }
  }
  if (staging.ok() && plan.stage) {
    GrpcFileSource source(files_stub_.get(), options_.coordinator, worker_id_, lease,
                          options_.rpc_timeout_ms);
    absl::StatusOr<StagedJob> st = stager_->Stage(
        *spec, &source, [&] { return on_progress(0.0); }, plan.local);
    if (st.ok()) {
      Journal("staged", job_id, fence,
              absl::StrCat("files=", st->files, " local=", st->files_local,
                           " fetched=", st->files_fetched, " bytes=", st->bytes_fetched));
      staged = *std::move(st);
    } else {
      staging = st.status();
    }
  }
  absl::StatusOr<nlohmann::json> result =
      !staging.ok()      ? absl::StatusOr<nlohmann::json>(staging)
      : on_progress(0.0) ? evaluator_->Run(staged ? staged->spec : *spec, on_progress)
                         : absl::CancelledError("stopped before starting");
  if (result.ok() && result->is_object() && result->contains("timing")) {
    timing = (*result)["timing"];
  }
  if (!result.ok() || heartbeats.lost()) stop_heartbeat();
  if (lost) {
    MutexLock l(&stats_mu_);
    ++stats_.abandoned;
    Journal("abandoned", job_id, fence, lost_reason);
    KV_LOG(WARNING) << "worker " << worker_id_ << ": job " << job_id.substr(0, 12)
                    << " abandoned: " << lost_reason;
    return absl::OkStatus();
  }
  if (!result.ok()) {
    if (absl::IsCancelled(result.status()) && handing_back()) {
      ReportFail(lease, v1::FAILURE_KIND_HANDED_BACK, "worker draining");
    } else {
      KV_LOG(WARNING) << "worker " << worker_id_ << ": job " << job_id.substr(0, 12)
                      << " failed: " << result.status();
      ReportFail(lease,
                 Permanent(result.status().code()) ? v1::FAILURE_KIND_PERMANENT
                                                   : v1::FAILURE_KIND_RETRYABLE,
                 result.status().ToString());
    }
    return absl::OkStatus();
  }
  held_model_ = spec->model_sha256;
  nlohmann::json& r = *result;
  if (!r.is_object()) {
    stop_heartbeat();
    ReportFail(lease, v1::FAILURE_KIND_PERMANENT, "evaluator returned a non-object result");
    return absl::OkStatus();
  }
  AddWorkerProvenance(Identity(), lease, &r);
  // The result goes out through the one result type: what the coordinator would refuse is a
  // permanent failure here, with the reason, instead of a Complete the store rejects.
  absl::StatusOr<JobResult> checked = JobResult::FromJson(std::move(r));
  if (!checked.ok()) {
    stop_heartbeat();
    ReportFail(lease, v1::FAILURE_KIND_PERMANENT,
               absl::StrCat("evaluator returned an invalid result: ", checked.status().message()));
    return absl::OkStatus();
  }

  v1::CompleteRequest req;
  req.set_worker_id(worker_id_);
  req.set_job_id(job_id);
  req.set_lease_id(lease.lease_id());
  req.set_fencing_token(fence);
  req.set_result_json(checked->Serialize());
  if (req.ByteSizeLong() > static_cast<size_t>(kMaxMessageBytes) - 4096) {
    stop_heartbeat();
    ReportFail(lease, v1::FAILURE_KIND_PERMANENT,
               absl::StrCat("result of ", req.result_json().size(), " bytes is too large to send"));
    return absl::OkStatus();
  }
  if (spool_.has_value()) {
    absl::Status put = spool_->Put(req, lease.heartbeat_interval_ms());
    if (!put.ok()) {
      KV_LOG(ERROR) << "worker " << worker_id_ << ": result of job " << job_id.substr(0, 12)
                    << " not spooled (it is still reported): " << put.message();
    }
  }
  if (faults_.pauses_before_complete()) {
    // FOR TESTS: no heartbeats from here on; the lease may well expire meanwhile.
    stop_heartbeat();
    faults_.PauseBeforeComplete(job_id, fence);
  }
  // Complete-and-lease: ask for the next job in the same call, unless draining.
  if (!draining_) *req.mutable_next() = MakeLeaseRequest(Identity(), held_model_);
  const bool answered = ReportResult(lease, req);
  stop_heartbeat();
  // Not answered for good (the worker was told to stop at once): the spool keeps the result.
  if (answered && spool_.has_value()) spool_->Remove(job_id, fence).IgnoreError();
  return absl::OkStatus();
}

bool WorkerLoop::ReportResult(const v1::LeaseResponse& lease, const v1::CompleteRequest& req) {
  const std::string& job_id = req.job_id();
  const int64_t fence = req.fencing_token();
  v1::CompleteResponse resp;
  const auto t0 = std::chrono::steady_clock::now();
  grpc::Status s = Retrying(
      "complete", [&](grpc::ClientContext* ctx) { return stub_->Complete(ctx, req, &resp); },
      /*until_stop=*/true,
      // A beat answered that the lease is lost: the coordinator is up and will refuse it.
      [this] { return heartbeats_->lost(); });
  if (options_.observe_rpc && s.ok()) {
    options_.observe_rpc(
        resp.has_next() && resp.next().has_job() ? "complete+lease" : "complete",
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  if (s.error_code() == grpc::StatusCode::INVALID_ARGUMENT) {
    // The coordinator cannot store this result (an evaluator bug): fail the job for good
    // rather than let its lease run out and count as a crash.
    KV_LOG(ERROR) << "worker " << worker_id_ << ": result of job " << job_id.substr(0, 12)
                  << " refused: " << s.error_message();
    ReportFail(lease, v1::FAILURE_KIND_PERMANENT,
               absl::StrCat("result refused by the coordinator: ", s.error_message()));
    return true;
  }
  MutexLock l(&stats_mu_);
  if (s.ok()) {
    if (resp.duplicate()) {
      ++stats_.duplicates;
      Journal("duplicate", job_id, fence);
    } else {
      ++stats_.recorded;
      Journal("recorded", job_id, fence);
    }
    if (resp.has_next() && resp.next().has_job()) next_lease_ = resp.next();
    return true;
  }
  if (s.error_code() == grpc::StatusCode::FAILED_PRECONDITION ||
      s.error_code() == grpc::StatusCode::PERMISSION_DENIED || heartbeats_->lost()) {
    ++stats_.rejected;
    Journal("rejected", job_id, fence, s.error_message());
    KV_LOG(WARNING) << "worker " << worker_id_ << ": result of job " << job_id.substr(0, 12)
                    << " rejected: " << s.error_message();
    return true;
  }
  ++stats_.failed;
  Journal("unreported", job_id, fence, s.error_message());
  KV_LOG(ERROR) << "worker " << worker_id_ << ": could not report job " << job_id.substr(0, 12)
                << ": " << s.error_message();
  return !IsTransient(s.error_code()) && s.error_code() != grpc::StatusCode::RESOURCE_EXHAUSTED;
}

void WorkerLoop::ReportSpooled() {
  if (!spool_.has_value()) return;
  for (const SpooledResult& sr : spool_->List(worker_id_)) {
    if (stop_now_.load()) return;
    v1::LeaseResponse lease;
    lease.set_has_job(true);
    lease.set_job_id(sr.request.job_id());
    lease.set_lease_id(sr.request.lease_id());
    lease.set_fencing_token(sr.request.fencing_token());
    lease.set_heartbeat_interval_ms(sr.heartbeat_interval_ms);
    KV_LOG(INFO) << "worker " << worker_id_ << ": reporting spooled result of job "
                 << sr.request.job_id().substr(0, 12) << " (fence " << sr.request.fencing_token()
                 << ")";
    Journal("spooled", sr.request.job_id(), sr.request.fencing_token());
    heartbeats_->StartJob(lease);
    const bool answered = ReportResult(lease, sr.request);
    std::string reason;
    heartbeats_->StopJob(&reason);
    if (answered) {
      spool_->Remove(sr.request.job_id(), sr.request.fencing_token()).IgnoreError();
    }
  }
}

}  // namespace kvsweep

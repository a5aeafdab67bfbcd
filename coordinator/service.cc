#include "coordinator/service.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <tuple>
#include <variant>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/path_policy.h"
#include "common/status_macros.h"
#include "coordinator/sweep_spec.h"
#include "rpc/auth.h"
#include "rpc/rpc_util.h"

namespace kvsweep {

namespace {

grpc::Status Invalid(const std::string& msg) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, msg);
}

v1::JobState ToProto(JobState s) { return static_cast<v1::JobState>(static_cast<int>(s)); }

void FillStatus(const SweepInfo& i, v1::SweepStatus* out) {
  out->set_sweep(i.name);
  out->set_total(i.total);
  out->set_queued(i.count(JobState::kQueued));
  out->set_leased(i.count(JobState::kLeased));
  out->set_done(i.count(JobState::kDone));
  out->set_failed(i.count(JobState::kFailed));
  out->set_quarantined(i.count(JobState::kQuarantined));
  out->set_cancelled(i.count(JobState::kCancelled));
  out->set_created_unix_ms(i.created_ms);
  out->set_finished(i.count(JobState::kQueued) + i.count(JobState::kLeased) == 0);
  out->set_priority(i.priority);
  for (const std::string& e : i.recent_errors) out->add_recent_errors(e);
}

// Adds each sweep's running jobs to `statuses` (and the coordinator's clock to all): progress
// from the scheduler's memory, the sweeps each job belongs to from the store (one query, on the
// sweep_jobs_by_job index). A failed query leaves the jobs out (logged): the counts still hold.
void AddRunning(ResultStore* store, Scheduler* scheduler,
                const std::vector<v1::SweepStatus*>& statuses) {
  int64_t now = 0;
  std::vector<JobProgress> running = scheduler->RunningJobs(&now);
  std::map<std::string, v1::SweepStatus*> by_name;
  for (v1::SweepStatus* st : statuses) {
    st->set_now_unix_ms(now);
    if (st->leased() > 0) by_name[st->sweep()] = st;
  }
  if (by_name.empty() || running.empty()) return;
  std::sort(running.begin(), running.end(), [](const JobProgress& a, const JobProgress& b) {
    return std::tie(a.started_ms, a.job_id) < std::tie(b.started_ms, b.job_id);
  });
  std::map<std::string, const JobProgress*> by_job;
  std::string sql =
      "SELECT s.name, sj.job_id FROM sweep_jobs sj JOIN sweeps s ON s.sweep_id = sj.sweep_id "
      "WHERE sj.job_id IN (";
  for (const JobProgress& p : running) {
    if (!ValidateJobId(p.job_id).ok()) continue;  // hex only, so quoting it below is safe
    absl::StrAppend(&sql, by_job.empty() ? "'" : ",'", p.job_id, "'");
    by_job[p.job_id] = &p;
  }
  if (by_job.empty()) return;
  sql += ")";
  absl::StatusOr<QueryResult> q = store->Query(sql, /*max_rows=*/100000, /*timeout_ms=*/5000);
  if (!q.ok()) {
    KV_LOG(WARNING) << "status: the sweeps of the running jobs: " << q.status();
    return;
  }
  std::map<std::string, std::vector<std::string>> sweeps_of;  // job id -> sweep names
  for (const std::vector<QueryResult::Value>& row : q->rows) {
    const auto* sweep = row.size() == 2 ? std::get_if<std::string>(&row[0]) : nullptr;
    const auto* job = row.size() == 2 ? std::get_if<std::string>(&row[1]) : nullptr;
    if (sweep != nullptr && job != nullptr) sweeps_of[*job].push_back(*sweep);
  }
  for (const JobProgress& p : running) {  // in start order
    auto it = sweeps_of.find(p.job_id);
    if (it == sweeps_of.end()) continue;
    for (const std::string& name : it->second) {
      auto st = by_name.find(name);
      if (st == by_name.end()) continue;
      v1::RunningJob* r = st->second->add_running();
      r->set_job_id(p.job_id);
      r->set_worker_id(p.worker_id);
      r->set_progress(p.fraction);
      r->set_started_unix_ms(p.started_ms);
      r->set_updated_unix_ms(p.updated_ms);
      r->set_progress_per_s(p.fraction_per_s());
    }
  }
}

absl::Status ValidateSweepName(const std::string& name) {
  if (!IsValidSweepName(name)) {
    return absl::InvalidArgumentError(
        absl::StrCat("sweep: '", name.substr(0, 64),
                     "' is not a valid sweep name ([A-Za-z0-9][A-Za-z0-9._-]{0,127})"));
  }
  return absl::OkStatus();
}

void FillLease(const LeaseOffer& offer, int ttl, v1::LeaseResponse* resp) {
  resp->set_has_job(offer.has_job);
  resp->set_retry_after_ms(offer.retry_after_ms);
  if (!offer.has_job) return;
  resp->set_job_id(offer.job_id);
  resp->set_spec_json(offer.spec_json);
  resp->set_lease_id(offer.lease_id);
  resp->set_fencing_token(offer.fence);
  resp->set_deadline_unix_ms(offer.deadline_ms);
  resp->set_lease_ttl_ms(ttl);
  resp->set_heartbeat_interval_ms(std::max(ttl / 3, 10));
  resp->set_attempt(offer.attempt);
}

double MsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

absl::Status ValidateLeaseRequest(const v1::LeaseRequest& req, const std::string& prefix) {
  const v1::WorkerInfo& w = req.worker();
  absl::Status s = ValidateWorkerId(w.worker_id(), (prefix + ".worker_id").c_str());
  if (!s.ok()) return s;
  if (w.hostname().size() > 256 || w.device().size() > 64 || w.evaluator().size() > 64 ||
      w.session().size() > 128 || req.held_model().size() > 128) {
    return absl::InvalidArgumentError(
        absl::StrCat(prefix, ": hostname/device/evaluator/session/held_model too long"));
  }
  return absl::OkStatus();
}

absl::Status ValidateWorkerId(const std::string& id, const char* field) {
  if (id.empty() || id.size() > 128) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": must be 1 to 128 characters"));
  }
  for (char c : id) {
    if (!absl::ascii_isalnum(c) && c != '.' && c != '_' && c != ':' && c != '@' && c != '-') {
      return absl::InvalidArgumentError(absl::StrCat(field, ": '", id.substr(0, 64),
                                                     "' has characters outside [A-Za-z0-9._:@-]"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateJobId(const std::string& id) {
  if (id.size() != 64) {
    return absl::InvalidArgumentError("job_id: must be 64 hex digits (a sha256)");
  }
  if (!IsLowerHex(id, 64)) {
    return absl::InvalidArgumentError("job_id: must be 64 lower-case hex digits (a sha256)");
  }
  return absl::OkStatus();
}

absl::Status ValidateFence(int64_t fence) {
  if (fence <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("fencing_token: ", fence, " is not positive"));
  }
  return absl::OkStatus();
}

absl::Status ValidateLeaseId(const std::string& id) {
  if (id.empty() || id.size() > 128) {
    return absl::InvalidArgumentError("lease_id: must be 1 to 128 characters");
  }
  return absl::OkStatus();
}

// ---- SweepService ------------------------------------------------------------------------------

SweepServiceImpl::SweepServiceImpl(ResultStore* store, Scheduler* scheduler,
                                   const ServiceOptions& options)
    : store_(store),
      scheduler_(scheduler),
      options_(options),
      submissions_([this](const v1::SubmitSweepRequest& req, const std::string& caller,
                          HashMonitor*) { return Prepare(req, caller); }) {}

void SweepServiceImpl::Shutdown() {
  {
    MutexLock lock(&mu_);
    shutdown_ = true;
    cv_.SignalAll();
  }
  // Before the scheduler stops: a submission's thread may be enqueueing its jobs.
  submissions_.Shutdown();
}

// Authenticates the call and checks its role; declares `caller`.
#define KV_AUTH(ctx, role, what)                                                      \
  absl::StatusOr<Caller> kv_caller_ = Authenticate(*(ctx), options_.tokens);          \
  if (!kv_caller_.ok()) return ToGrpc(kv_caller_.status());                           \
  if (absl::Status kv_role_ = Require(*kv_caller_, (role), (what)); !kv_role_.ok()) { \
    return ToGrpc(kv_role_);                                                          \
  }                                                                                   \
  const Caller& caller = *kv_caller_;                                                 \
  (void)caller
#define KV_GRPC_CHECK(expr)                \
  do {                                     \
    absl::Status kv_s_ = (expr);           \
    if (!kv_s_.ok()) return ToGrpc(kv_s_); \
  } while (0)

namespace {

// How long SubmitSweep and GetSubmission wait for a submission before answering pending: at
// most `cap`, and at most half of what is left of the call's deadline (the rest is for the
// answer to travel).
std::chrono::steady_clock::time_point WaitDeadline(const grpc::ServerContext& ctx,
                                                   std::chrono::milliseconds cap) {
  const auto now_sys = std::chrono::system_clock::now();
  const auto now = std::chrono::steady_clock::now();
  const auto left = ctx.deadline() - now_sys;
  std::chrono::milliseconds wait = cap;
  if (left < std::chrono::hours(24 * 365)) {
    wait = std::min(wait, std::chrono::duration_cast<std::chrono::milliseconds>(left / 2));
  }
  return now + std::max(wait, std::chrono::milliseconds(0));
}

constexpr std::chrono::milliseconds kSubmitWait{2000};

}  // namespace

absl::StatusOr<v1::SubmitSweepResponse> SweepServiceImpl::Prepare(const v1::SubmitSweepRequest& req,
                                                                  const std::string& caller) {
  ExpandOptions eo;
  eo.base_dir = req.base_dir();
  eo.source_name = req.source_name().empty() ? "sweep" : req.source_name();
  eo.max_jobs = options_.max_jobs_per_sweep;
  eo.allowed_roots = SweepPathRoots(options_.allowed_paths, req.base_dir());
  absl::StatusOr<ExpandedSweep> sweep = ExpandSweep(req.sweep_yaml(), eo);
  if (!sweep.ok()) return sweep.status();
  v1::SubmitSweepResponse resp;
  resp.set_sweep(sweep->name);
  resp.set_jobs_total(static_cast<int>(sweep->jobs.size()));
  resp.set_combinations(sweep->combinations);
  resp.set_excluded(sweep->excluded);
  resp.set_dry_run(req.dry_run());
  if (req.dry_run()) {
    constexpr size_t kMaxListed = 10000;
    for (size_t i = 0; i < sweep->jobs.size() && i < kMaxListed; ++i) {
      const SweepJob& j = sweep->jobs[i];
      v1::DryRunJob* d = resp.add_jobs();
      d->set_job_id(j.job_id);
      d->set_model(j.labels.value("model", ""));
      d->set_task(j.labels.value("task", ""));
      d->set_method(j.labels.value("method", ""));
      d->set_method_spec(j.spec.method);
      d->set_kv_heads(j.spec.kv_heads);
      d->set_dtype(j.spec.dtype);
    }
    return resp;
  }
  absl::StatusOr<SubmitOutcome> out =
      scheduler_->Submit(*sweep, req.sweep_yaml(), req.base_dir(), caller);
  if (!out.ok()) return out.status();
  resp.set_jobs_enqueued(out->enqueued);
  resp.set_jobs_requeued(out->requeued);
  resp.set_jobs_done(out->done);
  resp.set_jobs_pending(out->pending);
  resp.set_jobs_failed(out->failed);
  return resp;
}

grpc::Status SweepServiceImpl::SubmitSweep(grpc::ServerContext* ctx,
                                           const v1::SubmitSweepRequest* req,
                                           v1::SubmitSweepResponse* resp) {
  KV_AUTH(ctx, req->dry_run() ? kRoleRead : kRoleSubmit, "submit sweeps");
  if (req->sweep_yaml().empty()) return Invalid("sweep_yaml: empty");
  if (req->sweep_yaml().size() > kMaxSweepYamlBytes) {
    return Invalid(absl::StrCat("sweep_yaml: ", req->sweep_yaml().size(),
                                " bytes is over the limit of ", kMaxSweepYamlBytes));
  }
  if (!req->base_dir().empty() && req->base_dir()[0] != '/') {
    return Invalid(absl::StrCat("base_dir: '", req->base_dir(), "' is not an absolute path"));
  }
  if (req->source_name().size() > 256) return Invalid("source_name: over 256 characters");
  absl::StatusOr<std::string> id = submissions_.Start(*req, caller.principal, caller.name);
  if (!id.ok()) return ToGrpc(id.status());
  absl::StatusOr<v1::SubmitSweepResponse> answer =
      submissions_.Wait(*id, caller.principal, WaitDeadline(*ctx, kSubmitWait));
  if (!answer.ok()) return ToGrpc(answer.status());
  *resp = std::move(*answer);
  return grpc::Status::OK;
}

grpc::Status SweepServiceImpl::GetSubmission(grpc::ServerContext* ctx,
                                             const v1::GetSubmissionRequest* req,
                                             v1::SubmitSweepResponse* resp) {
  // Dry runs need only the read role, so following a submission does too; Wait answers only
  // the caller that started it.
  KV_AUTH(ctx, kRoleRead, "follow submissions");
  if (req->submission().empty()) return Invalid("submission: empty");
  if (req->wait_ms() < 0 || req->wait_ms() > 10000) {
    return Invalid(absl::StrCat("wait_ms: ", req->wait_ms(), " is out of range [0, 10000]"));
  }
  absl::StatusOr<v1::SubmitSweepResponse> answer =
      submissions_.Wait(req->submission(), caller.principal,
                        WaitDeadline(*ctx, std::chrono::milliseconds(req->wait_ms())));
  if (!answer.ok()) return ToGrpc(answer.status());
  *resp = std::move(*answer);
  return grpc::Status::OK;
}

grpc::Status SweepServiceImpl::GetStatus(grpc::ServerContext* ctx, const v1::GetStatusRequest* req,
                                         v1::GetStatusResponse* resp) {
  KV_AUTH(ctx, kRoleRead, "read status");
  if (req->sweep().empty()) {
    absl::StatusOr<std::vector<SweepInfo>> all = store_->ListSweeps();
    if (!all.ok()) return ToGrpc(all.status());
    for (const SweepInfo& i : *all) FillStatus(i, resp->add_sweeps());
  } else {
    KV_GRPC_CHECK(ValidateSweepName(req->sweep()));
    absl::StatusOr<SweepInfo> info = store_->GetSweep(req->sweep());
    if (!info.ok()) return ToGrpc(info.status());
    FillStatus(*info, resp->add_sweeps());
  }
  std::vector<v1::SweepStatus*> statuses;
  for (v1::SweepStatus& st : *resp->mutable_sweeps()) statuses.push_back(&st);
  AddRunning(store_, scheduler_, statuses);
  return grpc::Status::OK;
}

grpc::Status SweepServiceImpl::Watch(grpc::ServerContext* ctx, const v1::WatchRequest* req,
                                     grpc::ServerWriter<v1::SweepStatus>* writer) {
  KV_AUTH(ctx, kRoleRead, "watch sweeps");
  KV_GRPC_CHECK(ValidateSweepName(req->sweep()));
  if (req->interval_ms() < 0) return Invalid("interval_ms: negative");
  const int interval = req->interval_ms() == 0 ? 1000 : std::clamp(req->interval_ms(), 50, 60000);
  for (;;) {
    absl::StatusOr<SweepInfo> info = store_->GetSweep(req->sweep());
    if (!info.ok()) return ToGrpc(info.status());
    v1::SweepStatus st;
    FillStatus(*info, &st);
    AddRunning(store_, scheduler_, {&st});
    if (!writer->Write(st)) return grpc::Status::OK;  // the client went away
    if (st.finished()) return grpc::Status::OK;
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(interval);
    MutexLock lock(&mu_);
    while (!shutdown_ && !ctx->IsCancelled() && cv_.WaitUntil(&mu_, until)) {
    }
    if (shutdown_) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "coordinator shutting down");
    if (ctx->IsCancelled()) return grpc::Status::CANCELLED;
  }
}

grpc::Status SweepServiceImpl::Cancel(grpc::ServerContext* ctx, const v1::CancelRequest* req,
                                      v1::CancelResponse* resp) {
  KV_AUTH(ctx, kRoleSubmit, "cancel sweeps");
  KV_GRPC_CHECK(ValidateSweepName(req->sweep()));
  absl::StatusOr<CancelOutcome> out = scheduler_->Cancel(req->sweep(), caller.name);
  if (!out.ok()) return ToGrpc(out.status());
  resp->set_cancelled(out->cancelled);
  resp->set_kept_for_others(out->kept_for_others);
  return grpc::Status::OK;
}

grpc::Status SweepServiceImpl::Retry(grpc::ServerContext* ctx, const v1::RetryRequest* req,
                                     v1::RetryResponse* resp) {
  KV_AUTH(ctx, kRoleSubmit, "retry jobs");
  KV_GRPC_CHECK(ValidateSweepName(req->sweep()));
  if (!req->failed() && !req->quarantined()) {
    return Invalid("retry: set failed and/or quarantined");
  }
  absl::StatusOr<int> n =
      scheduler_->Retry(req->sweep(), req->failed(), req->quarantined(), caller.name);
  if (!n.ok()) return ToGrpc(n.status());
  resp->set_requeued(*n);
  return grpc::Status::OK;
}

grpc::Status SweepServiceImpl::Query(grpc::ServerContext* ctx, const v1::QueryRequest* req,
                                     v1::QueryResponse* resp) {
  KV_AUTH(ctx, kRoleRead, "query results");
  if (req->sql().empty()) return Invalid("sql: empty");
  if (req->sql().size() > kMaxSqlBytes) {
    return Invalid(
        absl::StrCat("sql: ", req->sql().size(), " bytes is over the limit of ", kMaxSqlBytes));
  }
  if (req->max_rows() < 0 || req->max_rows() > 100000) {
    return Invalid(absl::StrCat("max_rows: ", req->max_rows(), " is out of range [0, 100000]"));
  }
  const int max_rows = req->max_rows() == 0 ? 10000 : req->max_rows();
  absl::StatusOr<QueryResult> q = store_->Query(req->sql(), max_rows, options_.query_timeout_ms);
  if (!q.ok()) return ToGrpc(q.status());
  for (const std::string& c : q->columns) resp->add_columns(c);
  size_t bytes = 0;
  for (const auto& row : q->rows) {
    v1::Row* r = resp->add_rows();
    for (const QueryResult::Value& v : row) {
      v1::Cell* c = r->add_cells();
      if (std::holds_alternative<int64_t>(v)) {
        c->set_int_value(std::get<int64_t>(v));
      } else if (std::holds_alternative<double>(v)) {
        c->set_real_value(std::get<double>(v));
      } else if (std::holds_alternative<std::string>(v)) {
        bytes += std::get<std::string>(v).size();
        c->set_text_value(std::get<std::string>(v));
      } else if (std::holds_alternative<std::vector<uint8_t>>(v)) {
        const auto& b = std::get<std::vector<uint8_t>>(v);
        bytes += b.size();
        c->set_blob_value(std::string(b.begin(), b.end()));
      }
    }
    if (bytes > static_cast<size_t>(kMaxMessageBytes) / 2) {
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                          "query: the result is over 8 MiB; select fewer columns or rows");
    }
  }
  resp->set_truncated(q->truncated);
  return grpc::Status::OK;
}

grpc::Status SweepServiceImpl::Export(grpc::ServerContext* ctx, const v1::ExportRequest* req,
                                      grpc::ServerWriter<v1::ExportRecord>* writer) {
  KV_AUTH(ctx, kRoleRead, "export results");
  KV_GRPC_CHECK(ValidateSweepName(req->sweep()));
  absl::Status s = store_->Export(req->sweep(), req->include_spec(), [&](const ExportRow& row) {
    v1::ExportRecord r;
    r.set_job_id(row.job_id);
    r.set_sweep(row.sweep);
    r.set_labels_json(row.labels_json);
    r.set_state(ToProto(row.state));
    r.set_result_json(row.result_json);
    r.set_spec_json(row.spec_json);
    r.set_last_error(row.last_error);
    return writer->Write(r);
  });
  return ToGrpc(s);
}

#undef KV_AUTH

// ---- WorkerService -----------------------------------------------------------------------------

WorkerServiceImpl::WorkerServiceImpl(Scheduler* scheduler, const ServiceOptions& options)
    : scheduler_(scheduler), options_(options) {}

// Finishes `reactor` with `s` and returns it from the handler if `s` is not OK.
#define KV_FINISH_IF_ERROR(reactor, expr) \
  do {                                    \
    absl::Status kv_v_ = (expr);          \
    if (!kv_v_.ok()) {                    \
      (reactor)->Finish(ToGrpc(kv_v_));   \
      return (reactor);                   \
    }                                     \
  } while (0)

namespace {

// What every call on a held lease (Heartbeat, Complete, Fail) passes before the scheduler sees
// it: a caller with the work role, and a well-formed worker id, job id, lease id and fencing token.
template <typename Request>
absl::StatusOr<Caller> AdmitHeldLeaseCall(const grpc::CallbackServerContext& ctx,
                                          const BearerTokens& tokens, const Request& req) {
  KV_ASSIGN_OR_RETURN(Caller caller, Authenticate(ctx, tokens));
  KV_RETURN_IF_ERROR(Require(caller, kRoleWork, "call the worker service"));
  KV_RETURN_IF_ERROR(ValidateWorkerId(req.worker_id(), "worker_id"));
  KV_RETURN_IF_ERROR(ValidateJobId(req.job_id()));
  KV_RETURN_IF_ERROR(ValidateLeaseId(req.lease_id()));
  KV_RETURN_IF_ERROR(ValidateFence(req.fencing_token()));
  return caller;
}

}  // namespace

grpc::ServerUnaryReactor* WorkerServiceImpl::Lease(grpc::CallbackServerContext* ctx,
                                                   const v1::LeaseRequest* req,
                                                   v1::LeaseResponse* resp) {
  const auto t0 = std::chrono::steady_clock::now();
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  absl::StatusOr<Caller> caller = Authenticate(*ctx, options_.tokens);
  KV_FINISH_IF_ERROR(reactor, caller.status());
  KV_FINISH_IF_ERROR(reactor, Require(*caller, kRoleWork, "call the worker service"));
  const v1::WorkerInfo& w = req->worker();
  KV_FINISH_IF_ERROR(reactor, ValidateLeaseRequest(*req, "worker"));
  WorkerRecord record{w.worker_id(), w.hostname(), w.device(), w.evaluator(), w.pid()};
  const int ttl = scheduler_->options().lease_ttl_ms;
  scheduler_->Lease(record, w.session(), req->held_model(),
                    [this, t0, reactor, resp, ttl](absl::StatusOr<LeaseOffer> offer) {
                      if (!offer.ok()) {
                        reactor->Finish(ToGrpc(offer.status()));
                        return;
                      }
                      FillLease(*offer, ttl, resp);
                      const double ms = MsSince(t0);
                      lease_ms_.Record(ms);
                      if (observer_ != nullptr) observer_->LeaseAnswered(ms);
                      reactor->Finish(grpc::Status::OK);
                    });
  return reactor;
}

grpc::ServerUnaryReactor* WorkerServiceImpl::Heartbeat(grpc::CallbackServerContext* ctx,
                                                       const v1::HeartbeatRequest* req,
                                                       v1::HeartbeatResponse* resp) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  absl::StatusOr<Caller> caller = AdmitHeldLeaseCall(*ctx, options_.tokens, *req);
  KV_FINISH_IF_ERROR(reactor, caller.status());
  if (!(req->progress() >= 0.0 && req->progress() <= 1.0)) {
    reactor->Finish(Invalid("progress: must be a number in [0, 1]"));
    return reactor;
  }
  absl::StatusOr<HeartbeatReply> r = scheduler_->Heartbeat(
      req->worker_id(), req->job_id(), req->lease_id(), req->fencing_token(), req->progress());
  if (!r.ok()) {
    reactor->Finish(ToGrpc(r.status()));
    return reactor;
  }
  resp->set_keep_going(r->keep_going);
  resp->set_reason(r->reason);
  resp->set_deadline_unix_ms(r->deadline_ms);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* WorkerServiceImpl::Complete(grpc::CallbackServerContext* ctx,
                                                      const v1::CompleteRequest* req,
                                                      v1::CompleteResponse* resp) {
  const auto t0 = std::chrono::steady_clock::now();
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  absl::StatusOr<Caller> caller = AdmitHeldLeaseCall(*ctx, options_.tokens, *req);
  KV_FINISH_IF_ERROR(reactor, caller.status());
  if (req->result_json().size() > kMaxResultJsonBytes) {
    reactor->Finish(Invalid(absl::StrCat("result_json: ", req->result_json().size(),
                                         " bytes is over the limit of ", kMaxResultJsonBytes)));
    return reactor;
  }
  // Reject malformed results before they reach the queue (the store checks again).
  absl::StatusOr<ResultMetrics> m = ExtractResultMetrics(req->result_json());
  if (!m.ok()) {
    reactor->Finish(Invalid(absl::StrCat("result_json: ", m.status().message())));
    return reactor;
  }
  std::unique_ptr<NextLease> next;
  if (req->has_next()) {
    KV_FINISH_IF_ERROR(reactor, ValidateLeaseRequest(req->next(), "next.worker"));
    const v1::WorkerInfo& w = req->next().worker();
    if (w.worker_id() != req->worker_id()) {
      reactor->Finish(Invalid("next.worker.worker_id: must be the completing worker"));
      return reactor;
    }
    next = std::make_unique<NextLease>(
        NextLease{{w.worker_id(), w.hostname(), w.device(), w.evaluator(), w.pid()},
                  w.session(),
                  req->next().held_model()});
  }
  const int ttl = scheduler_->options().lease_ttl_ms;
  const bool want_next = next != nullptr;
  scheduler_->Complete(
      req->worker_id(), req->job_id(), req->lease_id(), req->fencing_token(), req->result_json(),
      next.get(),
      [this, t0, reactor, resp, ttl, want_next](absl::StatusOr<CompleteOutcome> out) {
        if (!out.ok()) {
          reactor->Finish(ToGrpc(out.status()));
          return;
        }
        resp->set_duplicate(out->duplicate);
        if (want_next) {
          if (out->next) {
            FillLease(*out->next, ttl, resp->mutable_next());
          } else {
            resp->mutable_next()->set_has_job(false);
          }
        }
        const double ms = MsSince(t0);
        complete_ms_.Record(ms);
        if (observer_ != nullptr) observer_->CompleteAnswered(ms, !out->duplicate);
        reactor->Finish(grpc::Status::OK);
      },
      *std::move(m), caller->name);
  return reactor;
}

grpc::ServerUnaryReactor* WorkerServiceImpl::Fail(grpc::CallbackServerContext* ctx,
                                                  const v1::FailRequest* req,
                                                  v1::FailResponse* resp) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  absl::StatusOr<Caller> caller = AdmitHeldLeaseCall(*ctx, options_.tokens, *req);
  KV_FINISH_IF_ERROR(reactor, caller.status());
  if (req->error().size() > kMaxErrorBytes) {
    reactor->Finish(Invalid(absl::StrCat("error: over ", kMaxErrorBytes, " bytes")));
    return reactor;
  }
  FailKind kind;
  switch (req->kind()) {
    case v1::FAILURE_KIND_RETRYABLE:
      kind = FailKind::kRetryable;
      break;
    case v1::FAILURE_KIND_PERMANENT:
      kind = FailKind::kPermanent;
      break;
    case v1::FAILURE_KIND_HANDED_BACK:
      kind = FailKind::kHandedBack;
      break;
    default:
      reactor->Finish(Invalid(absl::StrCat("kind: ", static_cast<int>(req->kind()),
                                           " is not RETRYABLE, PERMANENT or HANDED_BACK")));
      return reactor;
  }
  scheduler_->Fail(req->worker_id(), req->job_id(), req->lease_id(), req->fencing_token(), kind,
                   req->error(), [reactor, resp](absl::StatusOr<JobState> st) {
                     if (!st.ok()) {
                       reactor->Finish(ToGrpc(st.status()));
                       return;
                     }
                     resp->set_new_state(ToProto(*st));
                     reactor->Finish(grpc::Status::OK);
                   });
  return reactor;
}

}  // namespace kvsweep

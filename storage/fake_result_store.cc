// In-memory ResultStore for unit tests of its callers (the scheduler). Same semantics as the
// SQLite store, checked by the same conformance suite; no SQL (Query is kUnimplemented).
// Each mutation runs on a copy of the state that replaces it only on success, which is the
// fake's savepoint.
#include <algorithm>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/json_util.h"
#include "common/mutex.h"
#include "common/status_macros.h"
#include "storage/result_store.h"

namespace kvsweep {
namespace {

struct FakeJob {
  int64_t seq = 0;
  std::string spec_json, model_key, task;
  JobState state = JobState::kQueued;
  int priority = 0, attempts = 0, max_attempts = 0;
  int64_t next_eligible_ms = 0, fence = 0, lease_deadline_ms = 0, updated_ms = 0;
  std::string lease_id, lease_worker, last_error;
  std::vector<std::string> crash_workers;
};

struct FakeSweep {
  int priority = 0;
  int64_t created_ms = 0;
  bool cancelled = false;
  std::vector<std::string> order;             // job ids in link order
  std::map<std::string, std::string> labels;  // job id -> labels
};

struct FakeAttempt {
  std::string job_id, worker_id, lease_id;
  int64_t fence = 0;
  AttemptOutcome outcome = AttemptOutcome::kRunning;
};

struct FakeState {
  int64_t next_seq = 1;
  std::map<std::string, FakeJob> jobs;
  std::map<std::string, FakeSweep> sweeps;
  std::vector<std::string> sweep_order;
  std::map<std::string, std::pair<int64_t, std::string>> results;  // job -> (fence, json)
  std::vector<FakeAttempt> attempts;
  std::map<std::string, WorkerRecord> workers;
};

absl::Status Stale(const std::string& job_id, int64_t want, const FakeJob& j,
                   absl::string_view want_state) {
  return absl::FailedPreconditionError(
      absl::StrCat("stale fencing token ", want, " for job ", job_id.substr(0, 12), ": the job is ",
                   JobStateName(j.state), " with fence ", j.fence, " (expected ", want_state,
                   " with fence ", want, ")"));
}

void EndAttempt(FakeState& s, const std::string& job_id, int64_t fence, AttemptOutcome o) {
  for (FakeAttempt& a : s.attempts) {
    if (a.job_id == job_id && a.fence == fence) a.outcome = o;
  }
}

absl::Status DoOp(FakeState& s, SubmitSweep& op) {
  auto [it, inserted] = s.sweeps.try_emplace(op.name);
  FakeSweep& sw = it->second;
  if (inserted) {
    sw.created_ms = op.now_ms;
    s.sweep_order.push_back(op.name);
  }
  sw.priority = op.priority;
  sw.cancelled = false;
  op.enqueued = op.requeued = op.done = op.pending = op.failed = 0;
  op.queued_job_ids.clear();
  for (const NewJob& nj : op.jobs) {
    auto jt = s.jobs.find(nj.job_id);
    if (jt == s.jobs.end()) {
      absl::StatusOr<nlohmann::json> spec = ParseJson(nj.spec_json, "job spec");
      if (!spec.ok()) return spec.status();
      // The columns the SQLite store pulls out of the spec must be there.
      std::string task;
      try {
        (void)spec->at("model_name").get<std::string>();
        task = spec->at("task").at("name").get<std::string>();
        (void)spec->at("method").get<std::string>();
        (void)spec->at("kv_heads").get<int64_t>();
      } catch (const nlohmann::json::exception& e) {
        return absl::InvalidArgumentError(absl::StrCat("job spec: ", e.what()));
      }
      FakeJob j;
      j.seq = s.next_seq++;
      j.spec_json = nj.spec_json;
      j.model_key = nj.model_key;
      j.task = task;
      j.priority = nj.priority;
      j.max_attempts = nj.max_attempts;
      j.updated_ms = op.now_ms;
      s.jobs.emplace(nj.job_id, std::move(j));
      ++op.enqueued;
      op.queued_job_ids.push_back(nj.job_id);
    } else {
      FakeJob& j = jt->second;
      switch (j.state) {
        case JobState::kCancelled:
          j.state = JobState::kQueued;
          j.attempts = 0;
          j.next_eligible_ms = 0;
          j.crash_workers.clear();
          j.last_error.clear();
          j.priority = nj.priority;
          j.max_attempts = nj.max_attempts;
          ++op.requeued;
          op.queued_job_ids.push_back(nj.job_id);
          break;
        case JobState::kDone:
          ++op.done;
          break;
        case JobState::kQueued:
        case JobState::kLeased:
          ++op.pending;
          break;
        default:
          ++op.failed;
      }
    }
    if (sw.labels.find(nj.job_id) == sw.labels.end()) sw.order.push_back(nj.job_id);
    sw.labels[nj.job_id] = nj.labels_json;
  }
  return absl::OkStatus();
}

absl::Status DoOp(FakeState& s, GrantLease& op) {
  auto it = s.jobs.find(op.job_id);
  if (it == s.jobs.end()) return absl::NotFoundError(absl::StrCat("unknown job ", op.job_id));
  FakeJob& j = it->second;
  if (j.state != JobState::kQueued || j.fence != op.expected_fence) {
    return Stale(op.job_id, op.expected_fence, j, "queued");
  }
  j.state = JobState::kLeased;
  j.fence++;
  j.attempts++;
  j.lease_id = op.lease_id;
  j.lease_worker = op.worker_id;
  j.lease_deadline_ms = op.deadline_ms;
  j.updated_ms = op.now_ms;
  op.attempt = j.attempts;
  s.attempts.push_back({op.job_id, op.worker_id, op.lease_id, j.fence, AttemptOutcome::kRunning});
  return absl::OkStatus();
}

absl::Status DoOp(FakeState& s, RecordResult& op) {
  absl::StatusOr<ResultMetrics> m = op.metrics ? absl::StatusOr<ResultMetrics>(*op.metrics)
                                               : ExtractResultMetrics(op.result_json);
  if (!m.ok()) return m.status();
  auto it = s.jobs.find(op.job_id);
  if (it == s.jobs.end()) return absl::NotFoundError(absl::StrCat("unknown job ", op.job_id));
  FakeJob& j = it->second;
  op.duplicate = false;
  if (j.state != JobState::kLeased || j.fence != op.fence) {
    auto r = s.results.find(op.job_id);
    if (r != s.results.end() && r->second.first == op.fence) {
      op.duplicate = true;
      return absl::OkStatus();
    }
    return absl::FailedPreconditionError(absl::StrCat(
        "stale fencing token ", op.fence, " for job ", op.job_id.substr(0, 12), ": the job is ",
        JobStateName(j.state), " with fence ", j.fence, "; the result is rejected"));
  }
  s.results[op.job_id] = {op.fence, op.result_json};
  j.state = JobState::kDone;
  j.lease_id.clear();
  j.lease_worker.clear();
  j.last_error.clear();
  j.updated_ms = op.now_ms;
  EndAttempt(s, op.job_id, op.fence, AttemptOutcome::kDone);
  return absl::OkStatus();
}

absl::Status DoOp(FakeState& s, EndLease& op) {
  if (op.new_state == JobState::kLeased || op.new_state == JobState::kDone) {
    return absl::InvalidArgumentError(
        absl::StrCat("EndLease cannot move a job to ", JobStateName(op.new_state)));
  }
  auto it = s.jobs.find(op.job_id);
  if (it == s.jobs.end()) return absl::NotFoundError(absl::StrCat("unknown job ", op.job_id));
  FakeJob& j = it->second;
  if (j.state != JobState::kLeased || j.fence != op.fence)
    return Stale(op.job_id, op.fence, j, "leased");
  j.state = op.new_state;
  j.fence++;
  j.lease_id.clear();
  j.lease_worker.clear();
  j.next_eligible_ms = op.next_eligible_ms;
  if (op.refund_attempt) j.attempts--;
  if (!op.error.empty()) j.last_error = op.error;
  if (op.crash_workers) j.crash_workers = *op.crash_workers;
  j.updated_ms = op.now_ms;
  EndAttempt(s, op.job_id, op.fence, op.outcome);
  return absl::OkStatus();
}

absl::Status DoOp(FakeState& s, CancelJobs& op) {
  auto sw = s.sweeps.find(op.sweep);
  if (sw == s.sweeps.end())
    return absl::NotFoundError(absl::StrCat("no sweep named '", op.sweep, "'"));
  op.cancelled = 0;
  for (const CancelJobs::Expect& e : op.jobs) {
    auto it = s.jobs.find(e.job_id);
    if (it == s.jobs.end()) continue;
    FakeJob& j = it->second;
    if (j.state != e.state || j.fence != e.fence) continue;
    if (e.state == JobState::kQueued) {
      j.state = JobState::kCancelled;
      ++op.cancelled;
    } else if (e.state == JobState::kLeased) {
      EndAttempt(s, e.job_id, j.fence, AttemptOutcome::kCancelled);
      j.state = JobState::kCancelled;
      j.fence++;
      j.lease_id.clear();
      j.lease_worker.clear();
      ++op.cancelled;
    }
    j.updated_ms = op.now_ms;
  }
  sw->second.cancelled = true;
  return absl::OkStatus();
}

absl::Status DoOp(FakeState& s, RequeueJobs& op) {
  op.requeued.clear();
  for (const std::string& id : op.job_ids) {
    auto it = s.jobs.find(id);
    if (it == s.jobs.end()) continue;
    FakeJob& j = it->second;
    if (std::find(op.from.begin(), op.from.end(), j.state) == op.from.end()) continue;
    j.state = JobState::kQueued;
    j.attempts = 0;
    j.next_eligible_ms = 0;
    j.crash_workers.clear();
    j.updated_ms = op.now_ms;
    op.requeued.push_back(id);
  }
  return absl::OkStatus();
}

absl::Status DoOp(FakeState& s, TouchWorker& op) {
  s.workers[op.worker.worker_id] = op.worker;
  return absl::OkStatus();
}

class FakeResultStore final : public ResultStore {
 public:
  absl::Status Apply(std::vector<Mutation>& batch) override {
    MutexLock lock(&mu_);
    for (Mutation& m : batch) {
      FakeState copy = state_;
      m.status = std::visit([&copy](auto& op) { return DoOp(copy, op); }, m.op);
      if (m.status.ok()) state_ = std::move(copy);
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<ActiveJob>> LoadActiveJobs() override {
    MutexLock lock(&mu_);
    std::vector<ActiveJob> out;
    for (const auto& [id, j] : state_.jobs) {
      if (IsFinal(j.state)) continue;
      ActiveJob a;
      a.job_id = id;
      a.spec_json = j.spec_json;
      a.model_key = j.model_key;
      a.task = j.task;
      a.state = j.state;
      a.priority = j.priority;
      a.attempts = j.attempts;
      a.max_attempts = j.max_attempts;
      a.next_eligible_ms = j.next_eligible_ms;
      a.fence = j.fence;
      a.lease_id = j.lease_id;
      a.lease_worker = j.lease_worker;
      a.lease_deadline_ms = j.lease_deadline_ms;
      a.crash_workers = j.crash_workers;
      a.seq = j.seq;
      out.push_back(std::move(a));
    }
    std::sort(out.begin(), out.end(),
              [](const ActiveJob& a, const ActiveJob& b) { return a.seq < b.seq; });
    return out;
  }

  absl::StatusOr<std::vector<ActiveJob>> LoadJobs(
      const std::vector<std::string>& job_ids) override {
    KV_ASSIGN_OR_RETURN(std::vector<ActiveJob> all, LoadActiveJobs());
    std::set<std::string> want(job_ids.begin(), job_ids.end());
    std::vector<ActiveJob> out;
    for (ActiveJob& j : all) {
      if (want.count(j.job_id)) out.push_back(std::move(j));
    }
    return out;
  }

  absl::StatusOr<SweepInfo> GetSweep(const std::string& name) override {
    MutexLock lock(&mu_);
    return Info(name);
  }

  absl::StatusOr<std::vector<SweepInfo>> ListSweeps() override {
    MutexLock lock(&mu_);
    std::vector<SweepInfo> out;
    for (const std::string& n : state_.sweep_order) {
      absl::StatusOr<SweepInfo> i = Info(n);
      if (!i.ok()) return i.status();
      out.push_back(*i);
    }
    return out;
  }

  absl::StatusOr<std::vector<SweepJobRef>> SweepJobs(const std::string& sweep,
                                                     const std::vector<JobState>& states) override {
    MutexLock lock(&mu_);
    auto sw = state_.sweeps.find(sweep);
    if (sw == state_.sweeps.end()) {
      return absl::NotFoundError(absl::StrCat("no sweep named '", sweep, "'"));
    }
    std::vector<SweepJobRef> out;
    for (const std::string& id : sw->second.order) {
      const FakeJob& j = state_.jobs.at(id);
      if (!states.empty() && std::find(states.begin(), states.end(), j.state) == states.end()) {
        continue;
      }
      bool shared = false;
      for (const auto& [name, other] : state_.sweeps) {
        if (name != sweep && !other.cancelled && other.labels.count(id)) shared = true;
      }
      out.push_back({id, j.state, j.fence, shared});
    }
    return out;
  }

  absl::Status Export(const std::string& sweep, bool include_spec,
                      const std::function<bool(const ExportRow&)>& fn) override {
    std::vector<ExportRow> rows;
    {
      MutexLock lock(&mu_);
      auto sw = state_.sweeps.find(sweep);
      if (sw == state_.sweeps.end()) {
        return absl::NotFoundError(absl::StrCat("no sweep named '", sweep, "'"));
      }
      for (const std::string& id : sw->second.order) {
        const FakeJob& j = state_.jobs.at(id);
        ExportRow r;
        r.job_id = id;
        r.sweep = sweep;
        r.labels_json = sw->second.labels.at(id);
        r.state = j.state;
        auto res = state_.results.find(id);
        if (res != state_.results.end()) r.result_json = res->second.second;
        if (include_spec) r.spec_json = j.spec_json;
        r.last_error = j.last_error;
        rows.push_back(std::move(r));
      }
    }
    for (const ExportRow& r : rows) {
      if (!fn(r)) break;
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::optional<int64_t>> ResultFence(const std::string& job_id) override {
    MutexLock lock(&mu_);
    auto r = state_.results.find(job_id);
    if (r == state_.results.end()) return std::optional<int64_t>();
    return std::optional<int64_t>(r->second.first);
  }

  absl::StatusOr<std::optional<AttemptLease>> LeaseOfAttempt(const std::string& job_id,
                                                             int64_t fence) override {
    MutexLock lock(&mu_);
    for (const FakeAttempt& a : state_.attempts) {
      if (a.job_id == job_id && a.fence == fence) {
        return std::optional<AttemptLease>(AttemptLease{a.lease_id, a.worker_id});
      }
    }
    return std::optional<AttemptLease>();
  }

  absl::StatusOr<int64_t> CountResults() override {
    MutexLock lock(&mu_);
    return static_cast<int64_t>(state_.results.size());
  }
  absl::StatusOr<int64_t> CountJobs() override {
    MutexLock lock(&mu_);
    return static_cast<int64_t>(state_.jobs.size());
  }

  absl::StatusOr<QueryResult> Query(const std::string&, int, int) override {
    return absl::UnimplementedError("the fake result store has no SQL");
  }

  absl::Status IntegrityCheck() override {
    MutexLock lock(&mu_);
    for (const auto& [id, j] : state_.jobs) {
      if ((j.state == JobState::kDone) != (state_.results.count(id) > 0)) {
        return absl::DataLossError(absl::StrCat("job ", id, " disagrees with results"));
      }
    }
    return absl::OkStatus();
  }

 private:
  absl::StatusOr<SweepInfo> Info(const std::string& name) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto sw = state_.sweeps.find(name);
    if (sw == state_.sweeps.end()) {
      return absl::NotFoundError(absl::StrCat("no sweep named '", name, "'"));
    }
    SweepInfo info;
    info.name = name;
    info.priority = sw->second.priority;
    info.created_ms = sw->second.created_ms;
    info.cancelled = sw->second.cancelled;
    std::vector<std::pair<int64_t, std::string>> errs;
    for (const std::string& id : sw->second.order) {
      const FakeJob& j = state_.jobs.at(id);
      info.counts[static_cast<int>(j.state)]++;
      info.total++;
      if ((j.state == JobState::kFailed || j.state == JobState::kQuarantined) &&
          !j.last_error.empty()) {
        errs.push_back({j.updated_ms, absl::StrCat(id.substr(0, 12), ": ", j.last_error)});
      }
    }
    std::stable_sort(errs.begin(), errs.end(),
                     [](const auto& a, const auto& b) { return a.first > b.first; });
    for (size_t i = 0; i < errs.size() && i < 5; ++i) info.recent_errors.push_back(errs[i].second);
    return info;
  }

  Mutex mu_;
  FakeState state_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

std::unique_ptr<ResultStore> NewFakeResultStore() { return std::make_unique<FakeResultStore>(); }

}  // namespace kvsweep

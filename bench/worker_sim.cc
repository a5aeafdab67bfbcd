#include "bench/worker_sim.h"

#include <unistd.h>

#include <algorithm>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/json_util.h"
#include "worker/worker_loop.h"

namespace kvsweep {

namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kSlack = std::chrono::microseconds(1000);

double MsSince(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

}  // namespace

// One simulated worker. At most one of Lease / Complete / Fail is in flight at a time, plus at
// most one Heartbeat; `mu` orders the timer thread's and gRPC's threads' use of the fields.
struct WorkerSim::Worker {
  int index = 0;
  WorkerIdentity who;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::WorkerService::Stub> stub;

  std::mutex mu;
  std::string held_model;
  int backoff_ms = 100;
  // The call in flight and its messages (they must outlive it).
  std::unique_ptr<grpc::ClientContext> ctx;
  v1::LeaseRequest lease_req;
  v1::LeaseResponse lease_resp;
  v1::CompleteRequest complete_req;
  v1::CompleteResponse complete_resp;
  bool complete_built = false;  // complete_req holds this job's result (a retry resends it)
  v1::FailRequest fail_req;
  v1::FailResponse fail_resp;
  // The job being run.
  v1::LeaseResponse lease;
  JobSpec spec;
  FakeJobPlan plan;
  Clock::time_point job_start;
  uint64_t generation = 0;
  bool lost = false;  // a heartbeat was told to stop: abandon the job
  // Heartbeats.
  std::unique_ptr<grpc::ClientContext> hb_ctx;
  v1::HeartbeatRequest hb_req;
  v1::HeartbeatResponse hb_resp;
  bool hb_in_flight = false;
};

WorkerSim::WorkerSim(WorkerSimOptions options) : o_(std::move(options)) {
  char host[256] = {0};
  ::gethostname(host, sizeof(host) - 1);
  hostname_ = host;
}

WorkerSim::~WorkerSim() { Stop(); }

absl::Status WorkerSim::Start() {
  std::mt19937_64 rng(std::random_device{}());
  for (int i = 0; i < o_.workers; ++i) {
    auto w = std::make_unique<Worker>();
    w->index = i;
    w->who = WorkerIdentity{absl::StrCat("bench-", i), hostname_, "cpu", "fake",
                            absl::StrCat(absl::Hex(rng(), absl::kZeroPad16))};
    absl::StatusOr<std::shared_ptr<grpc::Channel>> ch = MakeChannel(o_.coordinator);
    if (!ch.ok()) return ch.status();
    w->channel = *ch;
    w->stub = v1::WorkerService::NewStub(w->channel);
    workers_.push_back(std::move(w));
  }
  // Connect first, as WorkerLoop does, so the first Lease does not time the handshake.
  const auto until = std::chrono::system_clock::now() + std::chrono::seconds(10);
  for (auto& w : workers_) {
    if (!w->channel->WaitForConnected(until)) {
      return absl::UnavailableError(absl::StrCat("simulated worker ", w->index,
                                                 ": cannot connect to ", o_.coordinator.address));
    }
  }
  const auto t0 = Clock::now();
  for (int i = 0; i < o_.workers; ++i) {
    At(t0 + std::chrono::microseconds(int64_t{o_.ramp_ms} * 1000 * i / o_.workers), i,
       Event::kLease);
  }
  timer_thread_ = std::thread([this] { TimerLoop(); });
  return absl::OkStatus();
}

void WorkerSim::Stop() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (timer_thread_.joinable()) timer_thread_.join();
  std::unique_lock<std::mutex> l(inflight_mu_);
  inflight_cv_.wait(l, [&] { return inflight_ == 0; });
}

WorkerSimStats WorkerSim::stats() const {
  std::lock_guard<std::mutex> l(stats_mu_);
  return stats_;
}

void WorkerSim::Count(int64_t WorkerSimStats::*field) {
  std::lock_guard<std::mutex> l(stats_mu_);
  ++(stats_.*field);
}

void WorkerSim::At(Clock::time_point at, int worker, Event event, uint64_t generation) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (stopping_) return;
    const bool sooner = timers_.empty() || at < timers_.top().at;
    timers_.push(Timed{at, worker, event, generation});
    if (!sooner) return;
  }
  cv_.notify_one();
}

void WorkerSim::TimerLoop() {
  std::unique_lock<std::mutex> l(mu_);
  while (!stopping_) {
    if (timers_.empty()) {
      cv_.wait(l);
      continue;
    }
    // Events due within kSlack of now run together: one wake-up for a burst of them (at 200
    // workers × 50 ms they are ~0.3 ms apart), each at most kSlack early.
    // A copy: other threads push while this one waits, and may move the queue's storage.
    const Clock::time_point next = timers_.top().at;
    if (Clock::now() + kSlack < next) {
      cv_.wait_until(l, next);
      continue;
    }
    const Timed t = timers_.top();
    timers_.pop();
    l.unlock();
    Worker& w = *workers_[t.worker];
    switch (t.event) {
      case Event::kLease:
        SendLease(w);
        break;
      case Event::kComplete:
        SendComplete(w);
        break;
      case Event::kHeartbeat:
        SendHeartbeat(w, t.generation);
        break;
    }
    l.lock();
  }
}

void WorkerSim::CallDone() {
  std::lock_guard<std::mutex> l(inflight_mu_);
  if (--inflight_ == 0) inflight_cv_.notify_all();
}

grpc::ClientContext* WorkerSim::NewCall(std::unique_ptr<grpc::ClientContext>* slot,
                                        int timeout_ms) {
  {
    std::lock_guard<std::mutex> l(inflight_mu_);
    ++inflight_;
  }
  *slot = std::make_unique<grpc::ClientContext>();
  PrepareContext(slot->get(), o_.coordinator, std::chrono::milliseconds(timeout_ms));
  return slot->get();
}

void WorkerSim::SendLease(Worker& w) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (stopping_) return;
  }
  std::lock_guard<std::mutex> l(w.mu);
  w.lease_req = MakeLeaseRequest(w.who, w.held_model);
  w.lease_resp.Clear();
  grpc::ClientContext* ctx = NewCall(&w.ctx, o_.rpc_timeout_ms);
  const auto t0 = Clock::now();
  w.stub->async()->Lease(ctx, &w.lease_req, &w.lease_resp, [this, &w, t0](grpc::Status s) {
    OnLease(w, MsSince(t0), s);
    CallDone();
  });
}

void WorkerSim::OnLease(Worker& w, double ms, const grpc::Status& s) {
  std::unique_lock<std::mutex> l(w.mu);
  if (!s.ok()) {
    Count(&WorkerSimStats::rpc_errors);
    const int wait = IsTransient(s.error_code()) ? w.backoff_ms : 1000;
    w.backoff_ms = std::min(w.backoff_ms * 2, 2000);
    l.unlock();
    At(Clock::now() + std::chrono::milliseconds(wait), w.index, Event::kLease);
    return;
  }
  w.backoff_ms = 100;
  if (o_.observe_rpc) o_.observe_rpc(w.lease_resp.has_job() ? "lease" : "lease-empty", ms);
  if (!w.lease_resp.has_job()) {
    const int wait = std::clamp(w.lease_resp.retry_after_ms(), 10, 5000);
    l.unlock();
    At(Clock::now() + std::chrono::milliseconds(wait), w.index, Event::kLease);
    return;
  }
  w.lease = std::move(w.lease_resp);
  l.unlock();
  BeginJob(w);
}

void WorkerSim::BeginJob(Worker& w) {
  std::unique_lock<std::mutex> l(w.mu);
  Count(&WorkerSimStats::leased);
  absl::StatusOr<nlohmann::json> j = ParseJson(w.lease.spec_json(), "job spec");
  absl::StatusOr<JobSpec> spec =
      j.ok() ? JobSpec::FromJson(*j) : absl::StatusOr<JobSpec>(j.status());
  if (!spec.ok()) {
    l.unlock();
    SendFail(w, std::string(spec.status().message()));
    return;
  }
  w.spec = std::move(*spec);
  w.plan = PlanFakeJob(w.spec, o_.fake);
  w.job_start = Clock::now();
  w.lost = false;
  w.complete_built = false;
  const uint64_t gen = ++w.generation;
  const auto done = w.job_start + std::chrono::microseconds(
                                      static_cast<int64_t>(std::max(0.0, w.plan.sleep_ms) * 1000));
  const int hb = w.lease.heartbeat_interval_ms();
  const bool beats = hb > 0 && done > w.job_start + std::chrono::milliseconds(hb);
  const auto first_beat = w.job_start + std::chrono::milliseconds(hb);
  l.unlock();
  At(done, w.index, Event::kComplete, gen);
  if (beats) At(first_beat, w.index, Event::kHeartbeat, gen);
}

void WorkerSim::SendComplete(Worker& w) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (stopping_) return;
  }
  std::unique_lock<std::mutex> l(w.mu);
  if (w.lost) {  // as WorkerLoop: a job whose lease was lost is abandoned, not reported
    l.unlock();
    SendLease(w);
    return;
  }
  if (!w.complete_built) {
    absl::StatusOr<nlohmann::json> r = FakeJobResult(
        w.spec, w.plan, std::chrono::duration<double>(Clock::now() - w.job_start).count());
    if (!r.ok()) {
      l.unlock();
      SendFail(w, r.status().ToString());
      return;
    }
    AddWorkerProvenance(w.who, w.lease, &*r);
    w.held_model = w.spec.model_sha256;
    w.complete_req.Clear();
    w.complete_req.set_worker_id(w.who.worker_id);
    w.complete_req.set_job_id(w.lease.job_id());
    w.complete_req.set_lease_id(w.lease.lease_id());
    w.complete_req.set_fencing_token(w.lease.fencing_token());
    w.complete_req.set_result_json(CanonicalJson(*r));
    *w.complete_req.mutable_next() = MakeLeaseRequest(w.who, w.held_model);
    w.complete_built = true;
  }
  w.complete_resp.Clear();
  grpc::ClientContext* ctx = NewCall(&w.ctx, o_.rpc_timeout_ms);
  const auto t0 = Clock::now();
  w.stub->async()->Complete(ctx, &w.complete_req, &w.complete_resp, [this, &w, t0](grpc::Status s) {
    OnComplete(w, MsSince(t0), s);
    CallDone();
  });
}

void WorkerSim::OnComplete(Worker& w, double ms, const grpc::Status& s) {
  std::unique_lock<std::mutex> l(w.mu);
  ++w.generation;  // no more beats for this job
  if (!s.ok()) {
    Count(&WorkerSimStats::rpc_errors);
    if (IsTransient(s.error_code())) {  // the same result again, after a backoff
      const int wait = w.backoff_ms;
      w.backoff_ms = std::min(w.backoff_ms * 2, 2000);
      l.unlock();
      At(Clock::now() + std::chrono::milliseconds(wait), w.index, Event::kComplete);
      return;
    }
    w.complete_built = false;
    if (s.error_code() == grpc::StatusCode::FAILED_PRECONDITION) Count(&WorkerSimStats::rejected);
    const bool refused = s.error_code() == grpc::StatusCode::INVALID_ARGUMENT;
    l.unlock();
    if (refused) {
      SendFail(w, absl::StrCat("result refused by the coordinator: ", s.error_message()));
    } else {
      SendLease(w);
    }
    return;
  }
  w.backoff_ms = 100;
  w.complete_built = false;
  const bool next = w.complete_resp.has_next() && w.complete_resp.next().has_job();
  if (o_.observe_rpc) o_.observe_rpc(next ? "complete+lease" : "complete", ms);
  Count(w.complete_resp.duplicate() ? &WorkerSimStats::duplicates : &WorkerSimStats::recorded);
  if (!next) {
    l.unlock();
    SendLease(w);
    return;
  }
  w.lease = std::move(*w.complete_resp.mutable_next());
  l.unlock();
  BeginJob(w);
}

void WorkerSim::SendHeartbeat(Worker& w, uint64_t generation) {
  std::unique_lock<std::mutex> l(w.mu);
  if (w.generation != generation || w.lost) return;  // that job is over
  const int interval = w.lease.heartbeat_interval_ms();
  if (w.hb_in_flight) {  // the last beat has not answered yet: look again a little later
    l.unlock();
    At(Clock::now() + std::chrono::milliseconds(std::max(1, interval / 4)), w.index,
       Event::kHeartbeat, generation);
    return;
  }
  {
    std::lock_guard<std::mutex> sl(mu_);
    if (stopping_) return;
  }
  w.hb_req.Clear();
  w.hb_req.set_worker_id(w.who.worker_id);
  w.hb_req.set_job_id(w.lease.job_id());
  w.hb_req.set_lease_id(w.lease.lease_id());
  w.hb_req.set_fencing_token(w.lease.fencing_token());
  w.hb_req.set_progress(
      w.plan.sleep_ms <= 0 ? 1.0 : std::clamp(MsSince(w.job_start) / w.plan.sleep_ms, 0.0, 1.0));
  w.hb_resp.Clear();
  w.hb_in_flight = true;
  grpc::ClientContext* ctx = NewCall(&w.hb_ctx, std::min(interval, o_.rpc_timeout_ms));
  w.stub->async()->Heartbeat(ctx, &w.hb_req, &w.hb_resp,
                             [this, &w, generation, interval](grpc::Status s) {
                               {
                                 std::lock_guard<std::mutex> l(w.mu);
                                 w.hb_in_flight = false;
                                 if (!s.ok()) {
                                   Count(&WorkerSimStats::rpc_errors);
                                 } else {
                                   Count(&WorkerSimStats::heartbeats);
                                   if (!w.hb_resp.keep_going() && w.generation == generation)
                                     w.lost = true;
                                 }
                               }
                               At(Clock::now() + std::chrono::milliseconds(interval), w.index,
                                  Event::kHeartbeat, generation);
                               CallDone();
                             });
}

void WorkerSim::SendFail(Worker& w, const std::string& error) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (stopping_) return;
  }
  Count(&WorkerSimStats::failed);
  std::lock_guard<std::mutex> l(w.mu);
  ++w.generation;
  w.fail_req.Clear();
  w.fail_req.set_worker_id(w.who.worker_id);
  w.fail_req.set_job_id(w.lease.job_id());
  w.fail_req.set_lease_id(w.lease.lease_id());
  w.fail_req.set_fencing_token(w.lease.fencing_token());
  w.fail_req.set_kind(v1::FAILURE_KIND_PERMANENT);
  w.fail_req.set_error(error.substr(0, 4096));
  w.fail_resp.Clear();
  grpc::ClientContext* ctx = NewCall(&w.ctx, o_.rpc_timeout_ms);
  w.stub->async()->Fail(ctx, &w.fail_req, &w.fail_resp, [this, &w](grpc::Status s) {
    if (!s.ok()) Count(&WorkerSimStats::rpc_errors);
    SendLease(w);
    CallDone();
  });
}

}  // namespace kvsweep

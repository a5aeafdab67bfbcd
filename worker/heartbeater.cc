#include "worker/heartbeater.h"

#include <algorithm>
#include <utility>

#include "common/log.h"
#include "common/unix_time.h"

namespace kvsweep {

Heartbeater::Heartbeater(v1::WorkerService::Stub* stub, const ClientConfig& coordinator,
                         int rpc_timeout_ms, std::string worker_id, WorkerObserver* observer)
    : stub_(stub),
      coordinator_(coordinator),
      rpc_timeout_ms_(rpc_timeout_ms),
      worker_id_(std::move(worker_id)),
      observer_(observer) {}

Heartbeater::~Heartbeater() { Quit(); }

void Heartbeater::Start() {
  thread_ = std::thread([this] { Loop(); });
}

void Heartbeater::Quit() {
  {
    MutexLock l(&mu_);
    quit_ = true;
  }
  cv_.SignalAll();
  if (thread_.joinable()) thread_.join();
}

void Heartbeater::StartJob(const v1::LeaseResponse& lease) {
  MutexLock l(&mu_);
  job_id_ = lease.job_id();
  lease_id_ = lease.lease_id();
  fence_ = lease.fencing_token();
  interval_ms_ = lease.heartbeat_interval_ms() > 0 ? lease.heartbeat_interval_ms() : 10000;
  lost_ = false;
  lost_reason_.clear();
  progress_ = 0.0;
  ++generation_;
  active_ = true;
  started_ = std::chrono::steady_clock::now();
  // The thread sleeping until an earlier job's beat was due finds out about this job then, and
  // this job's first beat is due later than that (unless its interval is shorter).
  if (idle_ || started_ + std::chrono::milliseconds(interval_ms_) < wake_at_) {
    cv_.SignalAll();
  }
}

bool Heartbeater::StopJob(std::string* reason) {
  MutexLock l(&mu_);
  active_ = false;  // the thread notices when it next wakes; no need to wake it now
  while (in_flight_) cv_.Wait(&mu_);
  *reason = lost_reason_;
  return lost_.load();
}

void Heartbeater::Loop() {
  int64_t last_log = 0;
  mu_.Lock();
  uint64_t gen = 0;  // the job the schedule below is for
  int interval = 0;
  for (;;) {
    if (!active_) {
      idle_ = true;
      while (!quit_ && !active_) cv_.Wait(&mu_);
      idle_ = false;
    }
    if (quit_) break;
    if (generation_ != gen) {  // a new job: its first beat is due one interval after its start
      gen = generation_;
      interval = interval_ms_;
      wake_at_ = started_ + std::chrono::milliseconds(interval);
    }
    // Until wake_at_, unless told to quit or given a job that must beat sooner.
    bool woken = quit_ || generation_ != gen;
    while (!woken) {
      const bool timed_out = !cv_.WaitUntil(&mu_, wake_at_);
      woken = quit_ || generation_ != gen;
      if (timed_out) break;
    }
    if (woken) {
      if (quit_) break;
      continue;  // woken for a job that must beat sooner
    }
    if (!active_ || generation_ != gen) continue;
    v1::HeartbeatRequest req;
    req.set_worker_id(worker_id_);
    req.set_job_id(job_id_);
    req.set_lease_id(lease_id_);
    req.set_fencing_token(fence_);
    req.set_progress(std::clamp(progress_.load(), 0.0, 1.0));
    in_flight_ = true;
    mu_.Unlock();
    v1::HeartbeatResponse resp;
    grpc::ClientContext ctx;
    PrepareContext(&ctx, coordinator_,
                   std::chrono::milliseconds(std::min(interval, rpc_timeout_ms_)));
    grpc::Status s = stub_->Heartbeat(&ctx, req, &resp);
    if (observer_ != nullptr) observer_->RpcDone("heartbeat", s.error_code());
    mu_.Lock();
    in_flight_ = false;
    wake_at_ = std::chrono::steady_clock::now() + std::chrono::milliseconds(interval);
    if (s.ok() && !resp.keep_going() && active_ && generation_ == gen) {
      lost_reason_ = resp.reason();
      lost_ = true;
      active_ = false;  // no more beats for a lost lease
    } else if (!s.ok() && NowMs() - last_log > 5000) {
      // The coordinator may be restarting; the lease survives that, so keep trying.
      KV_LOG(WARNING) << "worker " << worker_id_ << ": heartbeat: " << s.error_message();
      last_log = NowMs();
    }
    cv_.SignalAll();
  }
  mu_.Unlock();
}

}  // namespace kvsweep

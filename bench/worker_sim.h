// Simulated workers for the coordinator load benchmark, event-driven: W workers, each with its
// own gRPC connection and the worker protocol of WorkerLoop (Lease; Complete carrying the next
// Lease; Heartbeat while a job outlasts its heartbeat interval; Fail when a job cannot run), but
// driven by gRPC's callback API and one timer thread instead of two threads per worker. A job
// takes the fake evaluator's time (a timer, not a sleeping thread) and returns its result.
//
// The W workers stand for W machines. On a 2-core box, 400 threads of real WorkerLoops spend
// more CPU than the coordinator they load (0.27-0.38 ms per job); this keeps the simulation's
// share of the cores small, so that the latency figures measure the coordinator. The thread-per-
// worker simulation (the real WorkerLoop) stays available in the benchmark (--sim threads).
#ifndef KVSWEEP_BENCH_WORKER_SIM_H_
#define KVSWEEP_BENCH_WORKER_SIM_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <queue>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "kvsweep/v1/coordinator.grpc.pb.h"
#include "rpc/rpc_util.h"
#include "worker/fake_evaluator.h"

namespace kvsweep {

struct WorkerSimOptions {
  ClientConfig coordinator;
  int workers = 200;
  FakeEvaluatorOptions fake;
  int ramp_ms = 0;  // worker w sends its first Lease at ramp_ms * w / workers
  int rpc_timeout_ms = 30000;
  // Called on gRPC's threads after each call that succeeded: "lease", "lease-empty",
  // "complete+lease", "complete" (as WorkerOptions::observe_rpc), with the call's latency.
  std::function<void(const char* rpc, double ms)> observe_rpc;
};

struct WorkerSimStats {
  int64_t leased = 0;
  int64_t recorded = 0;
  int64_t duplicates = 0;
  int64_t rejected = 0;  // FAILED_PRECONDITION on Complete (a lost lease)
  int64_t failed = 0;    // jobs reported with Fail (spec or result could not be made)
  int64_t heartbeats = 0;
  int64_t rpc_errors = 0;  // calls that failed (transient ones are retried)
};

class WorkerSim {
 public:
  explicit WorkerSim(WorkerSimOptions options);
  ~WorkerSim();  // Stop()
  WorkerSim(const WorkerSim&) = delete;
  WorkerSim& operator=(const WorkerSim&) = delete;

  // Opens the W connections and schedules each worker's first Lease.
  absl::Status Start();
  // No new calls; returns once every call in flight has answered.
  void Stop();
  WorkerSimStats stats() const;

 private:
  struct Worker;
  enum class Event { kLease, kComplete, kHeartbeat };
  struct Timed {
    std::chrono::steady_clock::time_point at;
    int worker;
    Event event;
    uint64_t generation;  // kHeartbeat: the job it beats for
    bool operator>(const Timed& o) const { return at > o.at; }
  };

  void At(std::chrono::steady_clock::time_point at, int worker, Event event,
          uint64_t generation = 0);
  void TimerLoop();
  // Counts a call in flight (Stop() waits for it) and puts a fresh context in `slot`.
  grpc::ClientContext* NewCall(std::unique_ptr<grpc::ClientContext>* slot, int timeout_ms);
  void SendLease(Worker& w);
  void OnLease(Worker& w, double ms, const grpc::Status& s);
  void BeginJob(Worker& w);
  void SendComplete(Worker& w);
  void OnComplete(Worker& w, double ms, const grpc::Status& s);
  void SendHeartbeat(Worker& w, uint64_t generation);
  void SendFail(Worker& w, const std::string& error);
  void CallDone();
  void Count(int64_t WorkerSimStats::*field);

  WorkerSimOptions o_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::string hostname_;

  std::mutex mu_;  // the timer queue and stopping_
  std::condition_variable cv_;
  std::priority_queue<Timed, std::vector<Timed>, std::greater<Timed>> timers_;
  bool stopping_ = false;
  std::thread timer_thread_;

  std::mutex inflight_mu_;
  std::condition_variable inflight_cv_;
  int inflight_ = 0;

  mutable std::mutex stats_mu_;
  WorkerSimStats stats_;
};

}  // namespace kvsweep

#endif  // KVSWEEP_BENCH_WORKER_SIM_H_

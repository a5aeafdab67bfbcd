// Fault injection, FOR TESTS ONLY (the fault tests in tests/ and the load benchmark): a worker
// that dies, hangs or stalls on a job at a chosen point. Parsed from `--fault` values:
//   crash-on-job-substring:XYZ   abort() when starting a job whose spec JSON contains XYZ
//   hang                         on the first job, stop heartbeating and block forever
//   pause-before-complete:MS     after evaluating, stop heartbeating and wait MS before
//                                reporting (a worker that "comes back" after its lease expired)
//   delay-job:MS                 wait MS (heartbeating) before evaluating each job
#ifndef KVSWEEP_WORKER_FAULT_INJECTION_H_
#define KVSWEEP_WORKER_FAULT_INJECTION_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"

namespace kvsweep {

struct WorkerFaults {
  std::string crash_on_substring;
  bool hang = false;
  int pause_before_complete_ms = 0;
  int delay_job_ms = 0;
};
// kInvalidArgument for an unknown fault.
absl::Status ParseFault(const std::string& text, WorkerFaults* faults);

// Applies WorkerFaults at the points of a job where they act (WorkerLoop::RunJob calls each).
// Without faults every call returns at once.
class FaultInjector {
 public:
  // journal(event, job_id, fence): the worker's journal line for a fault that fires.
  using JournalFn =
      std::function<void(const std::string& event, const std::string& job_id, int64_t fence)>;

  FaultInjector(const WorkerFaults& faults, std::string worker_id, JournalFn journal);

  // A job starts: crash-on-job-substring aborts the process, hang blocks forever.
  void OnJobStart(const std::string& job_id, int64_t fence, const std::string& spec_json) const;
  // Before the evaluation: delay-job waits, checking `keep_going` every 20 ms (the job's
  // progress callback: false once it must stop).
  void BeforeEvaluate(const std::function<bool()>& keep_going) const;
  // pause-before-complete is set: the caller stops heartbeats, then calls PauseBeforeComplete.
  bool pauses_before_complete() const { return faults_.pause_before_complete_ms > 0; }
  void PauseBeforeComplete(const std::string& job_id, int64_t fence) const;

 private:
  const WorkerFaults faults_;
  const std::string worker_id_;
  const JournalFn journal_;
};

}  // namespace kvsweep

#endif  // KVSWEEP_WORKER_FAULT_INJECTION_H_

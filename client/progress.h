// Progress of a sweep for `kvsweep watch`, `kvsweep status` and `kvsweep demo`: a bar, the
// counts per state, each running job's progress as its worker reports it, and an ETA. On a
// terminal the watch line is redrawn in place; otherwise a line is printed whenever the counts
// change.
//
// ETA: while jobs run and report progress, the work left (queued jobs plus the unfinished part
// of each running job) over the rate at which the running jobs progress together (the sum of
// their fractions per second), which assumes the queued jobs take as long as the running ones
// and the same workers run them; before any running job has progressed, from the completion
// rate seen since the watch started; "?" while neither is known.
#ifndef KVSWEEP_CLIENT_PROGRESS_H_
#define KVSWEEP_CLIENT_PROGRESS_H_

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "kvsweep/v1/coordinator.pb.h"
#include "nlohmann/json.hpp"

namespace kvsweep {

// One leased job, as the coordinator's status reports it (kvsweep.v1.RunningJob).
struct RunningJobProgress {
  std::string job_id, worker_id;
  double fraction = 0;  // in [0, 1]
  double per_s = 0;     // fraction gained per second; 0: not known yet
  // Seconds until it ends at its rate so far; NaN while the rate is unknown.
  double eta_s() const;
};

struct ProgressCounts {
  int total = 0, done = 0, leased = 0, queued = 0, failed = 0, quarantined = 0, cancelled = 0;
  std::vector<RunningJobProgress> running;
  int finished() const { return done + failed + quarantined + cancelled; }
  // The counts only (the watch prints a line off a terminal when they change).
  bool operator==(const ProgressCounts& o) const {
    return total == o.total && done == o.done && leased == o.leased && queued == o.queued &&
           failed == o.failed && quarantined == o.quarantined && cancelled == o.cancelled;
  }
};

// The ETA from the running jobs' progress (see the file comment); NaN when none has a rate.
double EtaFromRunningJobs(const ProgressCounts& c);

// The running jobs of a status from the coordinator.
std::vector<RunningJobProgress> RunningJobsOf(const v1::SweepStatus& s);

// `kvsweep status` under a sweep's row: one line per running job ("  job 3f2a9c1b0d4e on w-1:
// 42.0% done, ETA 1m05s"), then "  ETA 9m58s" for the sweep; "" while nothing runs.
std::string RunningJobsText(const ProgressCounts& c);
// `kvsweep status --json`: adds "running" (job_id, worker_id, progress, progress_per_s, eta_s)
// and "eta_s" (null where unknown) to a sweep's object.
void AddRunningJson(const ProgressCounts& c, nlohmann::json* sweep);

// A duration as the ETA shows it ("45s", "3m07s", "2h05m"); "?" for NaN or a negative value.
std::string EtaText(double seconds);

class ProgressBar {
 public:
  explicit ProgressBar(std::FILE* out);
  void Update(const ProgressCounts& c);
  // Ends the line (terminal) so later output starts clean.
  void Finish();
  // The text of one update, without the carriage return (exposed for tests). The bar shows
  // done jobs plus the done fraction of the running ones as '#', then the jobs that ended
  // without a result (failed, quarantined, cancelled) as 'x'.
  static std::string Render(const ProgressCounts& c, double eta_s, int width);

 private:
  std::FILE* out_;
  bool tty_;
  bool started_ = false;
  ProgressCounts first_, last_;
  std::chrono::steady_clock::time_point t0_;
};

}  // namespace kvsweep

#endif  // KVSWEEP_CLIENT_PROGRESS_H_

// A progress line for `kvsweep watch` and `kvsweep demo`: a bar, the counts per state and an
// ETA from the completion rate seen so far. On a terminal it redraws one line; otherwise it
// prints a line whenever the counts change.
#ifndef KVSWEEP_CLIENT_PROGRESS_H_
#define KVSWEEP_CLIENT_PROGRESS_H_

#include <chrono>
#include <cstdio>
#include <string>

namespace kvsweep {

struct ProgressCounts {
  int total = 0, done = 0, leased = 0, queued = 0, failed = 0, quarantined = 0, cancelled = 0;
  int finished() const { return done + failed + quarantined + cancelled; }
  bool operator==(const ProgressCounts& o) const {
    return total == o.total && done == o.done && leased == o.leased && queued == o.queued &&
           failed == o.failed && quarantined == o.quarantined && cancelled == o.cancelled;
  }
};

class ProgressBar {
 public:
  explicit ProgressBar(std::FILE* out);
  void Update(const ProgressCounts& c);
  // Ends the line (terminal) so later output starts clean.
  void Finish();
  // The text of one update, without the carriage return (exposed for tests).
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

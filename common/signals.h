// SIGTERM/SIGINT as ordinary callbacks. The handler only writes the signal number to a pipe
// (async-signal-safe); a thread reads it and calls `on_signal`. Works whichever thread the kernel
// delivers the signal to — libraries such as libtorch start threads before main() could block
// signals, so sigwait-based handling is not reliable in processes that link them.
#ifndef KVSWEEP_COMMON_SIGNALS_H_
#define KVSWEEP_COMMON_SIGNALS_H_

#include <signal.h>

#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"

namespace kvsweep {

class ShutdownSignals {
 public:
  // One instance per process at a time (kFailedPrecondition otherwise); kInternal if the pipe
  // or the handlers cannot be set up. `on_signal` runs on the reader thread, once per signal.
  // `signals`: the ones handled (a supervised worker drains on SIGUSR1 instead).
  static absl::StatusOr<std::unique_ptr<ShutdownSignals>> Install(
      std::function<void(int sig)> on_signal, std::vector<int> signals = {SIGTERM, SIGINT});
  // Restores the default dispositions and joins the reader thread.
  ~ShutdownSignals();
  ShutdownSignals(const ShutdownSignals&) = delete;
  ShutdownSignals& operator=(const ShutdownSignals&) = delete;

 private:
  ShutdownSignals() = default;
  std::function<void(int)> on_signal_;
  std::vector<int> signals_;
  std::thread reader_;
};

}  // namespace kvsweep

#endif  // KVSWEEP_COMMON_SIGNALS_H_

// Child processes for `kvsweep demo`, the worker's device supervisor, the end-to-end tests and
// the load benchmark: spawn with arguments and extra environment, send signals, wait with a
// timeout. A child gets SIGKILL if its parent dies (PR_SET_PDEATHSIG), and a Subprocess that is
// destroyed while its child runs kills it, so a failing test never leaves processes behind.
#ifndef KVSWEEP_COMMON_SUBPROCESS_H_
#define KVSWEEP_COMMON_SUBPROCESS_H_

#include <sys/types.h>

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace kvsweep {

class Subprocess {
 public:
  struct Options {
    std::map<std::string, std::string> env;  // added to (or replacing in) the parent's
    std::string stdout_path;                 // "" = inherit
    std::string stderr_path;                 // "" = inherit; may equal stdout_path
  };
  // kNotFound if `argv[0]` is not an executable file; kInternal if fork fails.
  static absl::StatusOr<std::unique_ptr<Subprocess>> Spawn(const std::vector<std::string>& argv,
                                                           const Options& options);
  ~Subprocess();
  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;

  pid_t pid() const { return pid_; }
  bool Running();
  void Signal(int sig);
  // Waits up to `timeout` for the child to exit. Returns its wait status (see WIFEXITED...),
  // or nullopt if it is still running.
  std::optional<int> Wait(std::chrono::milliseconds timeout);
  // The status of an exited child (Wait returned it before).
  std::optional<int> exit_status() const { return status_; }

 private:
  explicit Subprocess(pid_t pid) : pid_(pid) {}
  pid_t pid_;
  std::optional<int> status_;
};

// Describes a wait status: "exit 0", "exit 2", "signal 9 (Killed)".
std::string DescribeWaitStatus(int status);

// The directory of the running executable (/proc/self/exe).
std::string SelfDir();

}  // namespace kvsweep

#endif  // KVSWEEP_COMMON_SUBPROCESS_H_

// kvsweep-worker --devices: one worker process per device of a multi-GPU host, supervised by
// the process that was started.
//
// The supervisor execs its own binary once per device slot with the same arguments, less
// --devices, --max-restarts and --worker-id, plus `--device D --worker-id <base>-<tag>
// --supervised`. Each child is an ordinary worker: its own engine, its own leases and its own
// loaded model, which it advertises on every Lease (held_model), so model affinity is per
// device.
//
// - Signals: a supervised worker ignores SIGTERM and SIGINT and drains on SIGUSR1 instead (a
//   second SIGUSR1 hands its job back at once). Ctrl-C in a terminal, systemd's stop and
//   scancel signal every process of the group or cgroup; this way each worker sees each stop
//   request once, through the supervisor. Each SIGTERM/SIGINT the supervisor gets becomes one
//   SIGUSR1 to every running child (the first drains, the second hands the current jobs back
//   at once, as for a single worker); from the first one on, nothing is restarted. SIGUSR1 sent
//   to one child drains that device alone.
// - A child that crashes (killed by a signal, or an exit status other than 0 and 2) is started
//   again under the same worker id, so it reports what its spool holds; the lease the dead
//   process held expires (lease TTL) and its job is run again, by any worker.
//   Restarts wait restart_backoff_ms, doubling per consecutive crash up to 60 s; after
//   max_restarts consecutive crashes the child is given up. A child that ran for 10 minutes
//   before crashing starts a new count.
// - Exit 0 (drained, or --exit-when-idle) ends a child for good, and so does exit 2 (the
//   worker's error exit: a bad setting or a coordinator that refuses it; a restart would only
//   repeat it).
// - Run returns once every child has ended for good: 0 if each exited 0, 1 otherwise.
//
// The children die with the supervisor (PR_SET_PDEATHSIG, common/subprocess.h).
#ifndef KVSWEEP_WORKER_DEVICE_SUPERVISOR_H_
#define KVSWEEP_WORKER_DEVICE_SUPERVISOR_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/mutex.h"

namespace kvsweep {

// One child worker: the --device it gets and the suffix of its worker id.
struct DeviceSlot {
  std::string device;          // "cpu", "cuda:1", or a pipeline group "cuda:0,cuda:1"
  std::string tag;             // "cpu0", "cuda1", "cuda0+1"
  std::string metrics_listen;  // the worker's --metrics-listen ("": none)
  bool operator==(const DeviceSlot& o) const {
    return device == o.device && tag == o.tag && metrics_listen == o.metrics_listen;
  }
};

// Parses --devices:
//   all        every CUDA device, one worker each; `cuda_devices` is how many there are (0 on a
//              CPU-only build or machine: then one CPU worker)
//   0,1,3      these CUDA devices, one worker each
//   0+1,2+3    one worker per '+' group, the model's layers split across the group's GPUs
//   cpu:N      N CPU workers (1 <= N <= 256)
// An index at or beyond `cuda_devices`, a device named twice, or anything else: kInvalidArgument
// with a one-line message.
absl::StatusOr<std::vector<DeviceSlot>> ParseDeviceSlots(const std::string& spec, int cuda_devices);

// --metrics-listen with --devices: worker i (in --devices order) serves HOST:PORT+i, so that
// each worker of the host has its own /metrics. kInvalidArgument for port 0 (the workers'
// ports could not be known) or a range past 65535, naming the flag.
absl::Status AssignMetricsAddresses(const std::string& listen, std::vector<DeviceSlot>* slots);

// The child's argv: `argv` (the supervisor's own, argv[0] replaced by `self_exe`) without
// --devices, --max-restarts, --worker-id and --metrics-listen (as "--flag V" or "--flag=V"),
// plus --device <slot.device> --worker-id <base_id>-<slot.tag> [--metrics-listen
// <slot.metrics_listen>] --supervised. A --metrics-listen on the command line wins over the
// KVSWEEP_METRICS_LISTEN the workers inherit.
std::vector<std::string> ChildArgv(const std::string& self_exe,
                                   const std::vector<std::string>& argv, const DeviceSlot& slot,
                                   const std::string& base_id);

struct SupervisorOptions {
  std::string self_exe;           // this binary (/proc/self/exe)
  std::vector<std::string> argv;  // the supervisor's command line
  std::vector<DeviceSlot> slots;
  std::string base_id;            // worker id base; each child is <base_id>-<tag>
  int max_restarts = 5;           // consecutive crashes of one child before it is given up
  int restart_backoff_ms = 1000;  // first restart delay; doubles up to 60 s
};

class DeviceSupervisor {
 public:
  explicit DeviceSupervisor(SupervisorOptions options);
  DeviceSupervisor(const DeviceSupervisor&) = delete;
  DeviceSupervisor& operator=(const DeviceSupervisor&) = delete;

  // Starts the children and supervises them until each has ended for good (see file comment).
  // Returns the process exit code.
  int Run();
  // A stop request (SIGTERM or SIGINT): one SIGUSR1 to each running child; no restarts from
  // now on. Any thread.
  void Forward(int sig) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  SupervisorOptions options_;
  Mutex mu_;
  CondVar cv_;
  std::vector<int> pending_signals_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvsweep

#endif  // KVSWEEP_WORKER_DEVICE_SUPERVISOR_H_

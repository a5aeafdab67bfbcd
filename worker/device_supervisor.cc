#include "worker/device_supervisor.h"

#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <optional>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/log.h"
#include "common/subprocess.h"
#include "rpc/http_listen.h"

namespace kvsweep {

namespace {

using Clock = std::chrono::steady_clock;

constexpr int kMaxCpuWorkers = 256;
constexpr auto kStableRun = std::chrono::minutes(10);
constexpr int kMaxBackoffMs = 60000;

absl::Status Bad(const std::string& spec, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat("--devices '", spec, "': ", why));
}

}  // namespace

absl::StatusOr<std::vector<DeviceSlot>> ParseDeviceSlots(const std::string& spec,
                                                         int cuda_devices) {
  std::vector<DeviceSlot> slots;
  if (spec == "all") {
    if (cuda_devices <= 0) return std::vector<DeviceSlot>{{"cpu", "cpu0"}};
    for (int i = 0; i < cuda_devices; ++i) {
      slots.push_back({absl::StrCat("cuda:", i), absl::StrCat("cuda", i)});
    }
    return slots;
  }
  if (spec.rfind("cpu:", 0) == 0) {
    int n = 0;
    if (!absl::SimpleAtoi(spec.substr(4), &n) || n < 1 || n > kMaxCpuWorkers) {
      return Bad(spec, absl::StrCat("cpu:N needs 1 <= N <= ", kMaxCpuWorkers));
    }
    for (int i = 0; i < n; ++i) slots.push_back({"cpu", absl::StrCat("cpu", i)});
    return slots;
  }
  if (spec.empty()) return Bad(spec, "empty (all, 0,1,..., 0+1,2+3 or cpu:N)");
  std::set<int> used;
  for (absl::string_view group : absl::StrSplit(spec, ',')) {
    std::vector<std::string> devices, indices;
    for (absl::string_view idx : absl::StrSplit(group, '+')) {
      int i = -1;
      // SimpleAtoi admits "+3" and " 3": only plain digits are indices here.
      const bool digits = !idx.empty() && std::all_of(idx.begin(), idx.end(),
                                                      [](char c) { return c >= '0' && c <= '9'; });
      if (!digits || idx.size() > 4 || !absl::SimpleAtoi(idx, &i)) {
        return Bad(spec, absl::StrCat("'", idx,
                                      "' is not a CUDA device index (all, 0,1,..., 0+1,2+3 or "
                                      "cpu:N)"));
      }
      if (i >= cuda_devices) {
        return Bad(spec,
                   absl::StrCat("CUDA device ", i, " does not exist (", cuda_devices, " present)"));
      }
      if (!used.insert(i).second) return Bad(spec, absl::StrCat("CUDA device ", i, " named twice"));
      devices.push_back(absl::StrCat("cuda:", i));
      indices.push_back(absl::StrCat(i));
    }
    slots.push_back(
        {absl::StrJoin(devices, ","), absl::StrCat("cuda", absl::StrJoin(indices, "+"))});
  }
  return slots;
}

std::vector<std::string> ChildArgv(const std::string& self_exe,
                                   const std::vector<std::string>& argv, const DeviceSlot& slot,
                                   const std::string& base_id) {
  static const char* const kDropped[] = {"--devices", "--max-restarts", "--worker-id",
                                         "--metrics-listen"};
  std::vector<std::string> out = {self_exe};
  for (size_t i = 1; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    bool dropped = false;
    for (const char* flag : kDropped) {
      if (a == flag) {
        ++i;  // and its value
        dropped = true;
        break;
      }
      if (a.rfind(absl::StrCat(flag, "="), 0) == 0) {
        dropped = true;
        break;
      }
    }
    if (!dropped) out.push_back(a);
  }
  out.insert(out.end(),
             {"--device", slot.device, "--worker-id", absl::StrCat(base_id, "-", slot.tag)});
  if (!slot.metrics_listen.empty())
    out.insert(out.end(), {"--metrics-listen", slot.metrics_listen});
  out.push_back("--supervised");
  return out;
}

absl::Status AssignMetricsAddresses(const std::string& listen, std::vector<DeviceSlot>* slots) {
  absl::StatusOr<ListenAddress> a = ParseListenAddress("--metrics-listen", listen);
  if (!a.ok()) return a.status();
  if (a->port == 0) {
    return absl::InvalidArgumentError(
        "--metrics-listen: with --devices give a fixed PORT (worker i serves PORT+i); port 0 "
        "would hide where each worker serves");
  }
  const int last = a->port + static_cast<int>(slots->size()) - 1;
  if (last > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("--metrics-listen: ", slots->size(),
                                                   " workers need ports ", a->port, "..", last,
                                                   ", past 65535"));
  }
  const bool v6 = a->host.find(':') != std::string::npos;
  for (size_t i = 0; i < slots->size(); ++i) {
    (*slots)[i].metrics_listen =
        absl::StrCat(v6 ? "[" : "", a->host, v6 ? "]" : "", ":", a->port + static_cast<int>(i));
  }
  return absl::OkStatus();
}

DeviceSupervisor::DeviceSupervisor(SupervisorOptions options) : options_(std::move(options)) {}

void DeviceSupervisor::Forward(int sig) {
  MutexLock lock(&mu_);
  pending_signals_.push_back(sig);
  cv_.SignalAll();
}

int DeviceSupervisor::Run() {
  struct Child {
    DeviceSlot slot;
    std::string worker_id;
    std::unique_ptr<Subprocess> process;
    Clock::time_point started;
    std::optional<Clock::time_point> restart_at;  // waiting to be started again
    int crashes = 0;                              // consecutive
    bool done = false;
    bool failed = false;
  };
  std::vector<Child> children;
  for (const DeviceSlot& slot : options_.slots) {
    Child c;
    c.slot = slot;
    c.worker_id = absl::StrCat(options_.base_id, "-", slot.tag);
    c.restart_at = Clock::now();
    children.push_back(std::move(c));
  }
  bool stopping = false;
  KV_LOG(INFO) << "supervising " << children.size() << " worker(s) on "
               << absl::StrJoin(options_.slots, " ", [](std::string* out, const DeviceSlot& s) {
                    absl::StrAppend(out, s.device);
                  });

  auto start = [&](Child& c) {
    c.restart_at.reset();
    absl::StatusOr<std::unique_ptr<Subprocess>> p = Subprocess::Spawn(
        ChildArgv(options_.self_exe, options_.argv, c.slot, options_.base_id), {});
    if (!p.ok()) {
      KV_LOG(ERROR) << "worker " << c.worker_id << ": cannot start: " << p.status().message();
      c.done = c.failed = true;
      return;
    }
    c.process = std::move(*p);
    c.started = Clock::now();
    KV_LOG(INFO) << "worker " << c.worker_id << " (" << c.slot.device << ") started, pid "
                 << c.process->pid();
  };

  for (;;) {
    std::vector<int> signals;
    {
      MutexLock lock(&mu_);
      signals.swap(pending_signals_);
    }
    for (int sig : signals) {
      if (!stopping) {
        KV_LOG(INFO) << "supervisor: " << strsignal(sig) << ", forwarding to the workers; no "
                     << "more restarts";
      }
      stopping = true;
      for (Child& c : children) {
        // Supervised workers drain on SIGUSR1 (see ChildArgv), each one per signal received.
        if (c.process != nullptr && c.process->Running()) c.process->Signal(SIGUSR1);
        if (c.restart_at) {  // never started again
          c.restart_at.reset();
          c.done = true;
        }
      }
    }

    const Clock::time_point now = Clock::now();
    bool all_done = true;
    for (Child& c : children) {
      if (c.done) continue;
      all_done = false;
      if (c.restart_at) {
        if (now >= *c.restart_at) start(c);
        continue;
      }
      if (c.process->Running()) continue;
      const int st = *c.process->exit_status();
      const std::string how = DescribeWaitStatus(st);
      c.process.reset();
      const bool clean = WIFEXITED(st) && WEXITSTATUS(st) == 0;
      const bool refused = WIFEXITED(st) && WEXITSTATUS(st) == 2;
      if (clean || refused || stopping) {
        c.done = true;
        c.failed = !clean;
        if (clean) {
          KV_LOG(INFO) << "worker " << c.worker_id << " ended (" << how << ")";
        } else {
          KV_LOG(ERROR) << "worker " << c.worker_id << " ended (" << how << ")";
        }
        continue;
      }
      if (now - c.started >= kStableRun) c.crashes = 0;
      if (c.crashes >= options_.max_restarts) {
        KV_LOG(ERROR) << "worker " << c.worker_id << " ended (" << how << ") after " << c.crashes
                      << " restart(s) in a row; giving it up";
        c.done = c.failed = true;
        continue;
      }
      int64_t backoff = options_.restart_backoff_ms;
      for (int i = 0; i < c.crashes && backoff < kMaxBackoffMs; ++i) backoff *= 2;
      backoff = std::min<int64_t>(backoff, kMaxBackoffMs);
      ++c.crashes;
      KV_LOG(WARNING) << "worker " << c.worker_id << " crashed (" << how << "); restart "
                      << c.crashes << " of " << options_.max_restarts << " in " << backoff << " ms";
      c.restart_at = now + std::chrono::milliseconds(backoff);
    }
    if (all_done) break;
    MutexLock lock(&mu_);
    if (pending_signals_.empty()) {
      cv_.WaitUntil(&mu_, Clock::now() + std::chrono::milliseconds(50));
    }
  }
  int failed = 0;
  for (const Child& c : children) failed += c.failed ? 1 : 0;
  if (failed > 0) {
    KV_LOG(ERROR) << "supervisor: " << failed << " of " << children.size()
                  << " worker(s) ended in failure";
    return 1;
  }
  KV_LOG(INFO) << "supervisor: every worker ended cleanly";
  return 0;
}

}  // namespace kvsweep

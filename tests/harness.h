// Test harness for integration and end-to-end tests: real `kvsweep-coordinator`,
// `kvsweep-worker` and `kvsweep` processes talking gRPC on loopback (ephemeral ports), each test
// in its own temporary directory. Every wait has a timeout; child processes are killed when the
// harness objects go away (and by PR_SET_PDEATHSIG if the test process dies).
//
// Evaluator: with the libtorch engine built (KVSWEEP_TEST_ENGINE), workers run the real engine on
// small LAMBADA jobs; otherwise the fake evaluator. Tests do not care which, except where noted.
#ifndef KVSWEEP_TESTS_HARNESS_H_
#define KVSWEEP_TESTS_HARNESS_H_

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/subprocess.h"
#include "gtest/gtest.h"
#include "kvsweep/v1/coordinator.grpc.pb.h"
#include "storage/result_store.h"

namespace kvsweep {
namespace testing {

#ifdef KVSWEEP_TEST_ENGINE
inline constexpr bool kEngine = true;
#else
inline constexpr bool kEngine = false;
#endif

// A fresh directory under the test temp dir.
std::string MakeTempDir(const std::string& stem);

// Polls `pred` every 20 ms until it holds or `timeout` passes.
bool WaitUntil(const std::function<bool()>& pred, std::chrono::milliseconds timeout);

// A TCP port on 127.0.0.1 that is free now (bound, then released: the caller binds it next).
int FreePort();
// The first of `n` consecutive TCP ports on 127.0.0.1 that are free now (as FreePort).
int FreePortRange(int n);

struct HttpResponse {
  int status = 0;  // 0: no answer
  std::string headers, body;
};
// One HTTP/1.0 request to 127.0.0.1:port (the server closes when done; 30 s read timeout).
HttpResponse Http(int port, const std::string& path, const std::string& authorization = "",
                  const std::string& method = "GET");

struct CommandResult {
  int exit_code = -1;  // -1: killed by a signal or timed out
  std::string out, err;
};

class Harness {
 public:
  explicit Harness(const std::string& name);
  ~Harness();

  const std::string& dir() const { return dir_; }
  const std::string& db() const { return db_; }
  // Puts the database elsewhere (before StartCoordinator).
  void set_db(const std::string& path) { db_ = path; }
  std::string address() const;
  int port() const { return port_; }

  struct CoordinatorFlags {
    int lease_ttl_ms = 2000;
    int retry_base_ms = 100;
    int quarantine_after = 3;
    std::string listen_host = "127.0.0.1";  // tests always dial 127.0.0.1
    std::vector<std::string> extra;
  };
  // Starts the coordinator (on `port` if non-zero, else an ephemeral one) and waits until it
  // serves. Fails the test if it does not.
  void StartCoordinator(const CoordinatorFlags& flags, int port = 0);
  void StartCoordinator() { StartCoordinator(CoordinatorFlags()); }
  Subprocess* coordinator() { return coordinator_.get(); }
  // kill -9.
  void KillCoordinator();
  // SIGTERM and wait for exit 0.
  void StopCoordinator();

  struct WorkerFlags {
    int fake_sleep_ms = 150;  // fake evaluator only
    // Use the fake evaluator even when the engine is built (tests of orchestration alone).
    bool force_fake = false;
    std::vector<std::string> extra;  // e.g. --fault ..., --drain-timeout-ms
    // Non-empty: --devices DEVICES (a supervisor of one worker per device) instead of
    // --device cpu.
    std::string devices;
  };
  // Starts a worker; returns its index. Its journal is journal(i), its log log(i).
  int StartWorker(const WorkerFlags& flags);
  int StartWorker() { return StartWorker(WorkerFlags()); }
  // SIGTERM to every worker still running, and waits for each to exit 0: after it, their
  // journals are complete (a worker journals a result "recorded" once the coordinator's answer
  // reaches it, which can be after the database shows the job done).
  void StopWorkers();
  Subprocess* worker(int i) { return workers_[i].get(); }
  int num_workers() const { return static_cast<int>(workers_.size()); }
  std::string journal(int i) const;
  std::string log(int i) const;
  // Journal lines of worker i, split into fields: [unix_ms, event, job_id, fence, ...].
  std::vector<std::vector<std::string>> JournalEvents(int i) const;

  // Runs the kvsweep CLI against this coordinator (adds --coordinator).
  CommandResult Cli(const std::vector<std::string>& args,
                    std::chrono::seconds timeout = std::chrono::seconds(120));

  // Writes `text` to dir/<name> and returns the path.
  std::string WriteFile(const std::string& name, const std::string& text) const;

  // A sweep on the assets' ref-llama: `methods` (YAML list items), LAMBADA with a small limit.
  std::string SweepYaml(const std::string& name, const std::vector<std::string>& methods,
                        const std::string& kv_heads = "[native]") const;
  // `n` distinct jobs every engine can run: method none on ref-llama, LAMBADA with limits
  // 1..n (tasks l1..ln). Job k's spec JSON contains `"limit":k,`.
  std::string DistinctJobsYaml(const std::string& name, int n) const;
  // Submits through the CLI and checks it worked.
  void Submit(const std::string& yaml_path);

  // Direct stubs for RPC-level tests (a bearer token goes in each call's context).
  std::unique_ptr<v1::SweepService::Stub> SweepStub();
  std::unique_ptr<v1::WorkerService::Stub> WorkerStub();

  // The database, read-only (opened per call, so it sees the latest commits).
  std::unique_ptr<ResultStore> OpenDb() const;
  // One integer from SQL (fails the test on error).
  int64_t SqlInt(const std::string& sql) const;
  std::vector<std::vector<std::string>> SqlRows(const std::string& sql) const;
  SweepInfo Sweep(const std::string& name) const;
  // Waits until the sweep has nothing queued or leased.
  bool WaitFinished(const std::string& sweep, std::chrono::seconds timeout);

  // The invariants every scenario ends with: integrity_check ok, results = done jobs, no
  // duplicate results, every job of `sweep` final, done = total - `expected_not_done`.
  void CheckInvariants(const std::string& sweep, int expected_not_done = 0) const;

  // Prints the logs of every process (on failure).
  void DumpLogs() const;

 private:
  std::string dir_, db_;
  int port_ = 0;
  std::unique_ptr<Subprocess> coordinator_;
  int coordinator_runs_ = 0;
  std::vector<std::unique_ptr<Subprocess>> workers_;
};

std::string CoordinatorBin();
std::string WorkerBin();
std::string CliBin();

}  // namespace testing
}  // namespace kvsweep

#endif  // KVSWEEP_TESTS_HARNESS_H_

// kvsweep-worker: evaluates jobs it pulls from a kvsweep-coordinator.
//
//   kvsweep-worker --coordinator HOST:PORT --device cpu|cuda[:i] [--evaluator engine|fake]
//       [--threads N] [--worker-id ID] [--token-file F] [--tls] [--tls-ca F]
//       [--tls-cert F --tls-key F] [--drain-timeout-ms MS] [--journal FILE]
//       [--exit-when-idle SECONDS] [--metrics-listen [HOST:]PORT] [--config FILE]
//       [--stage never|auto|always] [--cache-dir DIR] [--cache-max-bytes SIZE]
//   kvsweep-worker --devices all|0,1,...|0+1,2+3|cpu:N [--max-restarts N] ...
//       (one supervised worker process per device: worker/device_supervisor.h)
//   kvsweep-worker eval --model DIR --task ... --format json     (one job, no coordinator)
//   kvsweep-worker generate ...                                   (greedy generation)
//
// The connection settings (--coordinator, --token-file, --tls, --tls-*), --device, --spool-dir,
// --metrics-listen, --stage and --cache-max-bytes also come from KVSWEEP_<FLAG> variables
// (KVSWEEP_COORDINATOR, KVSWEEP_TLS_CA, KVSWEEP_STAGE, ...), --cache-dir from
// KVSWEEP_FILE_CACHE_DIR (KVSWEEP_CACHE_DIR is kvsweep's cache directory, the default's parent),
// and all of them from --config FILE; the command line wins over the environment, which wins
// over the file.
//
// SIGTERM/SIGINT: drain (finish or hand back the current job, take no new lease, exit 0);
// a second signal hands the current job back at once. With --devices, the supervisor takes
// them and passes each on to its workers (as SIGUSR1, on which a supervised worker drains).
//
// --evaluator=fake and --fault exist FOR TESTS AND BENCHMARKS ONLY: the fake evaluator's
// metrics are placeholders, and faults make the worker crash, hang or report late on purpose.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <iostream>
#include <regex>
#include <thread>

#include "CLI/CLI.hpp"
#include "common/cli_config.h"
#include "common/log.h"
#include "common/signals.h"
#include "rpc/rpc_util.h"
#include "worker/device_supervisor.h"
#include "worker/fake_evaluator.h"
#include "worker/worker_loop.h"
#include "worker/worker_metrics.h"

#ifdef KVSWEEP_HAVE_ENGINE
#include "worker/engine_evaluator.h"
#include "worker/eval_command.h"
#include "worker/generate_command.h"
#endif

namespace {

constexpr bool kHaveEngine =
#ifdef KVSWEEP_HAVE_ENGINE
    true;
#else
    false;
#endif

int Fail(const std::string& msg) {
  std::cerr << "kvsweep-worker: " << msg << "\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace kvsweep;
  InitRpcProcess();
  if (argc >= 2 && (std::string(argv[1]) == "eval" || std::string(argv[1]) == "generate")) {
#ifdef KVSWEEP_HAVE_ENGINE
    if (std::string(argv[1]) == "eval") return RunEvalCommand(argc - 1, argv + 1);
    return RunGenerateCommand(argc - 1, argv + 1);
#else
    return Fail(std::string("this kvsweep-worker was built without the libtorch engine; `") +
                argv[1] + "` needs it (configure with -DKVSWEEP_WITH_TORCH=ON)");
#endif
  }

  WorkerOptions o;
  std::string evaluator = "engine";
  std::string token_file;
  std::vector<std::string> faults;
  int threads = 0;
  FakeEvaluatorOptions fake;
  bool version = false;
  CLI::App app{"kvsweep-worker: pulls KV-cache compression jobs from a kvsweep-coordinator"};
  app.add_flag("--version", version, "print the version and whether the engine is built in");
  WithEnv(app.add_option("--coordinator", o.coordinator.address, "coordinator address (host:port)"))
      ->capture_default_str();
  WithEnv(app.add_option("--device", o.device,
                         "cpu, cuda, cuda:N, or cuda:0,cuda:1,... (one model split layer-wise "
                         "across those GPUs)"))
      ->capture_default_str();
  app.add_option("--evaluator", evaluator,
                 "engine (libtorch) or fake (placeholder numbers: tests and benchmarks only)")
      ->capture_default_str();
  app.add_option("--threads", threads, "CPU threads for the engine (0: its default)")
      ->check(CLI::Range(0, 1024));
  app.add_option("--fake-sleep-ms", fake.sleep_ms, "fake evaluator: time per job")
      ->check(CLI::Range(0, 86400000))
      ->capture_default_str();
  app.add_option("--worker-id", o.worker_id, "worker id (default <hostname>-<pid>)");
  WithEnv(
      app.add_option("--token-file", token_file, "file holding the coordinator's bearer token"));
  WithEnv(
      app.add_flag("--tls", o.coordinator.tls, "use TLS (with the system roots unless --tls-ca)"));
  WithEnv(app.add_option("--tls-ca", o.coordinator.tls_files.ca,
                         "CA that signed the coordinator's cert"));
  WithEnv(app.add_option("--tls-cert", o.coordinator.tls_files.cert, "client certificate (mTLS)"));
  WithEnv(app.add_option("--tls-key", o.coordinator.tls_files.key, "client private key (mTLS)"));
  WithEnv(app.add_option("--tls-server-name", o.coordinator.tls_server_name,
                         "name to expect in the coordinator's certificate"));
  app.add_option("--drain-timeout-ms", o.drain_timeout_ms,
                 "on SIGTERM, let the current job run this long before handing it back")
      ->check(CLI::Range(0, 86400000))
      ->capture_default_str();
  int exit_when_idle_s = 0;
  app.add_option("--exit-when-idle", exit_when_idle_s,
                 "exit 0 (as drained) after this many seconds without a job (0: never); batch "
                 "jobs such as Slurm arrays end this way once the queue drains")
      ->check(CLI::Range(0, 31536000))
      ->capture_default_str();
  app.add_option("--rpc-timeout-ms", o.rpc_timeout_ms, "deadline of each call")
      ->check(CLI::Range(100, 600000))
      ->capture_default_str();
  app.add_option("--journal", o.journal_path,
                 "append one line per event (lease, recorded, rejected, ...) to this file");
  o.spool_dir = DefaultSpoolDir();
  WithEnv(app.add_option("--spool-dir", o.spool_dir,
                         "finished results are kept here (fsynced) until the coordinator has "
                         "them; a worker restarted with the same --worker-id reports them first "
                         "('' = off)"))
      ->capture_default_str();
  std::string stage = "auto", cache_max = "20G";
  WithEnv(app.add_option("--stage", stage,
                         "input files: never (use the spec's paths), auto (use a file where it is "
                         "when its content is the one the job recorded, else fetch it from the "
                         "coordinator) or always (fetch them)"))
      ->capture_default_str();
  // Not KVSWEEP_CACHE_DIR: that variable names kvsweep's cache directory (the sha256 cache of
  // every binary), whose files/ subdirectory is this option's default.
  app.add_option("--cache-dir", o.staging.cache_dir,
                 "cache of fetched input files (default $KVSWEEP_CACHE_DIR/files or "
                 "~/.cache/kvsweep/files)")
      ->envname("KVSWEEP_FILE_CACHE_DIR");
  WithEnv(app.add_option("--cache-max-bytes", cache_max,
                         "size limit of --cache-dir (K, M, G, T suffixes); least recently used "
                         "files not in use are evicted"))
      ->capture_default_str();
  app.add_option("--reconnect-max-ms", o.reconnect_max_ms,
                 "longest wait between attempts to reach the coordinator")
      ->check(CLI::Range(100, 5000))
      ->capture_default_str();
  std::string metrics_listen;
  WithEnv(app.add_option("--metrics-listen", metrics_listen,
                         "serve Prometheus metrics at http://HOST:PORT/metrics (a bare PORT: "
                         "127.0.0.1:PORT)"));
  app.add_option("--fault", faults,
                 "TEST ONLY: crash-on-job-substring:XYZ | hang | pause-before-complete:MS | "
                 "delay-job:MS");
  std::string devices;
  int max_restarts = 5;
  bool supervised = false;
  // Command line only: the supervisor removes them from its workers' command lines, which a
  // config file or the environment would not.
  app.add_option("--devices", devices,
                 "one supervised worker process per device: all (every CUDA device; one CPU "
                 "worker where there is none), CUDA indices 0,1,..., pipeline groups 0+1,2+3 "
                 "(one worker per group, its model's layers split across the group), or cpu:N")
      ->configurable(false);
  app.add_option("--max-restarts", max_restarts,
                 "--devices: restarts of a crashing worker in a row before it is given up")
      ->check(CLI::Range(0, 1000))
      ->capture_default_str()
      ->configurable(false);
  app.add_flag("--supervised", supervised,
               "set by the --devices supervisor: drain on SIGUSR1, ignore SIGTERM/SIGINT")
      ->group("")
      ->configurable(false);
  AddConfigFile(&app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    return Fail(e.what());
  }
  o.exit_when_idle_ms = int64_t{exit_when_idle_s} * 1000;
  if (version) {
    std::cout << "kvsweep-worker 0.1.0 (engine: " << (kHaveEngine ? "yes" : "no") << ")\n";
    return 0;
  }
  if (absl::Status a = ValidateAddress(o.coordinator.address); !a.ok()) {
    return Fail("--coordinator: " + std::string(a.message()));
  }
  // A comma-separated group is one engine with the model's layers split across the devices
  // (worker/engine/placement.h).
  if (!std::regex_match(o.device, std::regex("(cpu|cuda(:[0-9]+)?)(,(cpu|cuda(:[0-9]+)?))*"))) {
    return Fail("--device: '" + o.device +
                "' is not cpu, cuda, cuda:N or a pipeline group such as cuda:0,cuda:1");
  }
  {
    absl::StatusOr<StageMode> m = ParseStageMode(stage);
    if (!m.ok()) return Fail(std::string(m.status().message()));
    o.staging.mode = *m;
    absl::StatusOr<int64_t> max = ParseByteSize(cache_max);
    if (!max.ok()) return Fail("--cache-max-bytes: " + std::string(max.status().message()));
    o.staging.cache_max_bytes = *max;
  }
  for (const std::string& f : faults) {
    absl::Status s = ParseFault(f, &o.faults);
    if (!s.ok()) return Fail(std::string(s.message()));
  }
  if (!o.journal_path.empty()) {
    // The worker loop appends to it; a journal that cannot be written is refused here, not
    // found missing after the run.
    const int fd = ::open(o.journal_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
      return Fail("--journal: cannot open '" + o.journal_path + "': " + std::strerror(errno));
    }
    ::close(fd);
  }
  if (!token_file.empty()) {
    absl::StatusOr<std::string> t = ReadTokenFile(token_file);
    if (!t.ok()) return Fail(std::string(t.status().message()));
    o.coordinator.token = *t;
  }
  std::unique_ptr<Evaluator> eval;
  (void)threads;  // only the engine uses it
  if (evaluator == "fake") {
    eval = NewFakeEvaluator(fake);
  } else if (evaluator == "engine") {
#ifdef KVSWEEP_HAVE_ENGINE
    // A device this worker cannot use would fail every job it leases: refused at start.
    // (--devices names each supervised worker's device, which that worker checks.)
    if (devices.empty()) {
      if (absl::Status d = CheckEngineDevice(o.device); !d.ok()) {
        return Fail("--device: " + std::string(d.message()));
      }
    }
    eval = NewEngineEvaluator(o.device, threads);
#else
    return Fail(
        "this kvsweep-worker was built without the libtorch engine (configure with "
        "-DKVSWEEP_WITH_TORCH=ON); only --evaluator=fake is available, and its numbers "
        "are placeholders");
#endif
  } else {
    return Fail("--evaluator: '" + evaluator + "' is not engine or fake");
  }
  o.evaluator_name = evaluator;
  if (!devices.empty()) {
    const std::vector<std::string> args(argv, argv + argc);
    for (const std::string& a : args) {
      if (a == "--device" || a.rfind("--device=", 0) == 0) {
        return Fail(
            "--device and --devices exclude each other (--devices gives each worker its "
            "--device)");
      }
    }
    if (supervised) return Fail("--devices: a supervised worker cannot supervise");
#ifdef KVSWEEP_HAVE_ENGINE
    const int cuda_devices = evaluator == "engine" ? EngineCudaDeviceCount() : 0;
#else
    const int cuda_devices = 0;
#endif
    absl::StatusOr<std::vector<DeviceSlot>> slots = ParseDeviceSlots(devices, cuda_devices);
    if (!slots.ok()) return Fail(std::string(slots.status().message()));
    if (!metrics_listen.empty()) {
      if (absl::Status m = AssignMetricsAddresses(metrics_listen, &*slots); !m.ok()) {
        return Fail(std::string(m.message()));
      }
    }
    if (devices == "all" && cuda_devices == 0) {
      KV_LOG(WARNING) << "--devices all: no CUDA device (a CPU-only build or machine, or "
                      << "--evaluator fake): one CPU worker";
    }
    char exe[4096];
    const ssize_t n = ::readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0) return Fail("--devices: cannot find this program's path (/proc/self/exe)");
    SupervisorOptions so;
    so.self_exe = std::string(exe, n);
    so.argv = args;
    so.slots = *std::move(slots);
    so.max_restarts = max_restarts;
    if (o.worker_id.empty()) {
      char host[256] = {0};
      ::gethostname(host, sizeof(host) - 1);
      so.base_id = std::string(host) + "-" + std::to_string(::getpid());
    } else {
      so.base_id = o.worker_id;
      SetLogTag(o.worker_id);
    }
    DeviceSupervisor supervisor(so);
    absl::StatusOr<std::unique_ptr<ShutdownSignals>> signals =
        ShutdownSignals::Install([&supervisor](int sig) { supervisor.Forward(sig); });
    if (!signals.ok()) return Fail(std::string(signals.status().message()));
    const int rc = supervisor.Run();
    signals->reset();
    return rc;
  }
  if (!o.worker_id.empty()) SetLogTag(o.worker_id);

  std::unique_ptr<WorkerMetrics> metrics;
  if (!metrics_listen.empty()) {
    absl::StatusOr<std::unique_ptr<WorkerMetrics>> m =
        StartWorkerMetrics(metrics_listen, eval.get());
    if (!m.ok()) return Fail(std::string(m.status().message()));
    metrics = *std::move(m);
    o.observer = metrics.get();
    KV_LOG(INFO) << "kvsweep-worker: Prometheus metrics on port " << metrics->port()
                 << " (/metrics)";
  }
  signal(SIGPIPE, SIG_IGN);
  WorkerLoop loop(o, eval.get());
  // SIGTERM/SIGINT: the first drains, the second hands the current job back at once.
  // Supervised: stop requests come from the supervisor alone (worker/device_supervisor.h).
  if (supervised) {
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
  }
  absl::StatusOr<std::unique_ptr<ShutdownSignals>> signals = ShutdownSignals::Install(
      [&loop](int) { loop.RequestDrain(); },
      supervised ? std::vector<int>{SIGUSR1} : std::vector<int>{SIGTERM, SIGINT});
  if (!signals.ok()) return Fail(std::string(signals.status().message()));
  absl::Status s = loop.Run();
  signals->reset();
  if (!s.ok()) return Fail(std::string(s.message()));
  return 0;
}

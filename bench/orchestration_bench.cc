// Coordinator load benchmark (docs/orchestration-bench.md): N jobs dispatched to W simulated
// workers.
//
// The coordinator is the real `kvsweep-coordinator` binary in its own process, on a SQLite file
// with synchronous=FULL (so its CPU is measured apart). The W workers run in this process, one
// gRPC connection each, with the fake evaluator's job time (--sleep-ms) and result: by default
// event-driven (bench/worker_sim.h: the worker protocol on gRPC's callback API and one timer
// thread), with --sim threads the real WorkerLoop (a thread and a heartbeat thread per worker).
// Reports durable completions per second, lease and complete latency percentiles (as the
// workers see them) and CPU of both processes.
//
//   kvsweep_orchestration_bench [--jobs 10000] [--workers 200] [--sleep-ms 50]
//       [--sim async|threads] [--coordinator-bin PATH] [--dir DIR] [--json]
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <mutex>
#include <sstream>
#include <thread>

#include "CLI/CLI.hpp"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "bench/worker_sim.h"
#include "common/file_util.h"
#include "common/log.h"
#include "common/subprocess.h"
#include "kvsweep/v1/coordinator.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "rpc/rpc_util.h"
#include "spec/job_spec.h"
#include "storage/result_store.h"
#include "worker/fake_evaluator.h"
#include "worker/worker_loop.h"

namespace kvsweep {
namespace {

// utime + stime of a process, in seconds.
double ProcessCpuSeconds(pid_t pid) {
  std::ifstream f(absl::StrCat("/proc/", pid, "/stat"));
  std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  // Fields after the command name (which may contain spaces) start after the last ')'.
  size_t close = text.rfind(')');
  if (close == std::string::npos) return 0;
  std::vector<std::string> fields = absl::StrSplit(text.substr(close + 2), ' ');
  // utime, stime are fields 14 and 15 of the full line: indices 11 and 12 here.
  double ut = 0, st = 0;
  if (fields.size() < 13 || !absl::SimpleAtod(fields[11], &ut) ||
      !absl::SimpleAtod(fields[12], &st)) {
    return 0;
  }
  return (ut + st) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

double SelfCpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6 + u.ru_stime.tv_sec +
         u.ru_stime.tv_usec / 1e6;
}

// The 1-minute load average: the box is shared, and the figures mean little without it.
double LoadAverage() {
  std::ifstream f("/proc/loadavg");
  double l = -1;
  f >> l;
  return l;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(p * (v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

int Run(int argc, char** argv) {
  int jobs = 10000, workers = 200, sleep_ms = 50;
  std::string coordinator_bin = absl::StrCat(SelfDir(), "/../coordinator/kvsweep-coordinator");
  std::string dir;
  bool json = false;
  int nice_workers = 0;
  double jitter = 0;
  int ramp_ms = 0;
  std::string model = "ref-llama";
  std::string sim = "async";
  std::string trace_path;
  int lease_ttl_ms = 0;
  CLI::App app{"kvsweep orchestration load benchmark"};
  app.add_option("--nice-workers", nice_workers,
                 "run the simulated workers at this nice value (they stand for other machines)")
      ->check(CLI::Range(0, 19));
  app.add_option("--jobs", jobs, "jobs (a multiple of 100)")->check(CLI::Range(100, 1000000));
  app.add_option("--workers", workers, "simulated workers")->check(CLI::Range(1, 2000));
  app.add_option("--sleep-ms", sleep_ms, "fake evaluation time per job")
      ->check(CLI::Range(0, 60000));
  app.add_option("--jitter", jitter,
                 "spread of the fake job time: uniform in sleep-ms * [1 - j, 1 + j] (default 0: "
                 "every job takes exactly sleep-ms, so the workers run in lockstep)")
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--ramp-ms", ramp_ms,
                 "start the workers evenly over this time instead of all at once")
      ->check(CLI::Range(0, 600000));
  app.add_option("--model", model, "the assets' model the sweep names (hashed at submit only)");
  app.add_option("--sim", sim,
                 "how the workers are simulated: async (event-driven, little CPU of its own) or "
                 "threads (the real WorkerLoop, two threads per worker)")
      ->check(CLI::IsMember({"async", "threads"}));
  app.add_option(
      "--trace", trace_path,
      "write every call's latency to this file: ms since the first lease, rpc, latency ms");
  app.add_option(
         "--lease-ttl-ms", lease_ttl_ms,
         "the coordinator's lease TTL (0: its default); workers heartbeat every third of it")
      ->check(CLI::Range(100, 3600000));
  app.add_option("--coordinator-bin", coordinator_bin, "kvsweep-coordinator to start");
  app.add_option("--dir", dir, "working directory (default: a new one under /tmp)");
  app.add_flag("--json", json, "print the figures as JSON");
  CLI11_PARSE(app, argc, argv);
  if (jobs % 100 != 0) {
    std::cerr << "--jobs must be a multiple of 100\n";
    return 2;
  }
  SetLogLevel(LogLevel::kWarning);
  // Opened now so that an unwritable --trace fails before anything runs, not after the run.
  std::ofstream trace_file;
  if (!trace_path.empty()) {
    trace_file.open(trace_path);
    if (!trace_file) {
      std::cerr << "--trace " << trace_path << ": " << std::strerror(errno) << "\n";
      return 2;
    }
  }
  const bool own_dir = dir.empty();
  if (own_dir) {
    char tmpl[] = "/tmp/kvsweep-bench-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) {
      std::cerr << "cannot create a directory under /tmp: " << std::strerror(errno) << "\n";
      return 1;
    }
    dir = tmpl;
  } else if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
    std::cerr << "--dir " << dir << ": " << std::strerror(errno) << "\n";
    return 2;
  }
  const std::string db = dir + "/bench.db";
  for (const char* s : {"", "-wal", "-shm", ".lock"}) std::remove((db + s).c_str());

  // 100 distinct methods x (jobs/100) LAMBADA limits = `jobs` distinct jobs on `model`.
  std::string yaml = absl::StrCat("name: bench\nmodels:\n  - path: ", AssetsDir(), "/models/",
                                  model, "\ntasks:\n");
  for (int t = 1; t <= jobs / 100; ++t) {
    absl::StrAppend(&yaml, "  - {name: l", t, ", task: lambada_openai, data: ", AssetsDir(),
                    "/data/lambada_openai/lambada_test.jsonl, limit: ", t, "}\n");
  }
  absl::StrAppend(&yaml, "methods:\n");
  int methods = 0;
  for (int residual : {0, 8}) {
    for (int g : {64, 32, 16, 8, 4, 2, 1}) {
      for (int sym : {0, 1}) {
        for (int b = 2; b <= 8 && methods < 100; ++b) {
          absl::StrAppend(&yaml, "  - \"quant:bits=", b, ",group=", g, ",sym=", sym,
                          ",residual=", residual, "\"\n");
          ++methods;
        }
      }
    }
  }

  Subprocess::Options so;
  so.stdout_path = so.stderr_path = dir + "/coordinator.log";
  const std::string port_file = dir + "/port";
  std::remove(port_file.c_str());
  std::vector<std::string> coord_args = {
      coordinator_bin,   "--db", db, "--listen", "127.0.0.1:0", "--port-file", port_file,
      "--idle-retry-ms", "50"};
  if (lease_ttl_ms > 0) {
    coord_args.push_back("--lease-ttl-ms");
    coord_args.push_back(std::to_string(lease_ttl_ms));
  }
  auto coord = Subprocess::Spawn(coord_args, so);
  if (!coord.ok()) {
    std::cerr << coord.status() << "\n";
    return 1;
  }
  for (int i = 0; i < 3000 && !PathExists(port_file); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  absl::StatusOr<std::string> port = ReadFile(port_file);
  if (!port.ok()) {
    std::cerr << "coordinator did not start; see " << dir << "/coordinator.log\n";
    return 1;
  }
  ClientConfig cfg;
  cfg.address = absl::StrCat("127.0.0.1:", absl::StripAsciiWhitespace(*port));

  auto stub = v1::SweepService::NewStub(*MakeChannel(cfg));
  v1::SubmitSweepRequest req;
  req.set_sweep_yaml(yaml);
  v1::SubmitSweepResponse resp;
  grpc::ClientContext ctx;
  const auto s0 = std::chrono::steady_clock::now();
  grpc::Status st = stub->SubmitSweep(&ctx, req, &resp);
  // A submission that outlasts SubmitSweep's bounded wait (hashing and resolving 10,000 jobs
  // on a busy machine) is answered pending: follow it to its final answer.
  while (st.ok() && resp.pending()) {
    v1::GetSubmissionRequest get;
    get.set_submission(resp.submission());
    get.set_wait_ms(5000);
    grpc::ClientContext get_ctx;
    get_ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    st = stub->GetSubmission(&get_ctx, get, &resp);
  }
  const double submit_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - s0).count();
  if (!st.ok() || resp.jobs_enqueued() != jobs) {
    std::cerr << "submit failed: " << st.error_message() << " (" << resp.jobs_enqueued()
              << " enqueued)\n";
    return 1;
  }

  // Threads inherit the creating thread's nice value (Linux nice is per thread); the
  // coordinator process was started before this.
  if (nice_workers > 0) setpriority(PRIO_PROCESS, 0, nice_workers);
  std::mutex mu;
  std::vector<double> lease_ms, complete_ms, next_job_ms;
  struct TraceRow {
    double at_ms;
    const char* rpc;
    double ms;
  };
  std::vector<TraceRow> trace;
  std::chrono::steady_clock::time_point t0;
  lease_ms.reserve(jobs + workers);
  complete_ms.reserve(jobs);
  std::atomic<int> completed{0};
  FakeEvaluatorOptions fo;
  fo.sleep_ms = sleep_ms;
  fo.jitter = jitter;
  auto observe = [&](const char* rpc, double ms) {
    std::lock_guard<std::mutex> l(mu);
    if (!trace_path.empty()) {
      trace.push_back(TraceRow{
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count(),
          rpc, ms});
    }
    const std::string r = rpc;
    // "Time to get a job": an explicit Lease, or a Complete that brought the next lease.
    if (r == "lease" || r == "complete+lease") next_job_ms.push_back(ms);
    if (r == "lease") lease_ms.push_back(ms);
    if (r == "complete" || r == "complete+lease") {
      complete_ms.push_back(ms);
      ++completed;
    }
  };
  auto eval = NewFakeEvaluator(fo);
  std::vector<std::unique_ptr<WorkerLoop>> loops;
  std::unique_ptr<WorkerSim> async_sim;
  if (sim == "threads") {
    for (int w = 0; w < workers; ++w) {
      WorkerOptions o;
      o.coordinator = cfg;
      o.worker_id = absl::StrCat("bench-", w);
      o.evaluator_name = "fake";
      o.observe_rpc = observe;
      loops.push_back(std::make_unique<WorkerLoop>(o, eval.get()));
    }
  } else {
    WorkerSimOptions o;
    o.coordinator = cfg;
    o.workers = workers;
    o.fake = fo;
    o.ramp_ms = ramp_ms;
    o.observe_rpc = observe;
    async_sim = std::make_unique<WorkerSim>(o);
  }
  const double load_before = LoadAverage();
  const double coord_cpu0 = ProcessCpuSeconds((*coord)->pid());
  const double self_cpu0 = SelfCpuSeconds();
  t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int w = 0; w < static_cast<int>(loops.size()); ++w) {
    const auto start_at = t0 + std::chrono::microseconds(int64_t{ramp_ms} * 1000 * w / workers);
    threads.emplace_back([&l = loops[w], start_at] {
      std::this_thread::sleep_until(start_at);
      (void)l->Run();
    });
  }
  if (async_sim) {
    if (absl::Status s = async_sim->Start(); !s.ok()) {
      std::cerr << s.message() << "\n";
      (*coord)->Signal(SIGTERM);
      (*coord)->Wait(std::chrono::seconds(60));
      return 1;
    }
  }
  // Completions once every worker has started (the ramp excluded): the steady rate.
  int after_ramp = -1;
  while (completed.load() < jobs) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    if (after_ramp < 0 &&
        std::chrono::steady_clock::now() >= t0 + std::chrono::milliseconds(ramp_ms)) {
      after_ramp = completed.load();
    }
    if (!(*coord)->Running()) {
      std::cerr << "coordinator died; see " << dir << "/coordinator.log\n";
      return 1;
    }
  }
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (after_ramp < 0) after_ramp = jobs;  // everything finished during the ramp
  const double steady_rate =
      wall > ramp_ms / 1000.0 ? (jobs - after_ramp) / (wall - ramp_ms / 1000.0) : 0.0;
  const double coord_cpu = ProcessCpuSeconds((*coord)->pid()) - coord_cpu0;
  const double self_cpu = SelfCpuSeconds() - self_cpu0;
  const double load_after = LoadAverage();
  for (auto& l : loops) l->RequestDrain();
  for (auto& t : threads) t.join();
  WorkerSimStats ss;
  if (async_sim) {
    async_sim->Stop();
    ss = async_sim->stats();
  }
  if (trace_file.is_open()) {
    for (const TraceRow& r : trace) trace_file << r.at_ms << " " << r.rpc << " " << r.ms << "\n";
    trace_file.close();
    if (!trace_file) std::cerr << "--trace " << trace_path << ": write failed\n";
  }
  (*coord)->Signal(SIGTERM);
  (*coord)->Wait(std::chrono::seconds(60));

  // Everything acknowledged is in the file, once.
  SqliteOptions ro;
  ro.read_only = true;
  auto store = NewSqliteResultStore(db, ro);
  int64_t results = store.ok() ? store.value()->CountResults().value_or(-1) : -1;
  absl::Status integrity = store.ok() ? store.value()->IntegrityCheck() : store.status();
  std::string log = ReadFile(dir + "/coordinator.log").value_or("");
  int64_t commits = 0, mutations = 0;
  double commit_ms = 0, commit_p50 = 0, commit_p99 = 0;
  if (size_t p = log.find("stopped after "); p != std::string::npos) {
    long n = 0;
    std::sscanf(log.c_str() + p,
                "stopped after %ld commits of %ld mutations, %lf ms per commit (n %ld, p50 %lf ms, "
                "p99 %lf ms",
                &commits, &mutations, &commit_ms, &n, &commit_p50, &commit_p99);
  }

  // The coordinator's own view of each call (handler start to answer, bucketed: an upper bound
  // within 5%), logged at shutdown.
  double srv_lease_p50 = 0, srv_lease_p99 = 0, srv_complete_p50 = 0, srv_complete_p99 = 0;
  if (size_t p = log.find("rpc latency in the coordinator: "); p != std::string::npos) {
    long n1 = 0, n2 = 0;
    double m1 = 0, m2 = 0;
    std::sscanf(
        log.c_str() + p,
        "rpc latency in the coordinator: lease n %ld, p50 %lf ms, p99 %lf ms, max<= %lf ms; "
        "complete n %ld, p50 %lf ms, p99 %lf ms, max<= %lf ms",
        &n1, &srv_lease_p50, &srv_lease_p99, &m1, &n2, &srv_complete_p50, &srv_complete_p99, &m2);
  }

  nlohmann::json out = {
      {"jobs", jobs},
      {"workers", workers},
      {"sleep_ms", sleep_ms},
      {"jitter", jitter},
      {"ramp_ms", ramp_ms},
      {"nice_workers", nice_workers},
      {"sim", sim},
      {"submit_s", submit_s},
      {"wall_s", wall},
      {"completions_per_s", jobs / wall},
      {"completions_per_s_after_ramp", steady_rate},
      {"lease_ms",
       {{"p50", Percentile(lease_ms, 0.5)},
        {"p99", Percentile(lease_ms, 0.99)},
        {"max", Percentile(lease_ms, 1.0)},
        {"n", lease_ms.size()}}},
      {"complete_ms",
       {{"p50", Percentile(complete_ms, 0.5)},
        {"p99", Percentile(complete_ms, 0.99)},
        {"max", Percentile(complete_ms, 1.0)}}},
      {"job_grant_ms",
       {{"p50", Percentile(next_job_ms, 0.5)},
        {"p99", Percentile(next_job_ms, 0.99)},
        {"max", Percentile(next_job_ms, 1.0)},
        {"n", next_job_ms.size()}}},
      {"coordinator_side_ms",
       {{"lease_p50", srv_lease_p50},
        {"lease_p99", srv_lease_p99},
        {"complete_p50", srv_complete_p50},
        {"complete_p99", srv_complete_p99}}},
      {"coordinator_cpu_cores", coord_cpu / wall},
      {"workers_process_cpu_cores", self_cpu / wall},
      {"commits", commits},
      {"mutations_per_commit", commits > 0 ? static_cast<double>(mutations) / commits : 0.0},
      {"ms_per_commit", commit_ms},
      {"commit_ms", {{"p50", commit_p50}, {"p99", commit_p99}}},
      {"results", results},
      {"integrity", integrity.ok() ? "ok" : std::string(integrity.message())},
      {"hardware_threads", std::thread::hardware_concurrency()},
      {"load_average_1m", {{"before", load_before}, {"after", load_after}}}};
  if (async_sim) {  // the thread simulation keeps its counts inside each WorkerLoop
    out["sim_calls"] = {{"leased", ss.leased},         {"recorded", ss.recorded},
                        {"duplicates", ss.duplicates}, {"rejected", ss.rejected},
                        {"failed", ss.failed},         {"heartbeats", ss.heartbeats},
                        {"rpc_errors", ss.rpc_errors}};
  }
  if (json) {
    std::cout << out.dump(2) << "\n";
  } else {
    std::printf(
        "jobs %d, workers %d (%s, started over %d ms), fake job %d ms +- %.0f%%, machine "
        "threads %u, load average %.2f -> %.2f\n",
        jobs, workers, sim.c_str(), ramp_ms, sleep_ms, jitter * 100,
        std::thread::hardware_concurrency(), load_before, load_after);
    std::printf("submit (expand + resolve + insert): %.2f s\n", submit_s);
    std::printf("durable completions/s: %.0f  (%d jobs in %.2f s)", jobs / wall, jobs, wall);
    if (ramp_ms > 0) std::printf("; %.0f/s once every worker had started", steady_rate);
    std::printf("\n");
    std::printf(
        "lease latency ms, every job grant (Lease, or Complete+next lease): "
        "p50 %.2f  p99 %.2f  max %.2f  (%zu grants)\n",
        Percentile(next_job_ms, 0.5), Percentile(next_job_ms, 0.99), Percentile(next_job_ms, 1.0),
        next_job_ms.size());
    std::printf("  explicit Lease calls only: p50 %.2f  p99 %.2f  max %.2f  (%zu calls)\n",
                Percentile(lease_ms, 0.5), Percentile(lease_ms, 0.99), Percentile(lease_ms, 1.0),
                lease_ms.size());
    std::printf("complete latency ms (incl. next lease): p50 %.2f  p99 %.2f  max %.2f\n",
                Percentile(complete_ms, 0.5), Percentile(complete_ms, 0.99),
                Percentile(complete_ms, 1.0));
    std::printf(
        "in the coordinator (handler start to answer): Lease p50 %.2f p99 %.2f; "
        "Complete(+next lease) p50 %.2f p99 %.2f\n",
        srv_lease_p50, srv_lease_p99, srv_complete_p50, srv_complete_p99);
    std::printf("coordinator CPU: %.2f cores; worker-simulation process CPU: %.2f cores\n",
                coord_cpu / wall, self_cpu / wall);
    std::printf(
        "group commit: %ld transactions, %.1f mutations and %.2f ms each (p50 %.2f, p99 %.2f)\n",
        commits, commits > 0 ? static_cast<double>(mutations) / commits : 0.0, commit_ms,
        commit_p50, commit_p99);
    if (sim == "async") {
      std::printf(
          "simulated workers: %ld leases, %ld recorded, %ld duplicates, %ld rejected, "
          "%ld failed, %ld heartbeats, %ld call errors\n",
          static_cast<long>(ss.leased), static_cast<long>(ss.recorded),
          static_cast<long>(ss.duplicates), static_cast<long>(ss.rejected),
          static_cast<long>(ss.failed), static_cast<long>(ss.heartbeats),
          static_cast<long>(ss.rpc_errors));
    }
    std::printf("results in the database: %ld, integrity_check: %s\n", results,
                integrity.ok() ? "ok" : std::string(integrity.message()).c_str());
  }
  const bool ok = results == jobs && integrity.ok();
  // A passing run's own scratch directory (a database of ~40 MB per 10,000 jobs) goes; a failing
  // one's stays for its coordinator.log.
  if (ok && own_dir) {
    for (const char* f : {"/bench.db", "/bench.db-wal", "/bench.db-shm", "/bench.db.lock",
                          "/coordinator.log", "/port"}) {
      std::remove((dir + f).c_str());
    }
    ::rmdir(dir.c_str());
  }
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace kvsweep

int main(int argc, char** argv) {
  kvsweep::InitRpcProcess();
  return kvsweep::Run(argc, argv);
}

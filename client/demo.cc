// `kvsweep demo`: the whole system on one machine in one command. A `kvsweep-coordinator` process
// on a SQLite file in a temporary directory, N `kvsweep-worker` processes, a small sweep on the
// assets' ref-llama (LAMBADA, FP16 vs INT4/INT2 vs rank at matched storage, native and pooled
// KV heads) submitted over gRPC as `kvsweep submit` does, a live progress bar, then the
// comparison tables. The demo is a client like any other: it links no coordinator code.
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <map>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/cli.h"
#include "client/coordinator_client.h"
#include "client/progress.h"
#include "client/table.h"
#include "common/cli_config.h"
#include "common/file_util.h"
#include "common/path_policy.h"
#include "common/subprocess.h"

namespace kvsweep {

namespace {

int DemoError(const std::string& msg) {
  std::cerr << "kvsweep demo: " << msg << "\n";
  return 1;
}

// `given`, else `name` next to this binary, in the build tree (../<build_dir>/<name>) or on PATH.
std::string FindBinary(const std::string& given, const std::string& name,
                       const std::string& build_dir) {
  if (!given.empty()) return given;
  const std::string self = SelfDir();
  for (const std::string& c :
       {JoinPath(self, name), JoinPath(self, absl::StrCat("../", build_dir, "/", name))}) {
    if (::access(c.c_str(), X_OK) == 0) return RealPath(c);
  }
  if (const char* path = std::getenv("PATH")) {
    for (absl::string_view dir : absl::StrSplit(path, ':')) {
      const std::string c = JoinPath(dir, name);
      if (::access(c.c_str(), X_OK) == 0) return c;
    }
  }
  return "";
}

// The local processes run plaintext on loopback without tokens, whatever deployment settings
// the shell exports (KVSWEEP_TLS=1, KVSWEEP_DB, ...: docs/deploy.md).
std::map<std::string, std::string> PlainEnv() {
  std::map<std::string, std::string> env;
  for (const std::string& name : SettingsVariables()) env[name] = "";
  return env;
}

// Starts kvsweep-coordinator on `dir`/demo.db and an ephemeral loopback port; its address once
// it serves (it writes the port file then).
absl::StatusOr<std::string> StartCoordinator(const std::string& bin, const std::string& dir,
                                             const std::string& log,
                                             std::unique_ptr<Subprocess>* out) {
  const std::string port_file = JoinPath(dir, "coordinator.port");
  std::remove(port_file.c_str());
  Subprocess::Options so;
  so.env = PlainEnv();
  so.stdout_path = so.stderr_path = log;
  absl::StatusOr<std::unique_ptr<Subprocess>> p = Subprocess::Spawn(
      {bin, "--db", JoinPath(dir, "demo.db"), "--listen", "127.0.0.1:0", "--port-file", port_file,
       "--lease-ttl-ms", "30000", "--idle-retry-ms", "200"},
      so);
  if (!p.ok()) return p.status();
  *out = *std::move(p);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    absl::StatusOr<std::string> port = ReadFile(port_file);
    if (port.ok() && !port->empty() && port->back() == '\n') {
      return absl::StrCat("127.0.0.1:", absl::StripAsciiWhitespace(*port));
    }
    if (!(*out)->Running()) {
      return absl::UnavailableError(absl::StrCat("kvsweep-coordinator exited (",
                                                 DescribeWaitStatus(*(*out)->exit_status()), ")"));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return absl::DeadlineExceededError("kvsweep-coordinator did not start serving within 60 s");
}

// "engine: yes" in `kvsweep-worker --version`.
absl::StatusOr<bool> WorkerHasEngine(const std::string& bin, const std::string& dir) {
  const std::string out = JoinPath(dir, "worker-version.txt");
  Subprocess::Options o;
  o.stdout_path = out;
  absl::StatusOr<std::unique_ptr<Subprocess>> p = Subprocess::Spawn({bin, "--version"}, o);
  if (!p.ok()) return p.status();
  std::optional<int> st = (*p)->Wait(std::chrono::seconds(30));
  if (!st || !WIFEXITED(*st) || WEXITSTATUS(*st) != 0) {
    return absl::FailedPreconditionError(absl::StrCat("'", bin, " --version' failed"));
  }
  absl::StatusOr<std::string> text = ReadFile(out);
  if (!text.ok()) return text.status();
  return text->find("engine: yes") != std::string::npos;
}

std::string OneLine(std::string s) {
  for (char& c : s) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return s;
}

std::string Tail(const std::string& path, size_t bytes) {
  absl::StatusOr<std::string> t = ReadFile(path);
  if (!t.ok()) return "";
  return t->size() <= bytes ? *t : t->substr(t->size() - bytes);
}

}  // namespace

int RunDemo(const DemoOptions& o) {
  // Absolute: the sweep file lives in a temporary directory, and a relative path in it would be
  // read from there (KVSWEEP_ASSETS defaults to the relative ../shared/assets).
  const std::string assets = RealPath(AssetsDir());
  const std::string model = JoinPath(assets, "models/ref-llama");
  const std::string data = JoinPath(assets, "data/lambada_openai/lambada_test.jsonl");
  if (!PathExists(JoinPath(model, "config.json")) || !PathExists(data)) {
    return DemoError(absl::StrCat("needs the kvsweep test assets: ", model,
                                  "/ (config.json, *.safetensors, tokenizer.json) "
                                  "and ",
                                  data, ". Point KVSWEEP_ASSETS at the assets folder (currently '",
                                  assets, "')."));
  }
  if (o.evaluator != "engine" && o.evaluator != "fake") {
    return DemoError("--evaluator must be engine or fake");
  }
  const std::string worker_bin = FindBinary(o.worker_bin, "kvsweep-worker", "worker");
  if (worker_bin.empty()) {
    return DemoError(
        "cannot find kvsweep-worker next to kvsweep, in the build tree or on PATH; "
        "pass --worker-bin");
  }
  const std::string coordinator_bin =
      FindBinary(o.coordinator_bin, "kvsweep-coordinator", "coordinator");
  if (coordinator_bin.empty()) {
    return DemoError(
        "cannot find kvsweep-coordinator next to kvsweep, in the build tree or on "
        "PATH; pass --coordinator-bin");
  }
  std::string dir = o.keep_dir;
  if (dir.empty()) {
    char tmpl[] = "/tmp/kvsweep-demo-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) return DemoError("cannot create a temporary directory");
    dir = tmpl;
  } else if (!IsDirectory(dir) && ::mkdir(dir.c_str(), 0755) != 0) {
    return DemoError(absl::StrCat("cannot create --keep directory '", dir, "'"));
  }
  absl::StatusOr<bool> engine = WorkerHasEngine(worker_bin, dir);
  if (!engine.ok()) return DemoError(std::string(engine.status().message()));
  if (o.evaluator == "engine" && !*engine) {
    return DemoError(absl::StrCat(
        worker_bin,
        " was built without the libtorch engine, so it cannot evaluate models. "
        "Rebuild with -DKVSWEEP_WITH_TORCH=ON, or run `kvsweep demo --evaluator=fake` to "
        "exercise the pipeline with placeholder numbers."));
  }
  if (o.evaluator == "fake") {
    std::cerr << "kvsweep demo: NOTE --evaluator=fake: the metrics below are PLACEHOLDERS "
                 "(only the storage ledger is real)\n";
  }

  const std::string db_path = JoinPath(dir, "demo.db");
  std::vector<std::string> logs = {JoinPath(dir, "coordinator.log")};
  std::unique_ptr<Subprocess> coordinator;
  absl::StatusOr<std::string> address =
      StartCoordinator(coordinator_bin, dir, logs[0], &coordinator);
  if (!address.ok()) {
    const std::string tail = OneLine(Tail(logs[0], 300));
    return DemoError(absl::StrCat(address.status().message(), tail.empty() ? "" : ": ", tail,
                                  tail.empty() ? "" : absl::StrCat("; log in ", logs[0])));
  }
  CoordinatorConnection conn;
  conn.cfg.address = *address;

  const std::string yaml = absl::StrCat(
      R"(# kvsweep demo: FP16 vs quantization vs rank reduction at matched storage on ref-llama.
name: demo
models:
  - name: ref-llama
    path: )",
      model, R"(
    kv_heads: [native, 1]
tasks:
  - name: lambada
    task: lambada_openai
    data: )",
      data, R"(
    limit: )",
      o.limit, R"(
methods:
  - none
  - {family: quant, budgets: [0.25, 0.125]}
  - {family: rank, budgets: [0.25], extra: "basis=svd"}
)");
  const std::string yaml_path = JoinPath(dir, "demo.yaml");
  if (absl::Status w = WriteFileAtomic(yaml_path, yaml); !w.ok()) {
    return DemoError(std::string(w.message()));
  }
  v1::SubmitSweepRequest req;
  req.set_sweep_yaml(yaml);
  req.set_base_dir(dir);
  req.set_source_name("demo.yaml");
  absl::StatusOr<v1::SubmitSweepResponse> sub = SubmitAndFollow(conn, req);
  if (!sub.ok()) return DemoError(std::string(sub.status().message()));
  std::cerr << "kvsweep demo: coordinator on " << *address << ", database " << db_path
            << "\nkvsweep demo: sweep 'demo': " << sub->jobs_total()
            << " jobs on ref-llama (LAMBADA, " << o.limit << " documents each), " << o.workers
            << " workers\n";

  std::vector<std::unique_ptr<Subprocess>> workers;
  for (int i = 0; i < o.workers; ++i) {
    Subprocess::Options so;
    so.env = PlainEnv();
    logs.push_back(JoinPath(dir, absl::StrCat("worker-", i, ".log")));
    so.stdout_path = so.stderr_path = logs.back();
    std::vector<std::string> argv = {worker_bin,
                                     "--coordinator",
                                     *address,
                                     "--device",
                                     "cpu",
                                     "--evaluator",
                                     o.evaluator,
                                     "--worker-id",
                                     absl::StrCat("demo-", i),
                                     "--spool-dir",
                                     JoinPath(dir, absl::StrCat("spool-", i))};
    if (o.evaluator == "engine") {
      argv.insert(argv.end(), {"--threads", "1"});
    } else {
      argv.insert(argv.end(), {"--fake-sleep-ms", std::to_string(o.fake_sleep_ms)});
    }
    absl::StatusOr<std::unique_ptr<Subprocess>> p = Subprocess::Spawn(argv, so);
    if (!p.ok()) return DemoError(std::string(p.status().message()));
    workers.push_back(std::move(*p));
  }

  ProgressBar bar(stderr);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(o.timeout_s);
  int rc = 0;
  bool finished = false;
  absl::StatusOr<std::unique_ptr<v1::SweepService::Stub>> stub = Stub(conn);
  if (!stub.ok()) return DemoError(std::string(stub.status().message()));
  for (;;) {
    v1::GetStatusRequest sreq;
    sreq.set_sweep("demo");
    v1::GetStatusResponse sresp;
    grpc::ClientContext ctx;
    PrepareContext(&ctx, conn.cfg, std::chrono::milliseconds(conn.timeout_ms));
    grpc::Status gs = (*stub)->GetStatus(&ctx, sreq, &sresp);
    if (!gs.ok() || sresp.sweeps_size() != 1) {
      bar.Finish();
      rc = DemoError(gs.ok() ? "the coordinator does not know sweep 'demo'"
                             : std::string(RpcError(gs, conn.cfg).message()));
      break;
    }
    const v1::SweepStatus& status = sresp.sweeps(0);
    const ProgressCounts c = Counts(status);
    bar.Update(c);
    if (c.queued + c.leased == 0) {
      bar.Finish();
      finished = true;
      if (c.done != c.total) {
        rc = 1;
        std::cerr << "kvsweep demo: " << c.total - c.done << " of " << c.total
                  << " jobs did not produce a result:\n";
        for (const std::string& e : status.recent_errors()) std::cerr << "  error " << e << "\n";
      }
      break;
    }
    bool any_alive = false;
    for (auto& w : workers) any_alive = any_alive || w->Running();
    if (!any_alive) {
      bar.Finish();
      rc = DemoError(absl::StrCat("every worker exited before the sweep finished (",
                                  OneLine(Tail(logs[1], 300)), "); logs in ", dir));
      break;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      bar.Finish();
      rc = DemoError(absl::StrCat("timed out after ", o.timeout_s, " s"));
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  for (auto& w : workers) w->Signal(SIGTERM);
  for (auto& w : workers) {
    if (!w->Wait(std::chrono::seconds(30))) w->Signal(SIGKILL);
  }
  if (finished) {
    absl::StatusOr<std::vector<Item>> items = FetchItems(conn, "", "demo", false);
    if (!items.ok()) return DemoError(std::string(items.status().message()));
    std::vector<TableInput> in;
    for (Item& it : *items) in.push_back({std::move(it.labels), std::move(it.result)});
    // A --keep directory may hold an earlier run's results, which this run reuses: what the
    // tables show is what those results are, whichever evaluator this run started.
    const bool placeholders = std::any_of(in.begin(), in.end(), [](const TableInput& i) {
      return i.result && i.result->IsPlaceholder();
    });
    if (placeholders && o.evaluator == "engine") {
      std::cerr << "kvsweep demo: NOTE " << dir
                << " holds placeholder results of an earlier --evaluator=fake run, which this "
                   "run reused: use a new --keep directory for measured numbers\n";
    }
    for (const char* metric : {"ppl", "acc", "fraction_total"}) {
      TableSpec ts;
      ts.rows = "method";
      ts.cols = "kv_heads";
      ts.metric = metric;
      absl::StatusOr<Table> t = BuildTable(in, ts);
      if (!t.ok()) {
        std::cerr << "kvsweep demo: " << t.status().message() << "\n";
        continue;
      }
      std::cout << *FormatTable(*t, "md") << "\n";
    }
    if (o.keep_dir.empty()) {
      std::cout << "The database is removed on exit; `kvsweep demo --keep DIR` keeps it for "
                   "`kvsweep query --db DIR/demo.db \"SELECT method, kv_heads, ppl, acc FROM "
                   "results\"`.\n";
    } else {
      std::cout << "Results are in " << db_path << ". Try: kvsweep query --db " << db_path
                << " \"SELECT method, kv_heads, ppl, acc FROM results\"\n";
    }
  }
  // SIGTERM: the coordinator answers the calls in flight, commits and exits 0.
  coordinator->Signal(SIGTERM);
  if (!coordinator->Wait(std::chrono::seconds(30))) coordinator->Signal(SIGKILL);
  if (o.keep_dir.empty()) {
    for (const std::string& f :
         {std::string("demo.db"), std::string("demo.db-wal"), std::string("demo.db-shm"),
          std::string("demo.db.lock"), std::string("demo.yaml"), std::string("worker-version.txt"),
          std::string("coordinator.port")}) {
      std::remove(JoinPath(dir, f).c_str());
    }
    if (rc == 0) {
      for (const std::string& l : logs) std::remove(l.c_str());
      ::rmdir(dir.c_str());
    } else {
      std::cerr << "kvsweep demo: logs kept in " << dir << "\n";
    }
  }
  return rc;
}

}  // namespace kvsweep

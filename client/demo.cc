// `kvsweep demo`: the whole system on one machine in one command. An embedded coordinator on a
// SQLite file in a temporary directory, N `kvsweep-worker` processes, a small sweep on the
// assets' ref-llama (LAMBADA, FP16 vs INT4/INT2 vs rank at matched storage, native and pooled
// KV heads), a live progress bar, then the comparison tables.
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/cli.h"
#include "client/progress.h"
#include "client/subprocess.h"
#include "client/table.h"
#include "common/file_util.h"
#include "common/job_spec.h"
#include "common/json_util.h"
#include "common/log.h"
#include "coordinator/server.h"
#include "coordinator/sweep_spec.h"

namespace kvsweep {

namespace {

int DemoError(const std::string& msg) {
  std::cerr << "kvsweep demo: " << msg << "\n";
  return 1;
}

std::string FindWorker(const std::string& given) {
  if (!given.empty()) return given;
  const std::string self = SelfDir();
  for (const std::string& c : {JoinPath(self, "kvsweep-worker"),
                               JoinPath(self, "../worker/kvsweep-worker")}) {
    if (::access(c.c_str(), X_OK) == 0) return RealPath(c);
  }
  if (const char* path = std::getenv("PATH")) {
    for (absl::string_view dir : absl::StrSplit(path, ':')) {
      const std::string c = JoinPath(dir, "kvsweep-worker");
      if (::access(c.c_str(), X_OK) == 0) return c;
    }
  }
  return "";
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
  const std::string assets = AssetsDir();
  const std::string model = JoinPath(assets, "models/ref-llama");
  const std::string data = JoinPath(assets, "data/lambada_openai/lambada_test.jsonl");
  if (!PathExists(JoinPath(model, "config.json")) || !PathExists(data)) {
    return DemoError(absl::StrCat(
        "needs the kvsweep test assets: ", model, "/ (config.json, *.safetensors, tokenizer.json) "
        "and ", data, ". Point KVSWEEP_ASSETS at the assets folder (currently '", assets, "')."));
  }
  if (o.evaluator != "engine" && o.evaluator != "fake") {
    return DemoError("--evaluator must be engine or fake");
  }
  const std::string worker_bin = FindWorker(o.worker_bin);
  if (worker_bin.empty()) {
    return DemoError("cannot find kvsweep-worker next to kvsweep, in the build tree or on PATH; "
                     "pass --worker-bin");
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
        worker_bin, " was built without the libtorch engine, so it cannot evaluate models. "
        "Rebuild with -DKVSWEEP_WITH_TORCH=ON, or run `kvsweep demo --evaluator=fake` to "
        "exercise the pipeline with placeholder numbers."));
  }
  // The embedded coordinator's INFO lines would drown the progress bar.
  if (std::getenv("KVSWEEP_LOG_LEVEL") == nullptr) SetLogLevel(LogLevel::kWarning);
  if (o.evaluator == "fake") {
    std::cerr << "kvsweep demo: NOTE --evaluator=fake: the metrics below are PLACEHOLDERS "
                 "(only the storage ledger is real)\n";
  }

  CoordinatorOptions co;
  co.db_path = JoinPath(dir, "demo.db");
  co.listen = "127.0.0.1:0";
  co.scheduler.lease_ttl_ms = 30000;
  co.scheduler.idle_retry_ms = 200;
  absl::StatusOr<std::unique_ptr<CoordinatorServer>> server = CoordinatorServer::Start(co);
  if (!server.ok()) return DemoError(std::string(server.status().message()));

  const std::string yaml = absl::StrCat(R"(# kvsweep demo: FP16 vs quantization vs rank reduction at matched storage on ref-llama.
name: demo
models:
  - name: ref-llama
    path: )", model, R"(
    kv_heads: [native, 1]
tasks:
  - name: lambada
    task: lambada_openai
    data: )", data, R"(
    limit: )", o.limit, R"(
methods:
  - none
  - {family: quant, budgets: [0.25, 0.125]}
  - {family: rank, budgets: [0.25], extra: "basis=svd"}
)");
  (void)WriteFileAtomic(JoinPath(dir, "demo.yaml"), yaml);
  ExpandOptions eo;
  eo.source_name = "demo.yaml";
  absl::StatusOr<ExpandedSweep> sweep = ExpandSweep(yaml, eo);
  if (!sweep.ok()) return DemoError(std::string(sweep.status().message()));
  absl::StatusOr<SubmitOutcome> sub = (*server)->scheduler()->Submit(*sweep, yaml, dir);
  if (!sub.ok()) return DemoError(std::string(sub.status().message()));
  std::cerr << "kvsweep demo: coordinator on " << (*server)->address() << ", database "
            << co.db_path << "\nkvsweep demo: sweep 'demo': " << sweep->jobs.size()
            << " jobs on ref-llama (LAMBADA, " << o.limit << " documents each), " << o.workers
            << " workers\n";

  std::vector<std::unique_ptr<Subprocess>> workers;
  std::vector<std::string> logs;
  for (int i = 0; i < o.workers; ++i) {
    Subprocess::Options so;
    // The embedded coordinator is plaintext on loopback without tokens, whatever connection
    // settings the shell exports for real deployments (KVSWEEP_TLS=1, ...: docs/deploy.md).
    so.env = {{"KVSWEEP_TLS", ""},      {"KVSWEEP_TLS_CA", ""},          {"KVSWEEP_TLS_CERT", ""},
              {"KVSWEEP_TLS_KEY", ""},  {"KVSWEEP_TLS_SERVER_NAME", ""}, {"KVSWEEP_TOKEN_FILE", ""},
              {"KVSWEEP_DEVICE", ""},   {"KVSWEEP_SPOOL_DIR", ""}};
    logs.push_back(JoinPath(dir, absl::StrCat("worker-", i, ".log")));
    so.stdout_path = so.stderr_path = logs.back();
    std::vector<std::string> argv = {worker_bin, "--coordinator", (*server)->address(),
                                     "--device", "cpu", "--evaluator", o.evaluator,
                                     "--worker-id", absl::StrCat("demo-", i),
                                     "--spool-dir", JoinPath(dir, absl::StrCat("spool-", i))};
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
  for (;;) {
    absl::StatusOr<SweepInfo> info = (*server)->store()->GetSweep("demo");
    if (!info.ok()) {
      rc = DemoError(std::string(info.status().message()));
      break;
    }
    ProgressCounts c;
    c.total = info->total;
    c.done = info->count(JobState::kDone);
    c.leased = info->count(JobState::kLeased);
    c.queued = info->count(JobState::kQueued);
    c.failed = info->count(JobState::kFailed);
    c.quarantined = info->count(JobState::kQuarantined);
    c.cancelled = info->count(JobState::kCancelled);
    bar.Update(c);
    if (c.queued + c.leased == 0) {
      bar.Finish();
      finished = true;
      if (c.done != c.total) {
        rc = 1;
        std::cerr << "kvsweep demo: " << c.total - c.done << " of " << c.total
                  << " jobs did not produce a result:\n";
        for (const std::string& e : info->recent_errors) std::cerr << "  error " << e << "\n";
      }
      break;
    }
    bool any_alive = false;
    for (auto& w : workers) any_alive = any_alive || w->Running();
    if (!any_alive) {
      bar.Finish();
      rc = DemoError(absl::StrCat("every worker exited before the sweep finished (",
                                  OneLine(Tail(logs[0], 300)), "); logs in ", dir));
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
    std::vector<TableInput> in;
    absl::Status s = (*server)->store()->Export("demo", false, [&](const ExportRow& r) {
      TableInput t;
      t.labels = nlohmann::json::parse(r.labels_json);
      if (!r.result_json.empty()) t.result = nlohmann::json::parse(r.result_json);
      in.push_back(std::move(t));
      return true;
    });
    if (!s.ok()) return DemoError(std::string(s.message()));
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
                   "`kvsweep query --db DIR/demo.db \"SELECT method, kv_heads, ppl, acc FROM results\"`.\n";
    } else {
      std::cout << "Results are in " << co.db_path << ". Try: kvsweep query --db " << co.db_path
                << " \"SELECT method, kv_heads, ppl, acc FROM results\"\n";
    }
  }
  (*server)->Shutdown();
  server->reset();
  if (o.keep_dir.empty()) {
    for (const std::string& f : {std::string("demo.db"), std::string("demo.db-wal"),
                                 std::string("demo.db-shm"), std::string("demo.db.lock"),
                                 std::string("demo.yaml"), std::string("worker-version.txt")}) {
      std::remove(JoinPath(dir, f).c_str());
    }
    if (rc == 0) {
      for (const std::string& l : logs) std::remove(l.c_str());
      ::rmdir(dir.c_str());
    } else {
      std::cerr << "kvsweep demo: worker logs kept in " << dir << "\n";
    }
  }
  return rc;
}

}  // namespace kvsweep

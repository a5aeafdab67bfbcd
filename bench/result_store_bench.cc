// Microbenchmark of the SQLite store's group commit: one transaction holding N job
// completions and N lease grants (what the coordinator commits under load), on a file with
// synchronous=FULL. Shows the fixed cost per transaction (fsync) against the cost per mutation.
//
//   kvsweep_result_store_bench [--benchmark_filter=...]
#include <unistd.h>

#include <atomic>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "benchmark/benchmark.h"
#include "nlohmann/json.hpp"
#include "storage/result_store.h"

namespace kvsweep {
namespace {

const std::string& Result() {
  static const std::string r =
      nlohmann::json{
          {"metrics",
           {{"lambada_openai",
             {{"acc", 0.25}, {"ppl", 153000.5}, {"n", 20}, {"loglik_sum", -12.5}}}}},
          {"ledger",
           {{"fraction_payload", 0.25},
            {"fraction_total", 0.28125},
            {"kv_heads", 2},
            {"k", {{"payload", 256}, {"metadata", 32}, {"basis", 0}}},
            {"v", {{"payload", 256}, {"metadata", 32}, {"basis", 0}}}}},
          {"timing", {{"wall_s", 0.05}, {"tokens_per_s", 0.0}}},
          {"provenance", {{"evaluator", "fake"}, {"worker", {{"worker_id", "bench-1"}}}}}}
          .dump();
  return r;
}

void BM_CommitCompletionsAndGrants(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  static std::atomic<int> run{0};
  const std::string path = absl::StrCat("/tmp/kvsweep_store_bench_", getpid(), "_", run++, ".db");
  auto store = NewSqliteResultStore(path, SqliteOptions());
  if (!store.ok()) {
    state.SkipWithError(std::string(store.status().message()).c_str());
    return;
  }
  // Enough queued jobs for every iteration.
  const int total = n * 2 * (static_cast<int>(state.max_iterations) + 2);
  SubmitSweep submit;
  submit.name = "bench";
  for (int i = 0; i < total; ++i) {
    NewJob j;
    j.job_id = absl::StrCat("job", i);
    j.spec_json =
        R"({"model_name":"m","task":{"name":"lambada_openai"},"method":"none","kv_heads":2})";
    j.model_key = "m";
    j.labels_json = "{}";
    submit.jobs.push_back(j);
  }
  std::vector<Mutation> b;
  b.emplace_back(std::move(submit));
  (void)(*store)->Apply(b);
  int next = 0;
  // Lease the first n so each iteration can complete n and grant n more.
  std::vector<Mutation> first;
  for (int i = 0; i < n; ++i) {
    GrantLease g;
    g.job_id = absl::StrCat("job", next++);
    g.lease_id = "l";
    g.worker_id = "w";
    first.emplace_back(g);
  }
  (void)(*store)->Apply(first);
  int completing = 0;
  for (auto _ : state) {
    std::vector<Mutation> batch;
    for (int i = 0; i < n; ++i) {
      RecordResult r;
      r.job_id = absl::StrCat("job", completing++);
      r.fence = 1;
      r.worker_id = "w";
      r.result_json = Result();
      batch.emplace_back(std::move(r));
      GrantLease g;
      g.job_id = absl::StrCat("job", next++);
      g.lease_id = "l";
      g.worker_id = "w";
      batch.emplace_back(std::move(g));
    }
    absl::Status s = (*store)->Apply(batch);
    if (!s.ok() || !batch[0].status.ok()) {
      state.SkipWithError("apply failed");
      break;
    }
  }
  state.SetItemsProcessed(state.iterations() * n);
  store->reset();
  for (const char* suffix : {"", "-wal", "-shm"}) std::remove((path + suffix).c_str());
}
BENCHMARK(BM_CommitCompletionsAndGrants)
    ->Arg(1)
    ->Arg(8)
    ->Arg(32)
    ->Arg(128)
    ->Iterations(200)
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace kvsweep

BENCHMARK_MAIN();

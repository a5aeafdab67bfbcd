// CPU throughput of WikiText scoring (kvsweep-engine-bench).
//
// For each model: the full evaluation path (tokenize, rolling windows, batched forward, LM head
// on scored positions, log-softmax) in tokens/s, beside a baseline in the same process: the bare
// forward pass over the same windows with no LM head at all (an upper bound for any scorer), so
// the ratio says how much of the time the scoring pipeline adds. Also per thread count.
//
//   build/bench/kvsweep-engine-bench [--lines N] [--threads 1,2] [--models ref-gpt2,ref-llama]
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "common/job_spec.h"
#include "worker/engine/eval.h"
#include "worker/engine/model.h"
#include "worker/engine/tasks/task.h"

using namespace kvsweep;
using namespace kvsweep::engine;

namespace {
double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

int main(int argc, char** argv) {
  int lines = 400;
  std::vector<int> threads = {1, 2};
  std::vector<std::string> models = {"ref-gpt2", "ref-llama"};
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--lines") {
      if (!absl::SimpleAtoi(v, &lines)) return 2;
    } else if (k == "--threads") {
      threads.clear();
      for (auto t : absl::StrSplit(v, ',')) {
        int n = 0;
        if (!absl::SimpleAtoi(t, &n)) return 2;
        threads.push_back(n);
      }
    } else if (k == "--models") {
      models = absl::StrSplit(v, ',');
    } else {
      std::fprintf(stderr, "usage: %s [--lines N] [--threads 1,2] [--models a,b]\n", argv[0]);
      return 2;
    }
  }
  const std::string wiki = AssetsDir() + "/data/wikitext-2/wiki.test.raw";
  absl::StatusOr<std::string> text = ReadFile(wiki);
  if (!text.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(text.status().message()).c_str());
    return 1;
  }
  size_t pos = 0;
  for (int i = 0; i < lines && pos != std::string::npos; ++i) {
    pos = text->find('\n', pos);
    if (pos != std::string::npos) ++pos;
  }
  const std::string data = "/tmp/kvsweep_bench_wiki.raw";
  if (!WriteFileAtomic(data, text->substr(0, pos)).ok()) return 1;

  std::printf("%-10s %7s %9s %12s %14s %8s\n", "model", "threads", "tokens", "eval tok/s", "forward tok/s", "ratio");
  for (const std::string& name : models) {
    for (int t : threads) {
      JobRequest r;
      r.model_path = AssetsDir() + "/models/" + name;
      r.task = "wikitext";
      r.data_path = data;
      absl::StatusOr<JobSpec> spec = ResolveJob(r);
      if (!spec.ok()) {
        std::fprintf(stderr, "error: %s\n", std::string(spec.status().message()).c_str());
        return 1;
      }
      EngineOptions eo;
      eo.threads = t;
      Engine engine(eo);
      (void)engine.Run(*spec, nullptr);  // warm-up: load, tokenizer, allocator
      absl::StatusOr<nlohmann::json> out = engine.Run(*spec, nullptr);
      if (!out.ok()) {
        std::fprintf(stderr, "error: %s\n", std::string(out.status().message()).c_str());
        return 1;
      }
      const double eval_tps = (*out)["timing"]["tokens_per_s"].get<double>();
      const int64_t tokens = (*out)["timing"]["forward_tokens"].get<int64_t>();
      // Baseline: the same windows through the bare forward pass (no LM head, no scoring).
      absl::StatusOr<std::unique_ptr<Model>> m = Model::Load(spec->model_path, ModelOptions{});
      absl::StatusOr<std::unique_ptr<Tokenizer>> tok = LoadTokenizer(spec->model_path);
      if (!m.ok() || !tok.ok()) return 1;
      auto ids = (*tok)->Encode(text->substr(0, pos));
      auto windows = RollingWindows(*ids, 0, spec->window, 1);
      double t0 = Now();
      int64_t fwd = 0;
      for (const auto& w : windows) {
        torch::Tensor x = torch::tensor(std::vector<int64_t>(w.input.begin(), w.input.end()), torch::kLong).unsqueeze(0);
        (*m)->Forward(x, nullptr);
        fwd += w.input.size();
      }
      const double fwd_tps = fwd / (Now() - t0);
      std::printf("%-10s %7d %9lld %12.0f %14.0f %8.2f\n", name.c_str(), at::get_num_threads(),
                  static_cast<long long>(tokens), eval_tps, fwd_tps, eval_tps / fwd_tps);
      std::fflush(stdout);
    }
  }
  return 0;
}

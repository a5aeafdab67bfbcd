#include "worker/fake_evaluator.h"

#include <chrono>
#include <cmath>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/hash.h"
#include "spec/ledger.h"
#include "spec/method_spec.h"

namespace kvsweep {
namespace {

class FakeEvaluator final : public Evaluator {
 public:
  explicit FakeEvaluator(const FakeEvaluatorOptions& o) : o_(o) {}

  absl::StatusOr<nlohmann::json> Run(const JobSpec& spec, const ProgressFn& progress) override {
    const auto start = std::chrono::steady_clock::now();
    const FakeJobPlan plan = PlanFakeJob(spec, o_);
    const double sleep_ms = plan.sleep_ms;
    const auto until =
        start + std::chrono::microseconds(static_cast<int64_t>(std::max(0.0, sleep_ms) * 1000));
    for (;;) {
      auto now = std::chrono::steady_clock::now();
      const double done =
          sleep_ms <= 0
              ? 1.0
              : std::min(1.0,
                         std::chrono::duration<double, std::milli>(now - start).count() / sleep_ms);
      if (!progress(done)) return absl::CancelledError("fake evaluator: stopped by the worker");
      if (now >= until) break;
      std::this_thread::sleep_for(std::min<std::chrono::steady_clock::duration>(
          until - now, std::chrono::milliseconds(50)));
    }
    return FakeJobResult(
        spec, plan,
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }

 private:
  FakeEvaluatorOptions o_;
};

}  // namespace

FakeJobPlan PlanFakeJob(const JobSpec& spec, const FakeEvaluatorOptions& options) {
  // Per-job values (job time spread, placeholder metrics): deterministic in the fields that
  // tell this benchmark's jobs apart (cheaper than the job id's canonical JSON).
  const std::string h =
      Sha256Hex(absl::StrCat(spec.model_sha256, "|", spec.task, "|", spec.limit, "|", spec.window,
                             "|", spec.method, "|", spec.kv_heads, "|", spec.dtype));
  FakeJobPlan plan;
  plan.sleep_ms = options.sleep_ms;
  if (options.jitter > 0) {
    const double v = std::stoul(h.substr(8, 8), nullptr, 16) / 4294967295.0;
    plan.sleep_ms *= 1.0 + options.jitter * (2.0 * v - 1.0);
  }
  plan.seed = std::stoul(h.substr(0, 8), nullptr, 16) / 4294967295.0;
  return plan;
}

absl::StatusOr<nlohmann::json> FakeJobResult(const JobSpec& spec, const FakeJobPlan& plan,
                                             double wall_s) {
  absl::StatusOr<KvMethod> parsed = ParseKvMethod(spec.method);
  if (!parsed.ok()) return parsed.status();
  absl::StatusOr<KvMethod> m = ResolveKvMethod(*parsed, spec.head_dim, spec.num_layers);
  if (!m.ok()) return m.status();
  absl::StatusOr<Ledger> ledger = ComputeLedger(*m, spec.head_dim, spec.kv_heads,
                                                spec.native_kv_heads, spec.num_layers, spec.window);
  if (!ledger.ok()) return ledger.status();
  // Placeholder metrics: a deterministic function of the job, nothing more.
  const double u = plan.seed;
  nlohmann::json metrics;
  if (spec.task != "lambada_openai") {  // wikitext, ptb, text: the rolling protocol's metrics
    const int64_t tokens = 1000;
    const double nll = 5.0 + u;
    metrics[spec.task] = {{"token_ppl", std::exp(nll)},
                          {"word_ppl", std::exp(nll * 1.3)},
                          {"bits_per_byte", nll / std::log(2.0) / 4.0},
                          {"loglik_sum", -nll * tokens},
                          {"tokens", tokens},
                          {"words", tokens * 3 / 4},
                          {"bytes", tokens * 4}};
  } else {
    const int64_t n = spec.limit > 0 ? spec.limit : 5153;
    const double nll = 3.0 + 4.0 * u;
    metrics[spec.task] = {
        {"acc", 0.5 * u}, {"ppl", std::exp(nll)}, {"loglik_sum", -nll * n}, {"n", n}};
  }
  return nlohmann::json{
      {"metrics", metrics},
      {"ledger", ledger->ToJson()},
      {"timing", {{"wall_s", wall_s}, {"tokens_per_s", 0.0}}},
      {"provenance",
       {{"evaluator", "fake"},
        {"note", "placeholder metrics from kvsweep's fake evaluator (load tests only)"},
        {"engine_version", spec.engine_version}}}};
}

std::unique_ptr<Evaluator> NewFakeEvaluator(const FakeEvaluatorOptions& options) {
  return std::make_unique<FakeEvaluator>(options);
}

}  // namespace kvsweep

// A job's result object: what a worker reports for one job, what the coordinator stores verbatim
// (results.result_json) and what every reader (tables, plots, report, export, dashboard, the
// store's columns) reads, through this one type.
//
//   {"job_id": "..." (optional), "spec": {...} (`eval`'s own output),
//    "metrics": {"<task>": {"acc", "ppl", "token_ppl", ..., "units": {...}}},
//    "ledger": {"fraction_payload", "fraction_total", "kv_heads", ...},
//    "timing": {"wall_s", "tokens_per_s", ...}, "diagnostics": {"mean": {...}, ...},
//    "provenance": {...}}
//
// docs/architecture.md ("The eval contract") describes each section; stats/eval_units.h the
// per-unit arrays. A JobResult keeps the object it was parsed from: Serialize() gives it back
// byte for byte as the worker wrote it, so reading never changes what is stored.
#ifndef KVSWEEP_SPEC_JOB_RESULT_H_
#define KVSWEEP_SPEC_JOB_RESULT_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"
#include "stats/eval_units.h"

namespace kvsweep {

class JobResult {
 public:
  // Validates: a JSON object with a non-empty object "metrics" (one object per task, every
  // number finite; acc, ppl, token_ppl, word_ppl, bits_per_byte, loglik_sum numbers; n, tokens,
  // words, bytes integers), a string "job_id" if present, and if present an object "ledger"
  // (fraction_payload, fraction_total numbers, kv_heads an integer) and "timing" (wall_s,
  // tokens_per_s numbers). kInvalidArgument "result: <field> <problem>" otherwise.
  static absl::StatusOr<JobResult> Parse(absl::string_view text);
  static absl::StatusOr<JobResult> FromJson(nlohmann::json j);

  // The object; Serialize() is its canonical text (CanonicalJson: what the worker sends and
  // the store keeps), so Parse(text).Serialize() == text for every stored result.
  const nlohmann::json& json() const { return j_; }
  std::string Serialize() const;

  // The result's own "job_id"; "" if it has none.
  std::string job_id() const;
  // The keys of "metrics", in the object's order; task() is the first.
  std::vector<std::string> tasks() const;
  std::string task() const;
  // A number a table, plot or report can show, looked up in this order: a task metric (the
  // first task that has it: acc, ppl, token_ppl, word_ppl, bits_per_byte, loglik_sum, n,
  // tokens, *_stderr, ...), a ledger field (fraction_payload, fraction_total,
  // fraction_of_native, cache_bytes, ...), a timing field (wall_s), an attention diagnostic's
  // mean over layers (kl_mean, flip_rate, ...). "auto": QualityMetric(). nullopt when absent or
  // not a number.
  std::optional<double> Number(const std::string& name) const;
  // The metric `auto` names: ppl where the result has it (LAMBADA), else token_ppl (the
  // perplexity tasks); the task table's TaskSpec::quality_metric for the known tasks.
  std::string QualityMetric() const;
  // The first task's metric `name` as an integer (n, tokens, words, bytes); nullopt if absent.
  std::optional<int64_t> TaskInteger(const char* name) const;
  std::optional<double> TaskNumber(const char* name) const;
  std::optional<double> LedgerNumber(const char* name) const;
  std::optional<int64_t> LedgerInteger(const char* name) const;
  std::optional<double> TimingNumber(const char* name) const;
  // Every number of the task metrics, the ledger and the timing, as its JSON text, by
  // "<task>.<key>", "ledger.<key>", "timing.<key>" (`kvsweep export --format csv`'s columns).
  std::map<std::string, std::string> Columns() const;
  // metrics.<task>.units of the first task that has well-formed ones.
  std::optional<EvalUnits> Units() const;
  // The sections as objects ({} when absent).
  const nlohmann::json& metrics(const std::string& task) const;
  const nlohmann::json& ledger() const { return Section("ledger"); }
  const nlohmann::json& timing() const { return Section("timing"); }
  const nlohmann::json& diagnostics() const { return Section("diagnostics"); }
  // Whether the result's numbers are placeholders: provenance.evaluator "fake" (the fake
  // evaluator of load tests and `kvsweep demo --evaluator fake`), not a measurement.
  bool IsPlaceholder() const;
  // `eval --format json` output carries its spec; stored results do not ({}).
  const nlohmann::json& spec() const { return Section("spec"); }

 private:
  explicit JobResult(nlohmann::json j) : j_(std::move(j)) {}
  const nlohmann::json& Section(const char* key) const;
  nlohmann::json j_;
};

}  // namespace kvsweep

#endif  // KVSWEEP_SPEC_JOB_RESULT_H_

// Per-unit results of one evaluation, so that two jobs on the same data can be compared unit by
// unit: documents for LAMBADA (log-likelihood of the continuation, greedy hit) and for wikitext
// (log-likelihood, scored tokens, words and bytes of each document), rolling windows for the
// stream perplexity tasks (log-likelihood and scored tokens of each window).
//
// In a result object they sit in metrics.<task>.units, compactly: base64 of little-endian
// float64 (loglik), int32 (tokens) and uint8 (greedy) arrays, so they are stored with the result
// in SQLite (about 11 bytes per LAMBADA document) and reach every client through Export.
#ifndef KVSWEEP_STATS_EVAL_UNITS_H_
#define KVSWEEP_STATS_EVAL_UNITS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace kvsweep {

struct EvalUnits {
  std::string kind;             // "document" or "window"
  std::vector<double> loglik;   // per unit: sum of log p over its scored tokens
  std::vector<int32_t> tokens;  // per unit: scored tokens
  std::vector<uint8_t> greedy;  // LAMBADA documents: 1 when every continuation token was the argmax
  // wikitext documents: words and bytes of each document (lm-eval's weights for word_ppl,
  // byte_ppl and bits_per_byte). Empty for the other tasks.
  std::vector<int32_t> words, bytes;
  // Totals of the whole text (perplexity tasks): without per-unit words and bytes, word_ppl and
  // bits_per_byte scale the per-token log-likelihood by tokens/words and tokens/bytes.
  int64_t total_words = 0, total_bytes = 0;

  size_t size() const { return loglik.size(); }
  nlohmann::json ToJson() const;
  // kInvalidArgument naming the field for anything malformed (lengths that disagree, bad base64).
  static absl::StatusOr<EvalUnits> FromJson(const nlohmann::json& j);
};

// The metrics that can be computed from units (and so compared with intervals).
bool IsUnitMetric(const std::string& metric);

// `metric` over the units at `idx` (a resample: indices may repeat), or over all units when
// `idx` is null: acc = mean greedy; ppl = exp(-mean loglik) (LAMBADA documents, lm-eval's
// perplexity); loglik_sum = sum; token_ppl = exp(-sum loglik / sum tokens); with per-unit words
// and bytes (wikitext documents) word_ppl = exp(-sum loglik / sum words), byte_ppl = exp(-sum
// loglik / sum bytes), bits_per_byte = -sum loglik / (sum bytes ln 2), lm-eval's weighted
// perplexities over the resampled documents; without them (windows of one stream) word_ppl and
// bits_per_byte come from the per-token mean, scaled by the text's tokens/words and
// tokens/bytes. nullopt if the units cannot give it (no greedy flags, no word counts, ...).
std::optional<double> UnitMetric(const EvalUnits& u, const std::string& metric,
                                 const std::vector<uint32_t>* idx);

}  // namespace kvsweep

#endif  // KVSWEEP_STATS_EVAL_UNITS_H_

// `kvsweep table`: pivots a sweep's results into a comparison table.
//
//   rows  = a label (model, task, method, family, budget, kv_heads, seed, dtype, method_spec),
//           or `sweep` when the table reads several sweeps (`kvsweep table A B ...`)
//   cols  = another label
//   metric= a number from the result (JobResult::Number): a task metric (acc, ppl, token_ppl,
//           word_ppl, bits_per_byte, loglik_sum, n, tokens, ...), a ledger field (fraction_payload,
//           fraction_total, fraction_of_native, cache_bytes, ...), a timing field (wall_s) or
//           an attention diagnostic's mean over layers (kl_mean, flip_rate, out_rel_err,
//           damage_ratio_geomean; sweeps with `diagnostics: true`).
//   delta = a column value (usually the method `none`): every other cell shows its difference
//           from that column's cell in the same row, and — where both jobs carry per-document
//           (or per-window) results on the same data — the ratio and paired-bootstrap intervals
//           of both (stats/bootstrap.h; seeded, so the same table every time). A `*` marks a
//           difference whose interval excludes zero.
//   rows "auto": every label that varies among the jobs (sweep, model, task, kv_heads, dtype),
//           joined;
//   metric "auto": ppl for LAMBADA, token_ppl for the perplexity tasks.
// Jobs that differ only in `seed` share a cell: their mean, ± the standard deviation across seeds.
// Formats: md (columns aligned), csv, latex (booktabs), json (with every interval), html (the md
// table's cells as a <table> fragment with its caption, every text escaped: the dashboard's).
#ifndef KVSWEEP_CLIENT_TABLE_H_
#define KVSWEEP_CLIENT_TABLE_H_

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "spec/job_result.h"
#include "stats/bootstrap.h"

namespace kvsweep {

struct TableInput {
  nlohmann::json labels;            // the job's labels in the sweep
  std::optional<JobResult> result;  // the result when done
};

struct TableSpec {
  std::string rows = "model";  // a dimension, or "auto"
  std::string cols = "method";
  std::string metric = "ppl";                              // a metric, or "auto"
  std::string delta;                                       // "" = none
  std::vector<std::pair<std::string, std::string>> where;  // label filters (key=value)
  int resamples = kDefaultResamples;                       // paired bootstrap (delta cells)
  uint64_t seed = kDefaultSeed;
  double level = 0.95;
};

struct Table {
  std::string row_dim, col_dim, metric, delta;
  std::vector<std::string> rows, cols;
  std::vector<std::vector<std::optional<double>>> cells;  // [row][col]; after delta
  std::vector<std::vector<bool>> is_delta;                // cell shows a difference
  // [row][col]: several seeds in the cell: their standard deviation and count.
  std::vector<std::vector<std::optional<double>>> seed_sd;
  std::vector<std::vector<int>> seeds;
  // [row][col]: delta cells whose jobs carry per-unit results on the same data.
  std::vector<std::vector<std::optional<PairedComparison>>> compared;
  std::vector<std::string> notes;  // placeholders (first), why some cells have no interval
  int placeholders = 0;            // results shown from the fake evaluator
};

// The note a table, plot or report carries when `placeholders` of its `results` are the fake
// evaluator's (JobResult::IsPlaceholder); BuildTable puts it first in Table::notes.
std::string PlaceholderNote(int placeholders, int results);

// Label keys a table can pivot on.
const std::vector<std::string>& TableDimensions();
// The label's value as text ("2", "0.25", "none"); "" if absent or null.
std::string LabelText(const nlohmann::json& labels, const std::string& key);

// Why several jobs fall on one table cell or plot point, for the error that says so: " that
// differ in LABELS; add --where LABEL=VALUE or `instead`" where labels differ, else " with the
// same labels: they differ in fields that are not labels ..." and how to tell them apart.
std::string SharedCellReason(const std::vector<const TableInput*>& jobs,
                             const std::string& instead);

// kInvalidArgument: unknown dimension, rows == cols, a cell with several results (the message
// names the labels that differ), the delta column missing, no rows left after filtering.
absl::StatusOr<Table> BuildTable(const std::vector<TableInput>& inputs, const TableSpec& spec);
// The formats FormatTable writes; kInvalidArgument naming them for any other.
absl::Status CheckTableFormat(const std::string& format);
// kInvalidArgument for an unknown format.
absl::StatusOr<std::string> FormatTable(const Table& t, const std::string& format);

// RFC 4180 field quoting.
std::string CsvField(const std::string& s);

}  // namespace kvsweep

#endif  // KVSWEEP_CLIENT_TABLE_H_

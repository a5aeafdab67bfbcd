// `kvsweep report SWEEP`: the claims of "Quantization Dominates Rank Reduction for KV-Cache
// Compression" (Salfati, arXiv 2604.11501), each checked against a sweep's results with an
// interval and a verdict: holds, does not hold, or cannot tell.
//
// Jobs are classified by their canonical method (a single spec on K and V): `none`;
// quantization (quant, identity basis, no residual window; any bits/group/axis/sym); rank
// reduction (rank, any basis); hybrid. Storage is the ledger's payload fraction, the study's
// convention (INT4 = rank d/4 = 0.25). Comparisons are made within one model, task and cache
// layout (kv_heads, dtype), at the model's native KV heads unless the sweep has only pooled ones.
// Quality is the table's metric: perplexity per document for LAMBADA (acc where stated),
// token perplexity for the perplexity tasks; lower is better.
//
// Every interval is a paired percentile bootstrap (stats/bootstrap.h, seeded): over documents or
// windows for quality (both jobs scored the same units), over layers for attention diagnostics.
// A check holds when its interval lies entirely on the claim's side of the threshold, does not
// hold when it lies entirely on the other side, and cannot tell otherwise (or when the jobs it
// needs are missing, which is said).
#ifndef KVSWEEP_CLIENT_REPORT_H_
#define KVSWEEP_CLIENT_REPORT_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/table.h"
#include "stats/bootstrap.h"

namespace kvsweep {

enum class Verdict { kHolds, kDoesNotHold, kCannotTell };
const char* VerdictName(Verdict v);  // "holds", "does not hold", "cannot tell"

// One comparison on one model/task/layout.
struct ClaimCheck {
  std::string where;     // "ref-llama, wikitext, kv_heads 2, budget 0.25"
  std::string compared;  // "quant:bits=4 vs rank:r=16,basis=pca"
  std::string measured;  // the statistic, its interval and the threshold
  Verdict verdict = Verdict::kCannotTell;
};

struct Claim {
  std::string id;         // "quant-beats-rank", ...
  std::string statement;  // the study's claim, in its words where possible
  std::string test;       // how this report checks it
  std::vector<ClaimCheck> checks;
  std::string missing;  // non-empty when no check could be made: which jobs it needs
  // holds if every check holds, does not hold if every check does not, else cannot tell.
  Verdict overall() const;
  // "holds in 3, does not hold in 1 of 4 checks", or "no check: the sweep needs ...".
  std::string Summary() const;
};

struct ReportOptions {
  int resamples = kDefaultResamples;
  uint64_t seed = kDefaultSeed;
  double level = 0.95;
  std::string note;  // Markdown shown under the title (how the page was made, on what machine)
};

// Every job of one model, task and layout beside `none`: what the claims were read from.
struct ResultRow {
  std::string method;     // label in the sweep
  std::string spec_name;  // "INT4 g64", "rank 16 pca", ...
  double payload = 0, total = 0;
  int context_len = 0;  // L the total (amortized bases) is computed at: the job's own
  std::optional<double> value, flip_rate;
  std::optional<PairedComparison> vs_none;
};
struct ResultGroup {
  std::string name, metric;
  std::vector<ResultRow> rows;  // by payload fraction, largest first
};

struct Report {
  std::string sweep;
  std::vector<Claim> claims;
  std::vector<ResultGroup> results;
  int jobs = 0, jobs_with_results = 0, jobs_used = 0;
  int placeholders = 0;  // results of the fake evaluator (notes.front() then says so)
  std::vector<std::string> notes;
};

// kInvalidArgument when the sweep has no finished job.
absl::StatusOr<Report> BuildReport(const std::string& sweep, const std::vector<TableInput>& inputs,
                                   const ReportOptions& options);

// The report as a Markdown page; `figures` are (file, caption) pairs shown under "Figures".
std::string RenderReportMarkdown(const Report& report, const ReportOptions& options,
                                 const std::vector<std::pair<std::string, std::string>>& figures);

}  // namespace kvsweep

#endif  // KVSWEEP_CLIENT_REPORT_H_

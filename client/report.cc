#include "client/report.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "spec/job_result.h"
#include "spec/method_spec.h"
#include "spec/task.h"
#include "stats/eval_units.h"

namespace kvsweep {
namespace {

enum class Kind { kNone, kQuant, kRank, kHybrid, kOther };

struct Job {
  std::string model, task, task_kind, layout, label;
  bool native = true;
  Kind kind = Kind::kOther;
  MethodSpec spec;     // the single spec (kinds other than kOther)
  std::string method;  // canonical
  double budget = 0;   // ledger fraction_payload
  std::string metric;  // quality metric of the task
  std::optional<double> point;
  std::optional<EvalUnits> units;
  const JobResult* result = nullptr;

  std::string Name() const {
    switch (kind) {
      case Kind::kNone:
        return "none";
      case Kind::kQuant: {
        std::string n = absl::StrCat("INT", spec.bits);
        if (spec.axis == QuantAxis::kChannel) absl::StrAppend(&n, " per-channel");
        if (spec.sym) absl::StrAppend(&n, " sym");
        return absl::StrCat(n, " g", spec.group);
      }
      case Kind::kRank:
        return absl::StrCat("rank ", spec.r, " ", BasisName(spec.basis));
      case Kind::kHybrid:
        return absl::StrCat("hybrid r", spec.r, " ", spec.bits, "-bit");
      case Kind::kOther:
        return method;
    }
    return method;
  }
};

std::string Num(double v) { return absl::StrFormat("%.4g", v); }
std::string Ci(const Interval& i) { return absl::StrFormat("[%.4g, %.4g]", i.lo, i.hi); }

std::string Label(const nlohmann::json& labels, const char* key) { return LabelText(labels, key); }

// Verdict of an interval against a threshold, when the claim is that the value is below it
// (`below` true) or above it.
Verdict Side(const Interval& i, double threshold, bool below) {
  if (below ? i.hi < threshold : i.lo > threshold) return Verdict::kHolds;
  if (below ? i.lo > threshold : i.hi < threshold) return Verdict::kDoesNotHold;
  return Verdict::kCannotTell;
}

std::optional<Job> Classify(const TableInput& in) {
  if (!in.result.has_value()) return std::nullopt;
  const JobResult& r = *in.result;
  Job j;
  j.result = &*in.result;
  j.model = Label(in.labels, "model");
  j.task = Label(in.labels, "task");
  j.label = Label(in.labels, "method");
  // Stored results carry no spec: the canonical method is the `method_spec` label, the task
  // the key of the result's metrics object (eval's own output has a spec: used when present).
  j.method = Label(in.labels, "method_spec");
  if (j.method.empty()) j.method = r.spec().value("method", "");
  j.task_kind = r.task();
  const std::optional<double> payload = r.LedgerNumber("fraction_payload");
  if (!payload || j.method.empty()) return std::nullopt;
  j.budget = std::round(*payload * 1e9) / 1e9;
  const int64_t kvh = r.LedgerInteger("kv_heads").value_or(0);
  const int64_t native = r.LedgerInteger("native_kv_heads").value_or(0);
  j.native = kvh == native;
  j.layout = absl::StrCat("kv_heads ", kvh, ", ", Label(in.labels, "dtype"));
  absl::StatusOr<KvMethod> m = ParseKvMethod(j.method);
  if (m.ok() && m->single()) {
    j.spec = m->k;
    const MethodSpec& s = j.spec;
    if (s.family == MethodFamily::kNone) {
      j.kind = Kind::kNone;
    } else if (s.target == KvTarget::kKV) {
      if (s.family == MethodFamily::kQuant && s.basis == Basis::kIdentity && s.residual == 0) {
        j.kind = Kind::kQuant;
      } else if (s.family == MethodFamily::kRank) {
        j.kind = Kind::kRank;
      } else if (s.family == MethodFamily::kHybrid) {
        j.kind = Kind::kHybrid;
      }
    }
  }
  j.metric = QualityMetric(j.task_kind);
  j.point = r.Number(j.metric);
  j.units = r.Units();
  return j;
}

struct Group {
  std::string name;  // "model, task, layout"
  std::vector<const Job*> jobs;

  const Job* None() const {
    for (const Job* j : jobs) {
      if (j->kind == Kind::kNone) return j;
    }
    return nullptr;
  }
  // The job of `kind` at `budget` with the best (lowest) point value.
  const Job* Best(Kind kind, double budget) const {
    const Job* best = nullptr;
    for (const Job* j : jobs) {
      if (j->kind != kind || std::fabs(j->budget - budget) > 1e-9 || !j->point) continue;
      if (best == nullptr || *j->point < *best->point) best = j;
    }
    return best;
  }
  std::vector<double> Budgets(Kind kind) const {
    std::set<double> b;
    for (const Job* j : jobs) {
      if (j->kind == kind) b.insert(j->budget);
    }
    return {b.rbegin(), b.rend()};  // largest first
  }
};

class Checker {
 public:
  explicit Checker(const ReportOptions& o) : o_(o) {}

  // A against B on `metric` over the same units.
  absl::StatusOr<PairedComparison> Compare(const Job& a, const Job& b,
                                           const std::string& metric) const {
    if (!a.units || !b.units) {
      return absl::FailedPreconditionError("a job has no per-document results");
    }
    return PairedBootstrap(*a.units, *b.units, metric, o_.resamples, o_.seed, o_.level);
  }

  // Geometric mean over layers of f(layer) with a bootstrap interval over layers.
  std::optional<std::pair<double, Interval>> OverLayers(const std::vector<double>& values) const {
    if (values.size() < 2) return std::nullopt;
    for (double v : values) {
      if (!(v > 0) || !std::isfinite(v)) return std::nullopt;
    }
    auto geomean = [&](const std::vector<uint32_t>* idx) {
      double s = 0;
      const size_t n = idx ? idx->size() : values.size();
      for (size_t i = 0; i < n; ++i) s += std::log(values[idx ? (*idx)[i] : i]);
      return std::exp(s / n);
    };
    std::vector<double> boot =
        Bootstrap(values.size(), o_.resamples, o_.seed,
                  [&](const std::vector<uint32_t>& idx) { return geomean(&idx); });
    const double tail = (1 - o_.level) / 2;
    return std::make_pair(geomean(nullptr),
                          Interval{Quantile(boot, tail), Quantile(boot, 1 - tail)});
  }

  // Mean over layers of paired differences, with a bootstrap interval over layers.
  std::optional<std::pair<double, Interval>> MeanDiffOverLayers(
      const std::vector<double>& a, const std::vector<double>& b) const {
    if (a.size() != b.size() || a.size() < 2) return std::nullopt;
    auto mean = [&](const std::vector<uint32_t>* idx) {
      double s = 0;
      const size_t n = idx ? idx->size() : a.size();
      for (size_t i = 0; i < n; ++i) {
        const size_t k = idx ? (*idx)[i] : i;
        s += a[k] - b[k];
      }
      return s / n;
    };
    std::vector<double> boot =
        Bootstrap(a.size(), o_.resamples, o_.seed,
                  [&](const std::vector<uint32_t>& idx) { return mean(&idx); });
    const double tail = (1 - o_.level) / 2;
    return std::make_pair(mean(nullptr), Interval{Quantile(boot, tail), Quantile(boot, 1 - tail)});
  }

 private:
  const ReportOptions& o_;
};

std::vector<double> LayerValues(const Job& j, const char* key) {
  std::vector<double> out;
  const nlohmann::json& d = j.result->diagnostics();
  if (!d.contains("layers") || !d["layers"].is_array()) return out;
  for (const nlohmann::json& l : d["layers"]) {
    if (!l.is_object() || !l.contains(key) || !l[key].is_number()) return {};
    out.push_back(l[key].get<double>());
  }
  return out;
}

std::string BudgetText(double b) { return absl::StrFormat("budget %g", b); }

}  // namespace

const char* VerdictName(Verdict v) {
  switch (v) {
    case Verdict::kHolds:
      return "holds";
    case Verdict::kDoesNotHold:
      return "does not hold";
    case Verdict::kCannotTell:
      return "cannot tell";
  }
  return "?";
}

Verdict Claim::overall() const {
  if (checks.empty()) return Verdict::kCannotTell;
  bool all_hold = true, none_hold = true;
  for (const ClaimCheck& c : checks) {
    all_hold = all_hold && c.verdict == Verdict::kHolds;
    none_hold = none_hold && c.verdict == Verdict::kDoesNotHold;
  }
  return all_hold ? Verdict::kHolds : none_hold ? Verdict::kDoesNotHold : Verdict::kCannotTell;
}

std::string Claim::Summary() const {
  if (checks.empty()) return absl::StrCat("no check: the sweep needs ", missing);
  int n[3] = {0, 0, 0};
  for (const ClaimCheck& c : checks) ++n[static_cast<int>(c.verdict)];
  std::vector<std::string> parts;
  for (Verdict v : {Verdict::kHolds, Verdict::kDoesNotHold, Verdict::kCannotTell}) {
    if (n[static_cast<int>(v)] > 0) {
      parts.push_back(absl::StrCat(VerdictName(v), " in ", n[static_cast<int>(v)]));
    }
  }
  return absl::StrCat(absl::StrJoin(parts, ", "), " of ", checks.size(), " checks");
}

absl::StatusOr<Report> BuildReport(const std::string& sweep, const std::vector<TableInput>& inputs,
                                   const ReportOptions& options) {
  Report rep;
  rep.sweep = sweep;
  rep.jobs = static_cast<int>(inputs.size());
  std::vector<Job> jobs;
  for (const TableInput& in : inputs) {
    if (in.result.has_value()) ++rep.jobs_with_results;
    if (std::optional<Job> j = Classify(in)) jobs.push_back(std::move(*j));
  }
  if (jobs.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("report: sweep '", sweep, "' has no finished job yet"));
  }
  // Groups: one model, task and cache layout; native KV heads where the group has them.
  std::map<std::string, Group> groups;
  for (const Job& j : jobs) {
    const std::string key = absl::StrCat(j.model, ", ", j.task, ", ", j.layout);
    Group& g = groups[key];
    g.name = key;
    g.jobs.push_back(&j);
  }
  bool any_native = false;
  for (const Job& j : jobs) any_native = any_native || j.native;
  std::vector<const Group*> used;
  for (const auto& [key, g] : groups) {
    if (any_native && !g.jobs.front()->native) {
      rep.notes.push_back(
          absl::StrCat("left out (pooled KV heads; the claims are about native "
                       "caches): ",
                       g.name));
      continue;
    }
    used.push_back(&g);
    rep.jobs_used += static_cast<int>(g.jobs.size());
  }
  Checker ck(options);
  auto fail_text = [](const absl::Status& s) { return absl::StrCat("no interval: ", s.message()); };

  // 1. Quantization beats rank reduction at matched storage.
  Claim beats{"quant-beats-rank",
              "At matched storage, quantization (all dimensions, fewer bits) beats rank "
              "reduction (fewer dimensions).",
              "At each payload budget with both families: the best quantization job against the "
              "best rank job (any basis) on the task's perplexity; holds when the interval of "
              "quant − rank lies below 0.",
              {},
              ""};
  Claim margin{"margin-by-budget",
               "The gap grows with compression: the smaller the budget, the larger "
               "quantization's advantage.",
               "Ratio quant / rank (best of each) at the largest and the smallest common budget; "
               "holds when the interval at the smallest budget lies entirely below the interval "
               "at the largest.",
               {},
               ""};
  for (const Group* g : used) {
    std::vector<std::pair<double, PairedComparison>> ratios;
    for (double b : g->Budgets(Kind::kQuant)) {
      const Job* q = g->Best(Kind::kQuant, b);
      const Job* r = g->Best(Kind::kRank, b);
      if (q == nullptr || r == nullptr) continue;
      ClaimCheck c;
      c.where = absl::StrCat(g->name, ", ", BudgetText(b));
      c.compared = absl::StrCat(q->Name(), " vs ", r->Name());
      absl::StatusOr<PairedComparison> pc = ck.Compare(*q, *r, q->metric);
      if (!pc.ok()) {
        c.measured = fail_text(pc.status());
      } else {
        c.measured = absl::StrCat(q->metric, " ", Num(pc->a), " vs ", Num(pc->base), ": diff ",
                                  Num(pc->diff), " ", Ci(pc->diff_ci), ", ratio ", Num(pc->ratio),
                                  " ", Ci(pc->ratio_ci));
        c.verdict = Side(pc->diff_ci, 0, /*below=*/true);
        ratios.emplace_back(b, *pc);
      }
      beats.checks.push_back(c);
    }
    if (ratios.size() >= 2) {
      const auto& large = ratios.front();  // budgets come largest first
      const auto& small = ratios.back();
      ClaimCheck c;
      c.where = g->name;
      c.compared = absl::StrCat(BudgetText(small.first), " vs ", BudgetText(large.first));
      c.measured =
          absl::StrCat("quant/rank ratio ", Num(small.second.ratio), " ", Ci(small.second.ratio_ci),
                       " vs ", Num(large.second.ratio), " ", Ci(large.second.ratio_ci));
      c.verdict = small.second.ratio_ci.hi < large.second.ratio_ci.lo   ? Verdict::kHolds
                  : small.second.ratio_ci.lo > large.second.ratio_ci.hi ? Verdict::kDoesNotHold
                                                                        : Verdict::kCannotTell;
      margin.checks.push_back(c);
    }
  }
  beats.missing = "quantization and rank jobs at a common payload budget";
  margin.missing = "quantization and rank jobs at two or more common budgets";

  // 2. Rank d/4 collapses on LAMBADA while INT4 matches FP16.
  Claim collapse{"rank-collapse",
                 "On LAMBADA, INT4 matches FP16 accuracy while rank reduction at the same storage "
                 "(rank-32 of 128 dimensions) collapses.",
                 "At budget 0.25: the accuracy of the best INT4 job against `none` (matches when "
                 "the interval of the difference contains 0 and lies within ±0.02), and of the "
                 "best rank job against `none` (collapses when the interval of the ratio lies "
                 "below 0.5); holds when both do, does not hold when either clearly does not.",
                 {},
                 "LAMBADA jobs for none, INT4 and rank at budget 0.25"};
  // 3. Joint K+V INT4 costs little.
  Claim joint{"joint-int4-cost",
              "Joint K+V INT4 quantization (75% smaller cache) costs little perplexity (+0.18 "
              "PPL on Mistral 7B, about 3%).",
              "The best INT4 job on K and V against `none`: holds when the interval of the "
              "perplexity ratio lies below 1.05.",
              {},
              "none and INT4 jobs (quant, 4 bits, target kv)"};
  for (const Group* g : used) {
    const Job* none = g->None();
    if (none == nullptr) continue;
    const Job* int4 = nullptr;
    for (const Job* j : g->jobs) {
      if (j->kind == Kind::kQuant && j->spec.bits == 4 && j->point &&
          (int4 == nullptr || *j->point < *int4->point)) {
        int4 = j;
      }
    }
    if (int4 != nullptr) {
      ClaimCheck c;
      c.where = g->name;
      c.compared = absl::StrCat(int4->Name(), " vs none");
      absl::StatusOr<PairedComparison> pc = ck.Compare(*int4, *none, int4->metric);
      if (!pc.ok()) {
        c.measured = fail_text(pc.status());
      } else {
        c.measured = absl::StrCat(int4->metric, " ", Num(pc->a), " vs ", Num(pc->base), ": ratio ",
                                  Num(pc->ratio), " ", Ci(pc->ratio_ci), " (threshold 1.05)");
        c.verdict = Side(pc->ratio_ci, 1.05, /*below=*/true);
      }
      joint.checks.push_back(c);
    }
    const TaskSpec* task = FindTask(none->task_kind);
    if (task == nullptr || task->protocol != TaskProtocol::kLambada) continue;
    const Job* q = g->Best(Kind::kQuant, 0.25);
    const Job* r = g->Best(Kind::kRank, 0.25);
    if (q == nullptr || r == nullptr) continue;
    ClaimCheck c;
    c.where = absl::StrCat(g->name, ", ", BudgetText(0.25));
    c.compared = absl::StrCat(q->Name(), " and ", r->Name(), " vs none");
    absl::StatusOr<PairedComparison> qa = ck.Compare(*q, *none, "acc");
    absl::StatusOr<PairedComparison> ra = ck.Compare(*r, *none, "acc");
    if (!qa.ok() || !ra.ok()) {
      c.measured = fail_text(!qa.ok() ? qa.status() : ra.status());
    } else {
      const bool none_zero = qa->base == 0;
      c.measured = absl::StrCat("acc none ", Num(qa->base), "; ", q->Name(), " ", Num(qa->a),
                                " (diff ", Ci(qa->diff_ci), "); ", r->Name(), " ", Num(ra->a),
                                none_zero ? std::string(" (none's accuracy is 0: no ratio)")
                                          : absl::StrCat(" (ratio ", Ci(ra->ratio_ci), ")"));
      const Verdict matches = qa->diff_ci.lo >= -0.02 && qa->diff_ci.hi <= 0.02 &&
                                      qa->diff_ci.lo <= 0 && qa->diff_ci.hi >= 0
                                  ? Verdict::kHolds
                              : (qa->diff_ci.hi < -0.02 || qa->diff_ci.lo > 0.02)
                                  ? Verdict::kDoesNotHold
                                  : Verdict::kCannotTell;
      const Verdict collapses =
          none_zero ? Verdict::kCannotTell : Side(ra->ratio_ci, 0.5, /*below=*/true);
      c.verdict = matches == Verdict::kHolds && collapses == Verdict::kHolds ? Verdict::kHolds
                  : matches == Verdict::kDoesNotHold || collapses == Verdict::kDoesNotHold
                      ? Verdict::kDoesNotHold
                      : Verdict::kCannotTell;
    }
    collapse.checks.push_back(c);
  }

  // 4. Basis spread.
  Claim spread{"basis-spread",
               "The result does not depend on the rank basis: the spread across bases is small "
               "(< 0.4 PPL, about 8% of Mistral 7B's perplexity).",
               "For every r with two or more bases: the worst basis against the best on the "
               "task's perplexity; holds when the interval of the ratio lies below 1.10.",
               {},
               "rank jobs with two or more bases at one r"};
  for (const Group* g : used) {
    std::map<int, std::vector<const Job*>> by_r;
    for (const Job* j : g->jobs) {
      if (j->kind == Kind::kRank && j->point) by_r[j->spec.r].push_back(j);
    }
    for (auto& [r, js] : by_r) {
      std::set<Basis> bases;
      for (const Job* j : js) bases.insert(j->spec.basis);
      if (bases.size() < 2) continue;
      const Job* best = *std::min_element(
          js.begin(), js.end(), [](const Job* a, const Job* b) { return *a->point < *b->point; });
      const Job* worst = *std::max_element(
          js.begin(), js.end(), [](const Job* a, const Job* b) { return *a->point < *b->point; });
      ClaimCheck c;
      c.where = absl::StrCat(g->name, ", r ", r);
      c.compared = absl::StrCat(worst->Name(), " vs ", best->Name(), " (", bases.size(), " bases)");
      absl::StatusOr<PairedComparison> pc = ck.Compare(*worst, *best, best->metric);
      if (!pc.ok()) {
        c.measured = fail_text(pc.status());
      } else {
        c.measured = absl::StrCat(best->metric, " ", Num(pc->a), " vs ", Num(pc->base), ": spread ",
                                  Num(pc->diff), ", ratio ", Num(pc->ratio), " ", Ci(pc->ratio_ci),
                                  " (threshold 1.10)");
        c.verdict = Side(pc->ratio_ci, 1.10, /*below=*/true);
      }
      spread.checks.push_back(c);
    }
  }

  // 5. The 3·4^b damage ratio.
  Claim damage{"damage-ratio",
               "Projection damage exceeds quantization damage by 3·2^(2b) per direction (the "
               "softmax Fisher metric).",
               "From the attention diagnostics (damage ratio of keys at b bits, per layer): the "
               "geometric mean over layers of measured / 3·4^b, with an interval over layers; "
               "holds when it lies within [0.5, 2], does not hold when it lies outside.",
               {},
               "jobs run with diagnostics: true"};
  // 6. Top-1 flips.
  Claim flips{"top1-flips",
              "Removing dimensions flips which token is attended; quantization noise preserves "
              "the score order.",
              "At each budget with both families run with diagnostics: the top-1 flip rate of "
              "the best quantization job minus the best rank job's, per layer, averaged over "
              "layers with an interval over layers; holds when it lies below 0.",
              {},
              "quantization and rank jobs at one budget, run with diagnostics: true"};
  for (const Group* g : used) {
    std::set<int> bits_done;
    for (const Job* j : g->jobs) {
      const nlohmann::json& d = j->result->diagnostics();
      if (!d.contains("damage_bits") || !d["damage_bits"].is_number_integer() ||
          !d.contains("predicted_ratio") || !d["predicted_ratio"].is_number()) {
        continue;
      }
      const int bits = d["damage_bits"].get<int>();
      if (!bits_done.insert(bits).second) continue;
      const double predicted = d["predicted_ratio"].get<double>();
      std::vector<double> ratio = LayerValues(*j, "damage_ratio");
      for (double& x : ratio) x /= predicted;
      ClaimCheck c;
      c.where = absl::StrCat(g->name, ", ", bits, " bits");
      c.compared = absl::StrCat("measured vs 3·4^", bits, " = ", Num(predicted));
      if (std::optional<std::pair<double, Interval>> gm = ck.OverLayers(ratio)) {
        c.measured = absl::StrCat("measured / predicted ", Num(gm->first), " ", Ci(gm->second),
                                  " over ", ratio.size(), " layers");
        c.verdict = gm->second.lo >= 0.5 && gm->second.hi <= 2.0 ? Verdict::kHolds
                    : gm->second.hi < 0.5 || gm->second.lo > 2.0 ? Verdict::kDoesNotHold
                                                                 : Verdict::kCannotTell;
      } else {
        c.measured = "no per-layer damage ratios";
      }
      damage.checks.push_back(c);
    }
    for (double b : g->Budgets(Kind::kQuant)) {
      const Job* q = g->Best(Kind::kQuant, b);
      const Job* r = g->Best(Kind::kRank, b);
      if (q == nullptr || r == nullptr) continue;
      const std::vector<double> fq = LayerValues(*q, "flip_rate");
      const std::vector<double> fr = LayerValues(*r, "flip_rate");
      if (fq.empty() || fr.empty()) continue;
      ClaimCheck c;
      c.where = absl::StrCat(g->name, ", ", BudgetText(b));
      c.compared = absl::StrCat(q->Name(), " vs ", r->Name());
      if (std::optional<std::pair<double, Interval>> d = ck.MeanDiffOverLayers(fq, fr)) {
        double mq = 0, mr = 0;
        for (double x : fq) mq += x / fq.size();
        for (double x : fr) mr += x / fr.size();
        c.measured = absl::StrCat("flip rate ", Num(mq), " vs ", Num(mr), ": diff ", Num(d->first),
                                  " ", Ci(d->second), " over ", fq.size(), " layers");
        c.verdict = Side(d->second, 0, /*below=*/true);
      } else {
        c.measured = "layers do not pair up";
      }
      flips.checks.push_back(c);
    }
  }
  rep.claims = {beats, margin, collapse, joint, spread, damage, flips};
  for (const Group* g : used) {
    ResultGroup rg;
    rg.name = g->name;
    rg.metric = g->jobs.front()->metric;
    const Job* none = g->None();
    std::vector<const Job*> js = g->jobs;
    std::stable_sort(js.begin(), js.end(),
                     [](const Job* a, const Job* b) { return a->budget > b->budget; });
    for (const Job* j : js) {
      ResultRow row;
      row.spec_name = j->Name();
      row.payload = j->budget;
      row.total = j->result->LedgerNumber("fraction_total").value_or(0.0);
      row.context_len = static_cast<int>(j->result->LedgerInteger("context_len").value_or(0));
      row.value = j->point;
      row.flip_rate = j->result->Number("flip_rate");
      if (none != nullptr && j != none) {
        absl::StatusOr<PairedComparison> pc = ck.Compare(*j, *none, j->metric);
        if (pc.ok()) row.vs_none = *pc;
      }
      row.method = j->label;
      rg.rows.push_back(row);
    }
    rep.results.push_back(std::move(rg));
  }
  if (rep.jobs_with_results < rep.jobs) {
    rep.notes.push_back(absl::StrCat(rep.jobs - rep.jobs_with_results, " of ", rep.jobs,
                                     " jobs have no result yet: the report covers the rest"));
  }
  for (const TableInput& in : inputs) rep.placeholders += in.result && in.result->IsPlaceholder();
  if (rep.placeholders > 0) {
    rep.notes.insert(rep.notes.begin(), PlaceholderNote(rep.placeholders, rep.jobs_with_results));
  }
  return rep;
}

std::string RenderReportMarkdown(const Report& r, const ReportOptions& o,
                                 const std::vector<std::pair<std::string, std::string>>& figures) {
  auto cell = [](std::string s) {
    for (char& c : s) {
      if (c == '|' || c == '\n') c = c == '|' ? '/' : ' ';
    }
    return s;
  };
  std::string out = absl::StrCat(
      "# ", r.sweep,
      ": the claims of \"Quantization Dominates Rank Reduction for KV-Cache "
      "Compression\"\n\n",
      o.note.empty() ? "" : o.note + "\n\n",
      r.placeholders > 0
          ? absl::StrCat("**", r.notes.front(), ": no verdict below is evidence of anything.**\n\n")
          : "",
      "Each claim of the study (Salfati, arXiv 2604.11501), checked against this sweep's results. "
      "Intervals are ",
      absl::StrFormat("%g", o.level * 100), "% paired percentile bootstraps (", o.resamples,
      " resamples, seed ", o.seed,
      "): over documents or windows for quality, over layers for attention diagnostics. A check "
      "**holds** when its interval lies on the claim's side of the threshold, **does not hold** "
      "when it lies on the other side, and is **cannot tell** otherwise. Storage is the ledger's "
      "payload fraction (INT4 = rank d/4 = 0.25). ",
      r.jobs_used, " of ", r.jobs, " jobs used (", r.jobs_with_results, " with results).\n\n",
      "| claim | verdict |\n| --- | --- |\n");
  for (const Claim& c : r.claims) {
    absl::StrAppend(&out, "| ", cell(c.statement), " | **", VerdictName(c.overall()), "** (",
                    cell(c.Summary()), ") |\n");
  }
  for (const Claim& c : r.claims) {
    absl::StrAppend(&out, "\n## ", c.id, ": ", VerdictName(c.overall()), "\n\n", c.statement,
                    "\n\n*Test:* ", c.test, "\n\n");
    if (c.checks.empty()) {
      absl::StrAppend(&out, "No check could be made: the sweep needs ", c.missing, ".\n");
      continue;
    }
    absl::StrAppend(&out, "| where | compared | measured | verdict |\n| --- | --- | --- | --- |\n");
    for (const ClaimCheck& k : c.checks) {
      absl::StrAppend(&out, "| ", cell(k.where), " | ", cell(k.compared), " | ", cell(k.measured),
                      " | ", VerdictName(k.verdict), " |\n");
    }
  }
  if (!r.results.empty()) {
    absl::StrAppend(&out,
                    "\n## Results\n\nEvery job the claims were read from. `vs none`: the ratio "
                    "of the quality metric to `none`'s with its interval (same documents). "
                    "`payload` is the storage convention of the comparisons; `total` adds "
                    "scales, fp16 tokens and stored bases amortized over `L`, the job's own mean "
                    "tokens per sequence, so it differs between tasks.\n");
    for (const ResultGroup& g : r.results) {
      absl::StrAppend(&out, "\n### ", g.name, "\n\n| method | runs | payload | total (L) | ",
                      g.metric,
                      " | vs none | flip rate |\n| --- | --- | --- | --- | --- | --- | --- |\n");
      for (const ResultRow& row : g.rows) {
        absl::StrAppend(&out, "| ", cell(row.method), " | ", cell(row.spec_name), " | ",
                        absl::StrFormat("%.4g", row.payload), " | ",
                        absl::StrFormat("%.4g (%d)", row.total, row.context_len), " | ",
                        row.value ? Num(*row.value) : "", " | ",
                        row.vs_none
                            ? absl::StrCat(Num(row.vs_none->ratio), " ", Ci(row.vs_none->ratio_ci),
                                           row.vs_none->significant ? " *" : "")
                            : "",
                        " | ", row.flip_rate ? Num(*row.flip_rate) : "", " |\n");
      }
    }
  }
  if (!figures.empty()) {
    absl::StrAppend(&out, "\n## Figures\n\n");
    for (const auto& [file, caption] : figures) {
      absl::StrAppend(&out, "![", caption, "](", file, ")\n\n*", caption, "*\n\n");
    }
  }
  if (!r.notes.empty()) {
    absl::StrAppend(&out, "\n## Notes\n\n");
    for (const std::string& n : r.notes) absl::StrAppend(&out, "- ", n, "\n");
  }
  return out;
}

}  // namespace kvsweep

#include "spec/ledger.h"

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "spec/method_family.h"

namespace kvsweep {
namespace {

// Bits for one of K or V, per token per head, at context length L: 16 per element when the
// method leaves the tensor uncompressed, else its family's storage formula.
TensorBits BitsFor(const MethodSpec& m, bool compressed, int d, int L) {
  if (!compressed) {
    TensorBits b;
    b.payload = 16.0 * d;
    return b;
  }
  return MethodFamilyDefOf(m.family).storage(m, d, L);
}

nlohmann::json BitsJson(const TensorBits& b, int d) {
  return {{"payload_bits", b.payload},
          {"metadata_bits", b.metadata},
          {"basis_bits", b.basis},
          {"total_bits", b.total()},
          {"fraction", b.total() / (16.0 * d)}};
}

}  // namespace

double Ledger::cache_bytes() const {
  return (k.total() + v.total()) * kv_heads * num_layers * static_cast<double>(context_len) / 8.0;
}

nlohmann::json Ledger::ToJson() const {
  return {{"k", BitsJson(k, head_dim)},
          {"v", BitsJson(v, head_dim)},
          {"fraction_payload", fraction_payload},
          {"fraction_total", fraction_total},
          {"fraction_of_native", fraction_of_native},
          {"kv_heads", kv_heads},
          {"native_kv_heads", native_kv_heads},
          {"head_dim", head_dim},
          {"num_layers", num_layers},
          {"context_len", context_len},
          {"unit", "bits per cached token per layer per KV head"},
          {"cache_bytes", cache_bytes()}};
}

absl::StatusOr<Ledger> ComputeLedger(const MethodSpec& spec, int head_dim, int kv_heads,
                                     int native_kv_heads, int num_layers, int context_len) {
  KvMethod m;
  m.k = m.v = spec;
  return ComputeLedger(m, head_dim, kv_heads, native_kv_heads, num_layers, context_len);
}

absl::StatusOr<Ledger> ComputeLedger(const KvMethod& method, int head_dim, int kv_heads,
                                     int native_kv_heads, int num_layers, int context_len) {
  for (const MethodSpec& p : method.Parts()) {
    if (!p.resolved()) {
      return absl::InvalidArgumentError(
          absl::StrCat("ledger needs a resolved method, got '", method.ToString(), "'"));
    }
  }
  if (head_dim <= 0 || kv_heads <= 0 || native_kv_heads <= 0 || num_layers <= 0 ||
      context_len <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("ledger shapes must be positive (head_dim=", head_dim, ", kv_heads=", kv_heads,
                     ", native_kv_heads=", native_kv_heads, ", layers=", num_layers,
                     ", context_len=", context_len, ")"));
  }
  Ledger l;
  l.head_dim = head_dim;
  l.kv_heads = kv_heads;
  l.native_kv_heads = native_kv_heads;
  l.num_layers = num_layers;
  l.context_len = context_len;
  if (method.single()) {
    l.k = BitsFor(method.k, method.k.compresses_k(), head_dim, context_len);
    l.v = BitsFor(method.k, method.k.compresses_v(), head_dim, context_len);
  } else {
    for (const KvMethod::LayerOverride& o : method.overrides) {
      if (o.last >= num_layers) {
        return absl::InvalidArgumentError(absl::StrCat("ledger: method '", method.ToString(),
                                                       "' names layers beyond ", num_layers));
      }
    }
    auto add = [](TensorBits* sum, const TensorBits& b) {
      sum->payload += b.payload;
      sum->metadata += b.metadata;
      sum->basis += b.basis;
    };
    for (int layer = 0; layer < num_layers; ++layer) {
      const MethodSpec& ks = method.KeySpec(layer);
      const MethodSpec& vs = method.ValueSpec(layer);
      add(&l.k, BitsFor(ks, ks.compresses_k(), head_dim, context_len));
      add(&l.v, BitsFor(vs, vs.compresses_v(), head_dim, context_len));
    }
    for (TensorBits* t : {&l.k, &l.v}) {
      t->payload /= num_layers;
      t->metadata /= num_layers;
      t->basis /= num_layers;
    }
  }
  const double full = 2.0 * 16.0 * head_dim;
  l.fraction_payload = (l.k.payload + l.v.payload) / full;
  l.fraction_total = (l.k.total() + l.v.total()) / full;
  l.fraction_of_native = l.fraction_total * kv_heads / native_kv_heads;
  return l;
}

absl::StatusOr<BudgetConvention> ParseBudgetConvention(absl::string_view s) {
  if (s == "payload") return BudgetConvention::kPayload;
  if (s == "total") return BudgetConvention::kTotal;
  return absl::InvalidArgumentError(
      absl::StrCat("budget convention '", s, "' is not one of payload|total"));
}

const char* BudgetConventionName(BudgetConvention c) {
  return c == BudgetConvention::kPayload ? "payload" : "total";
}

namespace {

// The resolved method of a candidate and its fraction under a convention, counting both K and V
// (target must be kv).
absl::StatusOr<std::pair<KvMethod, double>> Achieved(const std::string& spec, int head_dim,
                                                     const SolverOptions& o) {
  absl::StatusOr<KvMethod> m = ParseKvMethod(spec);
  if (!m.ok()) return m.status();
  if (!m->overrides.empty()) {
    return absl::InvalidArgumentError("budget solver: per-layer overrides are not solved");
  }
  absl::StatusOr<KvMethod> r = ResolveKvMethod(*m, head_dim, 1);
  if (!r.ok()) return r.status();
  absl::StatusOr<Ledger> l = ComputeLedger(*r, head_dim, 1, 1, 1, o.context_len);
  if (!l.ok()) return l.status();
  return std::make_pair(*std::move(r), o.convention == BudgetConvention::kPayload
                                           ? l->fraction_payload
                                           : l->fraction_total);
}

// The candidate for `spec` (a family's bits / r): with the extra keys, and as K and V parts
// when either has keys of its own.
std::string WithExtra(std::string spec, const SolverOptions& o) {
  if (!o.extra.empty()) absl::StrAppend(&spec, ",", o.extra);
  if (o.extra_k.empty() && o.extra_v.empty()) return spec;
  std::string k = spec, v = spec;
  if (!o.extra_k.empty()) absl::StrAppend(&k, ",", o.extra_k);
  if (!o.extra_v.empty()) absl::StrAppend(&v, ",", o.extra_v);
  return absl::StrCat("k=", k, ";v=", v);
}

}  // namespace

absl::StatusOr<SolvedMethod> SolveBudget(absl::string_view family, double budget, int head_dim,
                                         const SolverOptions& o) {
  if (!(budget > 0.0 && budget <= 1.0)) {
    return absl::InvalidArgumentError(absl::StrFormat("budget %g out of range (0, 1]", budget));
  }
  if (head_dim <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("head_dim ", head_dim, " is not positive"));
  }
  if (o.tolerance < 0 || !std::isfinite(o.tolerance)) {
    return absl::InvalidArgumentError("budget tolerance must be a finite number >= 0");
  }
  const MethodFamilyDef* def = FindMethodFamily(family);
  if (def == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("budget solver: unknown family '", family,
                     "' (known: ", absl::StrJoin(MethodFamilyNames(), ", "), ")"));
  }
  std::vector<std::string> candidates;
  for (std::string& c : def->budget_candidates(head_dim, o)) {
    // A family without keys (none) has nothing to add.
    candidates.push_back(def->keys.empty() ? std::move(c) : WithExtra(std::move(c), o));
  }
  // Candidates are ordered from largest to smallest storage; pick the closest to the budget,
  // preferring the earlier (higher-fidelity) one on ties.
  SolvedMethod best;
  std::string best_spec;  // the candidate as written (the error names it)
  double best_err = INFINITY;
  // A candidate the extra keys make invalid (sym=1 at 1 bit) is skipped; if every one is, the
  // first error is the answer.
  absl::Status first_error;
  for (const std::string& c : candidates) {
    absl::StatusOr<std::pair<KvMethod, double>> a = Achieved(c, head_dim, o);
    if (!a.ok()) {
      if (first_error.ok()) first_error = a.status();
      continue;
    }
    double err = std::fabs(a->second - budget);
    if (err < best_err - 1e-12) {
      best_err = err;
      best_spec = c;
      best.method = std::move(a->first);
      best.achieved = a->second;
    }
  }
  if (best_spec.empty()) return first_error;
  if (best_err > o.tolerance * budget + 1e-12) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "budget %g (%s convention) cannot be met by family %s on head_dim %d: the closest is "
        "'%s' at %.6g",
        budget, BudgetConventionName(o.convention), std::string(family), head_dim, best_spec,
        best.achieved));
  }
  return best;
}

}  // namespace kvsweep

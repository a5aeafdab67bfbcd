// The KV-cache method families, one table: everything the spec layer knows about a family lives
// in its entry — its keys in canonical order, which are required, its defaults and combination
// rules, what only the model's shape can check, its storage formula (the ledger), the budget
// solver's candidates, and the numbers that describe one of its specs (sweep fields, plot axes,
// diagnostics). Parser, ledger, solver, sweep expansion, plots and diagnostics read this table
// and name no family themselves.
//
// Adding a family: one entry in method_family.cc (and its MethodFamily enumerator and any new
// MethodSpec field), plus its codec in the engine (worker/engine/kv/<family>_codec.cc, listed in
// worker/engine/kv/registry.cc; registry_test checks every family here has a codec). The study
// report (client/report.cc) names the families whose comparison the study is about.
#ifndef KVSWEEP_SPEC_METHOD_FAMILY_H_
#define KVSWEEP_SPEC_METHOD_FAMILY_H_

#include <functional>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "spec/ledger.h"
#include "spec/method_spec.h"

namespace kvsweep {

// One key of a family: its name and how a value sets the spec (range and spelling checks, with
// a one-line kInvalidArgument naming the key and value).
struct MethodKeyDef {
  const char* name;
  std::function<absl::Status(absl::string_view spec, absl::string_view value, MethodSpec*)> set;
};

struct MethodFamilyDef {
  MethodFamily family;
  const char* name;
  std::vector<MethodKeyDef> keys;  // canonical order
  std::vector<const char*> required;
  // The required keys at valid values ("bits=4"): with it, extra keys alone can be checked
  // against the family (a sweep's `extra`, `k` and `v` keys before the solver adds the rest).
  const char* probe;
  Basis default_basis;
  // Combination rules and the defaults that depend on other keys, after the given keys are
  // applied; `given` holds the keys the text spelled out. `spec` is the text, for errors.
  std::function<absl::Status(absl::string_view spec, const std::set<std::string>& given,
                             MethodSpec* m)>
      check;
  // What only the head dimension can tell (divisibility, ranks), and the defaults it fills.
  std::function<absl::Status(absl::string_view spec, int head_dim, MethodSpec* m)> resolve;
  // Bits one compressed tensor (K or V) holds per token per head at context length L.
  std::function<TensorBits(const MethodSpec& m, int head_dim, int context_len)> storage;
  // The budget solver's candidates, from the largest storage to the smallest (its ties go to the
  // earlier one), as spec texts before SolverOptions' extra keys are added.
  std::function<std::vector<std::string>(int head_dim, const SolverOptions& o)> budget_candidates;
  // The numbers that describe a spec of the family (MethodNumber).
  std::vector<const char*> numbers;
};

// Every family, in registry order (none, quant, rank, hybrid).
const std::vector<MethodFamilyDef>& MethodFamilies();
const MethodFamilyDef& MethodFamilyDefOf(MethodFamily f);
// Null if `name` names no family.
const MethodFamilyDef* FindMethodFamily(absl::string_view name);

// One number that describes `m`: "bits", "r", "group" or "residual" where its family has it
// (quant's unresolved token-axis group is 0), nullopt where it does not.
std::optional<int> MethodNumber(const MethodSpec& m, absl::string_view name);

// The canonical spelling of `key`'s value in `m` (quant's unresolved group prints `head_dim`).
std::string MethodKeyValue(const MethodSpec& m, absl::string_view key);
// kInvalidArgument "method '<spec>': <why>", the one form of every method-spec error.
absl::Status MethodSpecError(absl::string_view spec, absl::string_view why);

}  // namespace kvsweep

#endif  // KVSWEEP_SPEC_METHOD_FAMILY_H_

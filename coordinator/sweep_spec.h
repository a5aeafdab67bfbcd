// Sweep expansion: a sweep file (YAML, docs/sweep-spec.md) -> the distinct, resolved jobs it
// asks for, each with its content-addressed id (JobSpec::JobId) and its labels in this sweep.
//
// Expansion is product (default) or zip over models × tasks × methods × kv_heads × seeds ×
// dtypes; methods are explicit specs or families × budgets through the matched-budget solver
// (SolveBudget); `exclude` rules and `constraints` drop combinations. Jobs with the same id are
// merged (two spellings of one method, a seed that does not apply).
//
// Errors are kInvalidArgument with one line "<source>:<line>: <field path>: <problem>": malformed
// YAML, unknown or duplicate keys, duplicate names, names or labels that are not printable text
// (control or bidi characters: CheckLabelText), unknown methods, budgets out of range or
// unreachable, kv_heads that do not divide, missing model or data paths, too many jobs. User
// text quoted in a message has its control and bidi characters escaped (EscapeLabelText).
#ifndef KVSWEEP_COORDINATOR_SWEEP_SPEC_H_
#define KVSWEEP_COORDINATOR_SWEEP_SPEC_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"
#include "spec/job_spec.h"

namespace kvsweep {

struct SweepJob {
  JobSpec spec;
  std::string job_id;
  // {"model", "task", "method" (label), "method_spec" (canonical), "family", "budget" (or
  //  null), "kv_heads", "seed" (or null), "dtype"}
  nlohmann::json labels;
};

struct ExpandedSweep {
  std::string name;
  int priority = 0;
  int max_attempts = 3;
  std::vector<SweepJob> jobs;  // distinct job ids, in expansion order
  int combinations = 0;        // before exclusions and dedup
  int excluded = 0;            // dropped by exclude rules or constraints
  int merged = 0;              // combinations that were the same job as an earlier one
};

struct ExpandOptions {
  std::string base_dir;               // relative paths resolve against it ("" = cwd)
  std::string source_name = "sweep";  // error prefix, e.g. the file name
  int max_jobs = 200000;              // refuse sweeps that expand to more combinations
  // Path policy (common/path_policy.h): when not empty, every path the sweep names (models,
  // tokenizers, data, calibration) and every file of a model or tokenizer must lie, symlinks
  // resolved, under one of these directories; checked before the file is opened or hashed,
  // else "<source>:<line>: <field>: 'PATH' is outside the allowed paths (...); start the
  // coordinator with --allow-path". Empty: no restriction (in-process callers such as
  // `kvsweep demo`); the coordinator always sets it (SweepPathRoots).
  std::vector<std::string> allowed_roots;
};

absl::StatusOr<ExpandedSweep> ExpandSweep(absl::string_view yaml_text,
                                          const ExpandOptions& options);

// Sweep names: [A-Za-z0-9][A-Za-z0-9._-]{0,127}.
bool IsValidSweepName(absl::string_view name);

}  // namespace kvsweep

#endif  // KVSWEEP_COORDINATOR_SWEEP_SPEC_H_

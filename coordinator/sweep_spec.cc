#include "coordinator/sweep_spec.h"

#include <unistd.h>

#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <tuple>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "common/hf_hub.h"
#include "common/input_files.h"
#include "common/model_config.h"
#include "common/path_policy.h"
#include "common/status_macros.h"
#include "spec/job_spec.h"
#include "spec/ledger.h"
#include "spec/method_family.h"
#include "spec/method_spec.h"
#include "yaml-cpp/yaml.h"

namespace kvsweep {

bool IsValidSweepName(absl::string_view name) {
  if (name.empty() || name.size() > 128 || !absl::ascii_isalnum(name[0])) return false;
  for (char c : name) {
    if (!absl::ascii_isalnum(c) && c != '.' && c != '_' && c != '-') return false;
  }
  return true;
}

namespace {

constexpr double kNoBudget = std::numeric_limits<double>::quiet_NaN();

struct ModelEntry {
  std::string name, path, tokenizer;
  ModelConfig config;
  std::optional<std::vector<int>> kv_heads;  // 0 = native
  int line = 0;
};

struct TaskEntry {
  std::string name, task, data;
  int limit = 0, window = 0, max_window = 0, context = 1;
};

struct MethodTemplate {
  std::string label;
  std::string spec;    // explicit spec as written ("" for family × budget)
  std::string family;  // family × budget
  double budget = kNoBudget;
  std::string extra;
  std::string extra_k, extra_v;  // family × budget with K and V apart (SolverOptions)
  int line = 0;
  std::string path;
};

struct Operand {
  bool is_field = false;
  std::string field;
  double number = 0;
  double factor = 1;  // field * factor
};

struct Constraint {
  Operand lhs, rhs;
  std::string op;
  std::string text;
};

struct ExcludeRule {
  std::map<std::string, std::string> match;  // key -> value as text
};

const char* const kConstraintFields[] = {
    "r",          "bits",   "group", "residual", "head_dim", "kv_heads", "native_kv_heads",
    "num_layers", "budget", "limit", "window",   "context",  "seed"};

class Expander {
 public:
  explicit Expander(const ExpandOptions& o) : o_(o) {
    if (!o.allowed_roots.empty()) policy_.emplace(o.allowed_roots);
  }

  absl::StatusOr<ExpandedSweep> Run(absl::string_view text) {
    YAML::Node root;
    try {
      root = YAML::Load(std::string(text));
    } catch (const YAML::Exception& e) {
      return absl::InvalidArgumentError(absl::StrFormat("%s:%d: malformed YAML: %s (column %d)",
                                                        o_.source_name, e.mark.line + 1, e.msg,
                                                        e.mark.column + 1));
    }
    if (!root.IsDefined() || root.IsNull()) {
      return absl::InvalidArgumentError(absl::StrCat(o_.source_name, ": the sweep is empty"));
    }
    if (!root.IsMap()) return Err(root, "sweep", "must be a mapping of keys");
    KV_RETURN_IF_ERROR(Keys(
        root, "sweep",
        {"name", "priority", "max_attempts", "mode", "models", "tasks", "methods", "budget",
         "kv_heads", "seeds", "dtype", "calibration", "diagnostics", "exclude", "constraints"}));
    ExpandedSweep out;
    // Name, knobs.
    if (!root["name"]) return Err(root, "sweep", "missing required key 'name'");
    KV_ASSIGN_OR_RETURN(out.name, Str(root["name"], "name"));
    if (!IsValidSweepName(out.name)) {
      return Err(root["name"], "name",
                 absl::StrCat("'", out.name,
                              "' is not a valid sweep name ([A-Za-z0-9][A-Za-z0-9._-]{0,127})"));
    }
    if (root["priority"]) {
      KV_ASSIGN_OR_RETURN(out.priority, Int(root["priority"], "priority", -1000000, 1000000));
    }
    if (root["max_attempts"]) {
      KV_ASSIGN_OR_RETURN(out.max_attempts, Int(root["max_attempts"], "max_attempts", 1, 100));
    }
    std::string mode = "product";
    if (root["mode"]) {
      KV_ASSIGN_OR_RETURN(mode, Str(root["mode"], "mode"));
      if (mode != "product" && mode != "zip") {
        return Err(root["mode"], "mode", absl::StrCat("'", mode, "' is not product or zip"));
      }
    }
    const bool zip = mode == "zip";
    KV_RETURN_IF_ERROR(ParseSolver(root["budget"]));
    KV_RETURN_IF_ERROR(ParseModels(root, zip));
    KV_RETURN_IF_ERROR(ParseTasks(root));
    KV_RETURN_IF_ERROR(ParseMethods(root));
    KV_ASSIGN_OR_RETURN(kv_heads_, KvHeadsList(root["kv_heads"], "kv_heads"));
    if (root["seeds"]) {
      KV_ASSIGN_OR_RETURN(auto seeds, IntList(root["seeds"], "seeds", 0, 1 << 30));
      seeds_.assign(seeds.begin(), seeds.end());
    }
    if (root["dtype"]) {
      KV_ASSIGN_OR_RETURN(dtypes_, StrList(root["dtype"], "dtype"));
      // Canonical names ("bfloat16" is bf16); `auto` is bound to each model's own dtype when
      // its jobs are resolved.
      for (std::string& d : dtypes_) {
        absl::StatusOr<std::string> name = DtypeName(d);
        if (!name.ok()) return Err(root["dtype"], "dtype", name.status().message());
        d = *name;
      }
    }
    KV_RETURN_IF_ERROR(ParseCalibration(root["calibration"]));
    if (root["diagnostics"]) {
      KV_ASSIGN_OR_RETURN(diagnostics_, Bool(root["diagnostics"], "diagnostics"));
    }
    KV_RETURN_IF_ERROR(ParseExclude(root["exclude"]));
    KV_RETURN_IF_ERROR(ParseConstraints(root["constraints"]));
    KV_RETURN_IF_ERROR(Expand(zip, &out));
    return out;
  }

 private:
  // Messages quote user text: control and bidi characters in it are escaped, so that the
  // error stays one line and reads as written.
  absl::Status Err(const YAML::Node& n, absl::string_view path, absl::string_view msg) const {
    const int line = n.IsDefined() ? n.Mark().line + 1 : 0;
    if (line > 0) return ErrAt(line, path, msg);
    return absl::InvalidArgumentError(
        absl::StrCat(o_.source_name, ": ", path, ": ", EscapeLabelText(msg)));
  }
  absl::Status ErrAt(int line, absl::string_view path, absl::string_view msg) const {
    return absl::InvalidArgumentError(
        absl::StrCat(o_.source_name, ":", line, ": ", path, ": ", EscapeLabelText(msg)));
  }

  // Rejects keys outside `known` and duplicate keys.
  absl::Status Keys(const YAML::Node& n, absl::string_view path,
                    std::initializer_list<const char*> known) const {
    std::set<std::string> seen;
    for (auto it = n.begin(); it != n.end(); ++it) {
      if (!it->first.IsScalar()) return Err(it->first, path, "keys must be plain names");
      const std::string k = it->first.Scalar();
      bool ok = false;
      for (const char* c : known) ok = ok || k == c;
      if (!ok) {
        return Err(it->first, path,
                   absl::StrCat("unknown key '", k, "' (known: ", absl::StrJoin(known, ", "), ")"));
      }
      if (!seen.insert(k).second)
        return Err(it->first, path, absl::StrCat("duplicate key '", k, "'"));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::string> Str(const YAML::Node& n, absl::string_view path) const {
    if (!n.IsScalar() || n.Scalar().empty()) return Err(n, path, "expected a non-empty string");
    return n.Scalar();
  }
  // A name or label that ends up in the jobs' labels (and in tables, CSV, SQL views): printable
  // text only (CheckLabelText).
  absl::StatusOr<std::string> Label(const YAML::Node& n, absl::string_view path) const {
    KV_ASSIGN_OR_RETURN(std::string s, Str(n, path));
    if (absl::Status l = CheckLabelText(s); !l.ok()) return Err(n, path, l.message());
    return s;
  }
  absl::StatusOr<int> Int(const YAML::Node& n, absl::string_view path, int lo, int hi) const {
    int v = 0;
    if (!n.IsScalar() || !absl::SimpleAtoi(n.Scalar(), &v)) {
      return Err(n, path, "expected an integer");
    }
    if (v < lo || v > hi)
      return Err(n, path, absl::StrCat(v, " is out of range [", lo, ", ", hi, "]"));
    return v;
  }
  absl::StatusOr<double> Real(const YAML::Node& n, absl::string_view path) const {
    double v = 0;
    if (!n.IsScalar() || !absl::SimpleAtod(n.Scalar(), &v) || !std::isfinite(v)) {
      return Err(n, path, "expected a finite number");
    }
    return v;
  }
  absl::StatusOr<bool> Bool(const YAML::Node& n, absl::string_view path) const {
    if (n.IsScalar()) {
      if (n.Scalar() == "true") return true;
      if (n.Scalar() == "false") return false;
    }
    return Err(n, path, "expected true or false");
  }
  // A scalar or a list of scalars.
  absl::StatusOr<std::vector<std::string>> StrList(const YAML::Node& n,
                                                   absl::string_view path) const {
    std::vector<std::string> out;
    if (n.IsScalar()) {
      KV_ASSIGN_OR_RETURN(std::string s, Str(n, path));
      out.push_back(s);
      return out;
    }
    if (!n.IsSequence() || n.size() == 0)
      return Err(n, path, "expected a value or a non-empty list");
    for (size_t i = 0; i < n.size(); ++i) {
      KV_ASSIGN_OR_RETURN(std::string s, Str(n[i], absl::StrCat(path, "[", i, "]")));
      out.push_back(s);
    }
    return out;
  }
  absl::StatusOr<std::vector<int>> IntList(const YAML::Node& n, absl::string_view path, int lo,
                                           int hi) const {
    std::vector<int> out;
    if (n.IsScalar()) {
      KV_ASSIGN_OR_RETURN(int v, Int(n, path, lo, hi));
      out.push_back(v);
      return out;
    }
    if (!n.IsSequence() || n.size() == 0)
      return Err(n, path, "expected a value or a non-empty list");
    for (size_t i = 0; i < n.size(); ++i) {
      KV_ASSIGN_OR_RETURN(int v, Int(n[i], absl::StrCat(path, "[", i, "]"), lo, hi));
      out.push_back(v);
    }
    return out;
  }
  // kv_heads: "native" (0) or positive integers; default [native].
  absl::StatusOr<std::vector<int>> KvHeadsList(const YAML::Node& n, absl::string_view path) const {
    if (!n) return std::vector<int>{0};
    KV_ASSIGN_OR_RETURN(std::vector<std::string> items, StrList(n, path));
    std::vector<int> out;
    std::set<int> seen;
    for (const std::string& s : items) {
      int v = 0;
      if (s == "native") {
        v = 0;
      } else if (!absl::SimpleAtoi(s, &v) || v < 1 || v > 4096) {
        return Err(n, path, absl::StrCat("'", s, "' is not 'native' or a positive integer"));
      }
      if (!seen.insert(v).second) return Err(n, path, absl::StrCat("'", s, "' is listed twice"));
      out.push_back(v);
    }
    return out;
  }

  // The path policy (ExpandOptions::allowed_roots), checked before a named path is opened.
  absl::Status CheckAllowed(const YAML::Node& n, absl::string_view field,
                            const std::string& resolved) const {
    if (!policy_) return absl::OkStatus();
    absl::Status a = policy_->Check(resolved);
    return a.ok() ? a : Err(n, field, a.message());
  }

  // Where relative paths resolve: the sweep's base directory, else the working directory.
  std::string BaseDir() const {
    std::string base = o_.base_dir;
    if (base.empty()) {
      char buf[4096];
      if (::getcwd(buf, sizeof(buf)) != nullptr) base = buf;
    }
    return base;
  }

  std::string Resolve(const std::string& p) const {
    if (!p.empty() && p[0] == '/') return p;
    const std::string base = BaseDir();
    return base.empty() ? p : JoinPath(base, p);
  }

  absl::Status ParseSolver(const YAML::Node& n) {
    if (!n) return absl::OkStatus();
    if (!n.IsMap()) return Err(n, "budget", "must be a mapping");
    KV_RETURN_IF_ERROR(
        Keys(n, "budget", {"convention", "tolerance", "context_len", "hybrid_bits"}));
    if (n["convention"]) {
      KV_ASSIGN_OR_RETURN(std::string c, Str(n["convention"], "budget.convention"));
      absl::StatusOr<BudgetConvention> bc = ParseBudgetConvention(c);
      if (!bc.ok()) return Err(n["convention"], "budget.convention", bc.status().message());
      solver_.convention = *bc;
    }
    if (n["tolerance"]) {
      KV_ASSIGN_OR_RETURN(solver_.tolerance, Real(n["tolerance"], "budget.tolerance"));
      if (solver_.tolerance < 0 || solver_.tolerance > 1) {
        return Err(n["tolerance"], "budget.tolerance", "must be in [0, 1]");
      }
    }
    if (n["context_len"]) {
      KV_ASSIGN_OR_RETURN(solver_.context_len,
                          Int(n["context_len"], "budget.context_len", 1, 1 << 24));
    }
    if (n["hybrid_bits"]) {
      KV_ASSIGN_OR_RETURN(solver_.hybrid_bits, Int(n["hybrid_bits"], "budget.hybrid_bits", 1, 8));
    }
    return absl::OkStatus();
  }

  absl::Status ParseModels(const YAML::Node& root, bool zip) {
    const YAML::Node n = root["models"];
    if (!n) return Err(root, "sweep", "missing required key 'models'");
    if (!n.IsSequence() || n.size() == 0) return Err(n, "models", "expected a non-empty list");
    std::set<std::string> names;
    for (size_t i = 0; i < n.size(); ++i) {
      const std::string path = absl::StrCat("models[", i, "]");
      const YAML::Node m = n[i];
      ModelEntry e;
      e.line = m.Mark().line + 1;
      if (m.IsScalar()) {
        KV_ASSIGN_OR_RETURN(e.path, Str(m, path));
      } else if (m.IsMap()) {
        KV_RETURN_IF_ERROR(Keys(m, path, {"name", "path", "tokenizer", "kv_heads"}));
        if (!m["path"]) return Err(m, path, "missing required key 'path'");
        KV_ASSIGN_OR_RETURN(e.path, Str(m["path"], path + ".path"));
        if (m["name"]) {
          KV_ASSIGN_OR_RETURN(e.name, Label(m["name"], path + ".name"));
        }
        if (m["tokenizer"]) {
          KV_ASSIGN_OR_RETURN(e.tokenizer, Str(m["tokenizer"], path + ".tokenizer"));
          e.tokenizer = Resolve(e.tokenizer);
          KV_RETURN_IF_ERROR(CheckAllowed(m["tokenizer"], path + ".tokenizer", e.tokenizer));
          if (!PathExists(e.tokenizer)) {
            return Err(m["tokenizer"], path + ".tokenizer",
                       absl::StrCat("'", e.tokenizer, "' does not exist"));
          }
        }
        if (m["kv_heads"]) {
          if (zip) {
            return Err(m["kv_heads"], path + ".kv_heads",
                       "per-model kv_heads lists are only allowed with mode: product");
          }
          KV_ASSIGN_OR_RETURN(e.kv_heads, KvHeadsList(m["kv_heads"], path + ".kv_heads"));
        }
      } else {
        return Err(m, path, "expected a path or a mapping with name and path");
      }
      const YAML::Node at = m.IsMap() ? m["path"] : m;
      // A path, or a Hugging Face repo id whose snapshot in the hub cache is the model.
      std::string repo_label;
      absl::StatusOr<std::string> found =
          ResolveModelReference(Resolve(e.path), /*base_dir=*/"", nullptr);
      if (!found.ok() && IsHfRepoId(e.path)) {
        found = ResolveModelReference(e.path, BaseDir(), &repo_label);
      }
      const std::string resolved = found.ok() ? *found : Resolve(e.path);
      KV_RETURN_IF_ERROR(CheckAllowed(at, path + ".path", resolved));
      if (!found.ok()) return Err(at, path + ".path", found.status().message());
      e.path = RealPath(resolved);
      if (policy_) {
        // Every file the engine would read (config.json included) passes the policy before
        // config.json is opened below.
        absl::StatusOr<ModelFiles> files = ResolveModelFiles(e.path, &*policy_);
        if (!files.ok()) return Err(at, path + ".path", files.status().message());
      }
      absl::StatusOr<ModelConfig> cfg = ReadModelConfig(e.path);
      if (!cfg.ok()) return Err(at, path + ".path", cfg.status().message());
      e.config = *cfg;
      if (e.name.empty() && !repo_label.empty()) e.name = repo_label;
      if (e.name.empty()) e.name = BaseName(e.path);
      if (absl::Status l = CheckLabelText(e.name); !l.ok()) {
        return Err(at, path + ".path",
                   absl::StrCat("the model name taken from it ", l.message(), " (or give a name)"));
      }
      if (!names.insert(e.name).second) {
        return Err(m, path, absl::StrCat("duplicate model name '", e.name, "'"));
      }
      models_.push_back(std::move(e));
    }
    return absl::OkStatus();
  }

  absl::Status ParseTasks(const YAML::Node& root) {
    const YAML::Node n = root["tasks"];
    if (!n) return Err(root, "sweep", "missing required key 'tasks'");
    if (!n.IsSequence() || n.size() == 0) return Err(n, "tasks", "expected a non-empty list");
    std::set<std::string> names;
    for (size_t i = 0; i < n.size(); ++i) {
      const std::string path = absl::StrCat("tasks[", i, "]");
      const YAML::Node t = n[i];
      if (!t.IsMap()) return Err(t, path, "expected a mapping with task and data");
      KV_RETURN_IF_ERROR(
          Keys(t, path, {"name", "task", "data", "limit", "window", "max_window", "context"}));
      TaskEntry e;
      if (!t["task"]) return Err(t, path, "missing required key 'task'");
      if (!t["data"]) return Err(t, path, "missing required key 'data'");
      KV_ASSIGN_OR_RETURN(e.task, Str(t["task"], path + ".task"));
      if (!IsKnownTask(e.task)) {
        return Err(t["task"], path + ".task", UnknownTaskMessage(e.task));
      }
      KV_ASSIGN_OR_RETURN(std::string data, Str(t["data"], path + ".data"));
      e.data = Resolve(data);
      KV_RETURN_IF_ERROR(CheckAllowed(t["data"], path + ".data", e.data));
      if (!PathExists(e.data)) {
        return Err(t["data"], path + ".data",
                   absl::StrCat("data file '", e.data, "' does not exist"));
      }
      if (absl::Status r = CheckRegularFile(e.data); !r.ok()) {
        return Err(t["data"], path + ".data", r.message());
      }
      e.data = RealPath(e.data);
      e.name = e.task;
      if (t["name"]) {
        KV_ASSIGN_OR_RETURN(e.name, Label(t["name"], path + ".name"));
      }
      if (t["limit"]) {
        KV_ASSIGN_OR_RETURN(e.limit, Int(t["limit"], path + ".limit", 0, 1 << 30));
      }
      if (t["window"]) {
        KV_ASSIGN_OR_RETURN(e.window, Int(t["window"], path + ".window", 0, 1 << 24));
      }
      if (t["max_window"]) {
        KV_ASSIGN_OR_RETURN(e.max_window, Int(t["max_window"], path + ".max_window", 0, 1 << 24));
      }
      if (t["context"]) {
        KV_ASSIGN_OR_RETURN(e.context, Int(t["context"], path + ".context", 1, 1 << 24));
      }
      if (!names.insert(e.name).second) {
        return Err(t, path, absl::StrCat("duplicate task name '", e.name, "'"));
      }
      tasks_.push_back(std::move(e));
    }
    return absl::OkStatus();
  }

  absl::Status ParseMethods(const YAML::Node& root) {
    const YAML::Node n = root["methods"];
    if (!n) return Err(root, "sweep", "missing required key 'methods'");
    if (!n.IsSequence() || n.size() == 0) return Err(n, "methods", "expected a non-empty list");
    std::set<std::string> labels;
    auto add = [&](MethodTemplate t, const YAML::Node& at) -> absl::Status {
      // Labels made from a spec, a budget as written or extra keys.
      if (absl::Status l = CheckLabelText(t.label); !l.ok()) {
        return Err(at, t.path, absl::StrCat("the method label ", l.message()));
      }
      if (!labels.insert(t.label).second) {
        return Err(at, t.path, absl::StrCat("duplicate method label '", t.label, "'"));
      }
      methods_.push_back(std::move(t));
      return absl::OkStatus();
    };
    for (size_t i = 0; i < n.size(); ++i) {
      const std::string path = absl::StrCat("methods[", i, "]");
      const YAML::Node m = n[i];
      MethodTemplate t;
      t.line = m.Mark().line + 1;
      t.path = path;
      if (m.IsScalar() || (m.IsMap() && m["spec"])) {
        if (m.IsMap()) KV_RETURN_IF_ERROR(Keys(m, path, {"spec", "label"}));
        const YAML::Node s = m.IsMap() ? m["spec"] : m;
        KV_ASSIGN_OR_RETURN(t.spec, Str(s, path));
        t.spec = std::string(absl::StripAsciiWhitespace(t.spec));
        absl::StatusOr<KvMethod> parsed = ParseKvMethod(t.spec);
        if (!parsed.ok()) return Err(s, path, parsed.status().message());
        t.family = parsed->FamilyLabel();
        t.label = t.spec;
        if (m.IsMap() && m["label"]) {
          KV_ASSIGN_OR_RETURN(t.label, Label(m["label"], path + ".label"));
        }
        KV_RETURN_IF_ERROR(add(std::move(t), m));
      } else if (m.IsMap() && m["family"]) {
        KV_RETURN_IF_ERROR(Keys(m, path, {"family", "budgets", "extra", "k", "v"}));
        KV_ASSIGN_OR_RETURN(std::string family, Str(m["family"], path + ".family"));
        const MethodFamilyDef* def = FindMethodFamily(family);
        if (def == nullptr) {
          return Err(m["family"], path + ".family",
                     absl::StrCat("unknown method family '", family,
                                  "' (known: ", absl::StrJoin(MethodFamilyNames(), ", "), ")"));
        }
        if (!m["budgets"]) return Err(m, path, "missing required key 'budgets'");
        std::string extra;
        // Check that extra keys parse on this family (e.g. basis=svd for rank).
        auto probe = [&](const std::string& keys, const char* part) -> absl::Status {
          const std::string probe_spec =
              absl::StrCat(def->name, ":", def->probe, *def->probe ? "," : "", keys);
          absl::StatusOr<KvMethod> p =
              ParseKvMethod(part == nullptr ? probe_spec : absl::StrCat(part, "=", probe_spec));
          return p.ok() ? absl::OkStatus() : p.status();
        };
        std::string extra_k, extra_v;
        for (auto [key, value, part] :
             {std::make_tuple("extra", &extra, (const char*)nullptr),
              std::make_tuple("k", &extra_k, "k"), std::make_tuple("v", &extra_v, "v")}) {
          if (!m[key]) continue;
          const std::string kpath = absl::StrCat(path, ".", key);
          KV_ASSIGN_OR_RETURN(*value, Str(m[key], kpath));
          if (absl::Status p = probe(*value, part); !p.ok()) {
            return Err(m[key], kpath, p.message());
          }
        }
        const YAML::Node b = m["budgets"];
        std::vector<YAML::Node> items;
        if (b.IsScalar()) {
          items.push_back(b);
        } else if (b.IsSequence() && b.size() > 0) {
          for (size_t k = 0; k < b.size(); ++k) items.push_back(b[k]);
        } else {
          return Err(b, path + ".budgets", "expected a number or a non-empty list");
        }
        for (size_t k = 0; k < items.size(); ++k) {
          const std::string bpath = absl::StrCat(path, ".budgets[", k, "]");
          KV_ASSIGN_OR_RETURN(double budget, Real(items[k], bpath));
          if (!(budget > 0 && budget <= 1)) {
            return Err(items[k], bpath,
                       absl::StrCat("budget ", items[k].Scalar(), " is out of range (0, 1]"));
          }
          MethodTemplate bt;
          bt.line = items[k].Mark().line + 1;
          bt.path = bpath;
          bt.family = family;
          bt.budget = budget;
          bt.extra = extra;
          bt.extra_k = extra_k;
          bt.extra_v = extra_v;
          bt.label = absl::StrCat(family, "@", items[k].Scalar());
          if (!extra.empty()) absl::StrAppend(&bt.label, "[", extra, "]");
          if (!extra_k.empty()) absl::StrAppend(&bt.label, "[k:", extra_k, "]");
          if (!extra_v.empty()) absl::StrAppend(&bt.label, "[v:", extra_v, "]");
          KV_RETURN_IF_ERROR(add(std::move(bt), items[k]));
        }
      } else {
        return Err(m, path,
                   "expected a method spec string, {spec, label} or {family, budgets, extra}");
      }
    }
    return absl::OkStatus();
  }

  absl::Status ParseCalibration(const YAML::Node& n) {
    if (!n) return absl::OkStatus();
    if (!n.IsMap()) return Err(n, "calibration", "must be a mapping");
    KV_RETURN_IF_ERROR(Keys(n, "calibration", {"path", "windows", "window_len"}));
    if (n["path"]) {
      KV_ASSIGN_OR_RETURN(std::string p, Str(n["path"], "calibration.path"));
      calibration_path_ = Resolve(p);
      KV_RETURN_IF_ERROR(CheckAllowed(n["path"], "calibration.path", calibration_path_));
      if (!PathExists(calibration_path_)) {
        return Err(n["path"], "calibration.path",
                   absl::StrCat("'", calibration_path_, "' does not exist"));
      }
      if (absl::Status r = CheckRegularFile(calibration_path_); !r.ok()) {
        return Err(n["path"], "calibration.path", r.message());
      }
    }
    if (n["windows"]) {
      KV_ASSIGN_OR_RETURN(calibration_windows_,
                          Int(n["windows"], "calibration.windows", 1, 1 << 20));
    }
    if (n["window_len"]) {
      KV_ASSIGN_OR_RETURN(calibration_len_,
                          Int(n["window_len"], "calibration.window_len", 2, 1 << 24));
    }
    return absl::OkStatus();
  }

  absl::Status ParseExclude(const YAML::Node& n) {
    if (!n) return absl::OkStatus();
    if (!n.IsSequence()) return Err(n, "exclude", "expected a list of mappings");
    for (size_t i = 0; i < n.size(); ++i) {
      const std::string path = absl::StrCat("exclude[", i, "]");
      const YAML::Node e = n[i];
      if (!e.IsMap() || e.size() == 0) return Err(e, path, "expected a non-empty mapping");
      KV_RETURN_IF_ERROR(Keys(
          e, path, {"model", "task", "method", "family", "kv_heads", "budget", "seed", "dtype"}));
      ExcludeRule rule;
      for (auto it = e.begin(); it != e.end(); ++it) {
        const std::string k = it->first.Scalar();
        KV_ASSIGN_OR_RETURN(std::string v, Label(it->second, absl::StrCat(path, ".", k)));
        // Names must refer to something in the sweep: a typo would silently exclude nothing.
        if (k == "model" && std::none_of(models_.begin(), models_.end(),
                                         [&](const ModelEntry& m) { return m.name == v; })) {
          return Err(it->second, path + ".model", absl::StrCat("no model named '", v, "'"));
        }
        if (k == "task" && std::none_of(tasks_.begin(), tasks_.end(),
                                        [&](const TaskEntry& t) { return t.name == v; })) {
          return Err(it->second, path + ".task", absl::StrCat("no task named '", v, "'"));
        }
        if (k == "method" && std::none_of(methods_.begin(), methods_.end(),
                                          [&](const MethodTemplate& m) { return m.label == v; })) {
          return Err(it->second, path + ".method", absl::StrCat("no method labelled '", v, "'"));
        }
        if (k == "budget") {
          KV_ASSIGN_OR_RETURN(double b, Real(it->second, path + ".budget"));
          v = absl::StrCat(b);
        }
        rule.match[k] = v;
      }
      excludes_.push_back(std::move(rule));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<Operand> ParseOperand(absl::string_view s, const YAML::Node& at,
                                       absl::string_view path) const {
    Operand o;
    s = absl::StripAsciiWhitespace(s);
    double num = 0;
    if (absl::SimpleAtod(s, &num)) {
      o.number = num;
      return o;
    }
    std::string name(s);
    size_t op = name.find_first_of("*/");
    if (op != std::string::npos) {
      double f = 0;
      if (!absl::SimpleAtod(absl::StripAsciiWhitespace(name.substr(op + 1)), &f) || f == 0) {
        return Err(at, path, absl::StrCat("'", s, "': expected field*number or field/number"));
      }
      o.factor = name[op] == '*' ? f : 1.0 / f;
      name = std::string(absl::StripAsciiWhitespace(name.substr(0, op)));
    }
    bool known = false;
    for (const char* f : kConstraintFields) known = known || name == f;
    if (!known) {
      return Err(at, path,
                 absl::StrCat("unknown field '", name,
                              "' (known: ", absl::StrJoin(kConstraintFields, ", "), ")"));
    }
    o.is_field = true;
    o.field = name;
    return o;
  }

  absl::Status ParseConstraints(const YAML::Node& n) {
    if (!n) return absl::OkStatus();
    if (!n.IsSequence()) return Err(n, "constraints", "expected a list of 'a <= b' strings");
    for (size_t i = 0; i < n.size(); ++i) {
      const std::string path = absl::StrCat("constraints[", i, "]");
      KV_ASSIGN_OR_RETURN(std::string text, Str(n[i], path));
      Constraint c;
      c.text = text;
      size_t pos = std::string::npos;
      for (const char* op : {"<=", ">=", "==", "!=", "<", ">"}) {
        pos = text.find(op);
        if (pos != std::string::npos) {
          c.op = op;
          break;
        }
      }
      if (pos == std::string::npos) {
        return Err(
            n[i], path,
            absl::StrCat("'", text, "': expected '<a> <op> <b>' with op one of <= >= == != < >"));
      }
      KV_ASSIGN_OR_RETURN(c.lhs, ParseOperand(text.substr(0, pos), n[i], path));
      KV_ASSIGN_OR_RETURN(c.rhs, ParseOperand(text.substr(pos + c.op.size()), n[i], path));
      constraints_.push_back(std::move(c));
    }
    return absl::OkStatus();
  }

  // One combination before resolution.
  struct Combo {
    const ModelEntry* model;
    const TaskEntry* task;
    const MethodTemplate* method;
    int kv_heads;  // 0 = native
    std::optional<int> seed;
    std::string dtype;
  };

  // The concrete method (canonical spec) of a template on a model, with the seed applied when
  // the method uses a seeded random basis.
  absl::StatusOr<std::pair<std::string, MethodSpec>> ConcreteMethod(const Combo& c,
                                                                    bool* seeded) const {
    absl::StatusOr<KvMethod> parsed;
    if (c.method->spec.empty()) {
      SolverOptions so = solver_;
      so.extra = c.method->extra;
      so.extra_k = c.method->extra_k;
      so.extra_v = c.method->extra_v;
      absl::StatusOr<SolvedMethod> solved =
          SolveBudget(c.method->family, c.method->budget, c.model->config.head_dim, so);
      if (!solved.ok()) {
        return ErrAt(c.method->line, c.method->path,
                     absl::StrCat("on model '", c.model->name, "': ", solved.status().message()));
      }
      parsed = std::move(solved->method);
    } else {
      parsed = ParseKvMethod(c.method->spec);
      if (!parsed.ok()) return ErrAt(c.method->line, c.method->path, parsed.status().message());
    }
    *seeded = false;
    if (c.seed.has_value()) {
      std::vector<MethodSpec*> parts = {&parsed->k, &parsed->v};
      for (KvMethod::LayerOverride& o : parsed->overrides) parts.push_back(&o.spec);
      for (MethodSpec* p : parts) {
        if (p->basis == Basis::kRandom) {  // only a random basis has a seed
          p->seed = *c.seed;
          *seeded = true;
        }
      }
    }
    return std::make_pair(parsed->ToString(), parsed->primary());
  }

  std::optional<double> Field(const std::string& f, const Combo& c, const MethodSpec& m) const {
    const ModelConfig& cfg = c.model->config;
    if (f == "r" || f == "bits" || f == "group" || f == "residual") {
      std::optional<int> v = MethodNumber(m, f);
      if (!v) return std::nullopt;
      return f == "group" && *v == 0 ? cfg.head_dim : *v;  // quant's open token-axis group
    }
    if (f == "head_dim") return cfg.head_dim;
    if (f == "kv_heads") return c.kv_heads == 0 ? cfg.num_kv_heads : c.kv_heads;
    if (f == "native_kv_heads") return cfg.num_kv_heads;
    if (f == "num_layers") return cfg.num_layers;
    if (f == "budget") {
      return std::isnan(c.method->budget) ? std::nullopt : std::optional<double>(c.method->budget);
    }
    if (f == "limit") return c.task->limit;
    if (f == "window") return c.task->window;
    if (f == "context") return c.task->context;
    if (f == "seed") return c.seed.has_value() ? std::optional<double>(*c.seed) : std::nullopt;
    return std::nullopt;
  }

  // False when a constraint that applies to this combination does not hold.
  bool Allowed(const Combo& c, const MethodSpec& m) const {
    for (const Constraint& k : constraints_) {
      auto value = [&](const Operand& o) -> std::optional<double> {
        if (!o.is_field) return o.number;
        std::optional<double> v = Field(o.field, c, m);
        if (!v) return std::nullopt;
        return *v * o.factor;
      };
      std::optional<double> a = value(k.lhs), b = value(k.rhs);
      if (!a || !b) continue;  // the constraint does not apply (e.g. r on a quant method)
      bool ok = k.op == "<="   ? *a <= *b
                : k.op == ">=" ? *a >= *b
                : k.op == "==" ? *a == *b
                : k.op == "!=" ? *a != *b
                : k.op == "<"  ? *a < *b
                               : *a > *b;
      if (!ok) return false;
    }
    return true;
  }

  bool Excluded(const Combo& c, const std::string& canonical) const {
    for (const ExcludeRule& r : excludes_) {
      bool all = true;
      for (const auto& [k, v] : r.match) {
        bool m = false;
        if (k == "model")
          m = c.model->name == v;
        else if (k == "task")
          m = c.task->name == v;
        else if (k == "method")
          m = c.method->label == v || canonical == v;
        else if (k == "family")
          m = c.method->family == v;
        else if (k == "kv_heads") {
          m = (v == "native" && c.kv_heads == 0) ||
              v == std::to_string(c.kv_heads == 0 ? c.model->config.num_kv_heads : c.kv_heads);
        } else if (k == "budget") {
          m = !std::isnan(c.method->budget) && absl::StrCat(c.method->budget) == v;
        } else if (k == "seed")
          m = c.seed.has_value() && std::to_string(*c.seed) == v;
        else if (k == "dtype") {
          absl::StatusOr<std::string> name = DtypeName(v);
          m = name.ok() &&
              (c.dtype == *name ||
               (c.dtype == "auto" && ResolveDtype("auto", c.model->config).value_or("") == *name));
        }
        all = all && m;
      }
      if (all) return true;
    }
    return false;
  }

  absl::Status Expand(bool zip, ExpandedSweep* out) {
    std::vector<std::optional<int>> seeds;
    if (seeds_.empty()) {
      seeds.push_back(std::nullopt);
    } else {
      for (int s : seeds_) seeds.push_back(s);
    }
    std::vector<std::string> dtypes = dtypes_.empty() ? std::vector<std::string>{"fp32"} : dtypes_;
    std::vector<Combo> combos;
    if (!zip) {
      double count = 0;
      for (const ModelEntry& m : models_) {
        const std::vector<int>& kvh = m.kv_heads ? *m.kv_heads : kv_heads_;
        count += static_cast<double>(tasks_.size()) * methods_.size() * kvh.size() * seeds.size() *
                 dtypes.size();
      }
      if (count > o_.max_jobs) {
        return absl::InvalidArgumentError(absl::StrCat(o_.source_name, ": the sweep expands to ",
                                                       count, " combinations (limit ", o_.max_jobs,
                                                       ")"));
      }
      for (const ModelEntry& m : models_) {
        const std::vector<int>& kvh = m.kv_heads ? *m.kv_heads : kv_heads_;
        for (const TaskEntry& t : tasks_) {
          for (const MethodTemplate& mt : methods_) {
            for (int k : kvh) {
              for (const std::optional<int>& s : seeds) {
                for (const std::string& d : dtypes) combos.push_back({&m, &t, &mt, k, s, d});
              }
            }
          }
        }
      }
    } else {
      const size_t lens[] = {models_.size(),   tasks_.size(), methods_.size(),
                             kv_heads_.size(), seeds.size(),  dtypes.size()};
      const char* names[] = {"models", "tasks", "methods", "kv_heads", "seeds", "dtype"};
      size_t len = 1;
      for (size_t l : lens) len = std::max(len, l);
      for (int i = 0; i < 6; ++i) {
        if (lens[i] != 1 && lens[i] != len) {
          return absl::InvalidArgumentError(absl::StrCat(
              o_.source_name, ": mode zip: ", names[i], " has ", lens[i],
              " entries; every list must have ", len, " (methods counts each budget) or 1"));
        }
      }
      if (len > static_cast<size_t>(o_.max_jobs)) {
        return absl::InvalidArgumentError(absl::StrCat(o_.source_name, ": the sweep expands to ",
                                                       len, " combinations (limit ", o_.max_jobs,
                                                       ")"));
      }
      auto pick = [](size_t n, size_t i) { return n == 1 ? 0 : i; };
      for (size_t i = 0; i < len; ++i) {
        combos.push_back({&models_[pick(models_.size(), i)], &tasks_[pick(tasks_.size(), i)],
                          &methods_[pick(methods_.size(), i)], kv_heads_[pick(kv_heads_.size(), i)],
                          seeds[pick(seeds.size(), i)], dtypes[pick(dtypes.size(), i)]});
      }
    }
    out->combinations = static_cast<int>(combos.size());
    std::set<std::string> seen;
    for (const Combo& c : combos) {
      bool seeded = false;
      KV_ASSIGN_OR_RETURN(auto method, ConcreteMethod(c, &seeded));
      if (!Allowed(c, method.second) || Excluded(c, method.first)) {
        ++out->excluded;
        continue;
      }
      JobRequest req;
      req.model_path = c.model->path;
      req.model_name = c.model->name;
      req.tokenizer_path = c.model->tokenizer;
      req.task = c.task->task;
      req.data_path = c.task->data;
      req.limit = c.task->limit;
      req.window = c.task->window;
      req.max_window = c.task->max_window;
      req.context = c.task->context;
      req.method = method.first;
      req.kv_heads = c.kv_heads;
      req.dtype = c.dtype;
      req.calibration_path = calibration_path_;
      req.calibration_windows = calibration_windows_;
      req.calibration_len = calibration_len_;
      req.diagnostics = diagnostics_;
      req.path_policy = policy_ ? &*policy_ : nullptr;
      absl::StatusOr<JobSpec> spec = ResolveJob(req);
      if (!spec.ok()) {
        return ErrAt(
            c.method->line, c.method->path,
            absl::StrCat("model '", c.model->name, "', task '", c.task->name, "', method '",
                         c.method->label, "', kv_heads ",
                         c.kv_heads == 0 ? std::string("native") : std::to_string(c.kv_heads), ": ",
                         spec.status().message()));
      }
      SweepJob job;
      job.job_id = spec->JobId();
      if (!seen.insert(job.job_id).second) {
        ++out->merged;
        continue;
      }
      std::string label = c.method->label;
      if (seeded && seeds_.size() > 1) absl::StrAppend(&label, "/seed=", *c.seed);
      job.labels = {{"model", c.model->name},
                    {"task", c.task->name},
                    {"method", label},
                    {"method_spec", spec->method},
                    {"family", c.method->family},
                    {"budget", std::isnan(c.method->budget) ? nlohmann::json(nullptr)
                                                            : nlohmann::json(c.method->budget)},
                    {"kv_heads", spec->kv_heads},
                    {"seed", seeded ? nlohmann::json(*c.seed) : nlohmann::json(nullptr)},
                    {"dtype", spec->dtype}};
      job.spec = std::move(*spec);
      out->jobs.push_back(std::move(job));
    }
    if (out->jobs.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(o_.source_name, ": the sweep has no jobs left after exclude/constraints (",
                       out->combinations, " combinations, ", out->excluded, " excluded)"));
    }
    return absl::OkStatus();
  }

  ExpandOptions o_;
  std::optional<PathPolicy> policy_;
  SolverOptions solver_;
  std::vector<ModelEntry> models_;
  std::vector<TaskEntry> tasks_;
  std::vector<MethodTemplate> methods_;
  std::vector<int> kv_heads_{0};
  std::vector<int> seeds_;
  std::vector<std::string> dtypes_;
  std::string calibration_path_;
  int calibration_windows_ = 16;
  int calibration_len_ = 512;
  bool diagnostics_ = false;
  std::vector<ExcludeRule> excludes_;
  std::vector<Constraint> constraints_;
};

}  // namespace

absl::StatusOr<ExpandedSweep> ExpandSweep(absl::string_view yaml_text,
                                          const ExpandOptions& options) {
  Expander e(options);
  return e.Run(yaml_text);
}

}  // namespace kvsweep

#include "common/method_spec.h"

#include <algorithm>
#include <functional>
#include <map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace kvsweep {
namespace {

constexpr int kMaxBits = 8;
constexpr int kMaxDim = 1 << 16;  // far beyond any real head_dim / block size
constexpr int kMaxResidual = 1 << 20;

absl::Status Bad(absl::string_view spec, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("method '", spec, "': ", why));
}

absl::StatusOr<int> ParseInt(absl::string_view spec, absl::string_view key,
                             absl::string_view value, int lo, int hi) {
  int v = 0;
  if (!absl::SimpleAtoi(value, &v)) {
    return Bad(spec, absl::StrCat(key, "=", value, " is not an integer"));
  }
  if (v < lo || v > hi) {
    return Bad(spec, absl::StrCat(key, "=", value, " out of range [", lo, ", ", hi, "]"));
  }
  return v;
}

template <typename E>
absl::StatusOr<E> ParseEnum(absl::string_view spec, absl::string_view key,
                            absl::string_view value,
                            const std::vector<std::pair<const char*, E>>& options) {
  std::vector<std::string> names;
  for (const auto& [name, e] : options) {
    if (value == name) return e;
    names.push_back(name);
  }
  return Bad(spec, absl::StrCat(key, "=", value, " is not one of ", absl::StrJoin(names, "|")));
}

const std::vector<std::pair<const char*, QuantAxis>> kAxes = {{"token", QuantAxis::kToken},
                                                              {"channel", QuantAxis::kChannel}};
const std::vector<std::pair<const char*, KvTarget>> kTargets = {
    {"k", KvTarget::kK}, {"v", KvTarget::kV}, {"kv", KvTarget::kKV}};
const std::vector<std::pair<const char*, RopeStage>> kRopes = {{"post", RopeStage::kPost},
                                                               {"pre", RopeStage::kPre}};
const std::vector<std::pair<const char*, Basis>> kQuantBases = {{"identity", Basis::kIdentity},
                                                                {"pca", Basis::kPca},
                                                                {"hadamard", Basis::kHadamard},
                                                                {"random", Basis::kRandom}};
const std::vector<std::pair<const char*, Basis>> kRankBases = {{"pca", Basis::kPca},
                                                               {"svd", Basis::kSvd},
                                                               {"random", Basis::kRandom},
                                                               {"identity", Basis::kIdentity}};
const std::vector<std::pair<const char*, bool>> kBools = {{"0", false}, {"1", true}};

// One key of a family: its name (in canonical order) and how to apply a value to the spec.
struct KeyDef {
  const char* name;
  std::function<absl::Status(absl::string_view spec, absl::string_view value, MethodSpec*)> set;
};

#define KV_SET_INT(field, lo, hi)                                                   \
  [](absl::string_view spec, absl::string_view v, MethodSpec* m) -> absl::Status { \
    absl::StatusOr<int> x = ParseInt(spec, #field, v, lo, hi);                      \
    if (!x.ok()) return x.status();                                                 \
    m->field = *x;                                                                  \
    return absl::OkStatus();                                                        \
  }
#define KV_SET_ENUM(field, key, options)                                            \
  [](absl::string_view spec, absl::string_view v, MethodSpec* m) -> absl::Status { \
    auto x = ParseEnum(spec, key, v, options);                                      \
    if (!x.ok()) return x.status();                                                 \
    m->field = *x;                                                                  \
    return absl::OkStatus();                                                        \
  }

struct FamilyDef {
  MethodFamily family;
  const char* name;
  std::vector<KeyDef> keys;  // canonical order
  std::vector<const char*> required;
};

const std::vector<FamilyDef>& Families() {
  static const auto* families = new std::vector<FamilyDef>{
      {MethodFamily::kNone, "none", {}, {}},
      {MethodFamily::kQuant,
       "quant",
       {{"bits", KV_SET_INT(bits, 1, kMaxBits)},
        {"group", KV_SET_INT(group, 1, kMaxDim)},
        {"axis", KV_SET_ENUM(axis, "axis", kAxes)},
        {"sym", KV_SET_ENUM(sym, "sym", kBools)},
        {"target", KV_SET_ENUM(target, "target", kTargets)},
        {"residual", KV_SET_INT(residual, 0, kMaxResidual)},
        {"rope", KV_SET_ENUM(rope, "rope", kRopes)},
        {"basis", KV_SET_ENUM(basis, "basis", kQuantBases)},
        {"seed", KV_SET_INT(seed, 0, 1 << 30)},
        {"packed", KV_SET_ENUM(packed, "packed", kBools)}},
       {"bits"}},
      {MethodFamily::kRank,
       "rank",
       {{"r", KV_SET_INT(r, 1, kMaxDim)},
        {"basis", KV_SET_ENUM(basis, "basis", kRankBases)},
        {"target", KV_SET_ENUM(target, "target", kTargets)},
        {"rope", KV_SET_ENUM(rope, "rope", kRopes)},
        {"seed", KV_SET_INT(seed, 0, 1 << 30)}},
       {"r"}},
      {MethodFamily::kHybrid,
       "hybrid",
       {{"r", KV_SET_INT(r, 1, kMaxDim)},
        {"bits", KV_SET_INT(bits, 1, kMaxBits)},
        {"group", KV_SET_INT(group, 1, kMaxDim)},
        {"basis", KV_SET_ENUM(basis, "basis", kRankBases)},
        {"target", KV_SET_ENUM(target, "target", kTargets)},
        {"rope", KV_SET_ENUM(rope, "rope", kRopes)},
        {"seed", KV_SET_INT(seed, 0, 1 << 30)}},
       {"r", "bits"}},
  };
  return *families;
}

#undef KV_SET_INT
#undef KV_SET_ENUM

const FamilyDef& DefOf(MethodFamily f) {
  for (const FamilyDef& d : Families()) {
    if (d.family == f) return d;
  }
  return Families()[0];
}

template <typename E>
const char* NameOf(E e, const std::vector<std::pair<const char*, E>>& options) {
  for (const auto& [name, v] : options) {
    if (v == e) return name;
  }
  return "?";
}

std::string ValueString(const MethodSpec& m, absl::string_view key) {
  if (key == "bits") return absl::StrCat(m.bits);
  if (key == "group") return m.group == 0 ? "head_dim" : absl::StrCat(m.group);
  if (key == "axis") return NameOf(m.axis, kAxes);
  if (key == "sym") return m.sym ? "1" : "0";
  if (key == "target") return NameOf(m.target, kTargets);
  if (key == "residual") return absl::StrCat(m.residual);
  if (key == "rope") return NameOf(m.rope, kRopes);
  if (key == "basis") return BasisName(m.basis);
  if (key == "seed") return absl::StrCat(m.seed);
  if (key == "packed") return m.packed ? "1" : "0";
  if (key == "r") return absl::StrCat(m.r);
  return "?";
}

}  // namespace

const char* FamilyName(MethodFamily f) { return DefOf(f).name; }
const char* BasisName(Basis b) {
  switch (b) {
    case Basis::kIdentity: return "identity";
    case Basis::kPca: return "pca";
    case Basis::kHadamard: return "hadamard";
    case Basis::kRandom: return "random";
    case Basis::kSvd: return "svd";
  }
  return "?";
}
const char* TargetName(KvTarget t) { return NameOf(t, kTargets); }

std::vector<std::string> MethodFamilyNames() {
  std::vector<std::string> out;
  for (const FamilyDef& d : Families()) out.push_back(d.name);
  return out;
}

std::string MethodSpec::ToString() const {
  const FamilyDef& def = DefOf(family);
  if (def.keys.empty()) return def.name;
  std::vector<std::string> parts;
  for (const KeyDef& k : def.keys) parts.push_back(absl::StrCat(k.name, "=", ValueString(*this, k.name)));
  return absl::StrCat(def.name, ":", absl::StrJoin(parts, ","));
}

absl::StatusOr<MethodSpec> ParseMethodSpec(absl::string_view text) {
  absl::string_view spec = absl::StripAsciiWhitespace(text);
  if (spec.empty()) return absl::InvalidArgumentError("method spec is empty");
  std::pair<absl::string_view, absl::string_view> fam_rest =
      absl::StrSplit(spec, absl::MaxSplits(':', 1));
  const FamilyDef* def = nullptr;
  for (const FamilyDef& d : Families()) {
    if (fam_rest.first == d.name) def = &d;
  }
  if (def == nullptr) {
    return Bad(spec, absl::StrCat("unknown family '", fam_rest.first, "' (known: ",
                                  absl::StrJoin(MethodFamilyNames(), ", "), ")"));
  }
  MethodSpec m;
  m.family = def->family;
  // Family defaults that differ from the struct's.
  if (m.family == MethodFamily::kRank || m.family == MethodFamily::kHybrid) m.basis = Basis::kPca;
  if (m.family == MethodFamily::kNone) {
    if (spec.find(':') != absl::string_view::npos && !fam_rest.second.empty()) {
      return Bad(spec, "family 'none' takes no keys");
    }
    return m;
  }
  std::map<std::string, std::string> given;
  if (!fam_rest.second.empty()) {
    for (absl::string_view kv : absl::StrSplit(fam_rest.second, ',')) {
      kv = absl::StripAsciiWhitespace(kv);
      std::pair<absl::string_view, absl::string_view> p = absl::StrSplit(kv, absl::MaxSplits('=', 1));
      if (kv.find('=') == absl::string_view::npos || p.first.empty() || p.second.empty()) {
        return Bad(spec, absl::StrCat("expected key=value, got '", kv, "'"));
      }
      const KeyDef* key = nullptr;
      for (const KeyDef& k : def->keys) {
        if (p.first == k.name) key = &k;
      }
      if (key == nullptr) {
        std::vector<std::string> names;
        for (const KeyDef& k : def->keys) names.push_back(k.name);
        return Bad(spec, absl::StrCat("unknown key '", p.first, "' for ", def->name,
                                      " (known: ", absl::StrJoin(names, ", "), ")"));
      }
      if (!given.emplace(std::string(p.first), std::string(p.second)).second) {
        return Bad(spec, absl::StrCat("key '", p.first, "' given twice"));
      }
    }
  }
  for (const char* req : def->required) {
    if (!given.count(req)) return Bad(spec, absl::StrCat("missing required key '", req, "'"));
  }
  // Apply in canonical order so that combination checks below see every value.
  for (const KeyDef& k : def->keys) {
    auto it = given.find(k.name);
    if (it == given.end()) continue;
    if (std::string(k.name) == "group" && it->second == "head_dim" &&
        m.family == MethodFamily::kQuant) {
      m.group = 0;  // explicit spelling of the default
      continue;
    }
    absl::Status s = k.set(spec, it->second, &m);
    if (!s.ok()) return s;
  }

  // Combination rules and shape-free defaults.
  switch (m.family) {
    case MethodFamily::kQuant:
      if (m.axis == QuantAxis::kChannel && !given.count("group")) m.group = 32;
      if (m.axis == QuantAxis::kChannel && m.group == 0) {
        return Bad(spec, "axis=channel needs group=<tokens per block>");
      }
      if (m.rope == RopeStage::kPre && m.target == KvTarget::kV) {
        return Bad(spec, "rope=pre applies to keys; target=v has none");
      }
      if (m.axis == QuantAxis::kChannel && m.basis != Basis::kIdentity) {
        return Bad(spec, "basis rotation is defined for axis=token only");
      }
      if (m.sym && m.bits < 2) {
        return Bad(spec, "sym=1 needs bits >= 2 (a 1-bit symmetric code has no nonzero level)");
      }
      if (m.packed && (m.axis != QuantAxis::kToken || m.basis != Basis::kIdentity)) {
        return Bad(spec, "packed=1 supports axis=token, basis=identity only");
      }
      if (m.packed && m.residual > 0) {
        // A packed cache's bytes per token would depend on the context length; the packed mode
        // exists to check the ledger byte for byte, so it stays per-token.
        return Bad(spec, "packed=1 supports residual=0 only");
      }
      break;
    case MethodFamily::kRank:
    case MethodFamily::kHybrid:
      if (m.basis == Basis::kSvd) {
        if (given.count("rope") && m.rope == RopeStage::kPost &&
            m.target != KvTarget::kV) {
          return Bad(spec, "basis=svd is computed from W_k and implies rope=pre for keys");
        }
        m.rope = RopeStage::kPre;
      }
      if (m.rope == RopeStage::kPre && m.target == KvTarget::kV) {
        if (given.count("rope")) return Bad(spec, "rope=pre applies to keys; target=v has none");
        m.rope = RopeStage::kPost;  // svd on values only: rope is irrelevant
      }
      if (m.family == MethodFamily::kHybrid) {
        if (!given.count("group")) m.group = m.r;
        if (m.r % m.group != 0) {
          return Bad(spec, absl::StrCat("group=", m.group, " does not divide r=", m.r));
        }
      }
      break;
    case MethodFamily::kNone:
      break;
  }
  if (m.basis != Basis::kRandom) m.seed = 0;
  return m;
}

absl::StatusOr<MethodSpec> ResolveMethodSpec(MethodSpec m, int head_dim) {
  const std::string spec = m.ToString();
  if (head_dim <= 0) return Bad(spec, absl::StrCat("head_dim ", head_dim, " is not positive"));
  switch (m.family) {
    case MethodFamily::kQuant:
      if (m.axis == QuantAxis::kToken) {
        if (m.group == 0) m.group = head_dim;
        if (m.group > head_dim || head_dim % m.group != 0) {
          return Bad(spec, absl::StrCat("group=", m.group, " does not divide head_dim=", head_dim));
        }
      }
      if (m.basis == Basis::kHadamard && (head_dim & (head_dim - 1)) != 0) {
        return Bad(spec, absl::StrCat("basis=hadamard needs a power-of-two head_dim, got ",
                                      head_dim));
      }
      break;
    case MethodFamily::kRank:
    case MethodFamily::kHybrid:
      if (m.r > head_dim) {
        return Bad(spec, absl::StrCat("r=", m.r, " exceeds head_dim=", head_dim));
      }
      break;
    case MethodFamily::kNone:
      break;
  }
  return m;
}

absl::StatusOr<std::string> CanonicalMethodSpec(absl::string_view text, int head_dim) {
  absl::StatusOr<MethodSpec> m = ParseMethodSpec(text);
  if (!m.ok()) return m.status();
  absl::StatusOr<MethodSpec> r = ResolveMethodSpec(*m, head_dim);
  if (!r.ok()) return r.status();
  return r->ToString();
}

}  // namespace kvsweep

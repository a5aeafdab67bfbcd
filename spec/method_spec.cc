#include "spec/method_spec.h"

#include <algorithm>
#include <functional>
#include <map>
#include <optional>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "spec/method_family.h"

namespace kvsweep {
namespace {

absl::Status Bad(absl::string_view spec, absl::string_view why) {
  return MethodSpecError(spec, why);
}

constexpr int kMaxLayer = 1 << 16;  // far beyond any real model's layer count

}  // namespace

std::string MethodSpec::ToString() const {
  const MethodFamilyDef& def = MethodFamilyDefOf(family);
  if (def.keys.empty()) return def.name;
  std::vector<std::string> parts;
  for (const MethodKeyDef& k : def.keys) {
    parts.push_back(absl::StrCat(k.name, "=", MethodKeyValue(*this, k.name)));
  }
  return absl::StrCat(def.name, ":", absl::StrJoin(parts, ","));
}

absl::StatusOr<MethodSpec> ParseMethodSpec(absl::string_view text) {
  absl::string_view spec = absl::StripAsciiWhitespace(text);
  if (spec.empty()) return absl::InvalidArgumentError("method spec is empty");
  std::pair<absl::string_view, absl::string_view> fam_rest =
      absl::StrSplit(spec, absl::MaxSplits(':', 1));
  const MethodFamilyDef* def = FindMethodFamily(fam_rest.first);
  if (def == nullptr) {
    return Bad(spec, absl::StrCat("unknown family '", fam_rest.first,
                                  "' (known: ", absl::StrJoin(MethodFamilyNames(), ", "), ")"));
  }
  MethodSpec m;
  m.family = def->family;
  m.basis = def->default_basis;
  if (def->keys.empty()) {
    if (spec.find(':') != absl::string_view::npos && !fam_rest.second.empty()) {
      return Bad(spec, absl::StrCat("family '", def->name, "' takes no keys"));
    }
    return m;
  }
  std::map<std::string, std::string> given;
  if (!fam_rest.second.empty()) {
    for (absl::string_view kv : absl::StrSplit(fam_rest.second, ',')) {
      kv = absl::StripAsciiWhitespace(kv);
      std::pair<absl::string_view, absl::string_view> p =
          absl::StrSplit(kv, absl::MaxSplits('=', 1));
      if (kv.find('=') == absl::string_view::npos || p.first.empty() || p.second.empty()) {
        return Bad(spec, absl::StrCat("expected key=value, got '", kv, "'"));
      }
      const MethodKeyDef* key = nullptr;
      for (const MethodKeyDef& k : def->keys) {
        if (p.first == k.name) key = &k;
      }
      if (key == nullptr) {
        std::vector<std::string> names;
        for (const MethodKeyDef& k : def->keys) names.push_back(k.name);
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
  // Apply in canonical order so that the family's combination rules see every value.
  std::set<std::string> given_keys;
  for (const MethodKeyDef& k : def->keys) {
    auto it = given.find(k.name);
    if (it == given.end()) continue;
    given_keys.insert(it->first);
    absl::Status s = k.set(spec, it->second, &m);
    if (!s.ok()) return s;
  }
  if (absl::Status s = def->check(spec, given_keys, &m); !s.ok()) return s;
  if (m.basis != Basis::kRandom) m.seed = 0;
  return m;
}

absl::StatusOr<MethodSpec> ResolveMethodSpec(MethodSpec m, int head_dim) {
  const std::string spec = m.ToString();
  if (head_dim <= 0) return Bad(spec, absl::StrCat("head_dim ", head_dim, " is not positive"));
  if (absl::Status s = MethodFamilyDefOf(m.family).resolve(spec, head_dim, &m); !s.ok()) return s;
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

// ---- KvMethod --------------------------------------------------------------------------------

namespace kvsweep {
namespace {

// Parses a k= or v= part: its target is `target` (a different explicit one is an error), set
// before the spec's own combination rules run (rope=pre on values, svd on values).
absl::StatusOr<MethodSpec> ParsePart(absl::string_view text, KvTarget target, const char* part) {
  absl::StatusOr<MethodSpec> plain = ParseMethodSpec(text);
  if (!plain.ok()) return plain.status();
  if (plain->family == MethodFamily::kNone) return plain;
  if (plain->target != KvTarget::kKV && plain->target != target) {
    return absl::InvalidArgumentError(
        absl::StrCat("method '", text, "': target=", TargetName(plain->target),
                     " contradicts its place as the ", part, "= part"));
  }
  absl::string_view spec = absl::StripAsciiWhitespace(text);
  std::pair<absl::string_view, absl::string_view> fam_rest =
      absl::StrSplit(spec, absl::MaxSplits(':', 1));
  std::vector<std::string> keys;
  for (absl::string_view kv : absl::StrSplit(fam_rest.second, ',', absl::SkipWhitespace())) {
    kv = absl::StripAsciiWhitespace(kv);
    if (!absl::StartsWith(kv, "target=")) keys.emplace_back(kv);
  }
  keys.push_back(absl::StrCat("target=", TargetName(target)));
  return ParseMethodSpec(absl::StrCat(fam_rest.first, ":", absl::StrJoin(keys, ",")));
}

absl::Status BadKv(absl::string_view text, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("method '", text, "': ", why));
}

bool Same(const MethodSpec& a, const MethodSpec& b) { return a.ToString() == b.ToString(); }

MethodSpec NoneSpec() { return MethodSpec(); }

}  // namespace

const MethodSpec& KvMethod::KeySpec(int layer) const {
  for (const LayerOverride& o : overrides) {
    if (layer >= o.first && layer <= o.last) return o.spec;
  }
  return k;
}

const MethodSpec& KvMethod::ValueSpec(int layer) const {
  for (const LayerOverride& o : overrides) {
    if (layer >= o.first && layer <= o.last) return o.spec;
  }
  return split ? v : k;
}

std::vector<MethodSpec> KvMethod::Parts() const {
  std::vector<MethodSpec> out = {k};
  if (split) out.push_back(v);
  for (const LayerOverride& o : overrides) out.push_back(o.spec);
  std::vector<MethodSpec> distinct;
  for (const MethodSpec& m : out) {
    bool seen = false;
    for (const MethodSpec& d : distinct) seen = seen || Same(d, m);
    if (!seen) distinct.push_back(m);
  }
  return distinct;
}

const MethodSpec& KvMethod::primary() const {
  return split && k.family == MethodFamily::kNone ? v : k;
}

std::string KvMethod::FamilyLabel() const {
  std::string f = FamilyName(k.family);
  if (split && v.family != k.family) f = absl::StrCat(f, "+", FamilyName(v.family));
  if (!overrides.empty()) absl::StrAppend(&f, "+layers");
  return f;
}

bool KvMethod::needs_calibration() const {
  for (const MethodSpec& m : Parts()) {
    if (m.needs_calibration()) return true;
  }
  return false;
}

bool KvMethod::position_dependent() const {
  for (const MethodSpec& m : Parts()) {
    if (m.position_dependent()) return true;
  }
  return false;
}

std::string KvMethod::ToString() const {
  std::string s = split ? absl::StrCat("k=", k.ToString(), ";v=", v.ToString()) : k.ToString();
  for (const LayerOverride& o : overrides) {
    absl::StrAppend(&s, ";layers=", o.first);
    if (o.last != o.first) absl::StrAppend(&s, "-", o.last);
    absl::StrAppend(&s, ":", o.spec.ToString());
  }
  return s;
}

absl::StatusOr<KvMethod> ParseKvMethod(absl::string_view text) {
  const absl::string_view all = absl::StripAsciiWhitespace(text);
  if (all.empty()) return absl::InvalidArgumentError("method spec is empty");
  KvMethod m;
  std::optional<MethodSpec> base, k, v;
  for (absl::string_view raw : absl::StrSplit(all, ';')) {
    const absl::string_view part = absl::StripAsciiWhitespace(raw);
    if (part.empty()) return BadKv(all, "empty part between ';'");
    if (absl::StartsWith(part, "k=") || absl::StartsWith(part, "v=")) {
      const bool is_k = part[0] == 'k';
      std::optional<MethodSpec>& slot = is_k ? k : v;
      if (slot.has_value()) return BadKv(all, absl::StrCat(part.substr(0, 1), "= given twice"));
      absl::StatusOr<MethodSpec> p =
          ParsePart(part.substr(2), is_k ? KvTarget::kK : KvTarget::kV, is_k ? "k" : "v");
      if (!p.ok()) return p.status();
      slot = *p;
    } else if (absl::StartsWith(part, "layers=")) {
      const absl::string_view rest = part.substr(7);
      const size_t colon = rest.find(':');
      if (colon == absl::string_view::npos) {
        return BadKv(all, absl::StrCat("'", part, "' is not layers=A-B:SPEC"));
      }
      const absl::string_view range = rest.substr(0, colon);
      const size_t dash = range.find('-');
      const absl::string_view first = range.substr(0, dash);
      const absl::string_view last =
          dash == absl::string_view::npos ? first : range.substr(dash + 1);
      KvMethod::LayerOverride o;
      if (!absl::SimpleAtoi(first, &o.first) || !absl::SimpleAtoi(last, &o.last) || o.first < 0 ||
          o.last < o.first || o.last > kMaxLayer) {
        return BadKv(all, absl::StrCat("layers=", range,
                                       " is not a layer or an increasing range A-B of layers"));
      }
      absl::StatusOr<MethodSpec> p = ParseMethodSpec(rest.substr(colon + 1));
      if (!p.ok()) return p.status();
      o.spec = *p;
      m.overrides.push_back(o);
    } else {
      if (base.has_value()) return BadKv(all, "more than one spec for K and V");
      absl::StatusOr<MethodSpec> p = ParseMethodSpec(part);
      if (!p.ok()) return p.status();
      base = *p;
    }
  }
  if (base.has_value() && (k.has_value() || v.has_value())) {
    return BadKv(all, "give one spec for K and V, or k= and v= parts, not both");
  }
  if (base.has_value()) {
    m.k = m.v = *base;
  } else if (k.has_value() || v.has_value()) {
    m.split = true;
    m.k = k.value_or(NoneSpec());
    m.v = v.value_or(NoneSpec());
  } else {
    return BadKv(all, "no spec for the layers without an override");
  }
  std::sort(m.overrides.begin(), m.overrides.end(),
            [](const KvMethod::LayerOverride& a, const KvMethod::LayerOverride& b) {
              return a.first < b.first;
            });
  for (size_t i = 1; i < m.overrides.size(); ++i) {
    if (m.overrides[i].first <= m.overrides[i - 1].last) {
      return BadKv(all, absl::StrCat("layer ", m.overrides[i].first, " has two overrides"));
    }
  }
  if (!m.single()) {
    for (const MethodSpec& p : m.Parts()) {
      if (p.packed) return BadKv(all, "packed=1 is for a single spec only");
    }
  }
  return m;
}

absl::StatusOr<KvMethod> ResolveKvMethod(KvMethod m, int head_dim, int num_layers) {
  const std::string text = m.ToString();
  if (num_layers <= 0)
    return BadKv(text, absl::StrCat("num_layers ", num_layers, " is not positive"));
  absl::StatusOr<MethodSpec> rk = ResolveMethodSpec(m.k, head_dim);
  if (!rk.ok()) return rk.status();
  m.k = *rk;
  if (m.split) {
    absl::StatusOr<MethodSpec> rv = ResolveMethodSpec(m.v, head_dim);
    if (!rv.ok()) return rv.status();
    m.v = *rv;
  } else {
    m.v = m.k;
  }
  for (KvMethod::LayerOverride& o : m.overrides) {
    if (o.last >= num_layers) {
      return BadKv(text, absl::StrCat("layers=", o.first, "-", o.last, " is beyond the model's ",
                                      num_layers, " layers"));
    }
    absl::StatusOr<MethodSpec> r = ResolveMethodSpec(o.spec, head_dim);
    if (!r.ok()) return r.status();
    o.spec = *r;
  }
  // K and V apart collapse to one spec where that describes the same cache.
  if (m.split) {
    const bool k_none = m.k.family == MethodFamily::kNone;
    const bool v_none = m.v.family == MethodFamily::kNone;
    MethodSpec k_kv = m.k, v_kv = m.v;
    k_kv.target = v_kv.target = KvTarget::kKV;
    v_kv.rope = k_kv.rope;  // rope matters for keys only
    if (k_none || v_none || Same(k_kv, v_kv)) {
      m.split = false;
      m.k = k_none && v_none ? NoneSpec() : k_none ? m.v : v_none ? m.k : k_kv;
      m.v = m.k;
    }
  }
  // Overrides: merge adjacent equal ones, drop those that change nothing.
  std::vector<KvMethod::LayerOverride> kept;
  for (const KvMethod::LayerOverride& o : m.overrides) {
    if (!kept.empty() && kept.back().last + 1 == o.first && Same(kept.back().spec, o.spec)) {
      kept.back().last = o.last;
    } else {
      kept.push_back(o);
    }
  }
  m.overrides.clear();
  for (const KvMethod::LayerOverride& o : kept) {
    if (!m.split && Same(o.spec, m.k)) continue;
    m.overrides.push_back(o);
  }
  // One rope stage for every part that compresses keys.
  std::optional<RopeStage> rope;
  for (const MethodSpec& p : m.Parts()) {
    if (!p.compresses_k()) continue;
    if (rope.has_value() && *rope != p.rope) {
      return BadKv(text,
                   "every part that compresses keys must use the same rope stage (the "
                   "model rotates keys at one point)");
    }
    rope = p.rope;
  }
  if (!m.single()) {
    for (const MethodSpec& p : m.Parts()) {
      if (p.packed) return BadKv(text, "packed=1 is for a single spec only");
    }
  }
  return m;
}

absl::StatusOr<std::string> CanonicalKvMethod(absl::string_view text, int head_dim,
                                              int num_layers) {
  absl::StatusOr<KvMethod> m = ParseKvMethod(text);
  if (!m.ok()) return m.status();
  absl::StatusOr<KvMethod> r = ResolveKvMethod(*m, head_dim, num_layers);
  if (!r.ok()) return r.status();
  return r->ToString();
}

}  // namespace kvsweep

#include "spec/method_family.h"

#include <algorithm>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace kvsweep {
namespace {

constexpr int kMaxBits = 8;
constexpr int kMaxDim = 1 << 16;  // far beyond any real head_dim / block size
constexpr int kMaxResidual = 1 << 20;

absl::Status Bad(absl::string_view spec, absl::string_view why) {
  return MethodSpecError(spec, why);
}

absl::StatusOr<int> ParseInt(absl::string_view spec, absl::string_view key, absl::string_view value,
                             int lo, int hi) {
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
using Spellings = std::vector<std::pair<const char*, E>>;

template <typename E>
absl::StatusOr<E> ParseEnum(absl::string_view spec, absl::string_view key, absl::string_view value,
                            const Spellings<E>& options) {
  std::vector<std::string> names;
  for (const auto& [name, e] : options) {
    if (value == name) return e;
    names.push_back(name);
  }
  return Bad(spec, absl::StrCat(key, "=", value, " is not one of ", absl::StrJoin(names, "|")));
}

template <typename E>
const char* NameOf(E e, const Spellings<E>& options) {
  for (const auto& [name, v] : options) {
    if (v == e) return name;
  }
  return "?";
}

const Spellings<QuantAxis> kAxes = {{"token", QuantAxis::kToken}, {"channel", QuantAxis::kChannel}};
const Spellings<KvTarget> kTargets = {
    {"k", KvTarget::kK}, {"v", KvTarget::kV}, {"kv", KvTarget::kKV}};
const Spellings<RopeStage> kRopes = {{"post", RopeStage::kPost}, {"pre", RopeStage::kPre}};
const Spellings<Basis> kBases = {{"identity", Basis::kIdentity},
                                 {"pca", Basis::kPca},
                                 {"hadamard", Basis::kHadamard},
                                 {"random", Basis::kRandom},
                                 {"svd", Basis::kSvd}};
const Spellings<Basis> kQuantBases = {{"identity", Basis::kIdentity},
                                      {"pca", Basis::kPca},
                                      {"hadamard", Basis::kHadamard},
                                      {"random", Basis::kRandom}};
const Spellings<Basis> kRankBases = {{"pca", Basis::kPca},
                                     {"svd", Basis::kSvd},
                                     {"random", Basis::kRandom},
                                     {"identity", Basis::kIdentity}};
const Spellings<bool> kBools = {{"0", false}, {"1", true}};

// Key setters: an integer field within [lo, hi], or an enumerated field from its spellings.
MethodKeyDef IntKey(const char* name, int MethodSpec::*field, int lo, int hi) {
  return {name,
          [name, field, lo, hi](absl::string_view spec, absl::string_view v,
                                MethodSpec* m) -> absl::Status {
            absl::StatusOr<int> x = ParseInt(spec, name, v, lo, hi);
            if (!x.ok()) return x.status();
            m->*field = *x;
            return absl::OkStatus();
          }};
}

// An integer key that may also be spelled `head_dim`: the shape-dependent default, left open
// (0) until the spec is resolved.
MethodKeyDef HeadDimOrIntKey(const char* name, int MethodSpec::*field, int lo, int hi) {
  MethodKeyDef k = IntKey(name, field, lo, hi);
  return {name,
          [field, set = k.set](absl::string_view spec, absl::string_view v,
                               MethodSpec* m) -> absl::Status {
            if (v == "head_dim") {
              m->*field = 0;
              return absl::OkStatus();
            }
            return set(spec, v, m);
          }};
}

template <typename E>
MethodKeyDef EnumKey(const char* name, E MethodSpec::*field, const Spellings<E>* options) {
  return {name,
          [name, field, options](absl::string_view spec, absl::string_view v,
                                 MethodSpec* m) -> absl::Status {
            absl::StatusOr<E> x = ParseEnum(spec, name, v, *options);
            if (!x.ok()) return x.status();
            m->*field = *x;
            return absl::OkStatus();
          }};
}

// Stored bases amortized over L tokens: pca and svd store their basis (fp16), the others are
// regenerated.
double StoredBasisBits(const MethodSpec& m, double rows, double d, int L) {
  return (m.basis == Basis::kPca || m.basis == Basis::kSvd) ? 16.0 * rows * d / L : 0.0;
}

// ---- none: the uncompressed cache --------------------------------------------------------------

MethodFamilyDef NoneFamily() {
  MethodFamilyDef f;
  f.family = MethodFamily::kNone;
  f.name = "none";
  f.probe = "";
  f.default_basis = Basis::kIdentity;
  f.check = [](absl::string_view, const std::set<std::string>&, MethodSpec*) {
    return absl::OkStatus();
  };
  f.resolve = [](absl::string_view, int, MethodSpec*) { return absl::OkStatus(); };
  f.storage = [](const MethodSpec&, int d, int) {
    TensorBits b;
    b.payload = 16.0 * d;
    return b;
  };
  f.budget_candidates = [](int, const SolverOptions&) { return std::vector<std::string>{"none"}; };
  return f;
}

// ---- quant: every dimension kept, at fewer bits ------------------------------------------------

MethodFamilyDef QuantFamily() {
  MethodFamilyDef f;
  f.family = MethodFamily::kQuant;
  f.name = "quant";
  f.keys = {IntKey("bits", &MethodSpec::bits, 1, kMaxBits),
            HeadDimOrIntKey("group", &MethodSpec::group, 1, kMaxDim),
            EnumKey("axis", &MethodSpec::axis, &kAxes),
            EnumKey("sym", &MethodSpec::sym, &kBools),
            EnumKey("target", &MethodSpec::target, &kTargets),
            IntKey("residual", &MethodSpec::residual, 0, kMaxResidual),
            EnumKey("rope", &MethodSpec::rope, &kRopes),
            EnumKey("basis", &MethodSpec::basis, &kQuantBases),
            IntKey("seed", &MethodSpec::seed, 0, 1 << 30),
            EnumKey("packed", &MethodSpec::packed, &kBools)};
  f.required = {"bits"};
  f.probe = "bits=4";
  f.default_basis = Basis::kIdentity;
  f.numbers = {"bits", "group", "residual"};
  f.check = [](absl::string_view spec, const std::set<std::string>& given,
               MethodSpec* m) -> absl::Status {
    if (m->axis == QuantAxis::kChannel && !given.count("group")) m->group = 32;
    if (m->axis == QuantAxis::kChannel && m->group == 0) {
      return Bad(spec, "axis=channel needs group=<tokens per block>");
    }
    if (m->rope == RopeStage::kPre && m->target == KvTarget::kV) {
      return Bad(spec, "rope=pre applies to keys; target=v has none");
    }
    if (m->axis == QuantAxis::kChannel && m->basis != Basis::kIdentity) {
      return Bad(spec, "basis rotation is defined for axis=token only");
    }
    if (m->sym && m->bits < 2) {
      return Bad(spec, "sym=1 needs bits >= 2 (a 1-bit symmetric code has no nonzero level)");
    }
    if (m->packed && (m->axis != QuantAxis::kToken || m->basis != Basis::kIdentity)) {
      return Bad(spec, "packed=1 supports axis=token, basis=identity only");
    }
    if (m->packed && m->residual > 0) {
      // A packed cache's bytes per token would depend on the context length; the packed mode
      // exists to check the ledger byte for byte, so it stays per-token.
      return Bad(spec, "packed=1 supports residual=0 only");
    }
    return absl::OkStatus();
  };
  f.resolve = [](absl::string_view spec, int head_dim, MethodSpec* m) -> absl::Status {
    if (m->axis == QuantAxis::kToken) {
      if (m->group == 0) m->group = head_dim;
      if (m->group > head_dim || head_dim % m->group != 0) {
        return Bad(spec, absl::StrCat("group=", m->group, " does not divide head_dim=", head_dim));
      }
    }
    if (m->basis == Basis::kHadamard && (head_dim & (head_dim - 1)) != 0) {
      return Bad(spec,
                 absl::StrCat("basis=hadamard needs a power-of-two head_dim, got ", head_dim));
    }
    return absl::OkStatus();
  };
  // Codes of the quantized tokens, their scales (and zeros when asymmetric), every token still
  // in fp16 at length L (the residual window, the unfinished channel block), a stored pca basis.
  f.storage = [](const MethodSpec& m, int d, int L) {
    TensorBits b;
    const double dd = d;
    const int meta_per_group = m.sym ? 16 : 32;
    const long long window = std::min<long long>(m.residual, L);
    long long quantized = L - window;  // tokens outside the residual window
    if (m.axis == QuantAxis::kChannel) quantized = (quantized / m.group) * m.group;  // whole blocks
    const long long fp16_tokens = L - quantized;
    b.payload = static_cast<double>(quantized) * m.bits * dd / L;
    double scales = 0;
    if (m.axis == QuantAxis::kToken) {
      scales = static_cast<double>(quantized) * (dd / m.group) * meta_per_group / L;
    } else {
      scales = static_cast<double>(quantized / m.group) * dd * meta_per_group / L;
    }
    b.metadata = scales + static_cast<double>(fp16_tokens) * 16.0 * dd / L;
    if (m.basis == Basis::kPca) b.basis = 16.0 * dd * dd / L;
    return b;
  };
  f.budget_candidates = [](int head_dim, const SolverOptions& o) {
    std::vector<std::string> out;
    if (o.convention == BudgetConvention::kPayload) {
      for (int bits = 8; bits >= 1; --bits) out.push_back(absl::StrCat("quant:bits=", bits));
    } else {
      // bits + meta/group per element: every bits and every group dividing head_dim.
      for (int bits = 8; bits >= 1; --bits) {
        for (int g = head_dim; g >= 1; --g) {
          if (head_dim % g == 0) out.push_back(absl::StrCat("quant:bits=", bits, ",group=", g));
        }
      }
    }
    return out;
  };
  return f;
}

// ---- rank and hybrid: fewer dimensions (hybrid: at fewer bits too) -----------------------------

// What rank and hybrid share: the projection basis rules.
absl::Status CheckProjection(absl::string_view spec, const std::set<std::string>& given,
                             MethodSpec* m) {
  if (m->basis == Basis::kSvd) {
    if (given.count("rope") && m->rope == RopeStage::kPost && m->target != KvTarget::kV) {
      return Bad(spec, "basis=svd is computed from W_k and implies rope=pre for keys");
    }
    // Values have no rope stage (their canonical rope=post must parse back).
    if (m->target != KvTarget::kV) m->rope = RopeStage::kPre;
  }
  if (m->rope == RopeStage::kPre && m->target == KvTarget::kV) {
    if (given.count("rope")) return Bad(spec, "rope=pre applies to keys; target=v has none");
    m->rope = RopeStage::kPost;  // svd on values only: rope is irrelevant
  }
  return absl::OkStatus();
}

absl::Status ResolveProjection(absl::string_view spec, int head_dim, MethodSpec* m) {
  if (m->r > head_dim) return Bad(spec, absl::StrCat("r=", m->r, " exceeds head_dim=", head_dim));
  return absl::OkStatus();
}

MethodFamilyDef RankFamily() {
  MethodFamilyDef f;
  f.family = MethodFamily::kRank;
  f.name = "rank";
  f.keys = {
      IntKey("r", &MethodSpec::r, 1, kMaxDim), EnumKey("basis", &MethodSpec::basis, &kRankBases),
      EnumKey("target", &MethodSpec::target, &kTargets),
      EnumKey("rope", &MethodSpec::rope, &kRopes), IntKey("seed", &MethodSpec::seed, 0, 1 << 30)};
  f.required = {"r"};
  f.probe = "r=1";
  f.default_basis = Basis::kPca;
  f.numbers = {"r"};
  f.check = &CheckProjection;
  f.resolve = &ResolveProjection;
  // r fp16 coefficients per token, and a stored basis of r rows.
  f.storage = [](const MethodSpec& m, int d, int L) {
    TensorBits b;
    b.payload = 16.0 * m.r;
    b.basis = StoredBasisBits(m, m.r, d, L);
    return b;
  };
  f.budget_candidates = [](int head_dim, const SolverOptions&) {
    std::vector<std::string> out;
    for (int r = head_dim; r >= 1; --r) out.push_back(absl::StrCat("rank:r=", r));
    return out;
  };
  return f;
}

MethodFamilyDef HybridFamily() {
  MethodFamilyDef f;
  f.family = MethodFamily::kHybrid;
  f.name = "hybrid";
  f.keys = {IntKey("r", &MethodSpec::r, 1, kMaxDim),
            IntKey("bits", &MethodSpec::bits, 1, kMaxBits),
            IntKey("group", &MethodSpec::group, 1, kMaxDim),
            EnumKey("basis", &MethodSpec::basis, &kRankBases),
            EnumKey("target", &MethodSpec::target, &kTargets),
            EnumKey("rope", &MethodSpec::rope, &kRopes),
            IntKey("seed", &MethodSpec::seed, 0, 1 << 30)};
  f.required = {"r", "bits"};
  f.probe = "r=1,bits=4";
  f.default_basis = Basis::kPca;
  f.numbers = {"r", "bits", "group"};
  f.check = [](absl::string_view spec, const std::set<std::string>& given,
               MethodSpec* m) -> absl::Status {
    if (absl::Status s = CheckProjection(spec, given, m); !s.ok()) return s;
    if (!given.count("group")) m->group = m->r;
    if (m->r % m->group != 0) {
      return Bad(spec, absl::StrCat("group=", m->group, " does not divide r=", m->r));
    }
    return absl::OkStatus();
  };
  f.resolve = &ResolveProjection;
  // r codes of B bits per token, a scale and zero (fp16) per group of coefficients, a stored
  // basis of r rows.
  f.storage = [](const MethodSpec& m, int d, int L) {
    TensorBits b;
    b.payload = static_cast<double>(m.bits) * m.r;
    b.metadata = (static_cast<double>(m.r) / m.group) * 32.0;
    b.basis = StoredBasisBits(m, m.r, d, L);
    return b;
  };
  f.budget_candidates = [](int head_dim, const SolverOptions& o) {
    std::vector<std::string> out;
    for (int r = head_dim; r >= 1; --r) {
      out.push_back(absl::StrCat("hybrid:r=", r, ",bits=", o.hybrid_bits));
    }
    return out;
  };
  return f;
}

}  // namespace

const std::vector<MethodFamilyDef>& MethodFamilies() {
  static const auto* families =
      new std::vector<MethodFamilyDef>{NoneFamily(), QuantFamily(), RankFamily(), HybridFamily()};
  return *families;
}

const MethodFamilyDef& MethodFamilyDefOf(MethodFamily f) {
  for (const MethodFamilyDef& d : MethodFamilies()) {
    if (d.family == f) return d;
  }
  return MethodFamilies()[0];
}

const MethodFamilyDef* FindMethodFamily(absl::string_view name) {
  for (const MethodFamilyDef& d : MethodFamilies()) {
    if (name == d.name) return &d;
  }
  return nullptr;
}

std::optional<int> MethodNumber(const MethodSpec& m, absl::string_view name) {
  const std::vector<const char*>& numbers = MethodFamilyDefOf(m.family).numbers;
  if (std::none_of(numbers.begin(), numbers.end(), [&](const char* n) { return name == n; })) {
    return std::nullopt;
  }
  if (name == "bits") return m.bits;
  if (name == "r") return m.r;
  if (name == "group") return m.group;
  if (name == "residual") return m.residual;
  return std::nullopt;
}

absl::Status MethodSpecError(absl::string_view spec, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("method '", spec, "': ", why));
}

std::string MethodKeyValue(const MethodSpec& m, absl::string_view key) {
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

const char* FamilyName(MethodFamily f) { return MethodFamilyDefOf(f).name; }
const char* BasisName(Basis b) { return NameOf(b, kBases); }
const char* TargetName(KvTarget t) { return NameOf(t, kTargets); }

std::vector<std::string> MethodFamilyNames() {
  std::vector<std::string> out;
  for (const MethodFamilyDef& d : MethodFamilies()) out.push_back(d.name);
  return out;
}

}  // namespace kvsweep

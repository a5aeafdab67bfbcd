// The canonical KV-cache method spec: `family:key=value,...`, keys in a fixed order with every
// default filled in. The canonical string is part of job identity, so two spellings of the
// same method must canonicalize to the same string, and a canonical string must re-parse to
// itself.
//
//   none
//   quant:bits=B,group=G,axis=token|channel,sym=0|1,target=k|v|kv,residual=R,rope=post|pre,
//         basis=identity|pca|hadamard|random,seed=S,packed=0|1
//   rank:r=R,basis=pca|svd|random|identity,target=k|v|kv,rope=post|pre,seed=S
//   hybrid:r=R,bits=B,group=G,basis=pca|svd|random|identity,target=k|v|kv,rope=post|pre,seed=S
//
// Parsing happens in two steps. ParseMethodSpec needs no model: it checks names, ranges and
// combinations, and leaves shape-dependent defaults open (quant's token-axis group defaults to
// the head dimension). ResolveMethodSpec binds a spec to a head dimension and checks what only
// the shape can tell (group divides head_dim, r <= head_dim). Job identity uses the resolved
// spec. Errors are kInvalidArgument with a one-line message naming the key and value.
#ifndef KVSWEEP_SPEC_METHOD_SPEC_H_
#define KVSWEEP_SPEC_METHOD_SPEC_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kvsweep {

// Never renumber: stored in result rows.
enum class MethodFamily { kNone = 0, kQuant = 1, kRank = 2, kHybrid = 3 };
enum class QuantAxis { kToken = 0, kChannel = 1 };
enum class KvTarget { kK = 0, kV = 1, kKV = 2 };
enum class RopeStage { kPost = 0, kPre = 1 };
enum class Basis { kIdentity = 0, kPca = 1, kHadamard = 2, kRandom = 3, kSvd = 4 };

struct MethodSpec {
  MethodFamily family = MethodFamily::kNone;
  int bits = 16;  // quant, hybrid: bits per code (1..8)
  int group = 0;  // quant token axis: channels per group (0 = head_dim, unresolved);
                  // quant channel axis: tokens per block; hybrid: coefficients/group
  QuantAxis axis = QuantAxis::kToken;
  bool sym = false;  // symmetric absmax (true) or asymmetric min-max (false)
  KvTarget target = KvTarget::kKV;
  int residual = 0;  // quant: most recent tokens kept uncompressed (fp16)
  RopeStage rope = RopeStage::kPost;
  Basis basis = Basis::kIdentity;
  int seed = 0;         // basis=random only (normalized to 0 otherwise)
  bool packed = false;  // quant: store real packed codes and measure bytes
  int r = 0;            // rank, hybrid: kept dimensions per head

  bool resolved() const { return !(family == MethodFamily::kQuant && group == 0); }
  bool compresses_k() const { return family != MethodFamily::kNone && target != KvTarget::kV; }
  bool compresses_v() const { return family != MethodFamily::kNone && target != KvTarget::kK; }
  // True if a cache entry's stored state depends on the query position (channel blocks with
  // an unfinished fp16 block, or an fp16 residual window).
  bool position_dependent() const {
    return family == MethodFamily::kQuant && (axis == QuantAxis::kChannel || residual > 0);
  }
  // True if the method needs a calibration text (PCA bases).
  bool needs_calibration() const { return basis == Basis::kPca && family != MethodFamily::kNone; }

  // Canonical string. An unresolved token-axis group prints as `group=head_dim`.
  std::string ToString() const;
};

absl::StatusOr<MethodSpec> ParseMethodSpec(absl::string_view text);
absl::StatusOr<MethodSpec> ResolveMethodSpec(MethodSpec spec, int head_dim);
// Parse + resolve + canonical string, in one call.
absl::StatusOr<std::string> CanonicalMethodSpec(absl::string_view text, int head_dim);

// A job's whole method: one spec for K and V, or K and V apart, optionally with other specs on
// ranges of layers.
//
//   SPEC                          one spec for K and V (its own target may still exclude one)
//   k=SPEC;v=SPEC                 K and V apart, e.g. KIVI's keys per channel and values per
//                                 token: k=quant:bits=2,axis=channel,group=32;v=quant:bits=2
//                                 (a missing part is `none`; a part's target is set to k or v)
//   ...;layers=A-B:SPEC           layers A..B (0-based, inclusive; `layers=A:SPEC` for one) use
//                                 SPEC for K and V instead; repeatable, ranges disjoint
//
// Canonical form (part of job identity; ResolveKvMethod): parts resolved and canonical; K and V
// that are the same spec, or one of them `none`, collapse to one spec (k=X;v=none is X with
// target=k); overrides sorted, adjacent equal ones merged, those equal to the base dropped. So a
// single spec's canonical string is exactly its MethodSpec canonical string. Every part that
// compresses keys must use the same rope stage (the model rotates keys at one point); packed=1
// is for single specs only.
struct KvMethod {
  struct LayerOverride {
    int first = 0, last = 0;  // inclusive
    MethodSpec spec;
  };
  bool split = false;  // false: `k` is the one spec (and `v` a copy of it)
  MethodSpec k, v;     // split: target k and target v
  std::vector<LayerOverride> overrides;

  bool single() const { return !split && overrides.empty(); }
  // What K (V) of `layer` are compressed with: a spec whose target includes K (V) or `none`-like
  // for that tensor (compresses_k()/compresses_v() tell).
  const MethodSpec& KeySpec(int layer) const;
  const MethodSpec& ValueSpec(int layer) const;
  // Every distinct spec, base first (codecs to build, calibration to prepare).
  std::vector<MethodSpec> Parts() const;
  // The spec that characterizes the method in one number of bits, rank, ...: the base K spec if
  // it compresses anything, else the base V spec (constraints, diagnostics, labels).
  const MethodSpec& primary() const;
  // The family label: the family of the single spec, or both ("quant+rank", "quant" when K and V
  // share it); "+layers" when there are overrides.
  std::string FamilyLabel() const;
  bool needs_calibration() const;
  bool position_dependent() const;
  std::string ToString() const;
};

// Parses without a model (shape-dependent defaults open, layer ranges unchecked).
absl::StatusOr<KvMethod> ParseKvMethod(absl::string_view text);
// Binds to a head dimension and layer count and canonicalizes (see above).
absl::StatusOr<KvMethod> ResolveKvMethod(KvMethod m, int head_dim, int num_layers);
// Parse + resolve + canonical string.
absl::StatusOr<std::string> CanonicalKvMethod(absl::string_view text, int head_dim, int num_layers);

// Family names known to the parser, in registry order ("none", "quant", "rank", "hybrid").
std::vector<std::string> MethodFamilyNames();
const char* FamilyName(MethodFamily f);
const char* BasisName(Basis b);
const char* TargetName(KvTarget t);

}  // namespace kvsweep

#endif  // KVSWEEP_SPEC_METHOD_SPEC_H_

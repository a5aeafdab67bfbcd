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
#ifndef KVSWEEP_COMMON_METHOD_SPEC_H_
#define KVSWEEP_COMMON_METHOD_SPEC_H_

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
  int bits = 16;            // quant, hybrid: bits per code (1..8)
  int group = 0;            // quant token axis: channels per group (0 = head_dim, unresolved);
                            // quant channel axis: tokens per block; hybrid: coefficients/group
  QuantAxis axis = QuantAxis::kToken;
  bool sym = false;         // symmetric absmax (true) or asymmetric min-max (false)
  KvTarget target = KvTarget::kKV;
  int residual = 0;         // quant: most recent tokens kept uncompressed (fp16)
  RopeStage rope = RopeStage::kPost;
  Basis basis = Basis::kIdentity;
  int seed = 0;             // basis=random only (normalized to 0 otherwise)
  bool packed = false;      // quant: store real packed codes and measure bytes
  int r = 0;                // rank, hybrid: kept dimensions per head

  bool resolved() const { return !(family == MethodFamily::kQuant && group == 0); }
  bool compresses_k() const {
    return family != MethodFamily::kNone && target != KvTarget::kV;
  }
  bool compresses_v() const {
    return family != MethodFamily::kNone && target != KvTarget::kK;
  }
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

// Family names known to the parser, in registry order ("none", "quant", "rank", "hybrid").
std::vector<std::string> MethodFamilyNames();
const char* FamilyName(MethodFamily f);
const char* BasisName(Basis b);
const char* TargetName(KvTarget t);

}  // namespace kvsweep

#endif  // KVSWEEP_COMMON_METHOD_SPEC_H_

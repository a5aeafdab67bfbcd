// The storage ledger: exactly what a compressed KV cache holds, per cached token per layer per
// KV head, for K and V apart, at a given context length L (the number of cached tokens).
//
// Conventions (docs/ledger.md has the derivations):
// - payload: code bits of compressed entries (quant: B per element of quantized tokens;
//   rank: 16 per kept coefficient; hybrid: B per kept coefficient). Uncompressed tensors
//   (target excludes it, `none`) count 16 bits per element as payload.
// - metadata: fp16 scales (and zeros when asymmetric), plus every token the method keeps in
//   fp16 at length L (the residual window and the unfinished channel block).
// - basis: stored bases amortized over L tokens (pca: d×d for rotations, r×d for projections;
//   svd: r×d; identity, hadamard and seeded random bases are regenerated, cost 0).
// - fraction_* = bits / (16·head_dim), per KV head; `fraction_of_native` scales the total by
//   kv_heads / native_kv_heads (GQA pooling shrinks the cache too).
#ifndef KVSWEEP_SPEC_LEDGER_H_
#define KVSWEEP_SPEC_LEDGER_H_

#include <string>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "spec/method_spec.h"

namespace kvsweep {

struct TensorBits {
  double payload = 0;
  double metadata = 0;
  double basis = 0;
  double total() const { return payload + metadata + basis; }
};

struct Ledger {
  TensorBits k, v;
  int head_dim = 0;
  int kv_heads = 0;  // after GQA pooling
  int native_kv_heads = 0;
  int num_layers = 0;
  int context_len = 0;            // L the amortized terms are computed at
  double fraction_payload = 0;    // (k.payload + v.payload) / (2·16·d)
  double fraction_total = 0;      // (k.total + v.total) / (2·16·d)
  double fraction_of_native = 0;  // fraction_total · kv_heads / native_kv_heads
  // Whole-cache bytes for `context_len` tokens over all layers and KV heads.
  double cache_bytes() const;
  nlohmann::json ToJson() const;
};

// `spec` must be resolved. kInvalidArgument if not, or for non-positive shapes.
absl::StatusOr<Ledger> ComputeLedger(const MethodSpec& spec, int head_dim, int kv_heads,
                                     int native_kv_heads, int num_layers, int context_len);
// A whole method (K and V apart, per-layer overrides): K's bits from each layer's K spec, V's
// from its V spec, averaged over the layers (every layer holds the same number of tokens).
// `method` must be resolved for `num_layers`.
absl::StatusOr<Ledger> ComputeLedger(const KvMethod& method, int head_dim, int kv_heads,
                                     int native_kv_heads, int num_layers, int context_len);

// Budget conventions for matching methods across families.
enum class BudgetConvention { kPayload = 0, kTotal = 1 };
absl::StatusOr<BudgetConvention> ParseBudgetConvention(absl::string_view s);
const char* BudgetConventionName(BudgetConvention c);

// Options a sweep may pass to the solver.
struct SolverOptions {
  BudgetConvention convention = BudgetConvention::kPayload;
  int context_len = 2048;  // L for amortized terms under the `total` convention
  double tolerance = 0.0;  // allowed |achieved - budget| / budget
  int hybrid_bits = 8;     // hybrid: bits per coefficient; r follows from the budget
  std::string extra;       // extra keys appended to the spec (e.g. "basis=svd")
  // K and V apart: keys appended to the K part and to the V part (either set makes the solved
  // method `k=FAMILY:...,extra,extra_k;v=FAMILY:...,extra,extra_v`, the same bits / r for
  // both), e.g. extra_k "axis=channel,group=32" for KIVI-style keys.
  std::string extra_k, extra_v;
};

struct SolvedMethod {
  KvMethod method;      // resolved for head_dim (and one layer: the solver sets no ranges)
  double achieved = 0;  // fraction under the convention
};

// Turns (family, budget, head_dim) into a concrete method at that storage fraction, e.g. at
// budget 0.25 on the payload convention: quant bits=4, rank r=d/4, hybrid r=d/2 bits=8.
// kInvalidArgument with the reason when no configuration of the family lands within the
// tolerance (mismatched comparisons are refused, never rounded silently).
absl::StatusOr<SolvedMethod> SolveBudget(absl::string_view family, double budget, int head_dim,
                                         const SolverOptions& options);

}  // namespace kvsweep

#endif  // KVSWEEP_SPEC_LEDGER_H_

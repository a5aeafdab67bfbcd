// Attention diagnostics of a KV method (docs/kv-methods.md, "Diagnostics"), per layer, measured by
// an AttentionObserver on unpadded sequences run with the job's codec. In every layer the layer's
// input is the compressed run's hidden state; "clean" below means that layer's own uncompressed
// (post-RoPE) K/V, "seen" what attention actually read (compressed entries, per-(t, j) masks).
//
//   kl_mean      mean over query positions t >= 1 and query heads of KL(p_t || p^_t), p_t the
//                softmax attention over clean keys, p^_t over seen keys (nats). Depends on K only.
//   flip_rate    fraction of those (t, head) whose most-attended key differs (argmax p vs p^).
//   out_rel_err  sum ||o^ - o||^2 / sum ||o||^2 of the attention outputs o = p V (clean K and V)
//                and o^ = p^ V^ (seen K and V): the one measure that sees V compression.
//   damage       the projection-vs-quantization damage ratio of keys under the softmax Fisher
//                metric. A perturbation dk_j of the keys moves logits by ds_j = s q.dk_j (s the
//                attention scale); its Fisher quadratic form at query t is Var_{p_t}(ds). Per
//                coordinate i of the head vector, dropping i (projection) gives
//                s^2 q_i^2 Var_{p_t}(k_{.,i}) and b-bit quantization gives
//                s^2 q_i^2 Var_{p_t}(e_{.,i}), e = Q_b(k) - k with Q_b the per-token asymmetric
//                min-max quantizer over the whole head vector (group = head_dim). damage_ratio =
//                sum over (t, head, i) of the first / sum of the second (cross-coordinate terms
//                are left out, as in the per-direction theory). Predicted: 3*4^b for noise of
//                std Delta/sqrt(12) with Delta = 2 sigma / 2^b; with min-max ranges the
//                prediction is 3*4^b / kappa^2, kappa^2 = E[((max - min) / 2)^2] / E[k_i^2] over
//                tokens (half-range against the RMS coordinate). b = the method's bits for
//                quant/hybrid, else 4. Computed in fp64.
#ifndef KVSWEEP_WORKER_ENGINE_DIAGNOSTICS_H_
#define KVSWEEP_WORKER_ENGINE_DIAGNOSTICS_H_

#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "spec/method_spec.h"
#include "worker/engine/model.h"
#include "worker/engine/scorer.h"

namespace kvsweep::engine {

class AttentionDiagnostics final : public AttentionObserver {
 public:
  // damage_bits in [1, 8].
  AttentionDiagnostics(const Model& model, int damage_bits);
  void Observe(int layer, const torch::Tensor& q, const torch::Tensor& k_raw,
               const torch::Tensor& v_raw, const KvPair& seen,
               const torch::Tensor& allowed) override;
  // {"damage_bits", "predicted_ratio", "layers": [{"layer", "kl_mean", "flip_rate",
  //  "out_rel_err", "damage_ratio", "kappa", "predicted_ratio_kappa", "queries"}], "mean": {...}}
  nlohmann::json Summary() const;

 private:
  struct Sums {
    double kl = 0, queries = 0, flips = 0, out_err = 0, out_ref = 0;
    double f_proj = 0, f_quant = 0, half_range_sq = 0, coord_sq = 0, tokens = 0;
  };
  const Model& model_;
  int bits_;
  std::vector<Sums> layers_;
};

struct DiagnosticsOptions {
  int64_t max_tokens = 4096;  // sequences are taken in request order until this many tokens
  int damage_bits = 0;        // 0: the method's bits for quant/hybrid, else 4
};

// Runs the first sequences of `requests` (B = 1, no padding) through the model with `codec` and
// returns the summary plus {"sequences", "tokens", "definition"}. Errors: kInvalidArgument
// (no requests), kInternal / kResourceExhausted from libtorch.
absl::StatusOr<nlohmann::json> RunDiagnostics(const Model& model, const KvCodec* codec,
                                              const MethodSpec& method,
                                              const std::vector<ScoreRequest>& requests,
                                              const DiagnosticsOptions& options);

}  // namespace kvsweep::engine

#endif  // KVSWEEP_WORKER_ENGINE_DIAGNOSTICS_H_

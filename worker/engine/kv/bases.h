// Orthonormal bases of a head's vector space R^D, shared by rank (U_r U_r^T k), hybrid (r
// coefficients in U_r) and rotated quantization (quantize U^T k, rotate back):
//   identity  the coordinate axes (first r coordinates for rank)
//   hadamard  Sylvester's H_D / sqrt(D) (D a power of two)
//   random    Haar-distributed, seeded per (seed, layer, KV head, K|V)
//   pca       eigenvectors of the uncentred second moment E[x x^T] of that head's keys (pre- or
//             post-RoPE per the spec) or values on the calibration windows, by eigenvalue
//   svd       left singular vectors of that head's W_k / W_v row block [D, hidden], i.e. the right
//             singular vectors of the HF-layout [hidden, D] slice, by singular value; data-free,
//             biases ignored (the subspace is that of W h)
// Every basis is a [D, D] fp64 matrix whose column c is basis vector c, ordered by importance
// where the family defines one; signs are fixed (largest-|.| entry of each column positive) so a
// basis is a deterministic function of its inputs.
#ifndef KVSWEEP_WORKER_ENGINE_KV_BASES_H_
#define KVSWEEP_WORKER_ENGINE_KV_BASES_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "spec/method_spec.h"
#include "worker/engine/kv/kv_codec.h"
#include "worker/engine/kv/quantizer.h"
#include "worker/engine/torch_util.h"

namespace kvsweep::engine {

enum class KvTensor { kK = 0, kV = 1 };

torch::Tensor IdentityBasis(int d);
// d must be a power of two (the spec resolver checks it).
torch::Tensor HadamardBasis(int d);
// Haar-orthogonal: Gaussian columns from a mt19937_64 stream with Box-Muller (both fully
// specified, so the same seed gives the same basis with any libtorch or on any device),
// orthonormalized by Gram-Schmidt with positive R diagonal.
torch::Tensor RandomOrthogonalBasis(int d, uint64_t seed);
// The stream seed of one (layer, KV head, K|V): splitmix64 of the spec's seed and the position.
uint64_t BasisSeed(int seed, int layer, int head, KvTensor which);
// m: symmetric [D, D]. Eigenvectors by eigenvalue, largest first.
torch::Tensor EigenBasis(const torch::Tensor& m);
// w: [D, in]. Left singular vectors by singular value, largest first ([D, D]; when in < D the
// last D - in columns span w's null space).
torch::Tensor SingularBasis(const torch::Tensor& w);

// Uncentred second moments sum_x x x^T per layer and KV head, fp64 [Hkv, D, D] (divide by
// `tokens` for the mean), of the uncompressed model's keys (before RoPE when rope == kPre) and
// values over the calibration windows.
struct SecondMoments {
  std::vector<torch::Tensor> k, v;
  int64_t tokens = 0;
};
// Errors: kFailedPrecondition (no windows), kInvalidArgument (a window longer than the model's
// positions or with ids outside its vocabulary).
absl::StatusOr<SecondMoments> CollectSecondMoments(const Model& model,
                                                   const std::vector<std::vector<int32_t>>& windows,
                                                   RopeStage rope);

// The bases a spec asks for, per layer, fp64 [Hkv, D, D] on the CPU; a tensor the spec does not
// compress gets undefined entries. Errors: kFailedPrecondition (no model, or pca without
// calibration windows), kInvalidArgument (shapes).
struct KvBases {
  std::vector<torch::Tensor> k, v;
};
absl::StatusOr<KvBases> BuildBases(const MethodSpec& spec, const CodecContext& ctx);

// The first r columns of each layer's bases, [Hkv, D, r] (all D when r = Projection::kAllColumns),
// converted to `options` (the model's compute dtype and device); undefined entries stay undefined.
std::vector<torch::Tensor> LeadingColumns(const std::vector<torch::Tensor>& bases, int r,
                                          const torch::TensorOptions& options);

// The projection `rank`, `hybrid` and rotated `quant` share: x -> coefficients on r basis
// vectors (what the cache stores) -> back to R^D. With the identity basis the coefficients are
// the first r coordinates and the rest is zero; otherwise each layer's U_r [Hkv, D, r] from
// BuildBases. r = kAllColumns keeps every basis vector: a rotation (`quant` with a basis).
class Projection {
 public:
  static constexpr int kAllColumns = -1;
  Projection(const MethodSpec& spec, int r) : spec_(spec), r_(r) {}
  // Builds U_r for every layer (nothing for the identity basis).
  absl::Status Prepare(const CodecContext& ctx);
  // x [B, Hkv, T, D] of `layer`; `store` maps the coefficients [B, Hkv, T, r] to what the cache
  // holds (identity for rank, fake quantization for hybrid). Returns [B, Hkv, T, D].
  template <typename Store>
  torch::Tensor Apply(KvTensor which, int layer, const torch::Tensor& x, const Store& store) const {
    const int64_t D = x.size(-1);
    const int64_t r = r_ == kAllColumns ? D : r_;
    if (spec_.basis == Basis::kIdentity) {
      torch::Tensor c = store(r == D ? x : x.slice(-1, 0, r));
      return r == D ? c : torch::constant_pad_nd(c, {0, D - r});  // the dropped coordinates: 0
    }
    const std::vector<torch::Tensor>& u = which == KvTensor::kK ? u_k_ : u_v_;
    TORCH_CHECK(layer < static_cast<int>(u.size()) && u[layer].defined(), "codec '",
                spec_.ToString(), "' applied before Prepare built its bases");
    const torch::Tensor& ur = u[layer];  // [Hkv, D, r]
    return torch::matmul(store(torch::matmul(x, ur)), ur.transpose(-1, -2));
  }
  // K and V of one layer with FakeQuantize(·, f) as the store, both in one fused CUDA launch
  // (the identity basis only): bitwise Apply(kK, ...) and Apply(kV, ...). False, nothing
  // written, where that does not apply (another basis, no CUDA, a layout the kernel cannot
  // read); the caller then uses Apply.
  bool ApplyQuantizedPair(const torch::Tensor& k, const torch::Tensor& v, const QuantFormat& f,
                          torch::Tensor* k_out, torch::Tensor* v_out) const;

 private:
  MethodSpec spec_;
  int r_;
  std::vector<torch::Tensor> u_k_, u_v_;  // per layer [Hkv, D, r]
};

}  // namespace kvsweep::engine

#endif  // KVSWEEP_WORKER_ENGINE_KV_BASES_H_

// `rank`: k^ = U_r U_r^T k per (layer, KV head), for K and/or V (docs/kv-methods.md,
// "rank"); U_r = the first r vectors of the spec's basis (bases.h: pca, svd, random,
// identity). Per token, so one pass serves every query. With basis=identity the projection keeps
// the first r coordinates and zeroes the rest exactly (no matmul, so r = D is bit-exact `none`).
// A real cache stores the r coefficients U_r^T k in fp16; the simulation keeps them in the
// compute dtype (fp32 on CPU), like every "fp16" quantity here, and the ledger counts 16 bits.
#include "worker/engine/kv/bases.h"
#include "worker/engine/kv/codecs.h"

namespace kvsweep::engine {
namespace {

using torch::Tensor;

class RankCodec final : public KvCodec {
 public:
  explicit RankCodec(MethodSpec spec) : spec_(std::move(spec)), projection_(spec_, spec_.r) {}
  const MethodSpec& spec() const override { return spec_; }

  absl::Status Prepare(const CodecContext& ctx) override { return projection_.Prepare(ctx); }

  KvPair Apply(int layer, const Tensor& k, const Tensor& v) const override {
    // k, v: [B, Hkv, T, D]; the cache stores the coefficients as they are.
    const auto keep = [](const Tensor& c) { return c; };
    KvPair out;
    out.k = KvOperand{
        spec_.compresses_k() ? projection_.Apply(KvTensor::kK, layer, k, keep) : k, {}, {}};
    out.v = KvOperand{
        spec_.compresses_v() ? projection_.Apply(KvTensor::kV, layer, v, keep) : v, {}, {}};
    return out;
  }

 private:
  MethodSpec spec_;
  Projection projection_;
};

}  // namespace

std::unique_ptr<KvCodec> NewRankCodec(const MethodSpec& spec) {
  return std::make_unique<RankCodec>(spec);
}

}  // namespace kvsweep::engine

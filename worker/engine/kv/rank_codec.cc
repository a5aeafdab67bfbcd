// `rank`: k^ = U_r U_r^T k per (layer, KV head), for K and/or V (DESIGN.md "KV-cache
// compression"); U_r = the first r vectors of the spec's basis (bases.h: pca, svd, random,
// identity). Per token, so one pass serves every query. With basis=identity the projection keeps
// the first r coordinates and zeroes the rest exactly (no matmul, so r = D is bit-exact `none`).
// A real cache stores the r coefficients U_r^T k in fp16; the simulation keeps them in the
// compute dtype (fp32 on CPU), like every "fp16" quantity here, and the ledger counts 16 bits.
#include "worker/engine/kv/bases.h"
#include "worker/engine/kv/codecs.h"
#include "worker/engine/model.h"

namespace kvsweep::engine {
namespace {

using torch::Tensor;

class RankCodec final : public KvCodec {
 public:
  explicit RankCodec(MethodSpec spec) : spec_(std::move(spec)) {}
  const MethodSpec& spec() const override { return spec_; }

  absl::Status Prepare(const CodecContext& ctx) override {
    if (spec_.basis == Basis::kIdentity) return absl::OkStatus();
    absl::StatusOr<KvBases> b = BuildBases(spec_, ctx);
    if (!b.ok()) return b.status();
    const auto to = torch::TensorOptions().dtype(ctx.model->options().dtype).device(ctx.model->options().device);
    u_k_ = LeadingColumns(b->k, spec_.r, to);
    u_v_ = LeadingColumns(b->v, spec_.r, to);
    return absl::OkStatus();
  }

  KvPair Apply(int layer, const Tensor& k, const Tensor& v) const override {
    // k, v: [B, Hkv, T, D].
    KvPair out;
    out.k = KvOperand{spec_.compresses_k() ? Project(k, u_k_, layer) : k, {}, {}};
    out.v = KvOperand{spec_.compresses_v() ? Project(v, u_v_, layer) : v, {}, {}};
    return out;
  }

 private:
  Tensor Project(const Tensor& x, const std::vector<Tensor>& u, int layer) const {
    const int64_t D = x.size(-1);
    if (spec_.basis == Basis::kIdentity) {
      return spec_.r == D ? x : torch::cat({x.slice(-1, 0, spec_.r), torch::zeros_like(x.slice(-1, spec_.r, D))}, -1);
    }
    TORCH_CHECK(layer < static_cast<int>(u.size()) && u[layer].defined(), "rank codec '",
                spec_.ToString(), "' applied before Prepare built its bases");
    const Tensor& ur = u[layer];                          // [Hkv, D, r]
    Tensor coeff = torch::matmul(x, ur);                  // [B, Hkv, T, r]: what the cache stores
    return torch::matmul(coeff, ur.transpose(-1, -2));    // [B, Hkv, T, D]
  }

  MethodSpec spec_;
  std::vector<Tensor> u_k_, u_v_;  // per layer [Hkv, D, r]
};

}  // namespace

std::unique_ptr<KvCodec> NewRankCodec(const MethodSpec& spec) {
  return std::make_unique<RankCodec>(spec);
}

}  // namespace kvsweep::engine

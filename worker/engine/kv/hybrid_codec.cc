// `hybrid`: rank r, then the r coefficients quantized (DESIGN.md "KV-cache compression"):
// c = U_r^T k per (layer, KV head), c^ = min-max quantization of c per token (asymmetric, groups
// of `group` consecutive coefficients, default all r; quantizer.h), k^ = U_r c^. Per token: one
// pass serves every query. With basis=identity the coefficients are the first r coordinates.
#include "worker/engine/kv/bases.h"
#include "worker/engine/kv/codecs.h"
#include "worker/engine/kv/quantizer.h"
#include "worker/engine/model.h"

namespace kvsweep::engine {
namespace {

using torch::Tensor;

class HybridCodec final : public KvCodec {
 public:
  explicit HybridCodec(MethodSpec spec) : spec_(std::move(spec)) {
    format_.bits = spec_.bits;
    format_.group = spec_.group;
    format_.sym = false;
  }
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
    out.k = KvOperand{spec_.compresses_k() ? Compress(k, u_k_, layer) : k, {}, {}};
    out.v = KvOperand{spec_.compresses_v() ? Compress(v, u_v_, layer) : v, {}, {}};
    return out;
  }

 private:
  Tensor Compress(const Tensor& x, const std::vector<Tensor>& u, int layer) const {
    const int64_t D = x.size(-1);
    if (spec_.basis == Basis::kIdentity) {
      Tensor c = FakeQuantize(x.slice(-1, 0, spec_.r), format_);  // [B, Hkv, T, r]
      return spec_.r == D ? c : torch::cat({c, torch::zeros_like(x.slice(-1, spec_.r, D))}, -1);
    }
    TORCH_CHECK(layer < static_cast<int>(u.size()) && u[layer].defined(), "hybrid codec '",
                spec_.ToString(), "' applied before Prepare built its bases");
    const Tensor& ur = u[layer];                            // [Hkv, D, r]
    Tensor coeff = FakeQuantize(torch::matmul(x, ur), format_);  // [B, Hkv, T, r]
    return torch::matmul(coeff, ur.transpose(-1, -2));
  }

  MethodSpec spec_;
  QuantFormat format_;
  std::vector<Tensor> u_k_, u_v_;  // per layer [Hkv, D, r]
};

}  // namespace

std::unique_ptr<KvCodec> NewHybridCodec(const MethodSpec& spec) {
  return std::make_unique<HybridCodec>(spec);
}

}  // namespace kvsweep::engine

// `hybrid`: rank r, then the r coefficients quantized (docs/kv-methods.md, "hybrid"):
// c = U_r^T k per (layer, KV head), c^ = min-max quantization of c per token (asymmetric, groups
// of `group` consecutive coefficients, default all r; quantizer.h), k^ = U_r c^. Per token: one
// pass serves every query. With basis=identity the coefficients are the first r coordinates.
#include "worker/engine/kv/bases.h"
#include "worker/engine/kv/codecs.h"
#include "worker/engine/kv/quantizer.h"

namespace kvsweep::engine {
namespace {

using torch::Tensor;

class HybridCodec final : public KvCodec {
 public:
  explicit HybridCodec(MethodSpec spec) : spec_(std::move(spec)), projection_(spec_, spec_.r) {
    format_.bits = spec_.bits;
    format_.group = spec_.group;
    format_.sym = false;
  }
  const MethodSpec& spec() const override { return spec_; }

  absl::Status Prepare(const CodecContext& ctx) override { return projection_.Prepare(ctx); }

  KvPair Apply(int layer, const Tensor& k, const Tensor& v) const override {
    // k, v: [B, Hkv, T, D]; the cache stores the coefficients quantized.
    const auto quantize = [this](const Tensor& c) { return FakeQuantize(c, format_); };
    KvPair out;
    Tensor ck, cv;
    if (spec_.compresses_k() && spec_.compresses_v() &&
        projection_.ApplyQuantizedPair(k, v, format_, &ck, &cv)) {  // CUDA: one launch
      out.k = KvOperand{std::move(ck), {}, {}};
      out.v = KvOperand{std::move(cv), {}, {}};
      return out;
    }
    out.k = KvOperand{
        spec_.compresses_k() ? projection_.Apply(KvTensor::kK, layer, k, quantize) : k, {}, {}};
    out.v = KvOperand{
        spec_.compresses_v() ? projection_.Apply(KvTensor::kV, layer, v, quantize) : v, {}, {}};
    return out;
  }

 private:
  MethodSpec spec_;
  Projection projection_;
  QuantFormat format_;
};

}  // namespace

std::unique_ptr<KvCodec> NewHybridCodec(const MethodSpec& spec) {
  return std::make_unique<HybridCodec>(spec);
}

}  // namespace kvsweep::engine

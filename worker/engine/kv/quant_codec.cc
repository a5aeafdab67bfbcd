// `quant`: min-max quantization of cached K and/or V (docs/kv-methods.md, "quant").
//
//   axis=token    each token's head vector [D] in groups of `group` channels, optionally in a
//                 rotated basis (x -> U^T x, quantize, -> U x^); per token, so one pass serves
//                 every query (no mask) unless a residual window is set.
//   axis=channel  each channel over blocks of `group` consecutive tokens (KIVI keys); a block is
//                 quantized once complete, so entries of the unfinished block are read in fp16
//                 (masks from cache_masks.h).
//   residual=R    the R most recent tokens are read in fp16 (masks).
//   packed=1      the cache format itself: codes bit-packed (quantizer.h), scales/zeros in fp16, a
//                 tensor the method does not compress held in fp16; attention reads what is decoded
//                 from those bytes, and MeasuredBytesPerToken() reports their size.
//
// "fp16" entries (an untargeted tensor, the residual window, the unfinished channel block) are
// the layer's own K/V in the compute dtype when simulated: in fp32 compute they are the fp32
// values, not fp16-rounded ones (the reference `none` is the same fp32 cache); the ledger counts
// them at 16 bits. Only packed=1 stores and reads real fp16 (it exists to hold real bytes).
#include <mutex>

#include "absl/strings/str_cat.h"
#include "worker/engine/kv/bases.h"
#include "worker/engine/kv/cache_masks.h"
#include "worker/engine/kv/codecs.h"
#include "worker/engine/kv/fused_quant.h"
#include "worker/engine/kv/quantizer.h"

namespace kvsweep::engine {
namespace {

using torch::Tensor;

class QuantCodec final : public KvCodec {
 public:
  explicit QuantCodec(MethodSpec spec)
      : spec_(std::move(spec)), rotation_(spec_, Projection::kAllColumns) {
    format_.bits = spec_.bits;
    format_.group = spec_.group;
    format_.sym = spec_.sym;
    format_.fp16_meta = spec_.packed;
  }

  const MethodSpec& spec() const override { return spec_; }

  // Rotated bases (basis != identity) for the per-token axis; nothing otherwise.
  absl::Status Prepare(const CodecContext& ctx) override { return rotation_.Prepare(ctx); }

  KvPair Apply(int layer, const Tensor& k, const Tensor& v) const override {
    // k, v: [B, Hkv, T, D].
    if (spec_.packed) return ApplyPacked(layer, k, v);  // per token (the parser enforces it)
    Tensor mask;
    if (spec_.position_dependent()) {
      mask = CompressedStateMask(k.size(2), Block(), spec_.residual, k.device());
    }
    KvPair out;
    Tensor qk, qv;
    if (spec_.axis == QuantAxis::kToken && spec_.compresses_k() && spec_.compresses_v() &&
        rotation_.ApplyQuantizedPair(k, v, format_, &qk, &qv)) {
      // CUDA, identity basis: K and V in one launch, bitwise what Quantize gives each.
      out.k = Operand(std::move(qk), k, mask);
      out.v = Operand(std::move(qv), v, mask);
      return out;
    }
    if (spec_.axis == QuantAxis::kChannel && spec_.compresses_k() && spec_.compresses_v() &&
        FusedChannelFakeQuantize(k, v, ChannelFormat(), &qk, &qv)) {
      // CUDA: K and V in one launch that reads the blocks in place (no transposed copies).
      out.k = Operand(std::move(qk), k, mask);
      out.v = Operand(std::move(qv), v, mask);
      return out;
    }
    out.k = spec_.compresses_k() ? Operand(Quantize(KvTensor::kK, layer, k), k, mask)
                                 : KvOperand{k, {}, {}};
    out.v = spec_.compresses_v() ? Operand(Quantize(KvTensor::kV, layer, v), v, mask)
                                 : KvOperand{v, {}, {}};
    return out;
  }

  double MeasuredBytesPerToken() const override {
    if (!spec_.packed) return -1;
    std::lock_guard<std::mutex> lock(mu_);
    double bytes = 0, entries = 0;
    for (const auto& [b, e] : held_) {
      bytes += b;
      entries += e;
    }
    return entries > 0 ? bytes / entries : -1;
  }

 private:
  KvOperand Operand(Tensor compressed, const Tensor& raw, const Tensor& mask) const {
    if (!mask.defined()) return KvOperand{std::move(compressed), {}, {}};
    return KvOperand{std::move(compressed), raw, mask, Block(), spec_.residual};
  }

  int Block() const { return spec_.axis == QuantAxis::kChannel ? spec_.group : 1; }

  // The channel axis quantizes groups of `group` tokens (the transposed blocks' rows).
  QuantFormat ChannelFormat() const {
    QuantFormat f = format_;
    f.group = spec_.group;
    return f;
  }

  // x [B, Hkv, T, D] of `layer` -> its compressed state, same shape and dtype.
  Tensor Quantize(KvTensor which, int layer, const Tensor& x) const {
    if (spec_.axis == QuantAxis::kToken) {
      // Coefficients x U on all D basis vectors (x itself for the identity basis), quantized,
      // back with U^T.
      return rotation_.Apply(which, layer, x,
                             [this](const Tensor& c) { return FakeQuantize(c, format_); });
    }
    // Channel axis: blocks of G tokens, each channel quantized over its G tokens, i.e. token-axis
    // quantization of the transposed block. Tokens past the last whole block stay as they are
    // (never read compressed: see the mask).
    const QuantFormat f = ChannelFormat();
    Tensor fused;
    if (FusedChannelFakeQuantize(x, Tensor(), f, &fused, nullptr)) return fused;  // CUDA
    const int64_t B = x.size(0), H = x.size(1), T = x.size(2), D = x.size(3), G = spec_.group;
    const int64_t full = T / G * G;
    if (full == 0) return x;
    const int64_t nb = full / G;
    Tensor blocks =
        x.slice(2, 0, full).reshape({B, H, nb, G, D}).transpose(3, 4).reshape({B * H * nb, D, G});
    Tensor q =
        FakeQuantize(blocks, f).view({B, H, nb, D, G}).transpose(3, 4).reshape({B, H, full, D});
    return full == T ? q : torch::cat({q, x.slice(2, full, T)}, 2);
  }

  // packed=1: encode, pack, and read back from the stored bytes.
  KvPair ApplyPacked(int layer, const Tensor& k, const Tensor& v) const {
    double bytes = 0;
    auto store = [&](const Tensor& x, bool compressed) -> Tensor {
      if (!compressed) {
        Tensor held = x.to(torch::kFloat16);  // an fp16 cache of the untouched tensor
        bytes += held.numel() * 2.0;
        return held.to(x.scalar_type());
      }
      QuantCodes c = EncodeCodes(x, format_);
      Tensor packed = PackCodes(c.codes, format_.bits);  // uint8 [B, Hkv, T, ceil(D/8)*bits]
      bytes +=
          packed.numel() + c.scale.numel() * 2.0 + (c.zero.defined() ? c.zero.numel() * 2.0 : 0.0);
      QuantCodes held{UnpackCodes(packed, format_.bits, x.size(-1)), c.scale, c.zero};
      return DecodeCodes(held, format_, x.scalar_type());
    };
    KvPair out;
    out.k = KvOperand{store(k, spec_.compresses_k()), {}, {}};
    out.v = KvOperand{store(v, spec_.compresses_v()), {}, {}};
    const double entries = static_cast<double>(k.size(0)) * k.size(1) * k.size(2);
    std::lock_guard<std::mutex> lock(mu_);
    if (static_cast<int>(held_.size()) <= layer) held_.resize(layer + 1, {0.0, 0.0});
    held_[layer] = {bytes, entries};
    return out;
  }

  MethodSpec spec_;
  QuantFormat format_;
  Projection rotation_;  // r = D: a per-layer rotation (basis != identity), or the identity
  mutable std::mutex mu_;
  // packed: (bytes held, cached token-head entries) of each layer's last Apply.
  mutable std::vector<std::pair<double, double>> held_;
};

}  // namespace

std::unique_ptr<KvCodec> NewQuantCodec(const MethodSpec& spec) {
  return std::make_unique<QuantCodec>(spec);
}

}  // namespace kvsweep::engine

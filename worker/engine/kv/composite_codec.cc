// A method with K and V apart or per-layer overrides (KvMethod): each layer's K comes from the
// codec of its K spec and its V from the codec of its V spec. Every distinct spec gets one codec
// (one Prepare: bases, calibration); a codec whose spec targets only K passes V through untouched
// (and the other way round), so taking K from one and V from the other is exactly the cache
// those two specs describe together.
#include <map>

#include "absl/strings/str_cat.h"
#include "worker/engine/kv/kv_codec.h"

namespace kvsweep::engine {
namespace {

class CompositeCodec final : public KvCodec {
 public:
  explicit CompositeCodec(KvMethod method) : method_(std::move(method)) {}

  absl::Status Init() {
    for (const MethodSpec& p : method_.Parts()) {
      absl::StatusOr<std::unique_ptr<KvCodec>> c = NewKvCodec(p);
      if (!c.ok()) return c.status();
      codecs_[p.ToString()] = std::move(*c);
    }
    return absl::OkStatus();
  }

  const MethodSpec& spec() const override { return method_.primary(); }

  bool position_dependent() const override { return method_.position_dependent(); }

  bool keys_pre_rope() const override {
    for (const auto& [name, c] : codecs_) {
      if (c->keys_pre_rope()) return true;  // every part that compresses keys agrees
    }
    return false;
  }

  absl::Status Prepare(const CodecContext& ctx) override {
    for (auto& [name, c] : codecs_) {
      if (absl::Status s = c->Prepare(ctx); !s.ok()) return s;
    }
    return absl::OkStatus();
  }

  KvPair Apply(int layer, const torch::Tensor& k, const torch::Tensor& v) const override {
    const KvCodec& kc = *codecs_.at(method_.KeySpec(layer).ToString());
    const KvCodec& vc = *codecs_.at(method_.ValueSpec(layer).ToString());
    if (&kc == &vc) return kc.Apply(layer, k, v);
    KvPair out;
    out.k = kc.Apply(layer, k, v).k;
    out.v = vc.Apply(layer, k, v).v;
    return out;
  }

 private:
  KvMethod method_;
  std::map<std::string, std::unique_ptr<KvCodec>> codecs_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<KvCodec>> NewKvCodec(const KvMethod& method) {
  if (method.single()) return NewKvCodec(method.k);
  auto c = std::make_unique<CompositeCodec>(method);
  if (absl::Status s = c->Init(); !s.ok()) return s;
  return std::unique_ptr<KvCodec>(std::move(c));
}

}  // namespace kvsweep::engine

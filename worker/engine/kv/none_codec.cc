// `none`: the model's own K/V, untouched (the FP16 reference of every comparison).
#include "worker/engine/kv/codecs.h"

namespace kvsweep::engine {
namespace {

class NoneCodec final : public KvCodec {
 public:
  explicit NoneCodec(MethodSpec spec) : spec_(std::move(spec)) {}
  const MethodSpec& spec() const override { return spec_; }
  KvPair Apply(int layer, const torch::Tensor& k, const torch::Tensor& v) const override {
    return KvPair{KvOperand{k, {}, {}}, KvOperand{v, {}, {}}};
  }

 private:
  MethodSpec spec_;
};

}  // namespace

std::unique_ptr<KvCodec> NewNoneCodec(const MethodSpec& spec) {
  return std::make_unique<NoneCodec>(spec);
}

}  // namespace kvsweep::engine

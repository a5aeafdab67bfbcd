// No Abseil header may be included here (see spm_backend.h).
#include "worker/engine/tokenizer/spm_backend.h"

#include <sentencepiece_processor.h>

namespace kvsweep::engine::tokenizer_internal {

struct SpmBackend::Impl {
  sentencepiece::SentencePieceProcessor sp;
};

SpmBackend::SpmBackend(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SpmBackend::~SpmBackend() = default;

std::unique_ptr<SpmBackend> SpmBackend::Load(std::string_view serialized, std::string* error) {
  auto impl = std::make_unique<Impl>();
  const auto st = impl->sp.LoadFromSerializedProto(serialized);
  if (!st.ok()) {
    *error = st.ToString();
    return nullptr;
  }
  return std::unique_ptr<SpmBackend>(new SpmBackend(std::move(impl)));
}

std::vector<int> SpmBackend::EncodeAsIds(std::string_view text) const {
  return impl_->sp.EncodeAsIds(text);
}
std::string SpmBackend::DecodeIds(const std::vector<int>& ids) const {
  return impl_->sp.DecodeIds(ids);
}
int SpmBackend::GetPieceSize() const { return impl_->sp.GetPieceSize(); }
bool SpmBackend::IsControl(int id) const { return impl_->sp.IsControl(id); }
bool SpmBackend::IsUnknown(int id) const { return impl_->sp.IsUnknown(id); }
std::string SpmBackend::IdToPiece(int id) const { return impl_->sp.IdToPiece(id); }
int SpmBackend::bos_id() const { return impl_->sp.bos_id(); }
int SpmBackend::eos_id() const { return impl_->sp.eos_id(); }

}  // namespace kvsweep::engine::tokenizer_internal

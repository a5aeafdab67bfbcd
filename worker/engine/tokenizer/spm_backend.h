// A thin wrapper over libsentencepiece's SentencePieceProcessor with only standard-library types
// in its interface. sentencepiece_processor.h (0.1.97) declares `namespace absl { using
// std::string_view; }`, which clashes with the real Abseil headers, so it is included only by
// spm_backend.cc, which includes no Abseil header. Internal to worker/engine/tokenizer.
#ifndef KVSWEEP_WORKER_ENGINE_TOKENIZER_SPM_BACKEND_H_
#define KVSWEEP_WORKER_ENGINE_TOKENIZER_SPM_BACKEND_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace kvsweep::engine::tokenizer_internal {

class SpmBackend {
 public:
  // Parses a serialized ModelProto; nullptr and *error set on failure.
  static std::unique_ptr<SpmBackend> Load(std::string_view serialized, std::string* error);
  ~SpmBackend();
  SpmBackend(const SpmBackend&) = delete;
  SpmBackend& operator=(const SpmBackend&) = delete;

  std::vector<int> EncodeAsIds(std::string_view text) const;
  std::string DecodeIds(const std::vector<int>& ids) const;
  int GetPieceSize() const;
  bool IsControl(int id) const;
  bool IsUnknown(int id) const;
  std::string IdToPiece(int id) const;
  int bos_id() const;  // -1 if none
  int eos_id() const;  // -1 if none

 private:
  struct Impl;
  explicit SpmBackend(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvsweep::engine::tokenizer_internal

#endif  // KVSWEEP_WORKER_ENGINE_TOKENIZER_SPM_BACKEND_H_

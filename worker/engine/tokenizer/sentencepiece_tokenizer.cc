// SentencePiece .model through libsentencepiece.
//
// Plain `EncodeAsIds` is what HF's slow LlamaTokenizer computes for text without special
// tokens. The difference is special tokens: SentencePiece never produces control pieces from
// text ("<s>" becomes "▁<", "s", ">"), HF splits them out first and maps them to their ids. We do
// what HF does: control and unknown pieces found literally in the text are split out
// (leftmost-longest), and each text segment between them is encoded on its own with
// `EncodeAsIds` (so every segment gets the dummy-prefix "▁", as in HF's legacy LlamaTokenizer).
#include <algorithm>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "worker/engine/tokenizer/spm_backend.h"
#include "worker/engine/tokenizer/text_util.h"
#include "worker/engine/tokenizer/tokenizer.h"

namespace kvsweep::engine {
namespace {

class SentencePieceTokenizer final : public Tokenizer {
 public:
  SentencePieceTokenizer(std::string path, std::unique_ptr<tokenizer_internal::SpmBackend> sp)
      : path_(std::move(path)), sp_(std::move(sp)) {
    for (int id = 0; id < sp_->GetPieceSize(); ++id) {
      if (sp_->IsControl(id) || sp_->IsUnknown(id)) {
        const std::string piece = sp_->IdToPiece(id);
        if (!piece.empty()) specials_.emplace_back(piece, id);
      }
    }
    // Longest first, so that the first pattern matching at a position is the longest one.
    std::stable_sort(specials_.begin(), specials_.end(),
                     [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  }

  absl::StatusOr<std::vector<int32_t>> Encode(absl::string_view text) const override {
    std::string owned;
    if (!tokenizer_internal::IsValidUtf8(text)) {
      owned = tokenizer_internal::ToValidUtf8(text);
      text = owned;
    }
    std::vector<int32_t> ids;
    size_t seg_begin = 0;
    auto flush = [&](size_t end) {
      if (end > seg_begin) {
        const std::vector<int> seg =
            sp_->EncodeAsIds(std::string_view(text.data() + seg_begin, end - seg_begin));
        ids.insert(ids.end(), seg.begin(), seg.end());
      }
    };
    for (size_t i = 0; i < text.size();) {
      const std::pair<std::string, int>* hit = nullptr;
      {
        for (const auto& s : specials_) {
          if (text.compare(i, s.first.size(), s.first) == 0) {
            hit = &s;
            break;
          }
        }
      }
      if (hit == nullptr) {
        ++i;
        continue;
      }
      flush(i);
      ids.push_back(hit->second);
      i += hit->first.size();
      seg_begin = i;
    }
    flush(text.size());
    return ids;
  }

  std::string Decode(absl::Span<const int32_t> ids) const override {
    std::string out;
    std::vector<int> run;
    auto flush = [&] {
      if (!run.empty()) out += sp_->DecodeIds(run);
      run.clear();
    };
    for (int32_t id : ids) {
      if (id < 0 || id >= sp_->GetPieceSize()) continue;
      if (sp_->IsControl(id) || sp_->IsUnknown(id)) {
        flush();
        out += sp_->IdToPiece(id);
      } else {
        run.push_back(id);
      }
    }
    flush();
    return out;
  }

  int32_t vocab_size() const override { return sp_->GetPieceSize(); }
  std::optional<int32_t> bos_id() const override { return OptionalId(sp_->bos_id()); }
  std::optional<int32_t> eos_id() const override { return OptionalId(sp_->eos_id()); }
  std::string kind() const override { return "sentencepiece"; }
  std::vector<std::string> files() const override { return {path_}; }

 private:
  static std::optional<int32_t> OptionalId(int id) {
    return id < 0 ? std::nullopt : std::optional<int32_t>(id);
  }
  std::string path_;
  std::unique_ptr<tokenizer_internal::SpmBackend> sp_;
  std::vector<std::pair<std::string, int>> specials_;  // (piece, id), longest first
};

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> NewSentencePieceTokenizer(
    const std::string& model_path) {
  KV_ASSIGN_OR_RETURN(std::string bytes, ReadFile(model_path));
  if (bytes.empty()) return absl::InvalidArgumentError(absl::StrCat(model_path, ": empty file"));
  std::string error;
  std::unique_ptr<tokenizer_internal::SpmBackend> sp =
      tokenizer_internal::SpmBackend::Load(bytes, &error);
  if (sp == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(model_path, ": not a SentencePiece model: ", error));
  }
  return std::unique_ptr<Tokenizer>(new SentencePieceTokenizer(model_path, std::move(sp)));
}

}  // namespace kvsweep::engine

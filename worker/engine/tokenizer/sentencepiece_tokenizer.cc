// SentencePiece BPE `.model` -> the Hugging Face pipeline that transformers 5 builds from it
// (LlamaTokenizer.from_pretrained on a folder holding only tokenizer.model), run by the same
// pipeline classes as tokenizer.json:
//   vocab    = the pieces, id = position (SentencePieceExtractor.extract)
//   merges   = HfMergesFromPieces: ranked by the merged piece's id, not by piece score
//   model    = BPE(byte_fallback=true, fuse_unk=true, no unk_token, no dropout)
//   normalizer none; pre-tokenizer Metaspace("▁", prepend_scheme="first", split=false)
//   decoder  = Replace("▁", " "), ByteFallback, Fuse, Strip(" ", 1, 0)
//   added tokens: the UNKNOWN and CONTROL pieces as special tokens, USER_DEFINED pieces as
//   non-special ones, all normalized=false (split out of the raw text first).
// This is exactly what transformers 5.17 wrote into models/ref-llama/tokenizer.json for the
// Llama 2 tokenizer.model. It is not libsentencepiece's segmentation: see docs/tokenizers.md.
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "worker/engine/tokenizer/bpe.h"
#include "worker/engine/tokenizer/hf_pipeline.h"
#include "worker/engine/tokenizer/spm_model.h"
#include "worker/engine/tokenizer/tokenizer.h"

namespace kvsweep::engine {

absl::StatusOr<std::unique_ptr<Tokenizer>> NewSentencePieceTokenizer(
    const std::string& model_path) {
  using tokenizer_internal::AddedToken;
  using tokenizer_internal::SpmModel;
  using tokenizer_internal::SpmModelType;
  using tokenizer_internal::SpmPieceType;

  KV_ASSIGN_OR_RETURN(std::string bytes, ReadFile(model_path));
  if (bytes.empty()) return absl::InvalidArgumentError(absl::StrCat(model_path, ": empty file"));
  KV_ASSIGN_OR_RETURN(SpmModel m, tokenizer_internal::ParseSpmModel(bytes, model_path));
  bytes.clear();
  bytes.shrink_to_fit();

  if (m.model_type != static_cast<int64_t>(SpmModelType::kBpe)) {
    return absl::UnimplementedError(absl::StrCat(model_path, ": SentencePiece model type ",
                                                 tokenizer_internal::SpmModelTypeName(m.model_type),
                                                 " is not supported (only BPE)"));
  }
  // Both would change what the pieces mean; transformers' Llama conversion silently drops them
  // (and other HF classes treat them differently), so refuse rather than guess.
  if (m.treat_whitespace_as_suffix) {
    return absl::UnimplementedError(absl::StrCat(
        model_path, ": SentencePiece treat_whitespace_as_suffix=true is not supported"));
  }
  if (m.precompiled_charsmap_size > 0) {
    return absl::UnimplementedError(
        absl::StrCat(model_path, ": SentencePiece normalization rule \"", m.normalizer_name, "\" (",
                     m.precompiled_charsmap_size, "-byte precompiled_charsmap) is not supported"));
  }

  std::vector<std::string> pieces;
  pieces.reserve(m.pieces.size());
  std::vector<std::pair<std::string, int32_t>> vocab;
  vocab.reserve(m.pieces.size());
  tokenizer_internal::PipelineSpec spec;
  for (size_t id = 0; id < m.pieces.size(); ++id) {
    const tokenizer_internal::SpmPiece& p = m.pieces[id];
    pieces.push_back(p.piece);
    vocab.emplace_back(p.piece, static_cast<int32_t>(id));
    if (p.type == SpmPieceType::kUnknown || p.type == SpmPieceType::kControl ||
        p.type == SpmPieceType::kUserDefined) {
      AddedToken t;
      t.content = p.piece;
      t.id = static_cast<int32_t>(id);
      t.special = p.type != SpmPieceType::kUserDefined;
      t.normalized = false;
      spec.added_tokens.push_back(std::move(t));
    }
  }
  const auto merges = tokenizer_internal::HfMergesFromPieces(pieces);

  tokenizer_internal::BpeOptions opts;
  opts.byte_fallback = true;  // LlamaTokenizer sets it whatever the trainer spec says
  opts.fuse_unk = true;       // no unk_token: as in ref-llama's tokenizer.json
  KV_ASSIGN_OR_RETURN(spec.model, tokenizer_internal::BpeModel::Create(
                                      std::move(vocab), merges, std::move(opts), model_path));
  const std::string meta = "\xE2\x96\x81";  // "▁"
  spec.pre_tokenizer = tokenizer_internal::NewMetaspacePreTokenizer(
      meta, tokenizer_internal::PrependScheme::kFirst, /*split=*/false);
  std::vector<std::unique_ptr<tokenizer_internal::Decoder>> decoders;
  decoders.push_back(tokenizer_internal::NewReplaceDecoder(meta, " "));
  decoders.push_back(tokenizer_internal::NewByteFallbackDecoder());
  decoders.push_back(tokenizer_internal::NewFuseDecoder());
  decoders.push_back(tokenizer_internal::NewStripDecoder(" ", /*start=*/1, /*stop=*/0));
  spec.decoder = tokenizer_internal::NewSequenceDecoder(std::move(decoders));
  if (m.bos_id >= 0) spec.bos_id = m.bos_id;
  if (m.eos_id >= 0) spec.eos_id = m.eos_id;
  spec.kind = "hf-sentencepiece-bpe";
  spec.files = {model_path};
  return tokenizer_internal::NewPipelineTokenizer(std::move(spec));
}

}  // namespace kvsweep::engine

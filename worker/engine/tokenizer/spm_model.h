// SentencePiece `.model` files (a serialized sentencepiece.ModelProto) parsed by the system
// libprotobuf from proto/sentencepiece/sentencepiece_model.proto (the fields read here), and the
// BPE merge list that Hugging Face transformers 5 derives from such a model. No libsentencepiece:
// Debian's libsentencepiece.so.0 carries its own copy of protobuf-lite and exports its symbols,
// which interpose with the system libprotobuf that libtorch and gRPC load (the worker crashed
// during static initialization). Internal to worker/engine/tokenizer.
//
// Field numbers (on-disk format, never renumber):
//   ModelProto      pieces = 1 (repeated SentencePiece), trainer_spec = 2, normalizer_spec = 3
//   SentencePiece   piece = 1 (string), score = 2 (float), type = 3 (enum, default NORMAL)
//   TrainerSpec     model_type = 3 (default UNIGRAM), treat_whitespace_as_suffix = 24,
//                   byte_fallback = 35, unk_id = 40 (default 0), bos_id = 41 (1), eos_id = 42 (2),
//                   pad_id = 43 (-1)
//   NormalizerSpec  name = 1, precompiled_charsmap = 2, add_dummy_prefix = 3,
//                   remove_extra_whitespaces = 4, escape_whitespaces = 5 (all bools default true)
// Every other field is kept by protobuf as an unknown field and ignored.
#ifndef KVSWEEP_WORKER_ENGINE_TOKENIZER_SPM_MODEL_H_
#define KVSWEEP_WORKER_ENGINE_TOKENIZER_SPM_MODEL_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kvsweep::engine::tokenizer_internal {

// ModelProto.SentencePiece.Type (the proto's numbers; never renumber: on-disk format).
enum class SpmPieceType : int32_t {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

// TrainerSpec.ModelType (the proto's numbers; never renumber: on-disk format).
enum class SpmModelType : int32_t { kUnigram = 1, kBpe = 2, kWord = 3, kChar = 4 };

// "UNIGRAM", "BPE", "WORD", "CHAR", or "unknown (N)".
std::string SpmModelTypeName(int64_t model_type);

struct SpmPiece {
  std::string piece;  // valid UTF-8, never empty
  float score = 0.0f;
  SpmPieceType type = SpmPieceType::kNormal;
};

// The parts of a ModelProto this module uses; defaults are the proto's.
struct SpmModel {
  std::vector<SpmPiece> pieces;  // id = index; at least one; no piece string twice

  // trainer_spec
  int64_t model_type = static_cast<int64_t>(SpmModelType::kUnigram);  // raw enum value
  bool byte_fallback = false;
  bool treat_whitespace_as_suffix = false;
  int32_t unk_id = 0;  // each of these is -1 (none) or a valid piece id
  int32_t bos_id = 1;
  int32_t eos_id = 2;
  int32_t pad_id = -1;

  // normalizer_spec
  std::string normalizer_name;
  size_t precompiled_charsmap_size = 0;  // bytes; 0 = no normalization rule
  bool add_dummy_prefix = true;
  bool remove_extra_whitespaces = true;
  bool escape_whitespaces = true;
};

// Parses a serialized ModelProto. Returns kInvalidArgument with a one-line message
// "<what>: not a valid SentencePiece model: <reason>" when the bytes are not one: anything
// protobuf's parser refuses (truncated or overlong varints, lengths past the end, invalid wire
// types, a known field with the wrong wire type, field number 0), invalid UTF-8 in a piece, an
// empty or repeated piece, a piece type or id outside its range, no pieces, no trainer_spec
// (spm_train always writes one; a file cut between two pieces would otherwise parse). The reason
// names the field (and the piece's index). Does not judge the model type (see SpmModelTypeName).
absl::StatusOr<SpmModel> ParseSpmModel(absl::string_view bytes, absl::string_view what);

// The merges transformers 5 derives for a SentencePiece BPE model (SentencePieceExtractor.extract
// calls generate_merges(vocab) without scores): every split of every piece into two pieces that
// are both in the vocabulary, ranked by the merged piece's id, then by the left part's length in
// code points. `pieces` (index = id) must be valid UTF-8 and distinct. Piece scores play no part.
std::vector<std::pair<std::string, std::string>> HfMergesFromPieces(
    const std::vector<std::string>& pieces);

}  // namespace kvsweep::engine::tokenizer_internal

#endif  // KVSWEEP_WORKER_ENGINE_TOKENIZER_SPM_MODEL_H_

// The Hugging Face `tokenizers` encode/decode pipeline, rebuilt step by step:
//   added tokens split out of the raw text -> normalizer (per remaining segment) -> added tokens
//   with normalized=true split out of the normalized text -> pre-tokenizer -> BPE model per
//   piece; decode: ids -> token strings -> decoder chain -> concatenation.
// Shared by the tokenizer.json, GPT-2 vocab/merges and SentencePiece .model loaders. Each
// component mirrors the HF one of the same name (normalizers/, pre_tokenizers/, decoders/ in HF
// `tokenizers`).
// Internal to worker/engine/tokenizer.
#ifndef KVSWEEP_WORKER_ENGINE_TOKENIZER_HF_PIPELINE_H_
#define KVSWEEP_WORKER_ENGINE_TOKENIZER_HF_PIPELINE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "worker/engine/tokenizer/bpe.h"
#include "worker/engine/tokenizer/tokenizer.h"

namespace kvsweep::engine::tokenizer_internal {

bool IsWhiteSpace(uint32_t code_point);  // Unicode White_Space (Rust's char::is_whitespace)

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual absl::Status Normalize(std::string* text) const = 0;
};

// A pre-token: its text and whether it starts at byte 0 of the original input (HF's
// `offsets_original().0 == 0`, which Metaspace's prepend_scheme "first" tests).
struct Piece {
  std::string text;
  bool at_start = false;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Replaces *pieces by their pre-tokenization; empty pieces are dropped (as HF does).
  virtual absl::Status PreTokenize(std::vector<Piece>* pieces) const = 0;
};

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void DecodeChain(std::vector<std::string>* tokens) const = 0;
};

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };
enum class PrependScheme { kAlways, kFirst, kNever };
enum class UnicodeForm { kNfc, kNfd, kNfkc, kNfkd };

// Normalizers.
std::unique_ptr<Normalizer> NewSequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps);
std::unique_ptr<Normalizer> NewPrependNormalizer(std::string prepend);
// `pattern` is a literal unless `is_regex`. kInvalidArgument if the regex does not compile.
absl::StatusOr<std::unique_ptr<Normalizer>> NewReplaceNormalizer(absl::string_view pattern,
                                                                 bool is_regex,
                                                                 std::string content);
// kUnimplemented if this build has no ICU.
absl::StatusOr<std::unique_ptr<Normalizer>> NewUnicodeNormalizer(UnicodeForm form);
absl::StatusOr<std::unique_ptr<Normalizer>> NewLowercaseNormalizer();
std::unique_ptr<Normalizer> NewStripNormalizer(bool left, bool right);

// Pre-tokenizers.
std::unique_ptr<PreTokenizer> NewSequencePreTokenizer(
    std::vector<std::unique_ptr<PreTokenizer>> steps);
absl::StatusOr<std::unique_ptr<PreTokenizer>> NewByteLevelPreTokenizer(bool add_prefix_space,
                                                                       bool use_regex);
std::unique_ptr<PreTokenizer> NewMetaspacePreTokenizer(std::string replacement,
                                                       PrependScheme scheme, bool split);
absl::StatusOr<std::unique_ptr<PreTokenizer>> NewSplitPreTokenizer(absl::string_view pattern,
                                                                   bool is_regex,
                                                                   SplitBehavior behavior,
                                                                   bool invert);
absl::StatusOr<std::unique_ptr<PreTokenizer>> NewDigitsPreTokenizer(bool individual_digits);
absl::StatusOr<std::unique_ptr<PreTokenizer>> NewWhitespaceSplitPreTokenizer();
absl::StatusOr<std::unique_ptr<PreTokenizer>> NewWhitespacePreTokenizer();

// Decoders.
std::unique_ptr<Decoder> NewSequenceDecoder(std::vector<std::unique_ptr<Decoder>> steps);
std::unique_ptr<Decoder> NewByteLevelDecoder();
std::unique_ptr<Decoder> NewMetaspaceDecoder(std::string replacement, bool strip_first);
std::unique_ptr<Decoder> NewReplaceDecoder(std::string pattern, std::string content);
std::unique_ptr<Decoder> NewByteFallbackDecoder();
std::unique_ptr<Decoder> NewFuseDecoder();
std::unique_ptr<Decoder> NewStripDecoder(std::string content, int start, int stop);

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
  bool special = false;
};

struct PipelineSpec {
  std::string kind;
  std::vector<std::string> files;
  std::unique_ptr<Normalizer> normalizer;       // may be null
  std::unique_ptr<PreTokenizer> pre_tokenizer;  // may be null
  std::unique_ptr<BpeModel> model;              // required
  std::vector<AddedToken> added_tokens;
  std::unique_ptr<Decoder> decoder;  // may be null: tokens joined by " " (as HF)
  std::optional<int32_t> bos_id;
  std::optional<int32_t> eos_id;
};

// kInvalidArgument if the spec is incomplete (no model) or an added token is empty.
absl::StatusOr<std::unique_ptr<Tokenizer>> NewPipelineTokenizer(PipelineSpec spec);

// The GPT-2 pre-tokenizer regex (HF ByteLevel, use_regex=true).
inline constexpr absl::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

}  // namespace kvsweep::engine::tokenizer_internal

#endif  // KVSWEEP_WORKER_ENGINE_TOKENIZER_HF_PIPELINE_H_

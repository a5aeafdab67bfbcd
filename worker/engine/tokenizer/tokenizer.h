// Tokenizers of the evaluation engine: text <-> token ids, byte-for-byte equal to the reference
// implementation of each format (Hugging Face for tokenizer.json, GPT-2 vocab/merges and
// SentencePiece .model, karpathy's llama2.c for tok*.bin).
//
// Formats (kind()):
//   "hf-json-bytelevel-bpe"  tokenizer.json, BPE model, byte-level (GPT-2, Llama 3, Qwen2)
//   "hf-json-sp-bpe"         tokenizer.json, BPE model, SentencePiece style (Llama 2, Mistral)
//   "gpt2-vocab-merges"      vocab.json + merges.txt (OpenAI GPT-2 layout)
//   "hf-sentencepiece-bpe"   SentencePiece BPE .model, converted as transformers 5 does
//   "llama2c"                llama2.c tok*.bin
//
// Error codes of the loaders: kNotFound (a path or a file the format needs is missing),
// kInvalidArgument (the file exists but is malformed: bad JSON, truncated, empty, merges that
// name tokens not in the vocabulary, ...), kUnimplemented (valid file using a feature this
// module does not implement, e.g. a WordPiece model or an unsupported normalizer; the message
// names it), kPermissionDenied / kInternal from file I/O. Messages name the path.
//
// Implementations are immutable after loading; Encode/Decode are thread-safe.
#ifndef KVSWEEP_WORKER_ENGINE_TOKENIZER_TOKENIZER_H_
#define KVSWEEP_WORKER_ENGINE_TOKENIZER_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace kvsweep::engine {

class Tokenizer {
 public:
  Tokenizer() = default;
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;
  virtual ~Tokenizer() = default;

  // Encodes UTF-8 `text` WITHOUT special tokens (no BOS/EOS added), exactly as Hugging Face
  // `tokenizer(text, add_special_tokens=False)["input_ids"]` does. Special tokens written
  // literally in the text ("<s>", "<|endoftext|>") are still recognised and map to their ids,
  // as in HF. Invalid UTF-8 never fails: each maximal invalid subsequence is replaced by U+FFFD
  // first (what Python's `bytes.decode("utf-8", "replace")` and Rust's from_utf8_lossy do), so
  // the result equals HF on the text Python would have read. The llama2c kind works on bytes and
  // needs no replacement. Returns kInternal only if the regex engine fails (resource limits).
  virtual absl::StatusOr<std::vector<int32_t>> Encode(absl::string_view text) const = 0;

  // Decodes ids to text (used to print greedy continuations) the way the reference decoder
  // does, special tokens included as their text. Ids outside the vocabulary are skipped.
  // Invalid UTF-8 produced by byte tokens is replaced by U+FFFD.
  virtual std::string Decode(absl::Span<const int32_t> ids) const = 0;

  // Number of ids, including added tokens: max id + 1.
  virtual int32_t vocab_size() const = 0;
  // From tokenizer_config.json / the format; nullopt if there is none.
  virtual std::optional<int32_t> bos_id() const = 0;
  virtual std::optional<int32_t> eos_id() const = 0;
  // One of the kinds listed at the top of this file.
  virtual std::string kind() const = 0;
  // The files that define this tokenizer, in a fixed order (for content hashing into job
  // identity).
  virtual std::vector<std::string> files() const = 0;
};

// `path` is a model directory or a tokenizer file. Directory search order: tokenizer.json,
// vocab.json+merges.txt, tokenizer.model, then tokenizer.bin or a single tok*.bin (llama2.c).
// A file path picks the format by name, then by content: tokenizer.json (or any *.json holding
// a "model" object), vocab.json (merges.txt must be beside it) or merges.txt (vocab.json
// beside), *.model = SentencePiece, *.bin = llama2.c. Errors as described at the top.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& path);

// Format-specific factories (LoadTokenizer dispatches to them).
//
// Hugging Face tokenizer.json. `config_path` is the tokenizer_config.json the resolver found
// beside it (TokenizerFiles::config, common/input_files.h), or empty: it names the BOS/EOS
// tokens; without it they are guessed from the added tokens (<s>/</s>, <|endoftext|>,
// <|begin_of_text|>/<|end_of_text|>, <|im_end|> ...).
absl::StatusOr<std::unique_ptr<Tokenizer>> NewHfJsonTokenizer(const std::string& json_path,
                                                              const std::string& config_path);
// GPT-2 vocab.json + merges.txt; "<|endoftext|>" (if in the vocabulary) is BOS, EOS and a
// special token split out of text.
absl::StatusOr<std::unique_ptr<Tokenizer>> NewGpt2Tokenizer(const std::string& vocab_path,
                                                            const std::string& merges_path);
// SentencePiece .model (BPE only), tokenized as Hugging Face transformers 5 tokenizes it: the
// file is converted to the `tokenizers` pipeline that LlamaTokenizer.from_pretrained builds
// from it (merges ranked by the merged piece's id, Metaspace prepend_scheme "first", byte
// fallback; unknown/control/user-defined pieces split out of the text as added tokens), which
// differs from libsentencepiece at runs of spaces (docs/tokenizers.md). BOS/EOS are the trainer
// spec's bos_id/eos_id (none if -1). kInvalidArgument if the file is not a valid ModelProto
// (truncated, garbage, duplicate pieces, ...); kUnimplemented for non-BPE model types (named),
// treat_whitespace_as_suffix, or a precompiled normalization rule.
absl::StatusOr<std::unique_ptr<Tokenizer>> NewSentencePieceTokenizer(const std::string& model_path);
// llama2.c tok*.bin. `expected_vocab_size` > 0 (the model's vocab_size) is checked against the
// number of entries in the file; 0 accepts any count.
absl::StatusOr<std::unique_ptr<Tokenizer>> NewLlama2cTokenizer(const std::string& bin_path,
                                                               int32_t expected_vocab_size = 0);

// sha256 (lower-case hex) over the defining files, in files() order; for each file the hash
// takes its decimal byte length, '\n', then its bytes. Errors as in ReadFile.
absl::StatusOr<std::string> TokenizerFingerprint(const Tokenizer& t);

}  // namespace kvsweep::engine

#endif  // KVSWEEP_WORKER_ENGINE_TOKENIZER_TOKENIZER_H_

// The one answer to "which files of a model or tokenizer does the engine read?".
//
// Job identity hashes exactly these files (ResolveJob), the worker re-hashes exactly these before
// evaluating (VerifyJobInputs), and the engine's loaders open exactly these (the checkpoint takes
// a ModelFiles; LoadTokenizer dispatches on a TokenizerFiles and refuses a tokenizer that read
// anything else). A file in a model directory that is not listed here is neither hashed nor read.
//
// Resolution stats paths and, for a sharded checkpoint, reads its index (to list the shards it
// names) and, for a tokenizer file with an unknown name, its first bytes (to tell the format).
// With a PathPolicy, every file is checked against it before it is opened or listed.
#ifndef KVSWEEP_COMMON_INPUT_FILES_H_
#define KVSWEEP_COMMON_INPUT_FILES_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/path_policy.h"

namespace kvsweep {

struct ModelFiles {
  std::string config;                // <dir>/config.json; empty for a llama2.c .bin
  std::string weights_index;         // <dir>/model.safetensors.index.json, or empty
  std::vector<std::string> weights;  // the shards the index names (sorted), model.safetensors,
                                     // or the llama2.c .bin itself
  // config, then index and weights sorted by path: the order the identity hashes them in
  // (unchanged from before this list existed, so existing model hashes stay valid).
  std::vector<std::string> All() const;
};

// `model_path`: a Hugging Face directory or a llama2.c .bin file. A directory needs config.json
// and model.safetensors.index.json (+ the shards it names) or model.safetensors.
// Errors: kNotFound (path, config.json, weights or a shard missing), kInvalidArgument (an index
// without a "weight_map" object or naming a shard that is not a plain file name),
// kUnimplemented (pytorch_model.bin only), the policy's kInvalidArgument, ReadFile's errors.
absl::StatusOr<ModelFiles> ResolveModelFiles(const std::string& model_path,
                                             const PathPolicy* policy = nullptr);

enum class TokenizerFormat {
  kHfJson,           // tokenizer.json (+ tokenizer_config.json beside it, which sets BOS/EOS)
  kGpt2VocabMerges,  // vocab.json + merges.txt
  kSentencePiece,    // *.model
  kLlama2c,          // tok*.bin / tokenizer.bin
};

struct TokenizerFiles {
  TokenizerFormat format = TokenizerFormat::kHfJson;
  std::string main;    // tokenizer.json, vocab.json, *.model or *.bin
  std::string merges;  // kGpt2VocabMerges only
  std::string config;  // kHfJson: tokenizer_config.json beside `main` if it exists, else empty
  // main, merges, config (those set): the order the identity hashes them in and the order the
  // loaders report them (Tokenizer::files()).
  std::vector<std::string> All() const;
};

// `path`: a model directory or a tokenizer file. Directory search order: tokenizer.json,
// vocab.json + merges.txt, tokenizer.model, tokenizer.bin, a single tok*.bin. A file picks the
// format by name (tokenizer.json, *vocab.json, *merges.txt, *.model, *.bin), else by content (a
// JSON object with a "model" key is a tokenizer.json, other JSON a vocab.json).
// Errors: kNotFound (path missing, no tokenizer in a directory, vocab.json or merges.txt without
// its partner), kInvalidArgument (several tok*.bin, an empty or unrecognizable file), the
// policy's kInvalidArgument, ReadFile's errors.
absl::StatusOr<TokenizerFiles> ResolveTokenizerFiles(const std::string& path,
                                                     const PathPolicy* policy = nullptr);

}  // namespace kvsweep

#endif  // KVSWEEP_COMMON_INPUT_FILES_H_

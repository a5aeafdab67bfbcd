// OpenAI GPT-2 vocab.json + merges.txt: the byte-level BPE pipeline of HF GPT2Tokenizer
// (ByteLevel pre-tokenizer without prefix space, GPT-2 regex, ByteLevel decoder) with
// "<|endoftext|>" as BOS, EOS and a special token split out of the text.
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "common/json_util.h"
#include "common/status_macros.h"
#include "worker/engine/tokenizer/bpe.h"
#include "worker/engine/tokenizer/hf_pipeline.h"
#include "worker/engine/tokenizer/tokenizer.h"

namespace kvsweep::engine {

absl::StatusOr<std::unique_ptr<Tokenizer>> NewGpt2Tokenizer(const std::string& vocab_path,
                                                            const std::string& merges_path) {
  using tokenizer_internal::AddedToken;
  KV_ASSIGN_OR_RETURN(std::string vocab_text, ReadFile(vocab_path));
  if (vocab_text.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(vocab_path, ": empty file"));
  }
  KV_ASSIGN_OR_RETURN(nlohmann::json vocab_json, ParseJson(vocab_text, vocab_path));
  if (!vocab_json.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(vocab_path, ": not a vocab.json (expected an object of token -> id)"));
  }
  std::vector<std::pair<std::string, int32_t>> vocab;
  vocab.reserve(vocab_json.size());
  for (const auto& [token, id] : vocab_json.items()) {
    // Neither the token nor the value is quoted: a path may name any JSON file.
    if (!id.is_number_integer()) {
      return absl::InvalidArgumentError(absl::StrCat(vocab_path, ": entry ", vocab.size() + 1,
                                                     " (in key order) has no integer id"));
    }
    vocab.emplace_back(token, id.get<int32_t>());
  }

  KV_ASSIGN_OR_RETURN(std::string merges_text, ReadFile(merges_path));
  if (merges_text.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(merges_path, ": empty file"));
  }
  std::vector<absl::string_view> lines = absl::StrSplit(merges_text, '\n');
  if (!lines.empty() && lines.back().empty()) lines.pop_back();  // final newline
  std::vector<std::pair<std::string, std::string>> merges;
  merges.reserve(lines.size());
  for (size_t i = 0; i < lines.size(); ++i) {
    absl::string_view line = lines[i];
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (absl::StartsWith(line, "#version")) continue;  // HF skips these header lines
    std::vector<absl::string_view> parts = absl::StrSplit(line, ' ');
    if (parts.size() != 2) {
      // The line itself is not quoted: a path may name any text file.
      return absl::InvalidArgumentError(
          absl::StrCat(merges_path, ":", i + 1, ": expected \"a b\" (two tokens, one space), got ",
                       parts.size(), " space-separated pieces"));
    }
    merges.emplace_back(std::string(parts[0]), std::string(parts[1]));
  }

  tokenizer_internal::PipelineSpec spec;
  spec.kind = "gpt2-vocab-merges";
  spec.files = {vocab_path, merges_path};
  KV_ASSIGN_OR_RETURN(spec.model, tokenizer_internal::BpeModel::Create(
                                      std::move(vocab), merges, tokenizer_internal::BpeOptions(),
                                      absl::StrCat(vocab_path, " + ", merges_path)));
  KV_ASSIGN_OR_RETURN(spec.pre_tokenizer,
                      tokenizer_internal::NewByteLevelPreTokenizer(/*add_prefix_space=*/false,
                                                                   /*use_regex=*/true));
  spec.decoder = tokenizer_internal::NewByteLevelDecoder();
  if (auto eot = spec.model->TokenToId("<|endoftext|>")) {
    AddedToken t;
    t.content = "<|endoftext|>";
    t.id = *eot;
    t.special = true;
    t.normalized = false;
    spec.added_tokens.push_back(t);
    spec.bos_id = *eot;
    spec.eos_id = *eot;
  }
  return tokenizer_internal::NewPipelineTokenizer(std::move(spec));
}

}  // namespace kvsweep::engine

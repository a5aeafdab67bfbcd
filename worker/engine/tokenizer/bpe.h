// The BPE core shared by the Hugging Face tokenizer.json and GPT-2 vocab/merges tokenizers: a
// vocabulary, ranked merges, and the merge loop of HF `tokenizers` (models/bpe): the adjacent
// pair with the lowest merge rank is merged first, the leftmost among equal ranks. It runs as a
// priority queue over a linked list of symbols, O(n log n) in the word length, because
// SentencePiece-style tokenizer.json files do no pre-splitting: a whole 1.3 MB file is one
// "word". Internal to worker/engine/tokenizer.
#ifndef KVSWEEP_WORKER_ENGINE_TOKENIZER_BPE_H_
#define KVSWEEP_WORKER_ENGINE_TOKENIZER_BPE_H_

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kvsweep::engine::tokenizer_internal {

struct BpeOptions {
  std::optional<std::string> unk_token;   // HF `unk_token`; none: unknown characters vanish.
  bool fuse_unk = false;                  // consecutive unknowns become one unk.
  bool byte_fallback = false;             // unknown character -> <0xXX> tokens of its bytes.
  bool ignore_merges = false;             // a word that is in the vocabulary is emitted as is.
  std::string continuing_subword_prefix;  // HF `continuing_subword_prefix` ("" = none).
  std::string end_of_word_suffix;         // HF `end_of_word_suffix` ("" = none).
};

class BpeModel {
 public:
  // `merges` are in rank order (rank = index). kInvalidArgument if a merge names a token (or
  // produces a merged token) that is not in `vocab`, if `unk_token` is not in it, or if the
  // vocabulary has a negative id. A pair listed twice keeps its last rank (as HF does).
  // `what` names the source in messages.
  static absl::StatusOr<std::unique_ptr<BpeModel>> Create(
      std::vector<std::pair<std::string, int32_t>> vocab,
      const std::vector<std::pair<std::string, std::string>>& merges, BpeOptions options,
      absl::string_view what);
  BpeModel(const BpeModel&) = delete;
  BpeModel& operator=(const BpeModel&) = delete;

  // Appends the ids of `word` (valid UTF-8) to *ids. Empty word: nothing.
  void Tokenize(absl::string_view word, std::vector<int32_t>* ids) const;

  std::optional<int32_t> TokenToId(absl::string_view token) const;
  // nullptr if no token has this id.
  const std::string* IdToToken(int32_t id) const;
  // Largest id in the vocabulary (-1 if empty).
  int32_t max_id() const { return max_id_; }

 private:
  struct MergeInfo {
    uint32_t rank;
    int32_t new_id;
  };
  BpeModel() = default;
  static uint64_t PairKey(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  absl::flat_hash_map<std::string, int32_t> vocab_;
  std::vector<std::string> tokens_by_id_;
  absl::flat_hash_map<uint64_t, MergeInfo> merges_;
  BpeOptions options_;
  std::optional<int32_t> unk_id_;
  std::array<int32_t, 256> byte_ids_{};  // id of <0xXX>, -1 if absent
  int32_t max_id_ = -1;
};

// GPT-2's reversible byte -> printable character map: ByteToUnicode()[b] is the UTF-8 of the
// character that stands for byte b in byte-level vocabularies.
const std::array<std::string, 256>& ByteToUnicode();
// Inverse: code point -> byte, -1 if the code point stands for no byte.
int ByteFromUnicode(uint32_t code_point);

}  // namespace kvsweep::engine::tokenizer_internal

#endif  // KVSWEEP_WORKER_ENGINE_TOKENIZER_BPE_H_

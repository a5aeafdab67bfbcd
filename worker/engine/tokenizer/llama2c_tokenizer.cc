// karpathy's llama2.c tokenizer (tok*.bin), encoding and decoding as run.c does.
//
// File: int32 max_token_length, then per token (vocab_size of them, until EOF): float32 score,
// int32 byte length, the bytes. Ids 0..2 are <unk>, <s>, </s>; ids 3..258 the byte tokens
// <0x00>..<0xFF> (run.c's byte fallback is `byte + 3`).
#include <cmath>
#include <cstring>
#include <queue>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "worker/engine/tokenizer/text_util.h"
#include "worker/engine/tokenizer/tokenizer.h"

namespace kvsweep::engine {
namespace {

constexpr int32_t kBos = 1;
constexpr int32_t kEos = 2;
constexpr int32_t kFirstByteToken = 3;

class Llama2cTokenizer final : public Tokenizer {
 public:
  Llama2cTokenizer(std::string path, std::vector<std::string> vocab, std::vector<float> scores)
      : path_(std::move(path)), vocab_(std::move(vocab)), scores_(std::move(scores)) {
    lookup_.reserve(vocab_.size());
    for (size_t i = 0; i < vocab_.size(); ++i) {
      lookup_.emplace(vocab_[i], static_cast<int32_t>(i));  // first id wins on duplicates
    }
    auto it = lookup_.find(" ");
    dummy_prefix_ = it == lookup_.end() ? -1 : it->second;
  }

  // run.c encode(text, bos=0, eos=0), with the O(n^2)-per-merge scan replaced by a priority
  // queue that picks the same pair: highest merged-token score, leftmost among equal scores.
  absl::StatusOr<std::vector<int32_t>> Encode(absl::string_view text) const override {
    std::vector<int32_t> tokens;
    tokens.reserve(text.size() + 1);
    // run.c prepends the " " token (SentencePiece's dummy prefix) to non-empty text. (A vocab
    // without " " would make run.c emit id -1; we emit nothing.)
    if (!text.empty() && dummy_prefix_ >= 0) tokens.push_back(dummy_prefix_);
    // One token per UTF-8 character (at most 4 bytes, as run.c), else one per byte.
    std::string buf;
    for (size_t i = 0; i < text.size(); ++i) {
      const auto c = static_cast<unsigned char>(text[i]);
      if ((c & 0xC0) != 0x80) buf.clear();
      buf.push_back(static_cast<char>(c));
      const bool next_cont =
          i + 1 < text.size() && (static_cast<unsigned char>(text[i + 1]) & 0xC0) == 0x80;
      if (next_cont && buf.size() < 4) continue;
      auto it = lookup_.find(buf);
      if (it != lookup_.end()) {
        tokens.push_back(it->second);
      } else {
        for (unsigned char b : buf) tokens.push_back(kFirstByteToken + b);
      }
      buf.clear();
    }
    return Merge(std::move(tokens));
  }

  // run.c decode(): the leading space of a piece that follows BOS is dropped (the start of the
  // sequence counts as following BOS, like SentencePiece's decoder); <0xXX> is the raw byte.
  // BOS and EOS themselves decode to nothing (tok*.bin spells BOS "\n<s>\n").
  std::string Decode(absl::Span<const int32_t> ids) const override {
    std::string out;
    int32_t prev = kBos;
    for (int32_t id : ids) {
      if (id < 0 || id >= static_cast<int32_t>(vocab_.size())) continue;
      if (id == kBos || id == kEos) {  // control tokens: no text (as SentencePiece decodes them)
        prev = id;
        continue;
      }
      absl::string_view piece = vocab_[id];
      if (prev == kBos && !piece.empty() && piece[0] == ' ') piece.remove_prefix(1);
      unsigned int byte = 0;
      if (piece.size() >= 5 && piece.substr(0, 3) == "<0x" &&
          std::sscanf(std::string(piece).c_str(), "<0x%02X>", &byte) == 1) {
        out.push_back(static_cast<char>(byte));
      } else {
        out.append(piece.data(), piece.size());
      }
      prev = id;
    }
    return tokenizer_internal::ToValidUtf8(out);
  }

  int32_t vocab_size() const override { return static_cast<int32_t>(vocab_.size()); }
  std::optional<int32_t> bos_id() const override { return kBos; }
  std::optional<int32_t> eos_id() const override { return kEos; }
  std::string kind() const override { return "llama2c"; }
  std::vector<std::string> files() const override { return {path_}; }

 private:
  struct Candidate {
    float score;
    int32_t pos;
    int32_t merged;
  };
  struct Lower {  // "a has lower priority than b": lower score, or same score further right
    bool operator()(const Candidate& a, const Candidate& b) const {
      return a.score != b.score ? a.score < b.score : a.pos > b.pos;
    }
  };

  int32_t PairId(int32_t a, int32_t b, std::string* scratch) const {
    scratch->assign(vocab_[a]);
    scratch->append(vocab_[b]);
    auto it = lookup_.find(*scratch);
    if (it == lookup_.end()) return -1;
    // run.c starts from best_score = -1e10 with a strict '>': lower (or NaN) never merges.
    if (!(scores_[it->second] > -1e10f)) return -1;
    return it->second;
  }

  std::vector<int32_t> Merge(std::vector<int32_t> tokens) const {
    const auto n = static_cast<int32_t>(tokens.size());
    std::vector<int32_t> prev(n), next(n);
    std::vector<bool> alive(n, true);
    for (int32_t i = 0; i < n; ++i) {
      prev[i] = i - 1;
      next[i] = i + 1 < n ? i + 1 : -1;
    }
    std::priority_queue<Candidate, std::vector<Candidate>, Lower> queue;
    std::string scratch;
    auto push = [&](int32_t pos) {
      if (pos < 0 || next[pos] < 0) return;
      const int32_t m = PairId(tokens[pos], tokens[next[pos]], &scratch);
      if (m >= 0) queue.push(Candidate{scores_[m], pos, m});
    };
    for (int32_t i = 0; i + 1 < n; ++i) push(i);
    while (!queue.empty()) {
      const Candidate top = queue.top();
      queue.pop();
      if (!alive[top.pos] || next[top.pos] < 0) continue;
      if (PairId(tokens[top.pos], tokens[next[top.pos]], &scratch) != top.merged) continue;
      const int32_t right = next[top.pos];
      tokens[top.pos] = top.merged;
      alive[right] = false;
      next[top.pos] = next[right];
      if (next[right] >= 0) prev[next[right]] = top.pos;
      push(prev[top.pos]);
      push(top.pos);
    }
    std::vector<int32_t> out;
    out.reserve(tokens.size());
    for (int32_t i = 0; i < n; ++i) {
      if (alive[i]) out.push_back(tokens[i]);
    }
    return out;
  }

  std::string path_;
  std::vector<std::string> vocab_;
  std::vector<float> scores_;
  absl::flat_hash_map<std::string, int32_t> lookup_;
  int32_t dummy_prefix_ = -1;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> NewLlama2cTokenizer(const std::string& bin_path,
                                                               int32_t expected_vocab_size) {
  KV_ASSIGN_OR_RETURN(std::string data, ReadFile(bin_path));
  auto invalid = [&bin_path](absl::string_view msg) {
    return absl::InvalidArgumentError(absl::StrCat(bin_path, ": ", msg));
  };
  if (data.empty()) return invalid("empty file");
  const std::vector<uint8_t> bytes(data.begin(), data.end());
  auto read_i32 = [&bytes](size_t off) {
    int32_t v = 0;
    std::memcpy(&v, bytes.data() + off, sizeof(v));
    return v;
  };
  if (data.size() < 4) return invalid("truncated llama2.c tokenizer: no max_token_length header");
  const int32_t max_len = read_i32(0);
  if (max_len <= 0) return invalid(absl::StrCat("bad max_token_length ", max_len));
  std::vector<std::string> vocab;
  std::vector<float> scores;
  size_t off = 4;
  while (off < data.size()) {
    if (data.size() - off < 8) {
      return invalid(absl::StrCat("truncated llama2.c tokenizer: token ", vocab.size(),
                                  " header cut at byte ", off));
    }
    float score = 0;
    std::memcpy(&score, bytes.data() + off, sizeof(score));
    const int32_t len = read_i32(off + 4);
    off += 8;
    if (len < 0 || len > max_len) {
      return invalid(absl::StrCat("token ", vocab.size(), " has length ", len,
                                  " (max_token_length ", max_len, ")"));
    }
    if (data.size() - off < static_cast<size_t>(len)) {
      return invalid(absl::StrCat("truncated llama2.c tokenizer: token ", vocab.size(), " needs ",
                                  len, " bytes, ", data.size() - off, " left"));
    }
    vocab.emplace_back(data.data() + off, static_cast<size_t>(len));
    scores.push_back(score);
    off += static_cast<size_t>(len);
  }
  if (expected_vocab_size > 0 && static_cast<int32_t>(vocab.size()) != expected_vocab_size) {
    return invalid(
        absl::StrCat("has ", vocab.size(), " tokens, the model expects ", expected_vocab_size));
  }
  if (vocab.size() < kFirstByteToken + 256) {
    return invalid(absl::StrCat("has ", vocab.size(),
                                " tokens; a llama2.c tokenizer has at least 259 (3 specials + 256 "
                                "byte tokens)"));
  }
  for (int b = 0; b < 256; ++b) {
    const std::string want = absl::StrFormat("<0x%02X>", b);
    if (vocab[kFirstByteToken + b] != want) {
      return invalid(absl::StrCat("token ", kFirstByteToken + b, " is \"",
                                  vocab[kFirstByteToken + b], "\", expected byte token ", want));
    }
  }
  return std::unique_ptr<Tokenizer>(
      new Llama2cTokenizer(bin_path, std::move(vocab), std::move(scores)));
}

}  // namespace kvsweep::engine

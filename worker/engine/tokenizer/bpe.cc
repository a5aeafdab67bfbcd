#include "worker/engine/tokenizer/bpe.h"

#include <queue>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "worker/engine/tokenizer/text_util.h"

namespace kvsweep::engine::tokenizer_internal {

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::Create(
    std::vector<std::pair<std::string, int32_t>> vocab,
    const std::vector<std::pair<std::string, std::string>>& merges, BpeOptions options,
    absl::string_view what) {
  std::unique_ptr<BpeModel> m(new BpeModel());
  m->vocab_.reserve(vocab.size());
  for (auto& [token, id] : vocab) {
    if (id < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": token \"", token, "\" has negative id ", id));
    }
    if (id > m->max_id_) m->max_id_ = id;
    m->vocab_[token] = id;
  }
  m->tokens_by_id_.resize(static_cast<size_t>(m->max_id_ + 1));
  for (const auto& [token, id] : m->vocab_) m->tokens_by_id_[id] = token;

  const std::string& prefix = options.continuing_subword_prefix;
  m->merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [a, b] = merges[rank];
    auto ia = m->vocab_.find(a);
    auto ib = m->vocab_.find(b);
    const std::string* missing = ia == m->vocab_.end() ? &a : ib == m->vocab_.end() ? &b : nullptr;
    std::string merged;
    if (missing == nullptr) {
      // HF: the right part loses its continuing-subword prefix when merged.
      absl::string_view right = b;
      if (!prefix.empty() && absl::string_view(b).substr(0, prefix.size()) == prefix) {
        right.remove_prefix(prefix.size());
      }
      merged = absl::StrCat(a, right);
      if (!m->vocab_.contains(merged)) missing = &merged;
    }
    if (missing != nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": merge #", rank + 1, " (\"", a, " ", b,
                                                     "\") refers to token \"", *missing,
                                                     "\" that is not in the vocabulary"));
    }
    m->merges_[PairKey(ia->second, ib->second)] =
        MergeInfo{static_cast<uint32_t>(rank), m->vocab_.at(merged)};
  }

  if (options.unk_token.has_value()) {
    auto it = m->vocab_.find(*options.unk_token);
    if (it == m->vocab_.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": unk_token \"", *options.unk_token, "\" is not in the vocabulary"));
    }
    m->unk_id_ = it->second;
  }
  for (int b = 0; b < 256; ++b) {
    auto it = m->vocab_.find(absl::StrFormat("<0x%02X>", b));
    m->byte_ids_[b] = it == m->vocab_.end() ? -1 : it->second;
  }
  m->options_ = std::move(options);
  return m;
}

std::optional<int32_t> BpeModel::TokenToId(absl::string_view token) const {
  auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::IdToToken(int32_t id) const {
  if (id < 0 || id > max_id_) return nullptr;
  const std::string& t = tokens_by_id_[id];
  // An id that is a hole in the vocabulary has an empty string; real tokens are never empty
  // unless the vocabulary says so.
  if (t.empty() && !vocab_.contains(t)) return nullptr;
  return &t;
}

void BpeModel::Tokenize(absl::string_view w, std::vector<int32_t>* ids) const {
  if (w.empty()) return;
  if (options_.ignore_merges) {
    auto it = vocab_.find(w);
    if (it != vocab_.end()) {
      ids->push_back(it->second);
      return;
    }
  }

  // Symbols of the word as a doubly linked list over a vector; len == 0 marks a symbol merged
  // into its left neighbour.
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
    uint32_t len;
  };
  std::vector<Symbol> syms;
  syms.reserve(w.size());
  auto add = [&syms](int32_t id, size_t len) {
    const auto idx = static_cast<int32_t>(syms.size());
    if (idx > 0) syms.back().next = idx;
    syms.push_back(Symbol{id, idx - 1, -1, static_cast<uint32_t>(len)});
  };

  // 1. One symbol per character (HF merge_word), with unknown-character handling.
  const std::string& prefix = options_.continuing_subword_prefix;
  const std::string& suffix = options_.end_of_word_suffix;
  bool unk = false;  // a pending unk of unk_len bytes
  size_t unk_len = 0;
  std::string buf;
  for (size_t i = 0; i < w.size();) {
    size_t n = Utf8SeqLen(static_cast<unsigned char>(w[i]));
    if (i + n > w.size()) n = w.size() - i;
    const bool is_first = i == 0, is_last = i + n == w.size();
    absl::string_view s = w.substr(i, n);
    if ((!is_first && !prefix.empty()) || (is_last && !suffix.empty())) {
      buf.clear();
      if (!is_first) buf += prefix;
      buf.append(s.data(), s.size());
      if (is_last) buf += suffix;
      s = buf;
    }
    i += n;
    auto it = vocab_.find(s);
    if (it != vocab_.end()) {
      if (unk) {
        add(*unk_id_, unk_len);
        unk = false;
      }
      add(it->second, n);
      continue;
    }
    if (options_.byte_fallback) {
      bool all = true;
      for (unsigned char c : s) all = all && byte_ids_[c] >= 0;
      if (all) {
        // As HF: a pending unk is not flushed first (it only exists if some <0xXX> is missing).
        for (unsigned char c : s) add(byte_ids_[c], 1);
        continue;
      }
    }
    if (unk_id_.has_value()) {
      if (unk && options_.fuse_unk) {
        unk_len += n;
      } else {
        if (unk) add(*unk_id_, unk_len);
        unk = true;
        unk_len = n;
      }
    }
    // No unk token: the character is dropped, as HF does.
  }
  if (unk) add(*unk_id_, unk_len);

  // 2. Merge: lowest rank first, leftmost first among equal ranks.
  struct Candidate {
    uint32_t rank;
    int32_t pos;
    int32_t new_id;
  };
  struct Lower {  // "a has lower priority than b"
    bool operator()(const Candidate& a, const Candidate& b) const {
      return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
    }
  };
  std::vector<Candidate> storage;
  storage.reserve(syms.size());
  std::priority_queue<Candidate, std::vector<Candidate>, Lower> queue(Lower(), std::move(storage));
  auto lookup = [this](int32_t a, int32_t b) -> const MergeInfo* {
    auto it = merges_.find(PairKey(a, b));
    return it == merges_.end() ? nullptr : &it->second;
  };
  for (size_t i = 0; i + 1 < syms.size(); ++i) {
    if (const MergeInfo* mi = lookup(syms[i].id, syms[i + 1].id)) {
      queue.push(Candidate{mi->rank, static_cast<int32_t>(i), mi->new_id});
    }
  }
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& cur = syms[top.pos];
    if (cur.len == 0 || cur.next == -1) continue;
    const int32_t right_pos = cur.next;
    const Symbol right = syms[right_pos];
    // Stale entry? HF compares only the produced id (not the rank); so do we.
    const MergeInfo* now = lookup(cur.id, right.id);
    if (now == nullptr || now->new_id != top.new_id) continue;

    cur.id = top.new_id;
    cur.len += right.len;
    cur.next = right.next;
    syms[right_pos].len = 0;
    if (right.next >= 0) syms[right.next].prev = top.pos;

    if (cur.prev >= 0) {
      if (const MergeInfo* mi = lookup(syms[cur.prev].id, cur.id)) {
        queue.push(Candidate{mi->rank, cur.prev, mi->new_id});
      }
    }
    if (cur.next >= 0) {
      if (const MergeInfo* mi = lookup(cur.id, syms[cur.next].id)) {
        queue.push(Candidate{mi->rank, top.pos, mi->new_id});
      }
    }
  }
  for (const Symbol& s : syms) {
    if (s.len != 0) ids->push_back(s.id);
  }
}

const std::array<std::string, 256>& ByteToUnicode() {
  static const std::array<std::string, 256>* table = [] {
    auto* t = new std::array<std::string, 256>();
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      const uint32_t cp = printable ? static_cast<uint32_t>(b) : static_cast<uint32_t>(256 + n++);
      AppendUtf8(cp, &(*t)[b]);
    }
    return t;
  }();
  return *table;
}

int ByteFromUnicode(uint32_t cp) {
  static const absl::flat_hash_map<uint32_t, int>* inverse = [] {
    auto* m = new absl::flat_hash_map<uint32_t, int>();
    const auto& fwd = ByteToUnicode();
    for (int b = 0; b < 256; ++b) {
      size_t i = 0;
      (*m)[NextCodePoint(fwd[b], &i)] = b;
    }
    return m;
  }();
  auto it = inverse->find(cp);
  return it == inverse->end() ? -1 : it->second;
}

}  // namespace kvsweep::engine::tokenizer_internal

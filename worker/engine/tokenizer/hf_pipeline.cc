#include "worker/engine/tokenizer/hf_pipeline.h"

#include <algorithm>
#include <array>
#include <tuple>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "common/status_macros.h"
#include "worker/engine/tokenizer/text_util.h"

#ifdef KVSWEEP_TOKENIZER_HAVE_ICU
#include <unicode/locid.h>
#include <unicode/normalizer2.h>
#include <unicode/unistr.h>
#endif

namespace kvsweep::engine::tokenizer_internal {

bool IsWhiteSpace(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

namespace {

// Rust regex's \w (Unicode word character), which HF uses for single_word added tokens.
constexpr absl::string_view kWordClass = R"([\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}])";

// ---------------------------------------------------------------------------------------------
// Splitting with a pattern (HF NormalizedString::split + Pattern::find_matches).

struct Span {
  size_t begin;
  size_t end;
  bool is_match;
};

// Covers [0, text.size()) with alternating match / non-match spans (HF find_matches).
absl::StatusOr<std::vector<Span>> FindSpans(const Regex* re, absl::string_view literal,
                                            absl::string_view text, bool invert) {
  std::vector<Span> spans;
  if (text.empty()) {
    spans.push_back(Span{0, 0, invert});
    return spans;
  }
  std::vector<std::pair<size_t, size_t>> matches;
  if (re != nullptr) {
    KV_ASSIGN_OR_RETURN(matches, re->FindAll(text));
  } else if (!literal.empty()) {
    for (size_t p = text.find(literal); p != absl::string_view::npos;
         p = text.find(literal, p + literal.size())) {
      matches.emplace_back(p, p + literal.size());
    }
  }
  size_t prev = 0;
  for (const auto& [b, e] : matches) {
    if (prev != b) spans.push_back(Span{prev, b, invert});
    spans.push_back(Span{b, e, !invert});
    prev = e;
  }
  if (prev != text.size()) spans.push_back(Span{prev, text.size(), invert});
  return spans;
}

// Applies a SplitDelimiterBehavior: returns the kept [begin, end) ranges, in order.
std::vector<std::pair<size_t, size_t>> ApplyBehavior(const std::vector<Span>& spans,
                                                     SplitBehavior behavior) {
  std::vector<std::pair<size_t, size_t>> out;
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (const Span& s : spans) out.emplace_back(s.begin, s.end);
      break;
    case SplitBehavior::kRemoved:
      for (const Span& s : spans) {
        if (!s.is_match) out.emplace_back(s.begin, s.end);
      }
      break;
    case SplitBehavior::kContiguous: {
      bool previous_match = false;
      for (const Span& s : spans) {
        if (s.is_match == previous_match && !out.empty()) {
          out.back().second = s.end;
        } else {
          out.emplace_back(s.begin, s.end);
        }
        previous_match = s.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const Span& s : spans) {
        if (s.is_match && !previous_match && !out.empty()) {
          out.back().second = s.end;
        } else {
          out.emplace_back(s.begin, s.end);
        }
        previous_match = s.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool previous_match = false;
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->is_match && !previous_match && !out.empty()) {
          out.back().first = it->begin;
        } else {
          out.emplace_back(it->begin, it->end);
        }
        previous_match = it->is_match;
      }
      std::reverse(out.begin(), out.end());
      break;
    }
  }
  return out;
}

absl::Status SplitPieces(const Regex* re, absl::string_view literal, SplitBehavior behavior,
                         bool invert, std::vector<Piece>* pieces) {
  std::vector<Piece> out;
  out.reserve(pieces->size());
  for (Piece& p : *pieces) {
    KV_ASSIGN_OR_RETURN(std::vector<Span> spans, FindSpans(re, literal, p.text, invert));
    for (const auto& [b, e] : ApplyBehavior(spans, behavior)) {
      if (e > b) out.push_back(Piece{p.text.substr(b, e - b), p.at_start && b == 0});
    }
  }
  *pieces = std::move(out);
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// Normalizers.

class SequenceNormalizer final : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps)
      : steps_(std::move(steps)) {}
  absl::Status Normalize(std::string* text) const override {
    for (const auto& s : steps_) KV_RETURN_IF_ERROR(s->Normalize(text));
    return absl::OkStatus();
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

class PrependNormalizer final : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prepend) : prepend_(std::move(prepend)) {}
  absl::Status Normalize(std::string* text) const override {
    if (!text->empty()) text->insert(0, prepend_);
    return absl::OkStatus();
  }

 private:
  std::string prepend_;
};

class ReplaceNormalizer final : public Normalizer {
 public:
  ReplaceNormalizer(std::string literal, std::unique_ptr<Regex> re, std::string content)
      : literal_(std::move(literal)), re_(std::move(re)), content_(std::move(content)) {}
  absl::Status Normalize(std::string* text) const override {
    if (re_ == nullptr) {
      if (!literal_.empty()) *text = absl::StrReplaceAll(*text, {{literal_, content_}});
      return absl::OkStatus();
    }
    KV_ASSIGN_OR_RETURN(auto matches, re_->FindAll(*text));
    if (matches.empty()) return absl::OkStatus();
    std::string out;
    size_t prev = 0;
    for (const auto& [b, e] : matches) {
      out.append(*text, prev, b - prev);
      out += content_;
      prev = e;
    }
    out.append(*text, prev, std::string::npos);
    *text = std::move(out);
    return absl::OkStatus();
  }

 private:
  std::string literal_;
  std::unique_ptr<Regex> re_;
  std::string content_;
};

#ifdef KVSWEEP_TOKENIZER_HAVE_ICU
class IcuNormalizer final : public Normalizer {
 public:
  // `form` nullptr = lowercase.
  explicit IcuNormalizer(const icu::Normalizer2* form) : form_(form) {}
  absl::Status Normalize(std::string* text) const override {
    icu::UnicodeString u =
        icu::UnicodeString::fromUTF8(icu::StringPiece(text->data(), text->size()));
    icu::UnicodeString r;
    if (form_ != nullptr) {
      UErrorCode st = U_ZERO_ERROR;
      r = form_->normalize(u, st);
      if (U_FAILURE(st)) {
        return absl::InternalError(absl::StrCat("ICU normalization failed: ", u_errorName(st)));
      }
    } else {
      r = u.toLower(icu::Locale::getRoot());
    }
    text->clear();
    r.toUTF8String(*text);
    return absl::OkStatus();
  }

 private:
  const icu::Normalizer2* form_;
};
#endif

class StripNormalizer final : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  absl::Status Normalize(std::string* text) const override {
    size_t b = 0, e = text->size();
    if (left_) {
      while (b < e) {
        size_t i = b;
        if (!IsWhiteSpace(NextCodePoint(*text, &i))) break;
        b = i;
      }
    }
    if (right_) {
      while (e > b) {
        size_t s = e - 1;
        while (s > b && (static_cast<unsigned char>((*text)[s]) & 0xC0) == 0x80) --s;
        size_t i = s;
        if (!IsWhiteSpace(NextCodePoint(*text, &i))) break;
        e = s;
      }
    }
    *text = text->substr(b, e - b);
    return absl::OkStatus();
  }

 private:
  bool left_, right_;
};

// ---------------------------------------------------------------------------------------------
// Pre-tokenizers.

class SequencePreTokenizer final : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps)
      : steps_(std::move(steps)) {}
  absl::Status PreTokenize(std::vector<Piece>* pieces) const override {
    for (const auto& s : steps_) KV_RETURN_IF_ERROR(s->PreTokenize(pieces));
    return absl::OkStatus();
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

class ByteLevelPreTokenizer final : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, std::unique_ptr<Regex> re)
      : add_prefix_space_(add_prefix_space), re_(std::move(re)) {}
  absl::Status PreTokenize(std::vector<Piece>* pieces) const override {
    if (add_prefix_space_) {
      for (Piece& p : *pieces) {
        if (p.text.empty() || p.text[0] != ' ') p.text.insert(0, " ");
      }
    }
    if (re_ != nullptr) {
      KV_RETURN_IF_ERROR(SplitPieces(re_.get(), "", SplitBehavior::kIsolated, false, pieces));
    }
    const auto& table = ByteToUnicode();
    for (Piece& p : *pieces) {
      std::string mapped;
      mapped.reserve(p.text.size() * 2);
      for (unsigned char c : p.text) mapped += table[c];
      p.text = std::move(mapped);
    }
    return absl::OkStatus();
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> re_;  // null: use_regex = false
};

class MetaspacePreTokenizer final : public PreTokenizer {
 public:
  MetaspacePreTokenizer(std::string replacement, PrependScheme scheme, bool split)
      : replacement_(std::move(replacement)), scheme_(scheme), split_(split) {}
  absl::Status PreTokenize(std::vector<Piece>* pieces) const override {
    for (Piece& p : *pieces) {
      p.text = absl::StrReplaceAll(p.text, {{" ", replacement_}});
      const bool starts = absl::string_view(p.text).substr(0, replacement_.size()) == replacement_;
      if (!starts &&
          (scheme_ == PrependScheme::kAlways || (scheme_ == PrependScheme::kFirst && p.at_start))) {
        p.text.insert(0, replacement_);
      }
    }
    if (split_) {
      KV_RETURN_IF_ERROR(
          SplitPieces(nullptr, replacement_, SplitBehavior::kMergedWithNext, false, pieces));
    }
    pieces->erase(std::remove_if(pieces->begin(), pieces->end(),
                                 [](const Piece& p) { return p.text.empty(); }),
                  pieces->end());
    return absl::OkStatus();
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
  bool split_;
};

class SplitPreTokenizer final : public PreTokenizer {
 public:
  SplitPreTokenizer(std::string literal, std::unique_ptr<Regex> re, SplitBehavior behavior,
                    bool invert)
      : literal_(std::move(literal)), re_(std::move(re)), behavior_(behavior), invert_(invert) {}
  absl::Status PreTokenize(std::vector<Piece>* pieces) const override {
    return SplitPieces(re_.get(), literal_, behavior_, invert_, pieces);
  }

 private:
  std::string literal_;
  std::unique_ptr<Regex> re_;
  SplitBehavior behavior_;
  bool invert_;
};

// ---------------------------------------------------------------------------------------------
// Decoders.

class SequenceDecoder final : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> steps)
      : steps_(std::move(steps)) {}
  void DecodeChain(std::vector<std::string>* tokens) const override {
    for (const auto& s : steps_) s->DecodeChain(tokens);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> steps_;
};

class ByteLevelDecoder final : public Decoder {
 public:
  void DecodeChain(std::vector<std::string>* tokens) const override {
    std::string bytes;
    for (const std::string& t : *tokens) {
      std::string mapped;
      bool ok = true;
      for (size_t i = 0; i < t.size() && ok;) {
        const int b = ByteFromUnicode(NextCodePoint(t, &i));
        if (b < 0) ok = false;
        mapped.push_back(static_cast<char>(b));
      }
      bytes += ok ? mapped : t;
    }
    tokens->assign(1, ToValidUtf8(bytes));
  }
};

class MetaspaceDecoder final : public Decoder {
 public:
  MetaspaceDecoder(std::string replacement, bool strip_first)
      : replacement_(std::move(replacement)), strip_first_(strip_first) {}
  void DecodeChain(std::vector<std::string>* tokens) const override {
    for (size_t i = 0; i < tokens->size(); ++i) {
      (*tokens)[i] =
          absl::StrReplaceAll((*tokens)[i], {{replacement_, (i == 0 && strip_first_) ? "" : " "}});
    }
  }

 private:
  std::string replacement_;
  bool strip_first_;
};

class ReplaceDecoder final : public Decoder {
 public:
  ReplaceDecoder(std::string pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void DecodeChain(std::vector<std::string>* tokens) const override {
    if (pattern_.empty()) return;
    for (std::string& t : *tokens) t = absl::StrReplaceAll(t, {{pattern_, content_}});
  }

 private:
  std::string pattern_, content_;
};

class ByteFallbackDecoder final : public Decoder {
 public:
  void DecodeChain(std::vector<std::string>* tokens) const override {
    std::vector<std::string> out;
    std::string pending;
    auto flush = [&] {
      if (pending.empty()) return;
      if (IsValidUtf8(pending)) {
        out.push_back(pending);
      } else {
        for (size_t i = 0; i < pending.size(); ++i) out.emplace_back("\xEF\xBF\xBD");
      }
      pending.clear();
    };
    for (std::string& t : *tokens) {
      int byte = -1;
      if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>') {
        byte = HexByte(t[3], t[4]);
      }
      if (byte >= 0) {
        pending.push_back(static_cast<char>(byte));
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    *tokens = std::move(out);
  }

 private:
  static int Hex(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }
  static int HexByte(char a, char b) {
    const int h = Hex(a), l = Hex(b);
    return (h < 0 || l < 0) ? -1 : h * 16 + l;
  }
};

class FuseDecoder final : public Decoder {
 public:
  void DecodeChain(std::vector<std::string>* tokens) const override {
    std::string all;
    for (const std::string& t : *tokens) all += t;
    tokens->assign(1, std::move(all));
  }
};

class StripDecoder final : public Decoder {
 public:
  StripDecoder(std::string content, int start, int stop)
      : content_(std::move(content)), start_(start), stop_(stop) {}
  void DecodeChain(std::vector<std::string>* tokens) const override {
    for (std::string& t : *tokens) {
      absl::string_view v = t;
      for (int i = 0; i < start_ && absl::StartsWith(v, content_) && !content_.empty(); ++i) {
        v.remove_prefix(content_.size());
      }
      for (int i = 0; i < stop_ && absl::EndsWith(v, content_) && !content_.empty(); ++i) {
        v.remove_suffix(content_.size());
      }
      t = std::string(v);
    }
  }

 private:
  std::string content_;
  int start_, stop_;
};

// ---------------------------------------------------------------------------------------------
// Added tokens: leftmost-longest multi-pattern search (HF uses Aho-Corasick LeftmostLongest),
// then HF's single_word / lstrip / rstrip rules.

class AddedMatcher {
 public:
  struct Segment {
    size_t begin, end;
    const AddedToken* token;  // null: plain text
  };

  void Add(std::string pattern, const AddedToken* token) {
    if (pattern.empty()) return;
    entries_.push_back(Entry{std::move(pattern), token});
  }
  void Finish(const Regex* word_char) {
    word_char_ = word_char;
    for (size_t i = 0; i < entries_.size(); ++i) {
      by_first_byte_[static_cast<unsigned char>(entries_[i].pattern[0])].push_back(i);
    }
    for (auto& v : by_first_byte_) {
      // Longest first; among equal lengths the earlier-added pattern wins.
      std::stable_sort(v.begin(), v.end(), [this](size_t a, size_t b) {
        return entries_[a].pattern.size() > entries_[b].pattern.size();
      });
    }
  }
  bool empty() const { return entries_.empty(); }

  // Covers [0, text.size()) with segments (HF AddedVocabulary::find_matches).
  void Split(absl::string_view text, std::vector<Segment>* out) const {
    out->clear();
    size_t start_offset = 0;
    size_t pos = 0;
    size_t b = 0, e = 0;
    const AddedToken* tok = nullptr;
    while (Find(text, pos, &b, &e, &tok)) {
      pos = e;  // the search resumes after the raw match
      if (tok->single_word) {
        const bool start_space = b == 0 || !EndsWithWord(text.substr(0, b));
        const bool stop_space = e == text.size() || !StartsWithWord(text.substr(e));
        if (!start_space || !stop_space) continue;
      }
      if (tok->lstrip) {
        size_t s = b;
        while (s > 0) {
          size_t cs = s - 1;
          while (cs > 0 && (static_cast<unsigned char>(text[cs]) & 0xC0) == 0x80) --cs;
          size_t i = cs;
          if (!IsWhiteSpace(NextCodePoint(text, &i))) break;
          s = cs;
        }
        b = std::max(s, start_offset);
      }
      if (tok->rstrip) {
        while (e < text.size()) {
          size_t i = e;
          if (!IsWhiteSpace(NextCodePoint(text, &i))) break;
          e = i;
        }
      }
      b = std::max(b, start_offset);
      if (start_offset < b) out->push_back(Segment{start_offset, b, nullptr});
      out->push_back(Segment{b, e, tok});
      start_offset = e;
      pos = std::max(pos, e);
    }
    if (start_offset < text.size()) out->push_back(Segment{start_offset, text.size(), nullptr});
  }

 private:
  struct Entry {
    std::string pattern;
    const AddedToken* token;
  };

  bool Find(absl::string_view text, size_t from, size_t* b, size_t* e,
            const AddedToken** tok) const {
    for (size_t i = from; i < text.size(); ++i) {
      for (size_t idx : by_first_byte_[static_cast<unsigned char>(text[i])]) {
        const std::string& p = entries_[idx].pattern;
        if (text.compare(i, p.size(), p) == 0) {
          *b = i;
          *e = i + p.size();
          *tok = entries_[idx].token;
          return true;
        }
      }
    }
    return false;
  }
  bool IsWordChar(absl::string_view ch) const { return word_char_->PartialMatch(ch); }
  bool EndsWithWord(absl::string_view s) const {
    if (s.empty()) return false;
    size_t i = s.size() - 1;
    while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
    return IsWordChar(s.substr(i));
  }
  bool StartsWithWord(absl::string_view s) const {
    if (s.empty()) return false;
    return IsWordChar(s.substr(0, Utf8SeqLen(static_cast<unsigned char>(s[0]))));
  }

  std::vector<Entry> entries_;
  std::array<std::vector<size_t>, 256> by_first_byte_;
  const Regex* word_char_ = nullptr;
};

// ---------------------------------------------------------------------------------------------
// The tokenizer.

class PipelineTokenizer final : public Tokenizer {
 public:
  PipelineTokenizer(PipelineSpec spec, std::unique_ptr<Regex> word_char)
      : spec_(std::move(spec)), word_char_(std::move(word_char)) {}

  absl::Status Init() {
    vocab_size_ = spec_.model->max_id() + 1;
    // HF orders the patterns: special tokens first, then the other added tokens.
    std::vector<const AddedToken*> ordered;
    for (const AddedToken& t : spec_.added_tokens) {
      if (t.special) ordered.push_back(&t);
    }
    for (const AddedToken& t : spec_.added_tokens) {
      if (!t.special) ordered.push_back(&t);
    }
    for (const AddedToken* t : ordered) {
      if (t->content.empty()) {
        return absl::InvalidArgumentError(absl::StrCat("added token ", t->id, " is empty"));
      }
      vocab_size_ = std::max(vocab_size_, t->id + 1);
      if (!t->normalized) {
        raw_.Add(t->content, t);
        added_text_[t->id] = t->content;
      } else {
        // HF matches a normalized token's normalized content, and decodes to it too.
        std::string pattern = t->content;
        if (spec_.normalizer != nullptr) KV_RETURN_IF_ERROR(spec_.normalizer->Normalize(&pattern));
        added_text_[t->id] = pattern;
        normalized_.Add(std::move(pattern), t);
      }
    }
    raw_.Finish(word_char_.get());
    normalized_.Finish(word_char_.get());
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<int32_t>> Encode(absl::string_view text) const override {
    std::string owned;
    if (!IsValidUtf8(text)) {
      owned = ToValidUtf8(text);
      text = owned;
    }
    std::vector<int32_t> ids;
    std::vector<AddedMatcher::Segment> segments, subsegments;
    std::vector<Piece> pieces;
    raw_.Split(text, &segments);
    for (const auto& seg : segments) {
      if (seg.end == seg.begin) continue;
      if (seg.token != nullptr) {
        ids.push_back(seg.token->id);
        continue;
      }
      std::string normalized(text.substr(seg.begin, seg.end - seg.begin));
      if (spec_.normalizer != nullptr) {
        KV_RETURN_IF_ERROR(spec_.normalizer->Normalize(&normalized));
      }
      normalized_.Split(normalized, &subsegments);
      for (const auto& sub : subsegments) {
        if (sub.end == sub.begin) continue;
        if (sub.token != nullptr) {
          ids.push_back(sub.token->id);
          continue;
        }
        pieces.clear();
        pieces.push_back(Piece{normalized.substr(sub.begin, sub.end - sub.begin),
                               seg.begin == 0 && sub.begin == 0});
        if (spec_.pre_tokenizer != nullptr) {
          KV_RETURN_IF_ERROR(spec_.pre_tokenizer->PreTokenize(&pieces));
        }
        for (const Piece& p : pieces) spec_.model->Tokenize(p.text, &ids);
      }
    }
    return ids;
  }

  std::string Decode(absl::Span<const int32_t> ids) const override {
    std::vector<std::string> tokens;
    tokens.reserve(ids.size());
    for (int32_t id : ids) {
      auto it = added_text_.find(id);
      if (it != added_text_.end()) {
        tokens.push_back(it->second);
      } else if (const std::string* t = spec_.model->IdToToken(id)) {
        tokens.push_back(*t);
      }
    }
    if (spec_.decoder == nullptr) return absl::StrJoin(tokens, " ");
    spec_.decoder->DecodeChain(&tokens);
    return absl::StrJoin(tokens, "");
  }

  int32_t vocab_size() const override { return vocab_size_; }
  std::optional<int32_t> bos_id() const override { return spec_.bos_id; }
  std::optional<int32_t> eos_id() const override { return spec_.eos_id; }
  std::string kind() const override { return spec_.kind; }
  std::vector<std::string> files() const override { return spec_.files; }

 private:
  PipelineSpec spec_;
  std::unique_ptr<Regex> word_char_;
  AddedMatcher raw_;         // added tokens with normalized = false
  AddedMatcher normalized_;  // added tokens with normalized = true (patterns normalized)
  absl::flat_hash_map<int32_t, std::string> added_text_;  // id -> text it decodes to
  int32_t vocab_size_ = 0;
};

}  // namespace

std::unique_ptr<Normalizer> NewSequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps) {
  return std::make_unique<SequenceNormalizer>(std::move(steps));
}
std::unique_ptr<Normalizer> NewPrependNormalizer(std::string prepend) {
  return std::make_unique<PrependNormalizer>(std::move(prepend));
}
absl::StatusOr<std::unique_ptr<Normalizer>> NewReplaceNormalizer(absl::string_view pattern,
                                                                 bool is_regex,
                                                                 std::string content) {
  std::unique_ptr<Regex> re;
  if (is_regex) {
    KV_ASSIGN_OR_RETURN(re, Regex::Compile(pattern));
  }
  return std::unique_ptr<Normalizer>(new ReplaceNormalizer(is_regex ? "" : std::string(pattern),
                                                           std::move(re), std::move(content)));
}
absl::StatusOr<std::unique_ptr<Normalizer>> NewUnicodeNormalizer(UnicodeForm form) {
#ifdef KVSWEEP_TOKENIZER_HAVE_ICU
  UErrorCode st = U_ZERO_ERROR;
  const icu::Normalizer2* n = nullptr;
  switch (form) {
    case UnicodeForm::kNfc:
      n = icu::Normalizer2::getNFCInstance(st);
      break;
    case UnicodeForm::kNfd:
      n = icu::Normalizer2::getNFDInstance(st);
      break;
    case UnicodeForm::kNfkc:
      n = icu::Normalizer2::getNFKCInstance(st);
      break;
    case UnicodeForm::kNfkd:
      n = icu::Normalizer2::getNFKDInstance(st);
      break;
  }
  if (U_FAILURE(st) || n == nullptr) {
    return absl::InternalError(absl::StrCat("ICU normalizer unavailable: ", u_errorName(st)));
  }
  return std::unique_ptr<Normalizer>(new IcuNormalizer(n));
#else
  return absl::UnimplementedError(
      "Unicode normalizers (NFC/NFD/NFKC/NFKD) need ICU; this build has none");
#endif
}
absl::StatusOr<std::unique_ptr<Normalizer>> NewLowercaseNormalizer() {
#ifdef KVSWEEP_TOKENIZER_HAVE_ICU
  return std::unique_ptr<Normalizer>(new IcuNormalizer(nullptr));
#else
  return absl::UnimplementedError("normalizer Lowercase needs ICU; this build has none");
#endif
}
std::unique_ptr<Normalizer> NewStripNormalizer(bool left, bool right) {
  return std::make_unique<StripNormalizer>(left, right);
}

std::unique_ptr<PreTokenizer> NewSequencePreTokenizer(
    std::vector<std::unique_ptr<PreTokenizer>> steps) {
  return std::make_unique<SequencePreTokenizer>(std::move(steps));
}
absl::StatusOr<std::unique_ptr<PreTokenizer>> NewByteLevelPreTokenizer(bool add_prefix_space,
                                                                       bool use_regex) {
  std::unique_ptr<Regex> re;
  if (use_regex) {
    KV_ASSIGN_OR_RETURN(re, Regex::Compile(kGpt2Pattern));
  }
  return std::unique_ptr<PreTokenizer>(new ByteLevelPreTokenizer(add_prefix_space, std::move(re)));
}
std::unique_ptr<PreTokenizer> NewMetaspacePreTokenizer(std::string replacement,
                                                       PrependScheme scheme, bool split) {
  return std::make_unique<MetaspacePreTokenizer>(std::move(replacement), scheme, split);
}
absl::StatusOr<std::unique_ptr<PreTokenizer>> NewSplitPreTokenizer(absl::string_view pattern,
                                                                   bool is_regex,
                                                                   SplitBehavior behavior,
                                                                   bool invert) {
  std::unique_ptr<Regex> re;
  if (is_regex) {
    KV_ASSIGN_OR_RETURN(re, Regex::Compile(pattern));
  }
  return std::unique_ptr<PreTokenizer>(
      new SplitPreTokenizer(is_regex ? "" : std::string(pattern), std::move(re), behavior, invert));
}
absl::StatusOr<std::unique_ptr<PreTokenizer>> NewDigitsPreTokenizer(bool individual_digits) {
  // HF splits on char::is_numeric (= \p{N}), one match per character.
  return NewSplitPreTokenizer(
      R"(\p{N})", true, individual_digits ? SplitBehavior::kIsolated : SplitBehavior::kContiguous,
      false);
}
absl::StatusOr<std::unique_ptr<PreTokenizer>> NewWhitespaceSplitPreTokenizer() {
  return NewSplitPreTokenizer(R"(\s+)", true, SplitBehavior::kRemoved, false);
}
absl::StatusOr<std::unique_ptr<PreTokenizer>> NewWhitespacePreTokenizer() {
  // HF: Invert(r"\w+|[^\w\s]+") with Removed; \w is Rust's Unicode word class.
  const std::string w(kWordClass);
  const std::string nw = "[^\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}\\s]";
  return NewSplitPreTokenizer(absl::StrCat(w, "+|", nw, "+"), true, SplitBehavior::kRemoved, true);
}

std::unique_ptr<Decoder> NewSequenceDecoder(std::vector<std::unique_ptr<Decoder>> steps) {
  return std::make_unique<SequenceDecoder>(std::move(steps));
}
std::unique_ptr<Decoder> NewByteLevelDecoder() { return std::make_unique<ByteLevelDecoder>(); }
std::unique_ptr<Decoder> NewMetaspaceDecoder(std::string replacement, bool strip_first) {
  return std::make_unique<MetaspaceDecoder>(std::move(replacement), strip_first);
}
std::unique_ptr<Decoder> NewReplaceDecoder(std::string pattern, std::string content) {
  return std::make_unique<ReplaceDecoder>(std::move(pattern), std::move(content));
}
std::unique_ptr<Decoder> NewByteFallbackDecoder() {
  return std::make_unique<ByteFallbackDecoder>();
}
std::unique_ptr<Decoder> NewFuseDecoder() { return std::make_unique<FuseDecoder>(); }
std::unique_ptr<Decoder> NewStripDecoder(std::string content, int start, int stop) {
  return std::make_unique<StripDecoder>(std::move(content), start, stop);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> NewPipelineTokenizer(PipelineSpec spec) {
  if (spec.model == nullptr) return absl::InvalidArgumentError("tokenizer pipeline has no model");
  KV_ASSIGN_OR_RETURN(std::unique_ptr<Regex> word_char, Regex::Compile(kWordClass));
  auto t = std::make_unique<PipelineTokenizer>(std::move(spec), std::move(word_char));
  KV_RETURN_IF_ERROR(t->Init());
  return std::unique_ptr<Tokenizer>(std::move(t));
}

}  // namespace kvsweep::engine::tokenizer_internal

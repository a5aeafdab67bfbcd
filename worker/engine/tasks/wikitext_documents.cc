// Python semantics on UTF-8 bytes: the patterns are ASCII (and U+00B0), so byte-wise search finds
// exactly the code-point matches; only whitespace tests decode code points. Inputs are valid
// UTF-8 (the task checks before calling).
#include "worker/engine/tasks/wikitext_documents.h"

#include <cctype>

namespace kvsweep::engine {
namespace {

// The code point starting at s[i] and its length in bytes (1 for a stray byte).
uint32_t DecodeAt(absl::string_view s, size_t i, size_t* len) {
  const auto c = static_cast<unsigned char>(s[i]);
  int n = c < 0x80             ? 1
          : (c & 0xE0) == 0xC0 ? 2
          : (c & 0xF0) == 0xE0 ? 3
          : (c & 0xF8) == 0xF0 ? 4
                               : 1;
  if (i + n > s.size()) n = 1;
  uint32_t cp = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
  for (int k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  *len = n;
  return cp;
}

// Start of the code point that ends just before s[end] (end > 0).
size_t PrevStart(absl::string_view s, size_t end) {
  size_t i = end - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80 && end - i < 4) --i;
  return i;
}

// Leading and trailing whitespace removed (Python's str.strip()).
absl::string_view PyStrip(absl::string_view s) {
  size_t b = 0, len = 0;
  while (b < s.size() && IsPythonSpace(DecodeAt(s, b, &len))) b += len;
  size_t e = s.size();
  while (e > b) {
    const size_t p = PrevStart(s, e);
    if (!IsPythonSpace(DecodeAt(s, p, &len))) break;
    e = p;
  }
  return s.substr(b, e - b);
}

// str.replace(from, to): non-overlapping occurrences, left to right.
std::string Replace(absl::string_view s, absl::string_view from, absl::string_view to) {
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  while (true) {
    const size_t hit = s.find(from, pos);
    if (hit == absl::string_view::npos) break;
    out.append(s.data() + pos, hit - pos);
    out.append(to.data(), to.size());
    pos = hit + from.size();
  }
  out.append(s.data() + pos, s.size() - pos);
  return out;
}

// re.sub(r"O\s*([^C]*?)\s*C", r"O\1C", s) for single characters O and C (O == C for quotes):
// from each O to the first C after it, the enclosed text stripped of surrounding whitespace. An O
// with no C after it matches nothing (nor does any later O).
std::string StripInside(absl::string_view s, char open, char close) {
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  while (true) {
    const size_t o = s.find(open, pos);
    if (o == absl::string_view::npos) break;
    const size_t c = s.find(close, o + 1);
    if (c == absl::string_view::npos) break;
    out.append(s.data() + pos, o - pos);
    out.push_back(open);
    absl::string_view inner = PyStrip(s.substr(o + 1, c - o - 1));
    out.append(inner.data(), inner.size());
    out.push_back(close);
    pos = c + 1;
  }
  out.append(s.data() + pos, s.size() - pos);
  return out;
}

// re.sub(r"/' [0-9]/", r"/'[0-9]/", s): the replacement is the literal text "/'[0-9]/".
std::string SlashQuoteDigit(absl::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  while (true) {
    size_t hit = s.find("/' ", pos);
    while (hit != absl::string_view::npos &&
           !(hit + 4 < s.size() && std::isdigit(static_cast<unsigned char>(s[hit + 3])) &&
             s[hit + 4] == '/')) {
      hit = s.find("/' ", hit + 1);
    }
    if (hit == absl::string_view::npos) break;
    out.append(s.data() + pos, hit - pos);
    out.append("/'[0-9]/");
    pos = hit + 5;
  }
  out.append(s.data() + pos, s.size() - pos);
  return out;
}

}  // namespace

bool IsPythonSpace(uint32_t cp) {
  if (cp < 0x80) return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20);
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
         cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

std::string TranslateNewlines(absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '\r') {
      out.push_back(text[i]);
      continue;
    }
    out.push_back('\n');
    if (i + 1 < text.size() && text[i + 1] == '\n') ++i;
  }
  return out;
}

std::vector<std::string> SplitWikitextDocuments(absl::string_view text) {
  std::vector<std::string> pages;
  std::string page;        // the current page's lines joined with '\n'
  bool page_empty = true;  // no line yet (ret == [])
  size_t pos = 0;
  while (true) {
    const size_t nl = text.find('\n', pos);
    const absl::string_view line =
        text.substr(pos, nl == absl::string_view::npos ? absl::string_view::npos : nl - pos);
    const std::string r = Replace(Replace(line, "= = =", "==="), "= =", "==");
    const absl::string_view rline = PyStrip(r);
    if (rline.size() >= 2 && rline.substr(0, 2) == "= " && rline.substr(rline.size() - 2) == " =") {
      if (!PyStrip(page).empty()) pages.push_back(std::move(page));
      page.clear();
      page_empty = true;
    }
    if (!page_empty) page.push_back('\n');
    page.append(line.data(), line.size());
    page_empty = false;
    if (nl == absl::string_view::npos) break;
    pos = nl + 1;
  }
  pages.push_back(std::move(page));
  return pages;
}

std::string WikitextDetokenize(absl::string_view page) {
  std::string s = Replace(page, "s '", "s'");
  s = SlashQuoteDigit(s);
  // number separators
  s = Replace(s, " @-@ ", "-");
  s = Replace(s, " @,@ ", ",");
  s = Replace(s, " @.@ ", ".");
  // punctuation
  s = Replace(s, " : ", ": ");
  s = Replace(s, " ; ", "; ");
  s = Replace(s, " . ", ". ");
  s = Replace(s, " ! ", "! ");
  s = Replace(s, " ? ", "? ");
  s = Replace(s, " , ", ", ");
  // double brackets
  s = StripInside(s, '(', ')');
  s = StripInside(s, '[', ']');
  s = StripInside(s, '{', '}');
  s = StripInside(s, '"', '"');
  s = StripInside(s, '\'', '\'');
  // miscellaneous
  s = Replace(s, "= = = =", "====");
  s = Replace(s, "= = =", "===");
  s = Replace(s, "= =", "==");
  s = Replace(s, " \xC2\xB0 ", "\xC2\xB0");  // U+00B0 DEGREE SIGN
  s = Replace(s, " \n", "\n");
  s = Replace(s, "\n ", "\n");
  s = Replace(s, " N ", " 1 ");
  s = Replace(s, " 's", "'s");
  return s;
}

int64_t CountWordsLmEval(absl::string_view page) {
  int64_t runs = 0;
  bool in_space = false;
  size_t len = 0;
  for (size_t i = 0; i < page.size(); i += len) {
    const bool space = IsPythonSpace(DecodeAt(page, i, &len));
    if (space && !in_space) ++runs;
    in_space = space;
  }
  return runs + 1;
}

}  // namespace kvsweep::engine

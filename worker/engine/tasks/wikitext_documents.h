// lm-evaluation-harness's `wikitext` task, text side: how wikitext-2-raw-v1 becomes documents,
// what each document's scored text is, and how words are counted (docs/engine.md, "Task
// definitions"). No model, no tokenizer: the task (wikitext.cc) tokenizes and scores.
#ifndef KVSWEEP_WORKER_ENGINE_TASKS_WIKITEXT_DOCUMENTS_H_
#define KVSWEEP_WORKER_ENGINE_TASKS_WIKITEXT_DOCUMENTS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace kvsweep::engine {

// Python's text-mode newline translation (open(..., encoding="utf-8").read()): "\r\n" and "\r"
// become "\n". The dataset builder reads the raw file that way.
std::string TranslateNewlines(absl::string_view text);

// The `EleutherAI/wikitext_document_level` builder: the text split on '\n'; a line that, after
// replacing "= = =" with "===" then "= =" with "==" and stripping whitespace, starts with "= "
// and ends with " =" (a top-level heading " = Title = ") starts a new page; a page is its lines
// joined with '\n', kept when it is not all whitespace, except the last page, always kept. A text
// without headings is one page (itself).
std::vector<std::string> SplitWikitextDocuments(absl::string_view text);

// lm-eval's wikitext_detokenizer (lm_eval/tasks/wikitext/preprocess_wikitext.py), the document's
// scored text: the same string replacements and regular-expression substitutions in the same
// order, with Python's semantics (non-overlapping, left to right; `\s` is Unicode whitespace).
std::string WikitextDetokenize(absl::string_view page);

// len(re.split(r"\s+", page)): maximal runs of Unicode whitespace (Python's str.isspace) plus
// one, so a leading or trailing run counts as a word too, as lm-eval counts them.
int64_t CountWordsLmEval(absl::string_view page);

// Python's str.isspace() for one code point.
bool IsPythonSpace(uint32_t cp);

}  // namespace kvsweep::engine

#endif  // KVSWEEP_WORKER_ENGINE_TASKS_WIKITEXT_DOCUMENTS_H_

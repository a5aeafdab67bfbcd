// Perplexity tasks (docs/engine.md, "Task definitions").
//
// wikitext: lm-evaluation-harness's task. The file (wikitext-2-raw-v1's wiki.test.raw) is split
// into documents at top-level headings, each document's detokenized text is tokenized without
// special tokens and scored with lm-eval's rolling windows (W, C), and the metrics are lm-eval's
// weighted perplexities over documents, with words and bytes counted on the documents before
// detokenization (wikitext_documents.h).
//
// wikitext_stream, ptb, text (any plain text): the whole file is tokenized once and scored with
// the same rolling windows, the convention of most KV-cache papers. Every token is predicted
// once. token_ppl = exp(-sum ll / tokens), word_ppl = exp(-sum ll / words), byte_ppl = exp(-sum
// ll / bytes), bits_per_byte = -sum ll / (bytes ln 2).
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/utf8.h"
#include "stats/bootstrap.h"
#include "stats/eval_units.h"
#include "worker/engine/tasks/task.h"
#include "worker/engine/tasks/wikitext_documents.h"

namespace kvsweep::engine {
namespace {

// Reads a text data file: non-empty, valid UTF-8.
absl::StatusOr<std::string> ReadTextData(const std::string& path) {
  absl::StatusOr<std::string> text = ReadFile(path, kMaxDataFileBytes);
  if (!text.ok()) return text.status();
  if (text->empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": data file is empty"));
  if (int64_t bad = FirstInvalidUtf8Byte(*text); bad >= 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not valid UTF-8 at byte ", bad));
  }
  return text;
}

absl::Status CheckWindow(const TaskInput& in) {
  if (in.window < 1 || in.context < 1 || in.context > in.window) {
    return absl::InvalidArgumentError(
        absl::StrCat("context ", in.context, " out of range [1, window=", in.window, "]"));
  }
  return absl::OkStatus();
}

// Standard errors (bootstrap over the units; none from a single unit) and the units themselves.
void AddStderrsAndUnits(const EvalUnits& units, nlohmann::json* m) {
  for (const char* metric : {"token_ppl", "word_ppl", "byte_ppl", "bits_per_byte"}) {
    if (std::optional<double> se = BootstrapStderr(units, metric)) {
      (*m)[absl::StrCat(metric, "_stderr")] = *se;
    }
  }
  (*m)["units"] = units.ToJson();
}

class RollingTextTask final : public Task {
 public:
  explicit RollingTextTask(const char* name) : name_(name) {}
  const char* name() const override { return name_; }

  absl::StatusOr<std::vector<ScoreRequest>> Prepare(const TaskInput& in) override {
    absl::StatusOr<std::string> text = ReadTextData(in.data_path);
    if (!text.ok()) return text.status();
    if (in.limit != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "limit applies to lambada_openai and wikitext only (", name_, " scores the whole file)"));
    }
    if (absl::Status w = CheckWindow(in); !w.ok()) return w;
    absl::StatusOr<std::vector<int32_t>> ids = in.tokenizer->Encode(*text);
    if (!ids.ok()) return ids.status();
    if (ids->empty()) return absl::InvalidArgumentError(absl::StrCat(in.data_path, ": no tokens"));
    tokens_ = ids->size();
    words_ = CountWords(*text);
    bytes_ = text->size();
    std::vector<ScoreRequest> reqs = RollingWindows(*ids, in.prefix_id, in.window, in.context);
    window_tokens_.clear();
    for (const ScoreRequest& r : reqs)
      window_tokens_.push_back(static_cast<int32_t>(r.cont.size()));
    return reqs;
  }

  nlohmann::json Metrics(const std::vector<ScoreResult>& results) const override {
    double ll = 0;
    EvalUnits units;
    units.kind = "window";
    units.total_words = words_;
    units.total_bytes = bytes_;
    units.tokens = window_tokens_;
    for (const ScoreResult& r : results) {
      ll += r.loglik;
      units.loglik.push_back(r.loglik);
    }
    nlohmann::json m = {{"token_ppl", std::exp(-ll / tokens_)},
                        {"word_ppl", words_ > 0 ? std::exp(-ll / words_) : NAN},
                        {"byte_ppl", std::exp(-ll / bytes_)},
                        {"bits_per_byte", -ll / (bytes_ * std::log(2.0))},
                        {"loglik_sum", ll},
                        {"tokens", tokens_},
                        {"words", words_},
                        {"bytes", bytes_},
                        {"windows", static_cast<int64_t>(results.size())}};
    // Bootstrap over windows.
    AddStderrsAndUnits(units, &m);
    return m;
  }

 private:
  const char* name_;
  int64_t tokens_ = 0, words_ = 0, bytes_ = 0;
  std::vector<int32_t> window_tokens_;  // scored tokens per window
};

class LmEvalWikitextTask final : public Task {
 public:
  const char* name() const override { return "wikitext"; }

  absl::StatusOr<std::vector<ScoreRequest>> Prepare(const TaskInput& in) override {
    absl::StatusOr<std::string> text = ReadTextData(in.data_path);
    if (!text.ok()) return text.status();
    if (absl::Status w = CheckWindow(in); !w.ok()) return w;
    std::vector<std::string> pages = SplitWikitextDocuments(TranslateNewlines(*text));
    if (in.limit < 0 || in.limit > static_cast<int>(pages.size())) {
      return absl::InvalidArgumentError(absl::StrCat("limit ", in.limit,
                                                     " out of range: ", in.data_path, " has ",
                                                     pages.size(), " documents"));
    }
    if (in.limit > 0) pages.resize(in.limit);
    doc_tokens_.clear();
    doc_words_.clear();
    doc_bytes_.clear();
    doc_windows_.clear();
    std::vector<ScoreRequest> reqs;
    for (const std::string& page : pages) {
      absl::StatusOr<std::vector<int32_t>> ids = in.tokenizer->Encode(WikitextDetokenize(page));
      if (!ids.ok()) return ids.status();
      // A document without tokens has no windows and log-likelihood 0 (lm-eval's sum of none).
      std::vector<ScoreRequest> w = RollingWindows(*ids, in.prefix_id, in.window, in.context);
      doc_tokens_.push_back(static_cast<int32_t>(ids->size()));
      doc_words_.push_back(static_cast<int32_t>(CountWordsLmEval(page)));
      doc_bytes_.push_back(static_cast<int32_t>(page.size()));
      doc_windows_.push_back(static_cast<int32_t>(w.size()));
      for (ScoreRequest& r : w) reqs.push_back(std::move(r));
    }
    if (reqs.empty()) return absl::InvalidArgumentError(absl::StrCat(in.data_path, ": no tokens"));
    return reqs;
  }

  nlohmann::json Metrics(const std::vector<ScoreResult>& results) const override {
    EvalUnits units;
    units.kind = "document";
    units.tokens = doc_tokens_;
    units.words = doc_words_;
    units.bytes = doc_bytes_;
    // Windows in document order: each document's loglik is the sum over its windows.
    size_t next = 0;
    for (int32_t nw : doc_windows_) {
      double ll = 0;
      for (int32_t k = 0; k < nw; ++k) ll += results[next++].loglik;
      units.loglik.push_back(ll);
    }
    double ll = 0;
    int64_t tokens = 0, words = 0, bytes = 0;
    for (size_t d = 0; d < units.size(); ++d) {
      ll += units.loglik[d];
      tokens += doc_tokens_[d];
      words += doc_words_[d];
      bytes += doc_bytes_[d];
    }
    units.total_words = words;
    units.total_bytes = bytes;
    nlohmann::json m = {{"token_ppl", std::exp(-ll / tokens)},
                        {"word_ppl", std::exp(-ll / words)},
                        {"byte_ppl", std::exp(-ll / bytes)},
                        {"bits_per_byte", -ll / (bytes * std::log(2.0))},
                        {"loglik_sum", ll},
                        {"tokens", tokens},
                        {"words", words},
                        {"bytes", bytes},
                        {"documents", static_cast<int64_t>(units.size())},
                        {"windows", static_cast<int64_t>(results.size())}};
    // Bootstrap over documents.
    AddStderrsAndUnits(units, &m);
    return m;
  }

 private:
  // Per document, in file order.
  std::vector<int32_t> doc_tokens_, doc_words_, doc_bytes_, doc_windows_;
};

}  // namespace

std::unique_ptr<Task> NewRollingTextTask(const char* name) {
  return std::make_unique<RollingTextTask>(name);
}
std::unique_ptr<Task> NewLmEvalWikitextTask() { return std::make_unique<LmEvalWikitextTask>(); }

std::vector<ScoreRequest> RollingWindows(const std::vector<int32_t>& tokens, int32_t prefix_id,
                                         int window, int context) {
  std::vector<ScoreRequest> out;
  const int64_t n = tokens.size(), W = window;
  if (n == 0) return out;
  const int64_t pred_len = W - context + 1;
  // First window: predicts its first min(W, n) tokens from [prefix] + tokens.
  const int64_t first = std::min<int64_t>(W, n);
  ScoreRequest r;
  r.input.push_back(prefix_id);
  r.input.insert(r.input.end(), tokens.begin(), tokens.begin() + first - 1);
  r.cont.assign(tokens.begin(), tokens.begin() + first);
  out.push_back(std::move(r));
  int64_t predicted = first;
  while (predicted < n) {
    const int64_t len = std::min<int64_t>(n - predicted, pred_len);
    const int64_t end = predicted + len;
    // Disjoint window: the W tokens before `end`'s last prediction, scoring the last `len`.
    ScoreRequest w;
    w.input.assign(tokens.begin() + (end - 1 - W), tokens.begin() + (end - 1));
    w.cont.assign(tokens.begin() + (end - len), tokens.begin() + end);
    out.push_back(std::move(w));
    predicted += len;
  }
  return out;
}

int64_t CountWords(absl::string_view text) {
  int64_t words = 0;
  bool in_word = false;
  for (char ch : text) {
    const bool space =
        ch == ' ' || ch == '\t' || ch == '\n' || ch == '\v' || ch == '\f' || ch == '\r';
    if (!space && !in_word) ++words;
    in_word = !space;
  }
  return words;
}

}  // namespace kvsweep::engine

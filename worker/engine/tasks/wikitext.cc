// wikitext (and any plain text: PTB, a file of one's own): the whole file is tokenized once
// without special tokens and scored with lm-evaluation-harness's rolling windows (W, C). Every
// token is predicted once. token_ppl = exp(-sum ll / tokens), word_ppl = exp(-sum ll / words),
// bits_per_byte = -sum ll / (bytes ln 2).
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "stats/bootstrap.h"
#include "stats/eval_units.h"
#include "worker/engine/tasks/task.h"

namespace kvsweep::engine {
namespace {

class RollingTextTask final : public Task {
 public:
  explicit RollingTextTask(const char* name) : name_(name) {}
  const char* name() const override { return name_; }

  absl::StatusOr<std::vector<ScoreRequest>> Prepare(const TaskInput& in) override {
    absl::StatusOr<std::string> text = ReadFile(in.data_path, kMaxDataFileBytes);
    if (!text.ok()) return text.status();
    if (text->empty()) return absl::InvalidArgumentError(absl::StrCat(in.data_path, ": data file is empty"));
    if (int64_t bad = FirstInvalidUtf8(*text); bad >= 0) {
      return absl::InvalidArgumentError(absl::StrCat(in.data_path, ": not valid UTF-8 at byte ", bad));
    }
    if (in.limit != 0) {
      return absl::InvalidArgumentError(absl::StrCat("limit applies to lambada_openai only (", name_, " scores the whole file)"));
    }
    if (in.window < 1 || in.context < 1 || in.context > in.window) {
      return absl::InvalidArgumentError(absl::StrCat("context ", in.context, " out of range [1, window=", in.window, "]"));
    }
    absl::StatusOr<std::vector<int32_t>> ids = in.tokenizer->Encode(*text);
    if (!ids.ok()) return ids.status();
    if (ids->empty()) return absl::InvalidArgumentError(absl::StrCat(in.data_path, ": no tokens"));
    tokens_ = ids->size();
    words_ = CountWords(*text);
    bytes_ = text->size();
    std::vector<ScoreRequest> reqs = RollingWindows(*ids, in.prefix_id, in.window, in.context);
    window_tokens_.clear();
    for (const ScoreRequest& r : reqs) window_tokens_.push_back(static_cast<int32_t>(r.cont.size()));
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
                        {"bits_per_byte", -ll / (bytes_ * std::log(2.0))},
                        {"loglik_sum", ll},
                        {"tokens", tokens_},
                        {"words", words_},
                        {"bytes", bytes_},
                        {"windows", static_cast<int64_t>(results.size())}};
    // Bootstrap over windows (one window: no spread to measure, no stderr).
    for (const char* metric : {"token_ppl", "word_ppl", "bits_per_byte"}) {
      if (std::optional<double> se = BootstrapStderr(units, metric)) {
        m[absl::StrCat(metric, "_stderr")] = *se;
      }
    }
    m["units"] = units.ToJson();
    return m;
  }

 private:
  const char* name_;
  int64_t tokens_ = 0, words_ = 0, bytes_ = 0;
  std::vector<int32_t> window_tokens_;  // scored tokens per window
};

}  // namespace

std::unique_ptr<Task> NewRollingTextTask(const char* name) { return std::make_unique<RollingTextTask>(name); }

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
    const bool space = ch == ' ' || ch == '\t' || ch == '\n' || ch == '\v' || ch == '\f' || ch == '\r';
    if (!space && !in_word) ++words;
    in_word = !space;
  }
  return words;
}

int64_t FirstInvalidUtf8(absl::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    unsigned char c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    int len = 0;
    uint32_t cp = 0;
    if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; }
    else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; }
    else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; }
    else return i;
    if (i + len > n) return i;
    for (int k = 1; k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    // Overlong forms, surrogates and code points past U+10FFFF are invalid.
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      return i;
    }
    i += len;
  }
  return -1;
}

}  // namespace kvsweep::engine

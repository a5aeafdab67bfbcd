// lambada_openai (lm-evaluation-harness): context = the text before the last ' ', continuation
// = ' ' + last word; tokens from enc(context + continuation) and enc(context) without special
// tokens, trailing context whitespace moved to the continuation first (lm-eval _encode_pair);
// input = (context + continuation)[-(W+1):][:-1]; acc = every continuation token is the argmax;
// ppl = exp(-mean loglik).
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "common/json_util.h"
#include "common/utf8.h"
#include "stats/bootstrap.h"
#include "stats/eval_units.h"
#include "worker/engine/tasks/task.h"

namespace kvsweep::engine {
namespace {

class LambadaTask final : public Task {
 public:
  const char* name() const override { return "lambada_openai"; }

  absl::StatusOr<std::vector<ScoreRequest>> Prepare(const TaskInput& in) override {
    absl::StatusOr<std::string> data = ReadFile(in.data_path, kMaxDataFileBytes);
    if (!data.ok()) return data.status();
    std::vector<std::string> docs;
    int line_no = 0;
    for (absl::string_view line : absl::StrSplit(*data, '\n')) {
      ++line_no;
      if (absl::StripAsciiWhitespace(line).empty()) continue;
      absl::StatusOr<nlohmann::json> j = ParseJson(line, absl::StrCat(in.data_path, ":", line_no));
      if (!j.ok()) return j.status();
      if (!j->is_object() || !j->contains("text") || !(*j)["text"].is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(
            in.data_path, ":", line_no, ": expected an object with a string \"text\""));
      }
      std::string text = (*j)["text"].get<std::string>();
      if (int64_t bad = FirstInvalidUtf8Byte(text); bad >= 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(in.data_path, ":", line_no, ": text is not valid UTF-8 at byte ", bad));
      }
      docs.push_back(std::move(text));
    }
    if (docs.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(in.data_path, ": no documents (expected JSON lines with \"text\")"));
    }
    if (in.limit < 0 || in.limit > static_cast<int>(docs.size())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "limit ", in.limit, " out of range: ", in.data_path, " has ", docs.size(), " documents"));
    }
    if (in.limit > 0) docs.resize(in.limit);
    std::vector<ScoreRequest> reqs;
    reqs.reserve(docs.size());
    for (const std::string& text : docs) {
      // doc_to_text / doc_to_target: split on ' ' exactly, keep empty pieces.
      size_t cut = text.rfind(' ');
      std::string context = cut == std::string::npos ? "" : text.substr(0, cut);
      std::string cont = cut == std::string::npos ? " " + text : text.substr(cut);
      // lm-eval _encode_pair: move trailing whitespace of the context to the continuation.
      size_t end = context.find_last_not_of(" \t\n\r\f\v");
      size_t keep = end == std::string::npos ? 0 : end + 1;
      if (keep < context.size()) {
        cont = context.substr(keep) + cont;
        context.resize(keep);
      }
      std::vector<int32_t> ctx_ids, cont_ids;
      if (context.empty()) {
        ctx_ids = {in.prefix_id};
        absl::StatusOr<std::vector<int32_t>> c = in.tokenizer->Encode(cont);
        if (!c.ok()) return c.status();
        cont_ids = std::move(*c);
      } else {
        absl::StatusOr<std::vector<int32_t>> whole = in.tokenizer->Encode(context + cont);
        if (!whole.ok()) return whole.status();
        absl::StatusOr<std::vector<int32_t>> c = in.tokenizer->Encode(context);
        if (!c.ok()) return c.status();
        ctx_ids = std::move(*c);
        if (ctx_ids.size() < whole->size())
          cont_ids.assign(whole->begin() + ctx_ids.size(), whole->end());
      }
      std::vector<int32_t> all = ctx_ids;
      all.insert(all.end(), cont_ids.begin(), cont_ids.end());
      // (context + continuation)[-(W+1):][:-1]
      const size_t start =
          all.size() > static_cast<size_t>(in.window) + 1 ? all.size() - in.window - 1 : 0;
      ScoreRequest r;
      r.input.assign(all.begin() + start, all.end() - 1);
      r.cont = std::move(cont_ids);
      if (r.cont.size() > r.input.size())
        r.cont.erase(r.cont.begin(), r.cont.end() - r.input.size());
      cont_tokens_.push_back(static_cast<int32_t>(r.cont.size()));
      reqs.push_back(std::move(r));
    }
    return reqs;
  }

  nlohmann::json Metrics(const std::vector<ScoreResult>& results) const override {
    double sum = 0;
    int64_t hits = 0;
    EvalUnits units;
    units.kind = "document";
    std::vector<double> hit;
    for (const ScoreResult& r : results) {
      sum += r.loglik;
      hits += r.greedy;
      units.loglik.push_back(r.loglik);
      units.greedy.push_back(r.greedy ? 1 : 0);
      hit.push_back(r.greedy ? 1.0 : 0.0);
    }
    units.tokens = cont_tokens_;
    const double n = results.size();
    // Standard errors as lm-eval computes them: acc's is the sample mean's (n - 1), ppl's a
    // bootstrap over documents.
    nlohmann::json m = {{"acc", hits / n},
                        {"acc_stderr", MeanStderr(hit)},
                        {"ppl", std::exp(-sum / n)},
                        {"loglik_sum", sum},
                        {"n", static_cast<int64_t>(results.size())}};
    if (std::optional<double> se = BootstrapStderr(units, "ppl")) m["ppl_stderr"] = *se;
    m["units"] = units.ToJson();
    return m;
  }

 private:
  std::vector<int32_t> cont_tokens_;  // scored tokens per document
};

}  // namespace

std::unique_ptr<Task> NewLambadaTask() { return std::make_unique<LambadaTask>(); }

}  // namespace kvsweep::engine

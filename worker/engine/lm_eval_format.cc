#include "worker/engine/lm_eval_format.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace kvsweep::engine {
namespace {

struct MetricName {
  const char* lm_eval;  // lm-eval's metric name
  const char* kvsweep;  // the key in metrics.<task>
  bool has_stderr;      // lm-eval computes a standard error for it
  bool higher_is_better;
};

constexpr MetricName kLambada[] = {
    {"acc", "acc", true, true},
    {"perplexity", "ppl", true, false},
};
constexpr MetricName kPerplexity[] = {
    {"word_perplexity", "word_ppl", false, false},
    {"byte_perplexity", "byte_ppl", false, false},
    {"bits_per_byte", "bits_per_byte", false, false},
};

}  // namespace

nlohmann::json LmEvalOutput(const nlohmann::json& result) {
  const nlohmann::json& spec = result.at("spec");
  const std::string task = spec.at("task").at("name").get<std::string>();
  const nlohmann::json& m = result.at("metrics").at(task);
  const bool lambada = task == "lambada_openai";
  nlohmann::json res = {{"alias", task}};
  nlohmann::json better = nlohmann::json::object();
  auto add = [&](const MetricName& n) {
    res[absl::StrCat(n.lm_eval, ",none")] = m.value(n.kvsweep, nlohmann::json());
    const std::string se_key = absl::StrCat(n.kvsweep, "_stderr");
    res[absl::StrCat(n.lm_eval, "_stderr,none")] =
        n.has_stderr && m.contains(se_key) ? m[se_key] : nlohmann::json("N/A");
    better[n.lm_eval] = n.higher_is_better;
  };
  if (lambada) {
    for (const MetricName& n : kLambada) add(n);
  } else {
    for (const MetricName& n : kPerplexity) add(n);
  }
  const int64_t n = lambada ? m.value("n", int64_t{0}) : m.value("documents", int64_t{1});
  const int limit = spec.at("task").value("limit", 0);
  nlohmann::json samples = {{"effective", n}};
  if (limit == 0) samples["original"] = n;
  // lm-eval's task versions (lambada_openai.yaml, wikitext.yaml); the stream tasks are kvsweep's.
  nlohmann::json version = task == "lambada_openai" ? nlohmann::json(1.0)
                           : task == "wikitext"     ? nlohmann::json(2.0)
                                                    : nlohmann::json();
  return {{"results", {{task, res}}},
          {"versions", {{task, version}}},
          {"n-shot", {{task, 0}}},
          {"higher_is_better", {{task, better}}},
          {"n-samples", {{task, samples}}},
          {"config",
           {{"model", "kvsweep"},
            {"model_args", absl::StrCat("pretrained=", spec.value("model_path", ""),
                                        ",dtype=", spec.value("dtype", ""),
                                        ",kv_method=", spec.value("method", ""),
                                        ",kv_heads=", spec.value("kv_heads", 0),
                                        ",max_length=", spec.at("task").value("window", 0))},
            {"limit", limit == 0 ? nlohmann::json() : nlohmann::json(limit)},
            {"device", result.value("provenance", nlohmann::json::object()).value("device", "")}}},
          {"kvsweep", result}};
}

}  // namespace kvsweep::engine

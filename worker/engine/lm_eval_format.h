// `kvsweep-worker eval --format lm-eval`: a result in the shape of lm-evaluation-harness's
// results file (lm-eval 0.4: "results" keyed by task, metric keys "<metric>,<filter>" with the
// filter "none", "<metric>_stderr,none", "alias"), so that tools reading lm-eval's output read
// kvsweep's, and numbers compare key by key (docs/cli.md).
#ifndef KVSWEEP_WORKER_ENGINE_LM_EVAL_FORMAT_H_
#define KVSWEEP_WORKER_ENGINE_LM_EVAL_FORMAT_H_

#include "nlohmann/json.hpp"

namespace kvsweep::engine {

// From an Engine::Run result (spec, metrics, ledger, timing, provenance):
//   results.<task>: lambada_openai: acc, acc_stderr, perplexity, perplexity_stderr;
//     wikitext and the stream tasks: word_perplexity, byte_perplexity, bits_per_byte, each with
//     "_stderr" "N/A" as lm-eval writes it (its weighted perplexities have no standard error;
//     kvsweep's bootstrap ones are in kvsweep.metrics);
//   versions, n-shot (0), higher_is_better, n-samples, config (model, model_args, limit);
//   kvsweep: the whole result as `--format json` prints it.
nlohmann::json LmEvalOutput(const nlohmann::json& result);

}  // namespace kvsweep::engine

#endif  // KVSWEEP_WORKER_ENGINE_LM_EVAL_FORMAT_H_

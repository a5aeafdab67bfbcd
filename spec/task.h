// The tasks the engine evaluates, in one table: each task's name, the protocol that scores it,
// the metric that ranks methods on it, which knobs apply to it and its identity label. Every
// layer (job resolution, sweep expansion, the engine's task registry, the CLI's help, report)
// asks this table instead of spelling task names itself. docs/engine.md defines each task.
#ifndef KVSWEEP_SPEC_TASK_H_
#define KVSWEEP_SPEC_TASK_H_

#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace kvsweep {

enum class TaskProtocol {
  kLambada,    // last-word prediction per document: acc, ppl
  kDocuments,  // lm-evaluation-harness's wikitext: rolling windows per document
  kStream,     // the whole file as one stream of rolling windows (named for the metrics)
};

struct TaskSpec {
  const char* name;
  TaskProtocol protocol;
  // The metric that ranks methods on the task (`metric: auto`, report): ppl for LAMBADA,
  // token_ppl for the perplexity tasks.
  const char* quality_metric;
  // `limit` (the first N documents) applies.
  bool takes_limit;
  // `context` (C of rolling windows) applies; LAMBADA scores each document whole (C = 1).
  bool takes_context;
  // A version label of the task's definition that is part of job identity, for tasks whose
  // meaning changed under the same name: "lm-eval-documents" for "wikitext" (which once named
  // the stream convention, now "wikitext_stream"), so that results of the earlier definition
  // are never reused for it. Empty for every other task (their job ids are unchanged).
  const char* definition;
  const char* help;  // one phrase for `--task` help
};

// Every task, in the order help texts list them.
const std::vector<TaskSpec>& Tasks();
// nullptr if `name` is not a task.
const TaskSpec* FindTask(absl::string_view name);
bool IsKnownTask(absl::string_view task);
// FindTask(task)->definition, "" for an unknown task.
std::string TaskDefinition(absl::string_view task);
// "unknown task 'X' (known: ...)": the one wording of that error in every layer.
std::string UnknownTaskMessage(absl::string_view task);
// "lambada_openai | wikitext (...) | ...": the `--task` help.
std::string TaskHelp();
// The ranking metric of `task` (TaskSpec::quality_metric); "token_ppl" for an unknown name.
std::string QualityMetric(absl::string_view task);

}  // namespace kvsweep

#endif  // KVSWEEP_SPEC_TASK_H_

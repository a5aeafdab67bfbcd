#include "spec/task.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace kvsweep {

const std::vector<TaskSpec>& Tasks() {
  static const std::vector<TaskSpec> tasks = {
      {"lambada_openai", TaskProtocol::kLambada, "ppl", /*takes_limit=*/true,
       /*takes_context=*/false, "", "lambada_openai"},
      {"wikitext", TaskProtocol::kDocuments, "token_ppl", true, true, "lm-eval-documents",
       "wikitext (lm-eval's: per document)"},
      {"wikitext_stream", TaskProtocol::kStream, "token_ppl", false, true, "", "wikitext_stream"},
      {"ptb", TaskProtocol::kStream, "token_ppl", false, true, "", "ptb"},
      {"text", TaskProtocol::kStream, "token_ppl", false, true, "",
       "text (the whole file as one stream)"},
  };
  return tasks;
}

const TaskSpec* FindTask(absl::string_view name) {
  for (const TaskSpec& t : Tasks()) {
    if (name == t.name) return &t;
  }
  return nullptr;
}

bool IsKnownTask(absl::string_view task) { return FindTask(task) != nullptr; }

std::string TaskDefinition(absl::string_view task) {
  const TaskSpec* t = FindTask(task);
  return t == nullptr ? "" : t->definition;
}

std::string UnknownTaskMessage(absl::string_view task) {
  std::vector<std::string> names;
  for (const TaskSpec& t : Tasks()) names.push_back(t.name);
  return absl::StrCat("unknown task '", task, "' (known: ", absl::StrJoin(names, ", "), ")");
}

std::string TaskHelp() {
  std::vector<std::string> parts;
  for (const TaskSpec& t : Tasks()) parts.push_back(t.help);
  return absl::StrJoin(parts, " | ");
}

std::string QualityMetric(absl::string_view task) {
  const TaskSpec* t = FindTask(task);
  return t == nullptr ? "token_ppl" : t->quality_metric;
}

}  // namespace kvsweep

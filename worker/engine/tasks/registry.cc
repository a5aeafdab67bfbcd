// The task registry: an explicit table from task name to factory.
#include "absl/strings/str_cat.h"
#include "spec/job_spec.h"
#include "worker/engine/tasks/task.h"

namespace kvsweep::engine {

std::unique_ptr<Task> NewLambadaTask();
std::unique_ptr<Task> NewRollingTextTask(const char* name);
std::unique_ptr<Task> NewLmEvalWikitextTask();

namespace {
struct Entry {
  const char* name;
  std::unique_ptr<Task> (*make)();
};
// Whole-file stream perplexity (WikiText, PTB, any UTF-8 file) is one protocol under three
// names; the name only labels the metrics. `wikitext` is lm-eval's per-document task.
std::unique_ptr<Task> NewWikitextStream() { return NewRollingTextTask("wikitext_stream"); }
std::unique_ptr<Task> NewPtb() { return NewRollingTextTask("ptb"); }
std::unique_ptr<Task> NewText() { return NewRollingTextTask("text"); }
constexpr Entry kTasks[] = {
    {"lambada_openai", &NewLambadaTask},
    {"wikitext", &NewLmEvalWikitextTask},
    {"wikitext_stream", &NewWikitextStream},
    {"ptb", &NewPtb},
    {"text", &NewText},
};
}  // namespace

absl::StatusOr<std::unique_ptr<Task>> NewTask(const std::string& name) {
  for (const Entry& e : kTasks) {
    if (name == e.name) return e.make();
  }
  return absl::InvalidArgumentError(UnknownTaskMessage(name));
}

}  // namespace kvsweep::engine

// The task registry: an explicit table from task name to factory.
#include "absl/strings/str_cat.h"
#include "common/job_spec.h"
#include "worker/engine/tasks/task.h"

namespace kvsweep::engine {

std::unique_ptr<Task> NewLambadaTask();
std::unique_ptr<Task> NewRollingTextTask(const char* name);

namespace {
struct Entry {
  const char* name;
  std::unique_ptr<Task> (*make)();
};
// Plain-text perplexity (WikiText, PTB, any UTF-8 file) is one protocol under three names; the
// name only labels the metrics.
std::unique_ptr<Task> NewWikitext() { return NewRollingTextTask("wikitext"); }
std::unique_ptr<Task> NewPtb() { return NewRollingTextTask("ptb"); }
std::unique_ptr<Task> NewText() { return NewRollingTextTask("text"); }
constexpr Entry kTasks[] = {
    {"lambada_openai", &NewLambadaTask},
    {"wikitext", &NewWikitext},
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

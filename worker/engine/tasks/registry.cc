// The task registry: an explicit table from task name to factory.
#include "absl/strings/str_cat.h"
#include "worker/engine/tasks/task.h"

namespace kvsweep::engine {

std::unique_ptr<Task> NewLambadaTask();
std::unique_ptr<Task> NewRollingTextTask();

namespace {
struct Entry {
  const char* name;
  std::unique_ptr<Task> (*make)();
};
constexpr Entry kTasks[] = {
    {"lambada_openai", &NewLambadaTask},
    {"wikitext", &NewRollingTextTask},
};
}  // namespace

absl::StatusOr<std::unique_ptr<Task>> NewTask(const std::string& name) {
  for (const Entry& e : kTasks) {
    if (name == e.name) return e.make();
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown task '", name, "' (known: lambada_openai, wikitext)"));
}

}  // namespace kvsweep::engine

// Evaluation tasks, defined as lm-evaluation-harness defines them (docs/engine.md), so that
// numbers compare. One interface, one file per task, one registry (registry.cc).
#ifndef KVSWEEP_WORKER_ENGINE_TASKS_TASK_H_
#define KVSWEEP_WORKER_ENGINE_TASKS_TASK_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "worker/engine/scorer.h"
#include "worker/engine/tokenizer/tokenizer.h"

namespace kvsweep::engine {

struct TaskInput {
  std::string data_path;
  const Tokenizer* tokenizer = nullptr;
  int window = 0;         // W: max tokens per forward (lm-eval max_length)
  int context = 1;        // C: rolling-window context (text tasks)
  int limit = 0;          // first documents (lambada_openai, wikitext); 0 = all
  int32_t prefix_id = 0;  // BOS, else EOS (lm-eval prefix_token_id)
};

class Task {
 public:
  Task() = default;
  virtual ~Task() = default;
  Task(const Task&) = delete;
  Task& operator=(const Task&) = delete;

  virtual const char* name() const = 0;
  // Reads and tokenizes the data and builds the score requests. Errors: kNotFound /
  // kPermissionDenied (file), kInvalidArgument (empty or malformed data, invalid UTF-8, limit or
  // window out of range) with a one-line message naming the file and line.
  virtual absl::StatusOr<std::vector<ScoreRequest>> Prepare(const TaskInput& in) = 0;
  // Aggregates per-request results (same order as Prepare's requests) into the metrics object.
  virtual nlohmann::json Metrics(const std::vector<ScoreResult>& results) const = 0;
};

// "lambada_openai" | "wikitext" | "wikitext_stream" | "ptb" | "text"; kInvalidArgument otherwise.
absl::StatusOr<std::unique_ptr<Task>> NewTask(const std::string& name);

// Shared helpers (exposed for tests). (The first invalid UTF-8 byte of a text:
// common/utf8.h's FirstInvalidUtf8Byte.)
// lm_eval.utils.get_rolling_token_windows + make_disjoint_window, as score requests: every
// token predicted exactly once; inputs at most W tokens.
std::vector<ScoreRequest> RollingWindows(const std::vector<int32_t>& tokens, int32_t prefix_id,
                                         int window, int context);
// Whitespace-separated runs (whitespace = ASCII space, \t, \n, \v, \f, \r).
int64_t CountWords(absl::string_view text);

}  // namespace kvsweep::engine

#endif  // KVSWEEP_WORKER_ENGINE_TASKS_TASK_H_

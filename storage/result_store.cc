// Shared pieces of the ResultStore implementations: state names and result validation.
#include "storage/result_store.h"

#include "absl/strings/str_cat.h"
#include "spec/job_result.h"

namespace kvsweep {

namespace {
struct StateName {
  JobState state;
  const char* name;
};
constexpr StateName kStateNames[] = {
    {JobState::kQueued, "queued"},
    {JobState::kLeased, "leased"},
    {JobState::kDone, "done"},
    {JobState::kFailed, "failed"},
    {JobState::kQuarantined, "quarantined"},
    {JobState::kCancelled, "cancelled"},
};
}  // namespace

const char* JobStateName(JobState s) {
  for (const StateName& n : kStateNames) {
    if (n.state == s) return n.name;
  }
  return "unknown";
}

absl::StatusOr<JobState> ParseJobState(absl::string_view name) {
  for (const StateName& n : kStateNames) {
    if (name == n.name) return n.state;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown job state '", name, "'"));
}

bool IsFinal(JobState s) { return s != JobState::kQueued && s != JobState::kLeased; }

const char* AttemptOutcomeName(AttemptOutcome o) {
  switch (o) {
    case AttemptOutcome::kRunning:
      return "running";
    case AttemptOutcome::kDone:
      return "done";
    case AttemptOutcome::kFailed:
      return "failed";
    case AttemptOutcome::kLost:
      return "lost";
    case AttemptOutcome::kHandedBack:
      return "handed_back";
    case AttemptOutcome::kCancelled:
      return "cancelled";
  }
  return "unknown";
}

absl::StatusOr<ResultMetrics> ExtractResultMetrics(absl::string_view result_json) {
  absl::StatusOr<JobResult> j = JobResult::Parse(result_json);
  if (!j.ok()) return j.status();
  ResultMetrics r;
  r.job_id = j->job_id();
  r.tasks = j->tasks();
  // The common columns come from the first task that has them.
  for (auto [key, slot] : {std::pair{"acc", &r.acc},
                           {"ppl", &r.ppl},
                           {"token_ppl", &r.token_ppl},
                           {"word_ppl", &r.word_ppl},
                           {"bits_per_byte", &r.bits_per_byte},
                           {"loglik_sum", &r.loglik_sum}}) {
    *slot = j->TaskNumber(key);
  }
  for (auto [key, slot] :
       {std::pair{"n", &r.n}, {"tokens", &r.tokens}, {"words", &r.words}, {"bytes", &r.bytes}}) {
    *slot = j->TaskInteger(key);
  }
  r.fraction_payload = j->LedgerNumber("fraction_payload");
  r.fraction_total = j->LedgerNumber("fraction_total");
  r.kv_heads = j->LedgerInteger("kv_heads");
  r.wall_s = j->TimingNumber("wall_s");
  r.tokens_per_s = j->TimingNumber("tokens_per_s");
  return r;
}

}  // namespace kvsweep

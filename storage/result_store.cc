// Shared pieces of the ResultStore implementations: state names and result validation.
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/json_util.h"
#include "nlohmann/json.hpp"
#include "storage/result_store.h"

namespace kvsweep {

namespace {
struct StateName {
  JobState state;
  const char* name;
};
constexpr StateName kStateNames[] = {
    {JobState::kQueued, "queued"},   {JobState::kLeased, "leased"},
    {JobState::kDone, "done"},       {JobState::kFailed, "failed"},
    {JobState::kQuarantined, "quarantined"}, {JobState::kCancelled, "cancelled"},
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
    case AttemptOutcome::kRunning: return "running";
    case AttemptOutcome::kDone: return "done";
    case AttemptOutcome::kFailed: return "failed";
    case AttemptOutcome::kLost: return "lost";
    case AttemptOutcome::kHandedBack: return "handed_back";
    case AttemptOutcome::kCancelled: return "cancelled";
  }
  return "unknown";
}

namespace {

absl::Status Bad(absl::string_view field, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("result: ", field, " ", why));
}

// Reads an optional finite number at obj[key] into *out.
absl::Status Number(const nlohmann::json& obj, const char* key, absl::string_view where,
                    std::optional<double>* out) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_number()) return Bad(absl::StrCat(where, ".", key), "is not a number");
  double v = it->get<double>();
  if (!std::isfinite(v)) return Bad(absl::StrCat(where, ".", key), "is not finite");
  *out = v;
  return absl::OkStatus();
}

absl::Status Integer(const nlohmann::json& obj, const char* key, absl::string_view where,
                     std::optional<int64_t>* out) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_number_integer()) return Bad(absl::StrCat(where, ".", key), "is not an integer");
  *out = it->get<int64_t>();
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ResultMetrics> ExtractResultMetrics(absl::string_view result_json) {
  absl::StatusOr<nlohmann::json> parsed = ParseJson(result_json, "result");
  if (!parsed.ok()) return parsed.status();
  const nlohmann::json& j = *parsed;
  if (!j.is_object()) return Bad("", "is not a JSON object");
  auto m = j.find("metrics");
  if (m == j.end() || !m->is_object() || m->empty()) {
    return Bad("metrics", "is missing or not a non-empty object");
  }
  ResultMetrics r;
  if (auto id = j.find("job_id"); id != j.end()) {
    if (!id->is_string()) return Bad("job_id", "is not a string");
    r.job_id = id->get<std::string>();
  }
  for (auto it = m->begin(); it != m->end(); ++it) {
    const std::string where = absl::StrCat("metrics.", it.key());
    r.tasks.push_back(it.key());
    if (!it->is_object()) return Bad(where, "is not an object");
    for (auto f = it->begin(); f != it->end(); ++f) {
      if (f->is_number_float() && !std::isfinite(f->get<double>())) {
        return Bad(absl::StrCat(where, ".", f.key()), "is not finite");
      }
    }
    // The common columns come from the first task that has them.
    for (auto [key, slot] : {std::pair{"acc", &r.acc}, {"ppl", &r.ppl},
                             {"token_ppl", &r.token_ppl}, {"word_ppl", &r.word_ppl},
                             {"bits_per_byte", &r.bits_per_byte},
                             {"loglik_sum", &r.loglik_sum}}) {
      std::optional<double> v;
      if (absl::Status s = Number(*it, key, where, &v); !s.ok()) return s;
      if (!slot->has_value()) *slot = v;
    }
    for (auto [key, slot] : {std::pair{"n", &r.n}, {"tokens", &r.tokens},
                             {"words", &r.words}, {"bytes", &r.bytes}}) {
      std::optional<int64_t> v;
      if (absl::Status s = Integer(*it, key, where, &v); !s.ok()) return s;
      if (!slot->has_value()) *slot = v;
    }
  }
  if (auto l = j.find("ledger"); l != j.end()) {
    if (!l->is_object()) return Bad("ledger", "is not an object");
    if (absl::Status s = Number(*l, "fraction_payload", "ledger", &r.fraction_payload); !s.ok()) {
      return s;
    }
    if (absl::Status s = Number(*l, "fraction_total", "ledger", &r.fraction_total); !s.ok()) {
      return s;
    }
    if (absl::Status s = Integer(*l, "kv_heads", "ledger", &r.kv_heads); !s.ok()) return s;
  }
  if (auto t = j.find("timing"); t != j.end()) {
    if (!t->is_object()) return Bad("timing", "is not an object");
    if (absl::Status s = Number(*t, "wall_s", "timing", &r.wall_s); !s.ok()) return s;
    if (absl::Status s = Number(*t, "tokens_per_s", "timing", &r.tokens_per_s); !s.ok()) {
      return s;
    }
  }
  return r;
}

}  // namespace kvsweep

#include "spec/job_result.h"

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/json_util.h"

namespace kvsweep {

namespace {

const nlohmann::json& EmptyObject() {
  static const nlohmann::json* empty = new nlohmann::json(nlohmann::json::object());
  return *empty;
}

absl::Status Bad(absl::string_view field, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("result: ", field, " ", why));
}

// An optional field at obj[key]: absent or null, else a finite number.
absl::Status CheckNumber(const nlohmann::json& obj, const char* key, absl::string_view where) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_number()) return Bad(absl::StrCat(where, ".", key), "is not a number");
  if (!std::isfinite(it->get<double>())) return Bad(absl::StrCat(where, ".", key), "is not finite");
  return absl::OkStatus();
}

// An optional field at obj[key]: absent or null, else an integer.
absl::Status CheckInteger(const nlohmann::json& obj, const char* key, absl::string_view where) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_number_integer()) return Bad(absl::StrCat(where, ".", key), "is not an integer");
  return absl::OkStatus();
}

std::optional<double> NumberIn(const nlohmann::json& obj, const std::string& key) {
  if (!obj.is_object()) return std::nullopt;
  auto it = obj.find(key);
  if (it == obj.end() || !it->is_number()) return std::nullopt;
  return it->get<double>();
}

std::optional<int64_t> IntegerIn(const nlohmann::json& obj, const std::string& key) {
  if (!obj.is_object()) return std::nullopt;
  auto it = obj.find(key);
  if (it == obj.end() || !it->is_number_integer()) return std::nullopt;
  return it->get<int64_t>();
}

}  // namespace

absl::StatusOr<JobResult> JobResult::Parse(absl::string_view text) {
  absl::StatusOr<nlohmann::json> parsed = ParseJson(text, "result");
  if (!parsed.ok()) return parsed.status();
  return FromJson(*std::move(parsed));
}

absl::StatusOr<JobResult> JobResult::FromJson(nlohmann::json j) {
  if (!j.is_object()) return Bad("", "is not a JSON object");
  auto m = j.find("metrics");
  if (m == j.end() || !m->is_object() || m->empty()) {
    return Bad("metrics", "is missing or not a non-empty object");
  }
  if (auto id = j.find("job_id"); id != j.end() && !id->is_string()) {
    return Bad("job_id", "is not a string");
  }
  for (auto it = m->begin(); it != m->end(); ++it) {
    const std::string where = absl::StrCat("metrics.", it.key());
    if (!it->is_object()) return Bad(where, "is not an object");
    for (auto f = it->begin(); f != it->end(); ++f) {
      if (f->is_number_float() && !std::isfinite(f->get<double>())) {
        return Bad(absl::StrCat(where, ".", f.key()), "is not finite");
      }
    }
    for (const char* key : {"acc", "ppl", "token_ppl", "word_ppl", "bits_per_byte", "loglik_sum"}) {
      if (absl::Status s = CheckNumber(*it, key, where); !s.ok()) return s;
    }
    for (const char* key : {"n", "tokens", "words", "bytes"}) {
      if (absl::Status s = CheckInteger(*it, key, where); !s.ok()) return s;
    }
  }
  if (auto l = j.find("ledger"); l != j.end()) {
    if (!l->is_object()) return Bad("ledger", "is not an object");
    for (const char* key : {"fraction_payload", "fraction_total"}) {
      if (absl::Status s = CheckNumber(*l, key, "ledger"); !s.ok()) return s;
    }
    if (absl::Status s = CheckInteger(*l, "kv_heads", "ledger"); !s.ok()) return s;
  }
  if (auto t = j.find("timing"); t != j.end()) {
    if (!t->is_object()) return Bad("timing", "is not an object");
    for (const char* key : {"wall_s", "tokens_per_s"}) {
      if (absl::Status s = CheckNumber(*t, key, "timing"); !s.ok()) return s;
    }
  }
  return JobResult(std::move(j));
}

std::string JobResult::Serialize() const { return CanonicalJson(j_); }

const nlohmann::json& JobResult::Section(const char* key) const {
  auto it = j_.find(key);
  return it != j_.end() && it->is_object() ? *it : EmptyObject();
}

const nlohmann::json& JobResult::metrics(const std::string& task) const {
  const nlohmann::json& m = Section("metrics");
  auto it = m.find(task);
  return it != m.end() && it->is_object() ? *it : EmptyObject();
}

bool JobResult::IsPlaceholder() const {
  const nlohmann::json& p = Section("provenance");
  const auto it = p.find("evaluator");
  return it != p.end() && it->is_string() && it->get<std::string>() == "fake";
}

std::string JobResult::job_id() const {
  auto it = j_.find("job_id");
  return it != j_.end() && it->is_string() ? it->get<std::string>() : "";
}

std::vector<std::string> JobResult::tasks() const {
  std::vector<std::string> out;
  for (auto it = j_.at("metrics").begin(); it != j_.at("metrics").end(); ++it) {
    out.push_back(it.key());
  }
  return out;
}

std::string JobResult::task() const { return j_.at("metrics").begin().key(); }

std::optional<double> JobResult::TaskNumber(const char* name) const {
  for (const auto& t : j_.at("metrics")) {
    if (std::optional<double> v = NumberIn(t, name)) return v;
  }
  return std::nullopt;
}

std::optional<int64_t> JobResult::TaskInteger(const char* name) const {
  for (const auto& t : j_.at("metrics")) {
    if (std::optional<int64_t> v = IntegerIn(t, name)) return v;
  }
  return std::nullopt;
}

std::optional<double> JobResult::LedgerNumber(const char* name) const {
  return NumberIn(ledger(), name);
}

std::optional<int64_t> JobResult::LedgerInteger(const char* name) const {
  return IntegerIn(ledger(), name);
}

std::optional<double> JobResult::TimingNumber(const char* name) const {
  return NumberIn(timing(), name);
}

std::optional<double> JobResult::Number(const std::string& name) const {
  if (name == "auto") return Number(QualityMetric());
  for (const auto& t : j_.at("metrics")) {
    if (std::optional<double> v = NumberIn(t, name)) return v;
  }
  if (std::optional<double> v = NumberIn(ledger(), name)) return v;
  if (std::optional<double> v = NumberIn(timing(), name)) return v;
  // Attention diagnostics (sweeps with `diagnostics: true`): the means over layers.
  auto mean = diagnostics().find("mean");
  if (mean != diagnostics().end()) return NumberIn(*mean, name);
  return std::nullopt;
}

std::string JobResult::QualityMetric() const { return Number("ppl") ? "ppl" : "token_ppl"; }

std::map<std::string, std::string> JobResult::Columns() const {
  std::map<std::string, std::string> f;
  const nlohmann::json& m = j_.at("metrics");
  for (auto t = m.begin(); t != m.end(); ++t) {
    for (auto k = t->begin(); k != t->end(); ++k) {
      if (k->is_number()) f[absl::StrCat(t.key(), ".", k.key())] = k->dump();
    }
  }
  for (const char* section : {"ledger", "timing"}) {
    const nlohmann::json& s = Section(section);
    for (auto k = s.begin(); k != s.end(); ++k) {
      if (k->is_number()) f[absl::StrCat(section, ".", k.key())] = k->dump();
    }
  }
  return f;
}

std::optional<EvalUnits> JobResult::Units() const {
  for (const auto& t : j_.at("metrics")) {
    auto u = t.find("units");
    if (u == t.end()) continue;
    absl::StatusOr<EvalUnits> parsed = EvalUnits::FromJson(*u);
    if (parsed.ok()) return *std::move(parsed);
  }
  return std::nullopt;
}

}  // namespace kvsweep

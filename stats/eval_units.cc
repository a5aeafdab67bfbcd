#include "stats/eval_units.h"

#include <cmath>
#include <cstring>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace kvsweep {
namespace {

// Little-endian byte images of plain arrays (x86 and ARM are little-endian; the code checks).
template <typename T>
std::string Pack(const std::vector<T>& v) {
  static_assert(std::is_trivially_copyable_v<T>);
  std::string bytes(v.size() * sizeof(T), '\0');
  if (!v.empty()) std::memcpy(bytes.data(), v.data(), bytes.size());
  return absl::Base64Escape(bytes);
}

template <typename T>
absl::Status Unpack(const nlohmann::json& j, const char* key, std::vector<T>* out) {
  auto it = j.find(key);
  if (it == j.end()) return absl::OkStatus();
  std::string bytes;
  if (!it->is_string() || !absl::Base64Unescape(it->get<std::string>(), &bytes) ||
      bytes.size() % sizeof(T) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("units.", key, ": not base64 of ", sizeof(T), "-byte values"));
  }
  out->resize(bytes.size() / sizeof(T));
  if (!bytes.empty()) std::memcpy(out->data(), bytes.data(), bytes.size());
  return absl::OkStatus();
}

constexpr bool kLittleEndian = __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__;
static_assert(kLittleEndian, "units are stored little-endian");

}  // namespace

nlohmann::json EvalUnits::ToJson() const {
  nlohmann::json j = {{"kind", kind}, {"n", loglik.size()}, {"loglik_f64", Pack(loglik)}};
  if (!tokens.empty()) j["tokens_i32"] = Pack(tokens);
  if (!greedy.empty()) j["greedy_u8"] = Pack(greedy);
  if (!words.empty()) j["words_i32"] = Pack(words);
  if (!bytes.empty()) j["bytes_i32"] = Pack(bytes);
  if (total_words > 0) j["total_words"] = total_words;
  if (total_bytes > 0) j["total_bytes"] = total_bytes;
  return j;
}

absl::StatusOr<EvalUnits> EvalUnits::FromJson(const nlohmann::json& j) {
  if (!j.is_object()) return absl::InvalidArgumentError("units: not an object");
  EvalUnits u;
  u.kind = j.value("kind", "");
  if (u.kind != "document" && u.kind != "window") {
    return absl::InvalidArgumentError("units.kind: not 'document' or 'window'");
  }
  if (absl::Status s = Unpack(j, "loglik_f64", &u.loglik); !s.ok()) return s;
  if (absl::Status s = Unpack(j, "tokens_i32", &u.tokens); !s.ok()) return s;
  if (absl::Status s = Unpack(j, "greedy_u8", &u.greedy); !s.ok()) return s;
  if (absl::Status s = Unpack(j, "words_i32", &u.words); !s.ok()) return s;
  if (absl::Status s = Unpack(j, "bytes_i32", &u.bytes); !s.ok()) return s;
  if ((!u.tokens.empty() && u.tokens.size() != u.loglik.size()) ||
      (!u.greedy.empty() && u.greedy.size() != u.loglik.size()) ||
      (!u.words.empty() && u.words.size() != u.loglik.size()) ||
      (!u.bytes.empty() && u.bytes.size() != u.loglik.size()) ||
      j.value("n", int64_t{-1}) != static_cast<int64_t>(u.loglik.size())) {
    return absl::InvalidArgumentError("units: arrays of different lengths");
  }
  u.total_words = j.value("total_words", int64_t{0});
  u.total_bytes = j.value("total_bytes", int64_t{0});
  return u;
}

bool IsUnitMetric(const std::string& metric) {
  return metric == "acc" || metric == "ppl" || metric == "loglik_sum" || metric == "token_ppl" ||
         metric == "word_ppl" || metric == "byte_ppl" || metric == "bits_per_byte";
}

std::optional<double> UnitMetric(const EvalUnits& u, const std::string& metric,
                                 const std::vector<uint32_t>* idx) {
  const size_t n = idx != nullptr ? idx->size() : u.size();
  if (n == 0) return std::nullopt;
  auto at = [&](size_t i) { return idx != nullptr ? (*idx)[i] : static_cast<uint32_t>(i); };
  if (metric == "acc") {
    if (u.greedy.size() != u.size()) return std::nullopt;
    double hits = 0;
    for (size_t i = 0; i < n; ++i) hits += u.greedy[at(i)];
    return hits / n;
  }
  double ll = 0;
  for (size_t i = 0; i < n; ++i) ll += u.loglik[at(i)];
  if (metric == "loglik_sum") return ll;
  if (metric == "ppl") {  // LAMBADA's per-document mean; not defined for text documents
    return u.kind == "document" && u.words.empty() ? std::optional<double>(std::exp(-ll / n))
                                                   : std::nullopt;
  }
  // lm-eval's weighted perplexities over the (resampled) documents.
  auto weighted = [&](const std::vector<int32_t>& w) {
    double sum = 0;
    for (size_t i = 0; i < n; ++i) sum += w[at(i)];
    return sum;
  };
  if (u.words.size() == u.size() && metric == "word_ppl") {
    const double words = weighted(u.words);
    return words > 0 ? std::optional<double>(std::exp(-ll / words)) : std::nullopt;
  }
  if (u.bytes.size() == u.size() && (metric == "byte_ppl" || metric == "bits_per_byte")) {
    const double bytes = weighted(u.bytes);
    if (bytes <= 0) return std::nullopt;
    return metric == "byte_ppl" ? std::exp(-ll / bytes) : -ll / (bytes * std::log(2.0));
  }
  if (u.tokens.size() != u.size()) return std::nullopt;
  double tokens = 0;
  for (size_t i = 0; i < n; ++i) tokens += u.tokens[at(i)];
  if (tokens <= 0) return std::nullopt;
  const double per_token = -ll / tokens;
  if (metric == "token_ppl") return std::exp(per_token);
  double all_tokens = 0;  // the whole text's (word_ppl and bits_per_byte scale by it)
  for (int32_t t : u.tokens) all_tokens += t;
  if (metric == "word_ppl") {
    if (u.total_words <= 0) return std::nullopt;
    return std::exp(per_token * all_tokens / u.total_words);
  }
  if (metric == "byte_ppl" || metric == "bits_per_byte") {
    if (u.total_bytes <= 0) return std::nullopt;
    const double per_byte = per_token * all_tokens / u.total_bytes;
    return metric == "byte_ppl" ? std::exp(per_byte) : per_byte / std::log(2.0);
  }
  return std::nullopt;
}

}  // namespace kvsweep

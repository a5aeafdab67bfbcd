#include "spec/job_spec.h"

#include <cstdint>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/fingerprint.h"
#include "common/hf_hub.h"
#include "common/input_files.h"
#include "common/json_util.h"
#include "common/utf8.h"
#include "spec/method_spec.h"

namespace kvsweep {

namespace {
absl::Status Invalid(absl::string_view field, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", why));
}

bool IsControl(int32_t cp) { return cp < 0x20 || (cp >= 0x7F && cp <= 0x9F); }
bool IsBidiControl(int32_t cp) {
  return cp == 0x061C || cp == 0x200E || cp == 0x200F || (cp >= 0x202A && cp <= 0x202E) ||
         (cp >= 0x2066 && cp <= 0x2069);
}
}  // namespace

absl::Status CheckLabelText(absl::string_view text) {
  for (size_t i = 0, len = 0; i < text.size(); i += len) {
    const int32_t cp = DecodeUtf8(text, i, &len);
    if (cp < 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "is not valid UTF-8 (byte 0x%02X at offset %d)", static_cast<unsigned char>(text[i]), i));
    }
    if (IsControl(cp)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("contains the control character U+%04X; use printable text", cp));
    }
    if (IsBidiControl(cp)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("contains the Unicode bidi control U+%04X; use printable text", cp));
    }
  }
  return absl::OkStatus();
}

std::string EscapeLabelText(absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0, len = 0; i < text.size(); i += len) {
    const int32_t cp = DecodeUtf8(text, i, &len);
    if (cp < 0) {
      absl::StrAppendFormat(&out, "\\x%02X", static_cast<unsigned char>(text[i]));
    } else if (IsControl(cp) || IsBidiControl(cp)) {
      absl::StrAppendFormat(&out, "\\u%04X", cp);
    } else {
      out.append(text.data() + i, len);
    }
  }
  return out;
}

std::string DefaultCalibrationPath() {
  return JoinPath(AssetsDir(), "data/wikitext-2/wiki.valid.tokens");
}

nlohmann::json JobSpec::IdentityJson() const {
  nlohmann::json calib = nullptr;
  if (calibration) {
    calib = {{"sha256", calibration->sha256},
             {"windows", calibration->windows},
             {"window_len", calibration->window_len}};
  }
  nlohmann::json task_json = {{"name", task},
                              {"data_sha256", data_sha256},
                              {"limit", limit},
                              {"window", window},
                              {"context", context}};
  // Only where a task has a definition label, so that every other job id stays as it was.
  if (!task_definition.empty()) task_json["definition"] = task_definition;
  return {{"engine_version", engine_version},
          {"model_sha256", model_sha256},
          {"tokenizer_sha256", tokenizer_sha256},
          {"task", task_json},
          {"method", method},
          {"kv_heads", kv_heads},
          {"dtype", dtype},
          {"calibration", calib},
          {"diagnostics", diagnostics}};
}

std::string JobSpec::JobId() const { return CanonicalJsonHash(IdentityJson()); }

nlohmann::json JobSpec::ToJson() const {
  nlohmann::json j = IdentityJson();
  j["job_id"] = JobId();
  j["model_name"] = model_name;
  j["model_path"] = model_path;
  j["tokenizer_path"] = tokenizer_path;
  j["task"]["data_path"] = data_path;
  j["native_kv_heads"] = native_kv_heads;
  j["head_dim"] = head_dim;
  j["num_layers"] = num_layers;
  if (calibration) j["calibration"]["path"] = calibration->path;
  if (!input_sha256.empty()) j["inputs"] = input_sha256;
  return j;
}

absl::StatusOr<JobSpec> JobSpec::FromJson(const nlohmann::json& j) {
  JobSpec s;
  try {
    s.engine_version = j.at("engine_version").get<std::string>();
    s.model_sha256 = j.at("model_sha256").get<std::string>();
    s.tokenizer_sha256 = j.at("tokenizer_sha256").get<std::string>();
    const auto& t = j.at("task");
    s.task = t.at("name").get<std::string>();
    s.task_definition = t.value("definition", "");
    s.data_sha256 = t.at("data_sha256").get<std::string>();
    s.data_path = t.at("data_path").get<std::string>();
    s.limit = t.at("limit").get<int>();
    s.window = t.at("window").get<int>();
    s.context = t.at("context").get<int>();
    s.method = j.at("method").get<std::string>();
    s.kv_heads = j.at("kv_heads").get<int>();
    s.dtype = j.at("dtype").get<std::string>();
    s.diagnostics = j.at("diagnostics").get<bool>();
    s.model_name = j.at("model_name").get<std::string>();
    s.model_path = j.at("model_path").get<std::string>();
    s.tokenizer_path = j.value("tokenizer_path", "");
    s.native_kv_heads = j.at("native_kv_heads").get<int>();
    s.head_dim = j.at("head_dim").get<int>();
    s.num_layers = j.at("num_layers").get<int>();
    if (!j.at("calibration").is_null()) {
      const auto& c = j.at("calibration");
      s.calibration =
          CalibrationSpec{c.at("path").get<std::string>(), c.at("sha256").get<std::string>(),
                          c.at("windows").get<int>(), c.at("window_len").get<int>()};
    }
    if (j.contains("inputs")) {
      s.input_sha256 = j.at("inputs").get<std::map<std::string, std::string>>();
    }
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("job spec JSON: ", e.what()));
  }
  if (j.contains("job_id") && j["job_id"].is_string() && j["job_id"] != s.JobId()) {
    return absl::InvalidArgumentError("job spec JSON: job_id does not match its content");
  }
  return s;
}

absl::StatusOr<JobSpec> ResolveJob(const JobRequest& req) {
  JobSpec s;
  if (req.model_path.empty()) return Invalid("model", "no model path given");
  if (absl::Status l = CheckLabelText(req.model_name); !l.ok()) {
    return Invalid("model_name", l.message());
  }
  if (!IsKnownTask(req.task)) {
    return Invalid("task", UnknownTaskMessage(req.task));
  }
  if (req.data_path.empty()) return Invalid("data", "no data file given");
  if (absl::StatusOr<std::string> d = DtypeName(req.dtype); !d.ok()) {
    return Invalid("dtype", d.status().message());
  }
  if (req.limit < 0) return Invalid("limit", absl::StrCat(req.limit, " is negative"));
  if (req.window < 0) return Invalid("window", absl::StrCat(req.window, " is negative"));
  if (req.max_window < 0)
    return Invalid("max_window", absl::StrCat(req.max_window, " is negative"));
  if (req.kv_heads < 0) return Invalid("kv_heads", absl::StrCat(req.kv_heads, " is negative"));

  // The files first: with a path policy, nothing (config.json included) is opened before every
  // file of the model has passed it.
  // A Hugging Face repo id ("org/name") that is not a path names its snapshot in the hub cache.
  std::string repo_label;
  absl::StatusOr<std::string> model_path =
      ResolveModelReference(req.model_path, /*base_dir=*/"", &repo_label);
  if (!model_path.ok()) return model_path.status();
  absl::StatusOr<ModelFiles> mf = ResolveModelFiles(*model_path, req.path_policy);
  if (!mf.ok()) return mf.status();
  absl::StatusOr<ModelConfig> cfg = ReadModelConfig(*model_path);
  if (!cfg.ok()) return cfg.status();
  s.model_path = *model_path;
  s.model_name = !req.model_name.empty() ? req.model_name
                 : !repo_label.empty()   ? repo_label
                                         : BaseName(*model_path);
  s.head_dim = cfg->head_dim;
  s.num_layers = cfg->num_layers;
  s.native_kv_heads = cfg->num_kv_heads;

  // Window and context.
  int w = req.window;
  if (w == 0) {
    w = cfg->max_positions;
    if (req.max_window > 0 && req.max_window < w) w = req.max_window;
  }
  if (w > cfg->max_positions) {
    return Invalid("window",
                   absl::StrCat(w, " exceeds the model's max positions ", cfg->max_positions));
  }
  if (w < 2) return Invalid("window", absl::StrCat(w, " is too small (need >= 2)"));
  if (req.context < 1 || req.context > w) {
    return Invalid("context", absl::StrCat(req.context, " out of range [1, window=", w, "]"));
  }
  s.window = w;
  s.context = FindTask(req.task)->takes_context ? req.context : 1;
  s.limit = req.limit;
  s.task = req.task;
  s.task_definition = TaskDefinition(req.task);
  absl::StatusOr<std::string> dtype = ResolveDtype(req.dtype, *cfg);
  if (!dtype.ok()) return Invalid("dtype", dtype.status().message());
  s.dtype = *dtype;
  s.diagnostics = req.diagnostics;

  // GQA pooling.
  const int kvh = req.kv_heads == 0 ? cfg->num_kv_heads : req.kv_heads;
  if (kvh > cfg->num_kv_heads || cfg->num_kv_heads % kvh != 0) {
    return Invalid("kv_heads", absl::StrCat(kvh, " does not divide the model's ", cfg->num_kv_heads,
                                            " KV heads"));
  }
  s.kv_heads = kvh;

  // Method.
  absl::StatusOr<KvMethod> m = ParseKvMethod(req.method);
  if (!m.ok()) return m.status();
  absl::StatusOr<KvMethod> rm = ResolveKvMethod(*m, cfg->head_dim, cfg->num_layers);
  if (!rm.ok()) return rm.status();
  s.method = rm->ToString();
  if (rm->needs_calibration()) {
    CalibrationSpec c;
    c.path = req.calibration_path.empty() ? DefaultCalibrationPath() : req.calibration_path;
    if (req.path_policy != nullptr) {
      if (absl::Status a = req.path_policy->Check(c.path); !a.ok()) {
        return absl::Status(a.code(), absl::StrCat("calibration: ", a.message()));
      }
    }
    if (!PathExists(c.path)) {
      return absl::NotFoundError(absl::StrCat("calibration: method '", s.method,
                                              "' needs a calibration text and '", c.path,
                                              "' does not exist (pass --calibration FILE)"));
    }
    if (req.calibration_windows < 1 || req.calibration_len < 2) {
      return Invalid("calibration", "windows must be >= 1 and window length >= 2");
    }
    c.windows = req.calibration_windows;
    c.window_len = req.calibration_len;
    absl::StatusOr<std::string> h = FileSha256Cached(c.path);
    if (!h.ok()) return h.status();
    c.sha256 = *h;
    s.calibration = c;
  }

  // Fingerprints: exactly the files the engine's loaders read (common/input_files.h).
  absl::StatusOr<std::string> mh = FilesFingerprint(mf->All());
  if (!mh.ok()) return mh.status();
  s.model_sha256 = *mh;
  s.tokenizer_path = req.tokenizer_path;
  if (cfg->arch == Arch::kLlama2c && req.tokenizer_path.empty()) {
    return Invalid("tokenizer", "a llama2.c model needs --tokenizer tok*.bin");
  }
  absl::StatusOr<TokenizerFiles> tf = ResolveTokenizerFiles(
      req.tokenizer_path.empty() ? *model_path : req.tokenizer_path, req.path_policy);
  if (!tf.ok()) return tf.status();
  absl::StatusOr<std::string> th = FilesFingerprint(tf->All());
  if (!th.ok()) return th.status();
  s.tokenizer_sha256 = *th;
  // Per-file hashes (memoized by FilesFingerprint: no second read).
  std::vector<std::string> inputs = mf->All();
  for (const std::string& f : tf->All()) inputs.push_back(f);
  for (const std::string& f : inputs) {
    absl::StatusOr<std::string> h = FileSha256Cached(f);
    if (!h.ok()) return h.status();
    s.input_sha256[f] = *h;
  }
  if (s.calibration) s.input_sha256[s.calibration->path] = s.calibration->sha256;
  if (req.path_policy != nullptr) {
    if (absl::Status a = req.path_policy->Check(req.data_path); !a.ok()) {
      return absl::Status(a.code(), absl::StrCat("data: ", a.message()));
    }
  }
  if (!PathExists(req.data_path)) {
    return absl::NotFoundError(absl::StrCat("data: '", req.data_path, "' does not exist"));
  }
  if (absl::Status r = CheckRegularFile(req.data_path); !r.ok()) {
    return absl::Status(r.code(), absl::StrCat("data: ", r.message()));
  }
  s.data_path = req.data_path;
  absl::StatusOr<std::string> dh = FileSha256Cached(req.data_path);
  if (!dh.ok()) return dh.status();
  s.data_sha256 = *dh;
  s.input_sha256[s.data_path] = s.data_sha256;
  return s;
}

namespace {

absl::Status Changed(const std::string& path) {
  return absl::FailedPreconditionError(absl::StrCat("input changed since submit: ", path));
}

// Hashes `files`; the first whose hash differs from the spec's record of it is the one named.
// Then the aggregate must equal `want` (a file added to or dropped from the set changes only
// that), else `whole` is named.
absl::Status VerifyFileSet(const JobSpec& spec, const std::vector<std::string>& files,
                           const std::string& want, const std::string& whole) {
  for (const std::string& f : files) {
    absl::StatusOr<std::string> h = FileSha256Cached(f);
    if (!h.ok()) {
      if (h.status().code() == absl::StatusCode::kNotFound) return Changed(f);
      return h.status();
    }
    auto it = spec.input_sha256.find(f);
    if (it != spec.input_sha256.end() && it->second != *h) return Changed(f);
  }
  absl::StatusOr<std::string> agg = FilesFingerprint(files);
  if (!agg.ok()) return agg.status();
  if (*agg != want) {
    for (const std::string& f : files) {
      if (spec.input_sha256.count(f) == 0) return Changed(f);
    }
    return Changed(whole);
  }
  return absl::OkStatus();
}

absl::Status VerifyOneFile(const std::string& path, const std::string& want) {
  absl::StatusOr<std::string> h = FileSha256Cached(path);
  if (!h.ok()) {
    if (h.status().code() == absl::StatusCode::kNotFound) return Changed(path);
    return h.status();
  }
  return *h == want ? absl::OkStatus() : Changed(path);
}

}  // namespace

absl::Status VerifyJobInputs(const JobSpec& spec) {
  absl::StatusOr<ModelFiles> mf = ResolveModelFiles(spec.model_path);
  if (!mf.ok()) {
    if (mf.status().code() == absl::StatusCode::kNotFound) return Changed(spec.model_path);
    return mf.status();
  }
  if (absl::Status s = VerifyFileSet(spec, mf->All(), spec.model_sha256, spec.model_path);
      !s.ok()) {
    return s;
  }
  const std::string tok = spec.tokenizer_path.empty() ? spec.model_path : spec.tokenizer_path;
  absl::StatusOr<TokenizerFiles> tf = ResolveTokenizerFiles(tok);
  if (!tf.ok()) {
    if (tf.status().code() == absl::StatusCode::kNotFound) return Changed(tok);
    return tf.status();
  }
  if (absl::Status s = VerifyFileSet(spec, tf->All(), spec.tokenizer_sha256, tok); !s.ok()) {
    return s;
  }
  if (absl::Status s = VerifyOneFile(spec.data_path, spec.data_sha256); !s.ok()) return s;
  if (spec.calibration) {
    return VerifyOneFile(spec.calibration->path, spec.calibration->sha256);
  }
  return absl::OkStatus();
}

}  // namespace kvsweep

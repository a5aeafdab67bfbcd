// Job specs: what one evaluation is, resolved and canonical.
//
// A JobRequest is what a user writes (paths, a method string, optional knobs). ResolveJob
// checks it without loading weights (config.json, file existence, method vs. head_dim, kv_heads
// divides, window/context ranges), fills every default, and fingerprints the inputs. The
// resulting JobSpec's identity is sha256 of the canonical JSON of everything that changes the
// number (docs/architecture.md, "Job identity"); paths and names are carried along but not hashed.
#ifndef KVSWEEP_SPEC_JOB_SPEC_H_
#define KVSWEEP_SPEC_JOB_SPEC_H_

#include <map>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/model_config.h"
#include "common/path_policy.h"
#include "nlohmann/json.hpp"
#include "spec/task.h"

namespace kvsweep {

// Bump when a change to the engine changes any number it reports.
inline constexpr char kEngineVersion[] = "kvsweep-engine/3";

struct JobRequest {
  std::string model_path;      // a path, or a Hugging Face repo id (common/hf_hub.h)
  std::string model_name;      // display name; defaults to the repo id or the path's basename
  std::string tokenizer_path;  // empty: the model directory's tokenizer
  std::string task;            // a task of spec/task.h
  std::string data_path;
  int limit = 0;                 // first documents: lambada_openai, wikitext (0 = all)
  int window = 0;                // W (0 = model max positions, capped by max_window)
  int max_window = 0;            // cap for the default W (0 = none)
  int context = 1;               // C for rolling windows
  std::string method = "none";   // a KvMethod (spec/method_spec.h)
  int kv_heads = 0;              // 0 = native
  std::string dtype = "fp32";    // fp32 | bf16 | fp16, transformers' names, or auto (DtypeName)
  std::string calibration_path;  // empty: assets' wiki.valid.tokens if the method needs one
  int calibration_windows = 16;
  int calibration_len = 512;
  bool diagnostics = false;
  // If set, every path (model, tokenizer, data, calibration, and each file of the model and
  // tokenizer) must pass it before it is opened (the coordinator's --allow-path roots).
  const PathPolicy* path_policy = nullptr;
};

struct CalibrationSpec {
  std::string path;
  std::string sha256;
  int windows = 16;
  int window_len = 512;
};

struct JobSpec {
  std::string model_name;
  std::string model_path;
  std::string model_sha256;
  std::string tokenizer_path;  // empty: the model directory
  std::string tokenizer_sha256;
  std::string task;
  // TaskDefinition(task) (spec/task.h) when the spec was resolved; part of the identity when
  // non-empty. Empty in specs resolved before the task had one (their numbers follow the earlier
  // definition).
  std::string task_definition;
  std::string data_path;
  std::string data_sha256;
  int limit = 0;
  int window = 0;      // resolved W
  int context = 1;     // resolved C
  std::string method;  // canonical KvMethod, resolved against head_dim and layers
  int kv_heads = 0;    // resolved (native when not pooled)
  int native_kv_heads = 0;
  int head_dim = 0;
  int num_layers = 0;
  std::string dtype = "fp32";
  std::optional<CalibrationSpec> calibration;
  bool diagnostics = false;
  std::string engine_version = kEngineVersion;
  // sha256 of each input file at resolve time (model and tokenizer files as listed by
  // common/input_files.h, data, calibration), by path. Not part of the identity (the aggregate
  // hashes above are); lets the worker name the file that changed. Empty in specs written
  // before it existed.
  std::map<std::string, std::string> input_sha256;

  // Everything that changes the number, and nothing else.
  nlohmann::json IdentityJson() const;
  // sha256 hex of CanonicalJson(IdentityJson()).
  std::string JobId() const;
  // Identity plus paths, names and the job id (what `eval --format json` prints as "spec").
  nlohmann::json ToJson() const;
  static absl::StatusOr<JobSpec> FromJson(const nlohmann::json& j);
};

// Validates and resolves a request (see file comment). Errors are kInvalidArgument or
// kNotFound with a one-line message naming the offending field or path.
absl::StatusOr<JobSpec> ResolveJob(const JobRequest& req);

// Checks, before a job is evaluated, that its input files still hash to what the spec says
// (model and tokenizer files re-resolved from their paths, data, calibration). Unchanged files
// cost a stat: hashes are cached per (real path, size, mtime) (FileSha256Cached). A file that
// changed, appeared, or vanished since the spec was resolved is kFailedPrecondition with exactly
// "input changed since submit: PATH" (PATH: the file, or the model/tokenizer path when only the
// set of files changed). Other I/O errors are returned as they are.
absl::Status VerifyJobInputs(const JobSpec& spec);

// OK when `text`, a name or label a user gave (a model, task or method label, a model name),
// is valid UTF-8 without control characters (C0, DEL, C1) or Unicode bidi controls (U+061C,
// U+200E, U+200F, U+202A-U+202E, U+2066-U+2069). Labels reach tables, CSV, JSON and SQL views:
// a NUL cuts them short there, a newline breaks rows and bidi controls reorder what is shown.
// Else kInvalidArgument naming the first such character ("contains the control character
// U+0000"), without quoting `text`.
absl::Status CheckLabelText(absl::string_view text);
// `text` with every character CheckLabelText refuses written as \uXXXX (bytes that are not
// UTF-8 as \xNN): user input quoted in a one-line error message.
std::string EscapeLabelText(absl::string_view text);

// The assets' default calibration text (AssetsDir(): common/path_policy.h).
std::string DefaultCalibrationPath();

}  // namespace kvsweep

#endif  // KVSWEEP_SPEC_JOB_SPEC_H_

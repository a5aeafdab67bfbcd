#include "worker/engine/eval.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <ctime>

#include "absl/strings/str_cat.h"
#include "common/build_info.h"
#include "common/file_util.h"
#include "common/log.h"
#include "common/utf8.h"
#include "spec/ledger.h"
#include "spec/method_spec.h"
#include "worker/engine/diagnostics.h"
#include "worker/engine/kv/kv_codec.h"
#include "worker/engine/placement.h"
#include "worker/engine/tasks/task.h"
#include "worker/engine/tuned_gemm.h"

#if defined(__has_include)
#if __has_include(<torch/version.h>)
#include <torch/version.h>
#endif
#endif
#ifndef TORCH_VERSION
#define TORCH_VERSION "unknown"
#endif
#ifndef KVSWEEP_VERSION
#define KVSWEEP_VERSION "unknown"
#endif

namespace kvsweep::engine {
namespace {

double Seconds(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

std::string UtcNow() {
  std::time_t t = std::time(nullptr);
  std::tm tm;
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string Hostname() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof(buf) - 1) != 0) return "unknown";
  return buf;
}

// First `windows` consecutive windows of `len` tokens of the calibration text (no prefix).
absl::StatusOr<std::vector<std::vector<int32_t>>> CalibrationWindows(const CalibrationSpec& c,
                                                                     const Tokenizer& tok) {
  absl::StatusOr<std::string> text = ReadFile(c.path, kMaxDataFileBytes);
  if (!text.ok()) return text.status();
  if (int64_t bad = FirstInvalidUtf8Byte(*text); bad >= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("calibration text ", c.path, " is not valid UTF-8 at byte ", bad));
  }
  absl::StatusOr<std::vector<int32_t>> ids = tok.Encode(*text);
  if (!ids.ok()) return ids.status();
  const int64_t need = static_cast<int64_t>(c.windows) * c.window_len;
  if (static_cast<int64_t>(ids->size()) < need) {
    return absl::InvalidArgumentError(absl::StrCat("calibration text ", c.path, " has ",
                                                   ids->size(), " tokens; ", c.windows,
                                                   " windows of ", c.window_len, " need ", need));
  }
  std::vector<std::vector<int32_t>> out;
  for (int w = 0; w < c.windows; ++w) {
    out.emplace_back(ids->begin() + static_cast<int64_t>(w) * c.window_len,
                     ids->begin() + static_cast<int64_t>(w + 1) * c.window_len);
  }
  return out;
}

}  // namespace

Engine::Engine(EngineOptions options) : options_(std::move(options)) {
  if (options_.threads > 0) at::set_num_threads(options_.threads);
}

absl::Status Engine::EnsureModel(const JobSpec& spec, torch::Device device,
                                 torch::ScalarType dtype) {
  const std::string key =
      absl::StrCat(spec.model_sha256, "|", spec.kv_heads, "|", DtypeName(dtype), "|", device.str());
  if (key != model_key_) {
    model_.reset();
    codecs_.clear();
    model_key_.clear();
    auto t0 = std::chrono::steady_clock::now();
    ModelOptions mo;
    mo.device = device;
    // --device cuda:0,cuda:1: the layers split across the group (worker/engine/placement.h).
    if (auto group = ParsePipelineDevices(options_.device); group.ok() && group->size() > 1) {
      mo.pipeline = *group;
    }
    mo.dtype = dtype;
    mo.kv_heads = spec.kv_heads == spec.native_kv_heads ? 0 : spec.kv_heads;
    absl::StatusOr<std::unique_ptr<Model>> m = Model::Load(spec.model_path, mo);
    if (!m.ok()) return m.status();
    model_ = std::move(*m);
    model_key_ = key;
    model_path_ = spec.model_path;
    last_load_s_ = Seconds(t0, std::chrono::steady_clock::now());
  } else {
    last_load_s_ = 0;
  }
  const std::string tkey =
      absl::StrCat(spec.tokenizer_sha256, "|", spec.tokenizer_path, "|", spec.model_path);
  if (tkey != tokenizer_key_) {
    tokenizer_.reset();
    tokenizer_key_.clear();
    const std::string path = spec.tokenizer_path.empty() ? spec.model_path : spec.tokenizer_path;
    absl::StatusOr<std::unique_ptr<Tokenizer>> t = LoadTokenizer(path);
    if (!t.ok()) return t.status();
    if ((*t)->vocab_size() > model_->config().vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokenizer ", path, " has ", (*t)->vocab_size(),
                       " tokens but the model's vocabulary has ", model_->config().vocab_size,
                       " (tokenizer and model do not belong together)"));
    }
    tokenizer_ = std::move(*t);
    tokenizer_key_ = tkey;
  }
  return absl::OkStatus();
}

absl::StatusOr<nlohmann::json> Engine::Run(const JobSpec& spec,
                                           const std::function<bool(double)>& progress) {
  // The engine boundary: whatever libtorch throws becomes a Status here.
  return GuardTorch("evaluating " + spec.model_name, [&] { return RunImpl(spec, progress); });
}

absl::StatusOr<nlohmann::json> Engine::RunImpl(const JobSpec& spec,
                                               const std::function<bool(double)>& progress) {
  const auto t_start = std::chrono::steady_clock::now();
  const std::string started = UtcNow();
  // A pipeline group's first device stands for it here (its embeddings, the job's inputs).
  absl::StatusOr<std::vector<torch::Device>> devices = ParsePipelineDevices(options_.device);
  if (!devices.ok()) return devices.status();
  absl::StatusOr<torch::Device> device = devices->front();
  if (!device.ok()) return device.status();
  absl::StatusOr<torch::ScalarType> dtype = ParseDtype(spec.dtype);
  if (!dtype.ok()) return dtype.status();
  if (absl::Status d = CheckDtypeOnDevice(*dtype, *device); !d.ok()) return d;
  absl::StatusOr<KvMethod> parsed = ParseKvMethod(spec.method);
  if (!parsed.ok()) return parsed.status();
  absl::StatusOr<KvMethod> method = ResolveKvMethod(*parsed, spec.head_dim, spec.num_layers);
  if (!method.ok()) return method.status();
  absl::StatusOr<std::unique_ptr<Task>> task = NewTask(spec.task);
  if (!task.ok()) return task.status();
  // A spec resolved under another definition of its task (`wikitext` before it was lm-eval's
  // per-document task) names numbers this engine does not compute.
  if (spec.task_definition != TaskDefinition(spec.task)) {
    return absl::FailedPreconditionError(
        absl::StrCat("job spec defines task '", spec.task, "' as '", spec.task_definition,
                     "' but this engine computes '", TaskDefinition(spec.task),
                     "'; resolve (submit) the job again"));
  }

  // The inputs must be the bytes the job id names: a file edited after submit would otherwise
  // be evaluated and its result stored (and later reused) under the old id. Unchanged files cost
  // a stat (hashes cached per path, size and mtime).
  if (absl::Status v = VerifyJobInputs(spec); !v.ok()) return v;
  absl::Status st = EnsureModel(spec, *device, *dtype);
  if (!st.ok()) return st;
  // Peak over the job: weights plus everything it allocates (on each device of a pipeline).
  for (const torch::Device& d : *devices) ResetPeakDeviceBytes(d);
  const ModelConfig& cfg = model_->config();
  if (cfg.head_dim != spec.head_dim || cfg.num_kv_heads != spec.native_kv_heads) {
    return absl::InvalidArgumentError(absl::StrCat(
        "job spec was resolved for head_dim ", spec.head_dim, " / ", spec.native_kv_heads,
        " KV heads but the model has ", cfg.head_dim, " / ", cfg.num_kv_heads));
  }

  // Codec (prepared once per model + method + calibration).
  const auto t_codec = std::chrono::steady_clock::now();
  const std::string ckey =
      absl::StrCat(method->ToString(), "|", spec.calibration ? spec.calibration->sha256 : "", "|",
                   spec.calibration ? spec.calibration->windows : 0, "|",
                   spec.calibration ? spec.calibration->window_len : 0);
  std::shared_ptr<KvCodec> codec;
  if (auto it = codecs_.find(ckey); it != codecs_.end()) {
    codec = it->second;
  } else {
    absl::StatusOr<std::unique_ptr<KvCodec>> c = NewKvCodec(*method);
    if (!c.ok()) return c.status();
    CodecContext ctx;
    ctx.model = model_.get();
    if (method->needs_calibration()) {
      if (!spec.calibration) {
        return absl::FailedPreconditionError(
            absl::StrCat("method '", method->ToString(), "' needs a calibration text"));
      }
      absl::StatusOr<std::vector<std::vector<int32_t>>> w =
          CalibrationWindows(*spec.calibration, *tokenizer_);
      if (!w.ok()) return w.status();
      ctx.calibration_windows = std::move(*w);
    }
    absl::Status ps =
        GuardTorch("preparing codec " + method->ToString(), [&] { return (*c)->Prepare(ctx); });
    if (!ps.ok()) return ps;
    codec = std::shared_ptr<KvCodec>(std::move(*c));
    codecs_[ckey] = codec;
  }
  const double codec_s = Seconds(t_codec, std::chrono::steady_clock::now());

  // Task data.
  const auto t_prep = std::chrono::steady_clock::now();
  std::optional<int32_t> prefix = tokenizer_->bos_id();
  if (!prefix) prefix = tokenizer_->eos_id();
  if (!prefix) prefix = cfg.bos_token_id;
  if (!prefix) prefix = cfg.eos_token_id;
  if (!prefix) {
    return absl::InvalidArgumentError(
        "neither the tokenizer nor the model config names a BOS or EOS token (needed as the prefix "
        "token)");
  }
  TaskInput in;
  in.data_path = spec.data_path;
  in.tokenizer = tokenizer_.get();
  in.window = spec.window;
  in.context = spec.context;
  in.limit = spec.limit;
  in.prefix_id = *prefix;
  absl::StatusOr<std::vector<ScoreRequest>> requests = (*task)->Prepare(in);
  if (!requests.ok()) return requests.status();
  const double prep_s = Seconds(t_prep, std::chrono::steady_clock::now());
  KV_LOG(INFO) << spec.task << ": " << requests->size() << " sequences, method "
               << method->ToString() << ", kv_heads " << model_->kv_heads();

  // Score.
  const auto t_score = std::chrono::steady_clock::now();
  ScorerOptions so;
  so.batch_tokens = options_.batch_tokens;
  ScoreStats stats;
  const int64_t tuned_before = TunedGemmCount();
  absl::StatusOr<std::vector<ScoreResult>> results =
      ScoreRequests(*model_, codec.get(), *requests, so, progress, &stats);
  if (!results.ok()) return results.status();
  const double score_s = Seconds(t_score, std::chrono::steady_clock::now());
  // Products the scoring ran with tuned_gemm.h's measured algorithms (0: all libtorch's).
  const int64_t tuned_products = TunedGemmCount() - tuned_before;

  nlohmann::json diagnostics;
  double diag_s = 0;
  if (spec.diagnostics) {
    const auto t_diag = std::chrono::steady_clock::now();
    absl::StatusOr<nlohmann::json> d =
        RunDiagnostics(*model_, codec.get(), method->primary(), *requests, DiagnosticsOptions{});
    if (!d.ok()) return d.status();
    diagnostics = std::move(*d);
    diag_s = Seconds(t_diag, std::chrono::steady_clock::now());
  }

  nlohmann::json metrics = (*task)->Metrics(*results);
  const int ctx_len =
      std::max<int>(1, static_cast<int>(std::lround(static_cast<double>(stats.forward_tokens) /
                                                    std::max<int64_t>(1, stats.sequences))));
  absl::StatusOr<Ledger> ledger = ComputeLedger(*method, cfg.head_dim, model_->kv_heads(),
                                                cfg.num_kv_heads, cfg.num_layers, ctx_len);
  if (!ledger.ok()) return ledger.status();
  nlohmann::json ledger_json = ledger->ToJson();
  ledger_json["context_len_rule"] = "mean tokens per evaluated sequence";
  if (double measured = codec->MeasuredBytesPerToken(); measured >= 0) {
    ledger_json["measured_bytes_per_token"] = measured;
    ledger_json["ledger_bytes_per_token"] = (ledger->k.total() + ledger->v.total()) / 8.0;
  }

  const double wall_s = Seconds(t_start, std::chrono::steady_clock::now());
  nlohmann::json out;
  out["spec"] = spec.ToJson();
  out["metrics"] = {{spec.task, metrics}};
  out["ledger"] = ledger_json;
  if (spec.diagnostics) out["diagnostics"] = std::move(diagnostics);
  int64_t peak_device_bytes = -1;  // a pipeline: its fullest device's
  for (const torch::Device& d : *devices) {
    peak_device_bytes = std::max(peak_device_bytes, PeakDeviceBytes(d));
  }
  out["timing"] = {{"wall_s", wall_s},
                   {"load_s", last_load_s_},
                   {"codec_s", codec_s},
                   {"prepare_s", prep_s},
                   {"score_s", score_s},
                   {"diagnostics_s", diag_s},
                   {"tokens_per_s", score_s > 0 ? stats.forward_tokens / score_s : 0.0},
                   {"forward_tokens", stats.forward_tokens},
                   {"padded_tokens", stats.padded_tokens},
                   {"scored_tokens", stats.scored_tokens},
                   {"sequences", stats.sequences},
                   {"peak_device_bytes", peak_device_bytes},
                   {"batch_tokens", options_.batch_tokens > 0
                                        ? options_.batch_tokens
                                        : DefaultBatchTokens(*model_, codec.get(), *requests)}};
  out["provenance"] = {{"engine_version", kEngineVersion},
                       {"kvsweep_version", KVSWEEP_VERSION},
                       {"git_commit", BuildGitCommit()},
                       {"libtorch", TORCH_VERSION},
                       {"device", devices->size() > 1 ? options_.device : device->str()},
                       {"device_name", DeviceName(*device)},
                       {"dtype", DtypeName(*dtype)},
                       {"threads", at::get_num_threads()},
                       {"host", Hostname()},
                       {"started_at", started},
                       {"arch", ArchName(cfg.arch)},
                       {"parameters", model_->num_parameters()},
                       {"tokenizer", tokenizer_->kind()},
                       {"prefix_token_id", *prefix},
                       {"model_reused", last_load_s_ == 0},
                       {"tuned_gemm_products", tuned_products}};
  return out;
}

}  // namespace kvsweep::engine

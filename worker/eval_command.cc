#include "worker/eval_command.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <iostream>

#include "CLI/CLI.hpp"
#include "absl/strings/str_format.h"
#include "common/log.h"
#include "spec/job_result.h"
#include "spec/job_spec.h"
#include "spec/task.h"
#include "worker/engine/eval.h"
#include "worker/engine/lm_eval_format.h"

namespace kvsweep {
namespace {

int ExitCodeFor(const absl::Status& s) {
  switch (s.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kUnimplemented:
    case absl::StatusCode::kOutOfRange:
      return 2;
    case absl::StatusCode::kResourceExhausted:
      return 3;
    default:
      return 1;
  }
}

int Fail(const absl::Status& s) {
  std::string msg(s.message());
  for (char& c : msg)
    if (c == '\n') c = ' ';
  std::fprintf(stderr, "error: %s\n", msg.c_str());
  return ExitCodeFor(s);
}

// Progress on stderr: a line at most every 2 s (and at the end).
class ProgressPrinter {
 public:
  bool operator()(double f) {
    auto now = std::chrono::steady_clock::now();
    const double el = std::chrono::duration<double>(now - start_).count();
    if (f < 1.0 && std::chrono::duration<double>(now - last_).count() < 2.0) return true;
    last_ = now;
    const double eta = f > 0 ? el * (1 - f) / f : 0;
    std::fprintf(stderr, "%s[eval] %5.1f%%  elapsed %.0fs  eta %.0fs%s", tty_ ? "\r" : "", 100 * f,
                 el, eta, tty_ && f < 1.0 ? "" : "\n");
    std::fflush(stderr);
    return true;
  }

 private:
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now(), last_ = start_;
  bool tty_ = isatty(STDERR_FILENO);
};

std::string TextSummary(const JobResult& r) {
  std::string out;
  const nlohmann::json& spec = r.spec();
  out +=
      absl::StrFormat("model %s  task %s  method %s  kv_heads %d\n", spec.value("model_name", ""),
                      r.task(), spec.value("method", ""), spec.value("kv_heads", 0));
  for (const std::string& task : r.tasks()) {
    const nlohmann::json& metrics = r.metrics(task);
    for (auto m = metrics.begin(); m != metrics.end(); ++m) {
      if (m.key() == "units") {  // per-document/window values: in --format json
        out += absl::StrFormat("  %-14s %s %ss (per-unit values in --format json)\n", "units",
                               m.value().value("n", nlohmann::json(0)).dump(),
                               m.value().value("kind", std::string("unit")));
        continue;
      }
      out += absl::StrFormat("  %-14s %s\n", m.key(), m.value().dump());
    }
  }
  out += absl::StrFormat("  %-14s %.6g (payload %.6g)\n", "kv fraction",
                         r.LedgerNumber("fraction_total").value_or(0),
                         r.LedgerNumber("fraction_payload").value_or(0));
  out += absl::StrFormat("  %-14s %.2fs (%.0f tokens/s)\n", "wall",
                         r.TimingNumber("wall_s").value_or(0),
                         r.TimingNumber("tokens_per_s").value_or(0));
  return out;
}

}  // namespace

int RunEvalCommand(int argc, char** argv) {
  CLI::App app{"Evaluate one model on one task with a KV-cache method; result on stdout.",
               "kvsweep-worker eval"};
  JobRequest req;
  engine::EngineOptions eng;
  std::string format = "text";
  app.add_option("--model", req.model_path,
                 "Hugging Face model directory, repo id in the hub cache (org/name[@rev]) or "
                 "llama2.c .bin")
      ->required();
  app.add_option("--model-name", req.model_name,
                 "Display name (default: the repo id or the directory name)");
  app.add_option("--tokenizer", req.tokenizer_path,
                 "Tokenizer file or directory (default: the model's)");
  app.add_option("--task", req.task, TaskHelp())->required();
  app.add_option("--data", req.data_path,
                 "Data file (LAMBADA jsonl; wiki.test.raw for wikitext; any UTF-8 text for the "
                 "stream tasks)")
      ->required();
  app.add_option("--method", req.method,
                 "KV method spec (none, quant:bits=4, rank:r=16, hybrid:r=32,bits=8, ...)");
  app.add_option("--kv-heads", req.kv_heads,
                 "Mean-pool K/V heads down to N (must divide the native count)");
  app.add_option("--limit", req.limit, "Score the first N documents (lambada_openai, wikitext)");
  app.add_option("--window", req.window,
                 "W: tokens per window (default: the model's max positions)");
  app.add_option("--max-window", req.max_window, "Cap for the default W");
  app.add_option("--context", req.context,
                 "C: rolling-window context (1 = lm-eval default; W/2+1 = sliding)");
  app.add_option("--dtype", req.dtype,
                 "fp32 | bf16 | fp16 (or float32 | bfloat16 | float16) | auto (the checkpoint's)");
  app.add_option("--device", eng.device, "cpu | cuda | cuda:N");
  app.add_option("--threads", eng.threads, "CPU threads (default: libtorch's)");
  app.add_option("--batch-tokens", eng.batch_tokens,
                 "Tokens per forward batch (default: per device)");
  app.add_option("--calibration", req.calibration_path,
                 "Calibration text for PCA bases (default: assets' wiki.valid.tokens)");
  app.add_option("--calibration-windows", req.calibration_windows, "Calibration windows");
  app.add_option("--calibration-len", req.calibration_len, "Tokens per calibration window");
  app.add_flag("--diagnostics", req.diagnostics,
               "Per-layer attention KL, top-1 flip rate, damage ratio");
  app.add_option("--format", format, "json | text | lm-eval (lm-evaluation-harness's results file)")
      ->check(CLI::IsMember({"json", "text", "lm-eval"}));
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    std::cout << app.help();
    return 0;
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
  if (eng.threads < 0) return Fail(absl::InvalidArgumentError("--threads must be >= 0"));
  if (eng.batch_tokens < 0) return Fail(absl::InvalidArgumentError("--batch-tokens must be >= 0"));
  absl::StatusOr<JobSpec> spec = ResolveJob(req);
  if (!spec.ok()) return Fail(spec.status());
  engine::Engine engine(eng);
  ProgressPrinter progress;
  absl::StatusOr<nlohmann::json> r = engine.Run(*spec, [&](double f) { return progress(f); });
  if (!r.ok()) return Fail(r.status());
  // Every format passes the check the coordinator makes of a worker's result (e.g. a model that
  // produces NaN gives a non-finite loglik_sum: an error, not a result).
  absl::StatusOr<JobResult> result = JobResult::FromJson(*r);
  if (!result.ok()) return Fail(result.status());
  if (format == "json") {
    std::cout << r->dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
  } else if (format == "lm-eval") {
    std::cout << engine::LmEvalOutput(*r).dump(2, ' ', false,
                                               nlohmann::json::error_handler_t::replace)
              << std::endl;
  } else {
    std::cout << TextSummary(*result);
  }
  return 0;
}

}  // namespace kvsweep

// Engine throughput (kvsweep-engine-bench).
//
// Default (CPU suite): WikiText scoring of ref-gpt2 and ref-llama, the full evaluation path
// (tokenize, rolling windows, batched forward, LM head on scored positions, log-softmax) in
// tokens/s beside a baseline measured in the same process: the bare forward pass over the same
// windows with no LM head (an upper bound for any scorer).
//
//   kvsweep-engine-bench [--lines N] [--threads 1,2] [--models ref-gpt2,ref-llama]
//
// Job mode (GPU comparison, docs/gpu.md): one model held in memory, several methods, one JSON line
// per (task, method) with metrics, tokens/s and peak device memory; a short warm-up job first.
//
//   kvsweep-engine-bench --model DIR --device cuda --dtype bf16 --tasks wikitext,lambada_openai
//       --methods "none;quant:bits=4;rank:r=32,basis=identity" [--window W] [--limit N] [--repeat
//       N]
//       [--interleave] [--warmup-each] [--attention-blocks 128,256,...]
//       [--fused-layer on|off|both] [--tuned-gemm on|off]
//
// Attention mode: one layer's codec Apply and attention at a model shape, per method (see
// AttentionBench).
//
//   kvsweep-engine-bench --attention-bench cuda [--dtype bf16] [--shape B,T,H,Hkv,D]
//       --methods "none;quant:bits=4,axis=channel" [--repeat N] [--attention-blocks N]
//
//       [--wiki-lines N] [--out FILE.jsonl]
//
// --attention-blocks runs each method once per query block of the position-dependent attention
// (worker/engine/attention.h; workers use the default, 128), each row labeled attention_block.
// --fused-layer both runs each method with the layer's fused elementwise kernels, stacked
// projections and the LM head's fused scoring (worker/engine/fused_layer.h, head_score.h; on by
// default where they exist) and without them (libtorch ops, separate projections), each row
// labeled fused_layer; a method's cost is paired with `none`'s of the same kind. --tuned-gemm off
// runs libtorch's products where the tuned ones would apply (worker/engine/tuned_gemm.h); each
// row says which ran and how many tuned products its first pass had. --warmup-each gives every
// row an untimed pass before its timed ones: a method's first pass on a task pays set-up that
// later passes do not (kernel plans for shapes not seen yet, the allocator's growth), and with one
// timed pass per row that set-up would otherwise be counted as the method's cost.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "spec/job_spec.h"
#include "spec/method_spec.h"
#include "worker/engine/attention.h"
#include "worker/engine/eval.h"
#include "worker/engine/fused_layer.h"
#include "worker/engine/head_score.h"
#include "worker/engine/kv/fused_quant.h"
#include "worker/engine/kv/kv_codec.h"
#include "worker/engine/kv/quantizer.h"
#include "worker/engine/model.h"
#include "worker/engine/tasks/task.h"
#include "worker/engine/tuned_gemm.h"

using namespace kvsweep;
using namespace kvsweep::engine;

namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

int Die(const absl::Status& s) {
  std::fprintf(stderr, "error: %s\n", std::string(s.message()).c_str());
  return 1;
}

// The first `lines` lines of `text` (all when lines <= 0).
std::string HeadLines(const std::string& text, int lines) {
  if (lines <= 0) return text;
  size_t pos = 0;
  for (int i = 0; i < lines && pos != std::string::npos; ++i) {
    pos = text.find('\n', pos);
    if (pos != std::string::npos) ++pos;
  }
  return text.substr(0, pos);
}

int JobMode(std::map<std::string, std::string>& f) {
  int repeat = 1;
  if (f.count("--repeat") && (!absl::SimpleAtoi(f["--repeat"], &repeat) || repeat < 1)) {
    std::fprintf(stderr, "--repeat: expected a positive integer, got '%s'\n",
                 f["--repeat"].c_str());
    return 2;
  }
  // The other flags' values, also checked before anything is loaded.
  std::vector<int64_t> blocks = {AttentionQueryBlock()};
  if (f.count("--attention-blocks")) {
    blocks.clear();
    for (absl::string_view b : absl::StrSplit(f["--attention-blocks"], ',')) {
      int64_t n = 0;
      if (!absl::SimpleAtoi(b, &n) || n < 1) {
        std::fprintf(stderr, "--attention-blocks: expected positive integers, got '%s'\n",
                     f["--attention-blocks"].c_str());
        return 2;
      }
      blocks.push_back(n);
    }
  }
  if (f.count("--tuned-gemm")) {
    const std::string& v = f["--tuned-gemm"];
    if (v != "on" && v != "off") {
      std::fprintf(stderr, "--tuned-gemm: expected on or off, got '%s'\n", v.c_str());
      return 2;
    }
    SetTunedGemmEnabled(v == "on");
  }
  std::vector<bool> fused_layer = {true};
  if (f.count("--fused-layer")) {
    const std::string& v = f["--fused-layer"];
    if (v == "on" || v == "off") {
      fused_layer = {v == "on"};
    } else if (v == "both") {
      fused_layer = {true, false};
    } else {
      std::fprintf(stderr, "--fused-layer: expected on, off or both, got '%s'\n", v.c_str());
      return 2;
    }
  }
  const std::string wiki_src = AssetsDir() + "/data/wikitext-2/wiki.test.raw";
  absl::StatusOr<std::string> text = ReadFile(wiki_src);
  if (!text.ok()) return Die(text.status());
  int wiki_lines = 0;
  if (f.count("--wiki-lines") && !absl::SimpleAtoi(f["--wiki-lines"], &wiki_lines)) return 2;
  const std::string wiki = "/tmp/kvsweep_bench_wiki_" + std::to_string(wiki_lines) + ".raw";
  if (!WriteFileAtomic(wiki, HeadLines(*text, wiki_lines)).ok()) return 1;
  EngineOptions eo;
  eo.device = f.count("--device") ? f["--device"] : "cpu";
  Engine engine(eo);
  std::ofstream out;
  if (f.count("--out")) out.open(f["--out"], std::ios::app);
  auto request = [&](const std::string& task, const std::string& method) {
    JobRequest r;
    r.model_path = f["--model"];
    // The bench's "wikitext" is the whole file as one stream, as tools/gpu/hf_bench.py scores it.
    r.task = task == "wikitext" ? "wikitext_stream" : task;
    r.method = method;
    r.dtype = f.count("--dtype") ? f["--dtype"] : "fp32";
    r.data_path =
        task == "wikitext" ? wiki : AssetsDir() + "/data/lambada_openai/lambada_test.jsonl";
    if (f.count("--window")) absl::SimpleAtoi(f["--window"], &r.window);
    if (task == "lambada_openai" && f.count("--limit")) absl::SimpleAtoi(f["--limit"], &r.limit);
    if (f.count("--calibration")) r.calibration_path = f["--calibration"];
    return r;
  };
  // Warm-up: load the model, create CUDA handles, compile kernels.
  {
    JobRequest w = request("lambada_openai", "none");
    w.limit = 16;
    absl::StatusOr<JobSpec> s = ResolveJob(w);
    if (!s.ok()) return Die(s.status());
    absl::StatusOr<nlohmann::json> r = engine.Run(*s, nullptr);
    if (!r.ok()) return Die(r.status());
    std::fprintf(stderr, "warm-up done (load %.1fs)\n", (*r)["timing"]["load_s"].get<double>());
  }
  // --interleave: pass i of every method before pass i + 1 of any, so that drift of the machine
  // over the run hits every method alike; each row then also gets its cost against `none`
  // paired pass by pass (median of tps_none[i] / tps[i] - 1).
  const bool interleave = f.count("--interleave") > 0;
  const bool warmup_each = f.count("--warmup-each") > 0;
  std::vector<std::string> methods =
      absl::StrSplit(f.count("--methods") ? f["--methods"] : "none", ';');
  for (absl::string_view task :
       absl::StrSplit(f.count("--tasks") ? f["--tasks"] : "wikitext", ',')) {
    struct Row {
      JobSpec spec;
      std::string method;  // as given
      int64_t block = 0;   // attention query block
      bool fused = true;   // the layer's fused elementwise kernels
      nlohmann::json first;
      std::vector<double> tps;
    };
    std::vector<Row> rows;
    auto pass = [&](Row& row, bool timed) -> absl::Status {
      SetAttentionQueryBlock(row.block);
      SetFusedLayerEnabled(row.fused);
      absl::StatusOr<nlohmann::json> r = engine.Run(row.spec, nullptr);
      if (!r.ok()) return r.status();
      if (!timed) return absl::OkStatus();
      if (row.first.is_null()) row.first = *r;
      row.tps.push_back((*r)["timing"]["tokens_per_s"].get<double>());
      return absl::OkStatus();
    };
    for (const std::string& method : methods) {
      absl::StatusOr<JobSpec> s = ResolveJob(request(std::string(task), method));
      if (!s.ok()) return Die(s.status());
      for (int64_t block : blocks) {
        for (bool fused : fused_layer) {
          rows.push_back(Row{*s, method, block, fused, nullptr, {}});
          if (warmup_each) {
            if (absl::Status st = pass(rows.back(), false); !st.ok()) return Die(st);
          }
          // --repeat N: N passes, tokens/s the median (a task of a few ms cannot be timed once).
          for (int i = 0; i < (interleave ? 1 : repeat); ++i) {
            if (absl::Status st = pass(rows.back(), true); !st.ok()) return Die(st);
          }
        }
      }
    }
    for (int i = 1; interleave && i < repeat; ++i) {
      for (Row& row : rows) {
        if (absl::Status st = pass(row, true); !st.ok()) return Die(st);
      }
    }
    // Of an even count, the mean of the middle two (as tools/gpu/hf_bench.py and report.py).
    auto median = [](std::vector<double> v) {
      std::sort(v.begin(), v.end());
      const size_t n = v.size();
      return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
    };
    // The last `none` row of each block and kind of layer: the earlier ones are warm-ups.
    std::map<std::pair<int64_t, bool>, const Row*> none;
    for (const Row& row : rows) {
      if (row.spec.method == "none") none[{row.block, row.fused}] = &row;
    }
    for (size_t m = 0; m < rows.size(); ++m) {
      const Row& row = rows[m];
      const nlohmann::json& r = row.first;
      nlohmann::json out_row = {{"engine", "kvsweep"},
                                {"model", r["spec"]["model_name"]},
                                {"task", task},
                                {"method", row.method},
                                {"attention_block", row.block},
                                {"fused_layer", row.fused},
                                {"tuned_gemm", TunedGemmEnabled()},
                                {"tuned_gemm_products", r["provenance"]["tuned_gemm_products"]},
                                {"canonical_method", r["spec"]["method"]},
                                {"window", r["spec"]["task"]["window"]},
                                {"dtype", r["spec"]["dtype"]},
                                {"metrics", r["metrics"][row.spec.task]},
                                {"forward_tokens", r["timing"]["forward_tokens"]},
                                {"score_s", r["timing"]["score_s"]},
                                {"tokens_per_s", median(row.tps)},
                                {"tokens_per_s_runs", row.tps},
                                {"interleaved", interleave},
                                {"warmup_passes", warmup_each ? 1 : 0},
                                {"timing", r["timing"]},
                                {"ledger_fraction_total", r["ledger"]["fraction_total"]}};
      auto n = none.find({row.block, row.fused});
      if (interleave && n != none.end() && n->second->tps.size() == row.tps.size()) {
        std::vector<double> cost;
        for (size_t i = 0; i < row.tps.size(); ++i) {
          cost.push_back(n->second->tps[i] / row.tps[i] - 1);
        }
        out_row["cost_vs_none_paired"] = median(cost);
      }
      std::printf("%s\n", out_row.dump().c_str());
      std::fflush(stdout);
      if (out.is_open()) out << out_row.dump() << "\n" << std::flush;
    }
  }
  return 0;
}

// The codec for method `text` at head size D, one KV head per group, built through the registry
// and prepared without a model (bases that need one are refused by Prepare).
absl::StatusOr<std::unique_ptr<KvCodec>> BenchCodec(absl::string_view text, int64_t D) {
  absl::StatusOr<KvMethod> parsed = ParseKvMethod(text);
  if (!parsed.ok()) return parsed.status();
  absl::StatusOr<KvMethod> method = ResolveKvMethod(*parsed, D, 1);
  if (!method.ok()) return method.status();
  absl::StatusOr<std::unique_ptr<KvCodec>> codec = NewKvCodec(*method);
  if (!codec.ok()) return codec.status();
  if (absl::Status s = (*codec)->Prepare(CodecContext{}); !s.ok()) return s;
  return codec;
}

// Mean microseconds of f on the current CUDA device over `reps` runs after one untimed run.
double CudaMicros(const std::function<void()>& f, int reps) {
  f();
  torch::cuda::synchronize();
  const double t0 = Now();
  for (int i = 0; i < reps; ++i) f();
  torch::cuda::synchronize();
  return (Now() - t0) / reps * 1e6;
}

const char* StyleName(RmsNormStyle style) {
  return style == kRmsGemma ? "gemma" : style == kRmsOlmo2 ? "olmo2" : "llama";
}

// Units in the last place a last-bit difference of the RMS statistic can move a norm's output:
// one per rounding of a value that carries it (Llama's rounds the normalized value, then its
// product with w; Gemma's and OLMo 2's round once).
int NormUnits(RmsNormStyle style) { return style == kRmsLlama ? 2 : 1; }

// The layer's fused elementwise kernels (worker/engine/fused_layer.h) against the libtorch ops
// they replace, on random operands at the 7B layer's widths: SwiGLU and RoPE bitwise (RoPE after
// a per-head q/k norm, and the norm added after a block, within the bounds derived below); the
// add + RMSNorm's sum bitwise, its output within what a last-bit difference of the fp32
// statistic (summed in another order) can move it (NormUnits). Returns the number of failed
// cases.
int CheckLayerKernels(torch::Device dev) {
  if (!dev.is_cuda()) {
    std::printf("layer kernels: CUDA only (none on %s)\n", dev.str().c_str());
    return 0;
  }
  int failures = 0;
  auto timed = [](const std::function<void()>& f) { return CudaMicros(f, 10); };
  auto count = [](const torch::Tensor& m) {
    return static_cast<long long>(m.sum().item<int64_t>());
  };
  const auto o = torch::TensorOptions().device(dev);
  const int64_t B = 4, T = 1024, Hd = 4096, I = 2048, H = 32, Hkv = 8, D = 128;
  for (torch::ScalarType dt : {torch::kBFloat16, torch::kFloat16}) {
    // Spacing of representable values relative to the value, at most: 2^-7 (bf16), 2^-10 (fp16);
    // below the normal range the spacing is absolute: fp16's subnormal step 2^-24 (bf16's, at
    // 1e-38, is below any value here).
    const double ulp = dt == torch::kBFloat16 ? 1.0 / 128 : 1.0 / 1024;
    const double tiny = dt == torch::kFloat16 ? std::ldexp(1.0, -24) : 0.0;
    for (RmsNormStyle style : {kRmsLlama, kRmsGemma, kRmsOlmo2}) {
      const torch::Tensor x0 = torch::randn({B, T, Hd}, o).to(dt);
      const torch::Tensor r = torch::randn({B, T, Hd}, o).to(dt);
      const torch::Tensor w =
          (torch::randn({Hd}, o) * 0.1 + (style == kRmsGemma ? 0.0 : 1.0)).to(dt);
      const double eps = 1e-6;
      torch::Tensor s_ref, y_ref, s_got, y_got;
      const double t_ref = timed([&] {
        s_ref = x0 + r;
        y_ref = RmsNormOf(style, s_ref, w, eps);
      });
      torch::Tensor scratch = x0.clone(), y_scratch;
      bool applied = true;
      const double t_got = timed(
          [&] { applied = applied && FusedAddRmsNorm(&scratch, r, w, eps, style, &y_scratch); });
      s_got = x0.clone();
      applied = applied && FusedAddRmsNorm(&s_got, r, w, eps, style, &y_got);
      if (!applied) {
        std::printf("add+rmsnorm %-5s %s: the kernel did not apply\n", DtypeName(dt),
                    StyleName(style));
        ++failures;
        continue;
      }
      const torch::Tensor yr = y_ref.to(torch::kFloat32), yg = y_got.to(torch::kFloat32);
      const long long bad_s = count(s_ref.ne(s_got)), diff_y = count(y_ref.ne(y_got));
      const int units = NormUnits(style);
      const long long far_y = count((yg - yr).abs() > yr.abs() * (units * ulp) + tiny);
      failures += bad_s != 0 || far_y != 0;
      std::printf(
          "add+rmsnorm %-5s %-5s [%lld, %lld]: sum mismatch %lld; output differs at %lld of %lld "
          "(beyond %d unit(s) in the last place: %lld)  %8.1f us vs libtorch %8.1f us (%.2fx)\n",
          DtypeName(dt), StyleName(style), static_cast<long long>(B * T),
          static_cast<long long>(Hd), bad_s, diff_y, static_cast<long long>(y_ref.numel()), units,
          far_y, t_got, t_ref, t_ref / t_got);
    }
    for (RmsNormStyle style : {kRmsOlmo2, kRmsLlama}) {
      // The norm after a block, added to the residual stream (OLMo 2's order), from every other
      // row of a wider tensor (a strided delta): the normalized output within `units` in its
      // last place as above, then one rounding of the sum:
      // |got - ref| <= units ulp |RMSNorm(d)| + ulp |ref|.
      const torch::Tensor x0 = torch::randn({B, T, Hd}, o).to(dt);
      const torch::Tensor d = torch::randn({B, T, 2 * Hd}, o).to(dt).slice(-1, Hd, 2 * Hd);
      const torch::Tensor w = (torch::randn({Hd}, o) * 0.1 + 1.0).to(dt);
      torch::Tensor ref, y;
      const double t_ref = timed([&] {
        y = RmsNormOf(style, d, w, 1e-6);
        ref = x0 + y;
      });
      torch::Tensor scratch = x0.clone(), got = x0.clone();
      bool applied = true;
      const double t_got =
          timed([&] { applied = applied && FusedRmsNormAdd(&scratch, d, w, 1e-6, style); });
      applied = applied && FusedRmsNormAdd(&got, d, w, 1e-6, style);
      long long diff = -1, far = -1;
      const int units = NormUnits(style);
      if (applied) {
        const torch::Tensor rf = ref.to(torch::kFloat32), gf = got.to(torch::kFloat32);
        diff = count(ref.ne(got));
        far = count((gf - rf).abs() >
                    y.to(torch::kFloat32).abs() * (units * ulp) + rf.abs() * ulp + tiny);
      }
      failures += far != 0;
      std::printf(
          "rmsnorm+add %-5s %-5s [%lld, %lld] (norm after the block, strided): differs at %lld "
          "(beyond the bound: %lld)  %8.1f us vs libtorch %8.1f us (%.2fx)\n",
          DtypeName(dt), StyleName(style), static_cast<long long>(B * T),
          static_cast<long long>(Hd), diff, far, t_got, t_ref, t_ref / t_got);
    }
    {
      const torch::Tensor gu = (torch::randn({B, T, 2 * I}, o) * 2).to(dt);
      const torch::Tensor gate = gu.slice(-1, 0, I), up = gu.slice(-1, I, 2 * I);
      torch::Tensor ref, got;
      const double t_ref = timed([&] { ref = torch::silu(gate) * up; });
      bool applied = true;
      const double t_got = timed([&] { applied = applied && FusedSwiGlu(gate, up, &got); });
      const long long bad = applied ? count(ref.ne(got)) : -1;
      failures += bad != 0;
      std::printf(
          "swiglu %-5s [%lld, %lld] halves of one projection: mismatch %lld  %8.1f us vs "
          "libtorch %8.1f us (%.2fx)\n",
          DtypeName(dt), static_cast<long long>(B * T), static_cast<long long>(I), bad, t_got,
          t_ref, t_ref / t_got);
    }
    // RoPE + layout: plain (bitwise), and after the per-head q/k norm of Qwen3 (Llama's norm,
    // D = 128; and D = 64 with weights not 4-byte aligned: one element per thread) and Gemma 3
    // (Gemma's, D = 256), whose statistic's summation order may move the normalized value by
    // `units` in the last place as above; the rotation's two products then move by at most
    // units + 1 of their own last place and the sum's rounding by one more:
    // |got - ref| <= (units + 1) ulp (|n1 cos| + |n2 sin|) + ulp |ref|, checked per element.
    // Last, a case the kernel must refuse (D = 256 one element per thread: a head's 128 threads
    // span several warps): false, and the libtorch path runs.
    struct RopeCase {
      bool norm;
      RmsNormStyle style;
      int64_t D;
      bool unaligned_w;
      bool applies;
    };
    for (const RopeCase& rc :
         {RopeCase{false, kRmsLlama, D, false, true}, RopeCase{true, kRmsLlama, D, false, true},
          RopeCase{true, kRmsGemma, 256, false, true}, RopeCase{true, kRmsLlama, 64, true, true},
          RopeCase{true, kRmsLlama, 256, true, false}}) {
      const int64_t Dm = rc.D;
      const torch::Tensor p = torch::randn({B, T, (H + 2 * Hkv) * Dm}, o).to(dt);
      const torch::Tensor inv =
          1.0 / torch::pow(10000.0f, torch::arange(0, Dm, 2, o.dtype(torch::kFloat32)) / Dm);
      torch::Tensor angles = torch::outer(torch::arange(2 * T, o.dtype(torch::kFloat32)), inv);
      angles = torch::cat({angles, angles}, -1);
      const torch::Tensor cos = angles.cos().to(dt), sin = angles.sin().to(dt);
      const torch::Tensor q = p.slice(-1, 0, H * Dm), k = p.slice(-1, H * Dm, (H + Hkv) * Dm),
                          v = p.slice(-1, (H + Hkv) * Dm, (H + 2 * Hkv) * Dm);
      auto weight = [&] {
        const int64_t off = rc.unaligned_w ? 1 : 0;
        return (torch::randn({Dm + off}, o) * 0.1 + (rc.style == kRmsGemma ? 0.0 : 1.0))
            .to(dt)
            .slice(0, off, Dm + off);
      };
      QkHeadNorm hn;
      hn.q_w = weight();
      hn.k_w = weight();
      hn.eps = 1e-6;
      hn.style = rc.style;
      const QkHeadNorm* norm = rc.norm ? &hn : nullptr;
      const torch::Tensor c = cos.slice(0, 0, T), sn = sin.slice(0, 0, T);
      auto normed = [&](const torch::Tensor& x2d, int64_t heads, const torch::Tensor& w) {
        torch::Tensor x = x2d.view({B, T, heads, Dm});
        if (norm != nullptr) x = RmsNormOf(rc.style, x, w, hn.eps);
        return x.transpose(1, 2);
      };
      auto rope = [&](const torch::Tensor& x) {
        return x * c + torch::cat({-x.slice(-1, Dm / 2, Dm), x.slice(-1, 0, Dm / 2)}, -1) * sn;
      };
      torch::Tensor qr, kr, vr, qg, kg, vg;
      const double t_ref = timed([&] {
        qr = rope(normed(q, H, hn.q_w)).contiguous();
        kr = rope(normed(k, Hkv, hn.k_w)).contiguous();
        vr = v.reshape({B, T, Hkv, Dm}).transpose(1, 2).contiguous();
      });
      const char* what = !rc.norm                ? ""
                         : rc.style == kRmsGemma ? "gemma q/k norm"
                         : rc.unaligned_w        ? "llama q/k norm, weights unaligned"
                                                 : "llama q/k norm";
      if (!rc.applies) {
        const bool applied = FusedRopeLayout(q, k, v, cos, sin, H, Hkv, Dm, &qg, &kg, &vg, norm);
        failures += applied || qg.defined();
        std::printf("rope+layout %-5s %s D=%lld: refused as it must (%s)\n", DtypeName(dt), what,
                    static_cast<long long>(Dm),
                    applied        ? "FAILED: it applied"
                    : qg.defined() ? "FAILED: wrote"
                                   : "ok");
        continue;
      }
      bool applied = true;
      const double t_got = timed([&] {
        applied = applied && FusedRopeLayout(q, k, v, cos, sin, H, Hkv, Dm, &qg, &kg, &vg, norm);
      });
      if (!applied) {
        std::printf("rope+layout %-5s %s D=%lld: the kernel did not apply\n", DtypeName(dt), what,
                    static_cast<long long>(Dm));
        ++failures;
        continue;
      }
      const long long bad = count(qr.ne(qg)) + count(kr.ne(kg)) + count(vr.ne(vg));
      long long far = 0;
      const int units = NormUnits(rc.style);
      if (norm == nullptr) {
        far = bad;
      } else {
        for (int which = 0; which < 2; ++which) {
          const torch::Tensor n =
              normed(which == 0 ? q : k, which == 0 ? H : Hkv, which == 0 ? hn.q_w : hn.k_w)
                  .to(torch::kFloat32);
          const torch::Tensor cf = c.to(torch::kFloat32), sf = sn.to(torch::kFloat32);
          const torch::Tensor n1 = n.slice(-1, 0, Dm / 2), n2 = n.slice(-1, Dm / 2, Dm);
          // |n1 cos| + |n2 sin| of each output element: first half pairs (x1, -x2), second
          // half (x2, x1).
          const torch::Tensor mag = torch::cat(
              {n1.abs() * cf.slice(-1, 0, Dm / 2).abs() + n2.abs() * sf.slice(-1, 0, Dm / 2).abs(),
               n2.abs() * cf.slice(-1, Dm / 2, Dm).abs() +
                   n1.abs() * sf.slice(-1, Dm / 2, Dm).abs()},
              -1);
          const torch::Tensor ref = (which == 0 ? qr : kr).to(torch::kFloat32);
          const torch::Tensor got = (which == 0 ? qg : kg).to(torch::kFloat32);
          far += count((got - ref).abs() > mag * ((units + 1) * ulp) + ref.abs() * ulp + tiny);
        }
        far += count(vr.ne(vg));
      }
      // The position-major variant: the same values, q in [B, T, H, D] memory. Causal attention
      // (Attend, the GPU path of `none`) on it must give what it gives on the head-major q, to
      // the output's rounding (another kernel may run: within 4 units of the last place of
      // max |v|, where a mixed-up layout moves early positions by about |v|); its output's
      // layout is printed (position major spares the output projection a transposing copy).
      torch::Tensor qp, kp, vp;
      const bool applied_pm = FusedRopeLayout(q, k, v, cos, sin, H, Hkv, Dm, &qp, &kp, &vp, norm,
                                              /*q_position_major=*/true);
      const bool pm_ok = applied_pm && qp.transpose(1, 2).is_contiguous() && qp.equal(qg) &&
                         kp.equal(kg) && vp.equal(vg);
      failures += !pm_ok;
      bool out_pm = false;
      double out_diff = 0, out_bound = 0;
      if (pm_ok) {
        const torch::Tensor allowed = AllowedMask(T, 0, dev);
        const double scale = 1.0 / std::sqrt(static_cast<double>(Dm));
        const torch::Tensor out =
            Attend(qp, KvPair{{kp, {}, {}}, {vp, {}, {}}}, allowed, /*window=*/0, scale);
        const torch::Tensor ref =
            Attend(qg, KvPair{{kg, {}, {}}, {vg, {}, {}}}, allowed, /*window=*/0, scale);
        out_pm = out.transpose(1, 2).is_contiguous();
        out_diff = (out.to(torch::kFloat32) - ref.to(torch::kFloat32)).abs().max().item<double>();
        out_bound = 4 * ulp * vg.abs().max().item<double>();
        failures += !(out_diff <= out_bound);
      }
      std::printf(
          "rope+layout %-5s %s D=%lld, q position major: %s; attention on it %s (max |diff| vs "
          "head-major q %.3g, bound %.3g), output %s\n",
          DtypeName(dt), what, static_cast<long long>(Dm),
          !applied_pm ? "FAILED: the kernel did not apply"
          : !pm_ok    ? "FAILED: not the same values in [B, T, H, D] memory"
                      : "the same values in [B, T, H, D] memory",
          !pm_ok || out_diff <= out_bound ? "ok" : "FAILED", out_diff, out_bound,
          out_pm ? "position major" : "head major (a copy before the output projection)");
      failures += far != 0;
      std::printf(
          "rope+layout %-5s %-33s B=%lld T=%lld H=%lld Hkv=%lld D=%lld from one projection: "
          "differs at %lld of %lld (beyond the bound: %lld)  %8.1f us vs libtorch (with "
          ".contiguous()) %8.1f us (%.2fx)\n",
          DtypeName(dt), what, static_cast<long long>(B), static_cast<long long>(T),
          static_cast<long long>(H), static_cast<long long>(Hkv), static_cast<long long>(Dm), bad,
          static_cast<long long>(p.numel()), far, t_got, t_ref, t_ref / t_got);
    }
  }
  return failures;
}

// The LM head's fused scoring (worker/engine/head_score.h) against the libtorch path the scorer
// otherwise takes (HeadScoreLibtorch), on random logits with planted ties of the maximum (across
// threads, within one pack, within one thread's group of packs), -inf entries and targets that are
// the argmax, rows all -inf, rows with an infinite maximum or a NaN: greedy hits identical,
// log-probabilities within the kernel's bound FusedHeadScoreBound (fp32 terms, a pack's summed in
// fp32, the packs' in fp64: head_score.cu; NaN where both are NaN). Vocabularies of 32000, 128256,
// 151936 and 1000 (16-byte loads; 1000 shorter than a block's reach) and 50257 and unaligned rows
// of 32000 (scalar loads). Returns the number of failed cases.
int CheckHeadScore(torch::Device dev) {
  if (!dev.is_cuda()) {
    std::printf("head scoring: CUDA only (none on %s)\n", dev.str().c_str());
    return 0;
  }
  int failures = 0;
  auto timed = [](const std::function<void()>& f) { return CudaMicros(f, 5); };
  const auto o = torch::TensorOptions().device(dev);
  const int64_t n = 2048;
  for (torch::ScalarType dt : {torch::kBFloat16, torch::kFloat16}) {
    // (vocabulary, offset): offset 1 views each row from its second element of a row of V + 8,
    // so the rows' stride is a multiple of 8 but their start is not 16-byte aligned.
    for (const auto& [V, offset] : std::vector<std::pair<int64_t, int64_t>>{
             {32000, 0}, {50257, 0}, {128256, 0}, {151936, 0}, {1000, 0}, {32000, 1}}) {
      const torch::Tensor base = (torch::randn({n, offset == 0 ? V : V + 8}, o) * 3).to(dt);
      torch::Tensor logits = base.slice(1, offset, offset + V);
      torch::Tensor tg = torch::randint(0, V, {n}, o.dtype(torch::kLong));
      {
        const float inf = std::numeric_limits<float>::infinity();
        // Row 0: its maximum also at index 5 (argmax's first index); row 1: -inf entries; row 2:
        // all -inf (argmax 0, log-probability NaN on both paths); row 3: an infinite maximum
        // (libtorch's logsumexp then shifts by 0).
        torch::Tensor row0 = logits[0];
        row0.index_put_({5}, row0.max());
        logits[1].slice(0, 0, V / 2).fill_(-inf);
        tg.index_put_({1}, 0);  // a target at -inf: log-probability -inf on both paths
        logits[2].fill_(-inf);
        logits[3].index_put_({7}, inf);
        // Row 5: a NaN (argmax's maximum; log-probability NaN); row 6: a pack of one thread all
        // at the maximum; row 8: the maximum twice in one thread's group of packs (the first
        // index wins in both).
        logits[5].index_put_({11}, std::numeric_limits<float>::quiet_NaN());
        logits[6].slice(0, 16, 24).fill_(100);
        if (V > 3000 + 256 * 8) {
          logits[8].index_put_({3000}, 100);
          logits[8].index_put_({3000 + 256 * 8}, 100);
        }
        // Every even row's target is its argmax, so hits happen.
        const torch::Tensor am = logits.to(torch::kFloat32).argmax(-1);
        tg.slice(0, 0, n, 2).copy_(am.slice(0, 0, n, 2));
      }
      torch::Tensor ref_lp, ref_hit, got_lp, got_hit;
      const double t_ref = timed([&] { HeadScoreLibtorch(logits, tg, &ref_lp, &ref_hit); });
      bool applied = true;
      const double t_got =
          timed([&] { applied = applied && FusedHeadScore(logits, tg, &got_lp, &got_hit); });
      if (!applied) {
        std::printf("head scoring %-5s V=%lld offset %lld: the kernel did not apply\n",
                    DtypeName(dt), static_cast<long long>(V), static_cast<long long>(offset));
        ++failures;
        continue;
      }
      const long long hits = ref_hit.sum().item<int64_t>();
      const long long bad_hit = ref_hit.ne(got_hit).sum().item<int64_t>();
      const torch::Tensor same = (ref_lp == got_lp) | (ref_lp.isnan() & got_lp.isnan());
      const double max_diff = torch::where(same, torch::zeros_like(ref_lp), (ref_lp - got_lp).abs())
                                  .max()
                                  .item<double>();
      const double bound = FusedHeadScoreBound(V);
      const bool ok = bad_hit == 0 && max_diff <= bound && std::isfinite(max_diff);
      failures += !ok;
      std::printf(
          "head scoring %-5s [%lld, %lld]%s: greedy hits %lld, hit mismatch %lld, max |logprob "
          "diff| %.2e (bound %.2e)  %8.1f us vs libtorch %8.1f us (%.2fx)\n",
          DtypeName(dt), static_cast<long long>(n), static_cast<long long>(V),
          offset != 0 ? " rows not 16-byte aligned" : "", hits, bad_hit, max_diff, bound, t_got,
          t_ref, t_ref / t_got);
    }
  }
  return failures;
}

// An operand's tensors in fp32 (the masked reference's operands).
KvOperand OperandFp32(const KvOperand& op) {
  return KvOperand{op.compressed.to(torch::kFloat32),
                   op.raw.defined() ? op.raw.to(torch::kFloat32) : op.raw, op.use_compressed,
                   op.block, op.residual};
}

// An operand's batch elements [b0, b1).
KvOperand OperandRows(const KvOperand& op, int64_t b0, int64_t b1) {
  return KvOperand{op.compressed.slice(0, b0, b1),
                   op.raw.defined() ? op.raw.slice(0, b0, b1) : op.raw, op.use_compressed, op.block,
                   op.residual};
}

// The packed attention's band in both forms (flash attention's sliding window, and the
// memory-efficient kernel with a bias) against the masked fp32 reference, on every batch element
// of a batch of 3 (GQA 4, random operands), for the position-dependent rules whose bands admit the
// window form: windows longer than the band (T = 4096), a window no longer than it (a residual
// of 1024 at T = 1024) and one a little longer, not a whole number of query blocks (T = 1500). Each
// output is rounded at most twice in the compute dtype (each part, then their merge), each time by
// half a spacing: the bound is one spacing (2^-7 bf16, 2^-10 fp16) of the reference's largest
// magnitude in that batch element. Returns the number of failed cases.
int CheckBandWindow(torch::Device dev) {
  if (!dev.is_cuda()) {
    std::printf("band window: CUDA only (none on %s)\n", dev.str().c_str());
    return 0;
  }
  int failures = 0;
  const int64_t B = 3, H = 8, Hkv = 2, D = 128;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  const bool was_window = PackedBandWindow();
  for (torch::ScalarType dt : {torch::kBFloat16, torch::kFloat16}) {
    const double spacing = dt == torch::kBFloat16 ? 1.0 / 128 : 1.0 / 1024;
    for (const auto& [method, T] : std::vector<std::pair<const char*, int64_t>>{
             {"quant:bits=4,axis=channel", 4096},
             {"quant:bits=2,axis=channel,group=32,residual=32", 4096},
             {"quant:bits=4,residual=128", 4096},
             {"quant:bits=4,residual=1024", 1024},
             {"quant:bits=4,residual=1024", 1500}}) {
      absl::StatusOr<std::unique_ptr<KvCodec>> codec = BenchCodec(method, D);
      if (!codec.ok()) return Die(codec.status());
      torch::manual_seed(1);
      const auto o = torch::TensorOptions().device(dev).dtype(dt);
      const torch::Tensor q = torch::randn({B, H, T, D}, o);
      const torch::Tensor k = torch::randn({B, Hkv, T, D}, o) * 2;
      const torch::Tensor v = torch::randn({B, Hkv, T, D}, o);
      const KvPair pair = (*codec)->Apply(0, k, v);
      const torch::Tensor allowed = AllowedMask(T, 0, dev);
      const bool applies = PackedBandWindowApplies(pair, T, AttentionQueryBlock());
      // The packed path marks "plan" once per chunk of windows it attends (twice where the window
      // form is refused in this run and the bias form takes over): equal counts > 0 say both runs
      // took the packed path without a fallback inside them. A refusal earlier in the process
      // leaves the window form off for good, and the "window" run is then the bias form again,
      // bitwise (same kernels, same operands): outputs not equal say the window form ran.
      static int plans = 0;
      SetAttentionPhaseHook([](const char* phase) { plans += std::string(phase) == "plan"; });
      plans = 0;
      SetPackedBandWindow(true);
      const torch::Tensor window = Attend(q, pair, allowed, 0, scale).to(torch::kFloat32);
      const int window_plans = plans;
      plans = 0;
      SetPackedBandWindow(false);
      const torch::Tensor bias = Attend(q, pair, allowed, 0, scale).to(torch::kFloat32);
      const int bias_plans = plans;
      SetAttentionPhaseHook(nullptr);
      const bool ran = window_plans > 0 && window_plans == bias_plans && !window.equal(bias);
      const KvPair pair32{OperandFp32(pair.k), OperandFp32(pair.v)};
      double worst_window = 0, worst_bias = 0;
      for (int64_t b = 0; b < B; ++b) {
        // One batch element at a time keeps the reference's [H, T, T] fp32 scores small.
        const torch::Tensor ref =
            AttendMasked(q.slice(0, b, b + 1).to(torch::kFloat32),
                         KvPair{OperandRows(pair32.k, b, b + 1), OperandRows(pair32.v, b, b + 1)},
                         allowed, scale);
        const double mag = ref.abs().max().item<double>();
        auto rel = [&](const torch::Tensor& x) {
          return (x.slice(0, b, b + 1) - ref).abs().max().item<double>() / mag;
        };
        // A NaN difference is kept (std::max would pass it over), and fails the check below.
        auto keep_worst = [](double* worst, double r) {
          if (!(r <= *worst)) *worst = r;
        };
        keep_worst(&worst_window, rel(window));
        keep_worst(&worst_bias, rel(bias));
      }
      const bool ok = applies && ran && worst_window <= spacing && worst_bias <= spacing &&
                      std::isfinite(worst_window) && std::isfinite(worst_bias);
      failures += !ok;
      std::printf(
          "band window %-5s %-46s B=%lld T=%4lld: window form %s%s, max rel diff vs masked fp32 "
          "over the batch: window %.2e, bias %.2e (bound %.2e)%s\n",
          DtypeName(dt), method, static_cast<long long>(B), static_cast<long long>(T),
          applies ? "applies" : "REFUSED", ran ? "" : " (NOT RUN)", worst_window, worst_bias,
          spacing, ok ? "" : "  MISMATCH");
    }
  }
  SetPackedBandWindow(was_window);
  return failures;
}

// The tuned products (worker/engine/tuned_gemm.h) against torch::linear on the shapes of the
// llama-1b, mistral-7b and qwen2-14b layers in bf16, at 65536 rows (as [16, 4096, k]), at 69632
// (the 7B WikiText run's last batch, [17, 4096, k]) and at 16384, the table's threshold: where
// the table chose an algorithm for this GPU, every output within one bf16 ulp of the largest
// |output| (the count of differing elements printed too) and the two times, alternated; where it
// declined, why. Then a contiguous view 2 bytes past an aligned start (declined: cuBLASLt's
// heuristic assumed 256-byte alignment) and fp16 (no entries yet), both torch::linear's bits.
// Returns the number of failed cases.
int CheckTunedGemm(torch::Device dev) {
  if (!dev.is_cuda()) {
    std::printf("tuned products: CUDA only (none on %s)\n", dev.str().c_str());
    return 0;
  }
  int failures = 0;
  const bool was_enabled = TunedGemmEnabled();
  SetTunedGemmEnabled(true);
  const auto o = torch::TensorOptions().device(dev);
  struct Product {
    const char* name;
    int64_t n, k;
  };
  const std::vector<Product> products = {
      {"1b qkv", 3072, 2048},      {"1b o", 2048, 2048},         {"1b gate_up", 16384, 2048},
      {"1b down", 2048, 8192},     {"7b qkv", 6144, 4096},       {"7b o", 4096, 4096},
      {"7b gate_up", 28672, 4096}, {"7b down", 4096, 14336},     {"14b qkv*", 7168, 5120},
      {"14b o", 5120, 5120},       {"14b gate_up", 27648, 5120}, {"14b down", 5120, 13824}};
  // Max |a - b| and the count of differing elements, a row block at a time (no fp32 copy of
  // the whole output).
  auto compare = [](const torch::Tensor& a, const torch::Tensor& b) {
    const torch::Tensor a2 = a.reshape({-1, a.size(-1)}), b2 = b.reshape({-1, b.size(-1)});
    double diff = 0;
    int64_t differ = 0;
    for (int64_t r = 0; r < a2.size(0); r += 8192) {
      const int64_t e = std::min<int64_t>(r + 8192, a2.size(0));
      const torch::Tensor x = a2.slice(0, r, e), y = b2.slice(0, r, e);
      differ += x.ne(y).sum().item<int64_t>();
      diff = std::max(diff,
                      (x.to(torch::kFloat32) - y.to(torch::kFloat32)).abs().max().item<double>());
    }
    return std::make_pair(diff, differ);
  };
  std::printf("(* qwen2's q/k/v product carries a bias: the model leaves it to libtorch)\n");
  for (const Product& p : products) {
    for (const std::vector<int64_t>& lead :
         std::vector<std::vector<int64_t>>{{16, 4096}, {17, 4096}, {16384}}) {
      std::vector<int64_t> xs = lead;
      xs.push_back(p.k);
      const torch::Tensor x = torch::randn(xs, o).to(torch::kBFloat16);
      const torch::Tensor w = (torch::randn({p.n, p.k}, o) * 0.02).to(torch::kBFloat16);
      const int64_t m = x.numel() / p.k;
      const int64_t before = TunedGemmCount();
      const torch::Tensor y = TunedLinear(x, w, torch::Tensor());
      const bool tuned = TunedGemmCount() > before;
      if (!tuned) {
        std::printf("tuned product bf16 %-12s m %6lld: declined (%s)\n", p.name,
                    static_cast<long long>(m),
                    ExplainTunedLinear(dev, torch::kBFloat16, m, p.n, p.k).c_str());
        continue;
      }
      const torch::Tensor ref = torch::linear(x, w);
      const auto [diff, differ] = compare(y, ref);
      const double top = ref.abs().max().item<double>();
      const double bound = top * 0x1p-7;  // one bf16 ulp (8 significant bits) at max |y|
      const bool ok = y.sizes() == ref.sizes() && diff <= bound;
      failures += !ok;
      double us_tuned = 1e30, us_torch = 1e30;
      for (int round = 0; round < 2; ++round) {
        us_torch = std::min(us_torch, CudaMicros([&] { torch::linear(x, w); }, 5));
        us_tuned = std::min(us_tuned, CudaMicros([&] { TunedLinear(x, w, torch::Tensor()); }, 5));
      }
      std::printf(
          "tuned product bf16 %-12s m %6lld: max |diff| vs torch::linear %.3g (bound %.3g), %lld "
          "of %lld differ %s   %9.1f us vs libtorch %9.1f us (%.3fx)\n",
          p.name, static_cast<long long>(m), diff, bound, static_cast<long long>(differ),
          static_cast<long long>(y.numel()), ok ? "ok" : "FAILED", us_tuned, us_torch,
          us_torch / us_tuned);
    }
  }
  // A contiguous view 2 bytes past an aligned start, and fp16: libtorch's product, bit for bit.
  for (torch::ScalarType dt : {torch::kBFloat16, torch::kFloat16}) {
    const torch::Tensor base = torch::randn({65536 * 4096 + 1}, o).to(dt);
    const torch::Tensor x = dt == torch::kBFloat16
                                ? base.slice(0, 1).view({65536, 4096})
                                : base.slice(0, 0, 65536 * 4096).view({65536, 4096});
    const torch::Tensor w = (torch::randn({4096, 4096}, o) * 0.02).to(dt);
    const int64_t before = TunedGemmCount();
    const torch::Tensor y = TunedLinear(x, w, torch::Tensor());
    const bool declined = TunedGemmCount() == before;
    const bool same = torch::equal(y, torch::linear(x, w));
    failures += !(declined && same);
    std::printf("tuned product %s 7b o %s: %s, %s\n", DtypeName(dt),
                dt == torch::kBFloat16 ? "on a view 2 bytes past alignment" : "(no fp16 entries)",
                declined ? "declined" : "TUNED (FAILED)",
                same ? "torch::linear's bits (ok)" : "DIFFERENT BITS (FAILED)");
  }
  SetTunedGemmEnabled(was_enabled);
  return failures;
}

// --check-fused DEVICE: the fused CUDA fake quantizer (both kernels: vectorized, and the
// one-warp-per-group fallback) against the libtorch path, in the same process: bitwise equality
// on strided [B, H, T, D] views in fp32/bf16/fp16 for asym/sym, bits 1..8 and groups 16..128,
// and the time of each path; then the layer kernels (CheckLayerKernels) and the LM head's scoring
// (CheckHeadScore), the packed attention's two band forms (CheckBandWindow) and the tuned
// matrix products (CheckTunedGemm).
int CheckFused(const std::string& device) {
  absl::StatusOr<torch::Device> dev = ParseDevice(device);
  if (!dev.ok()) return Die(dev.status());
  torch::manual_seed(0);
  const bool was_enabled = FusedFakeQuantEnabled();
  int failures = 0;
  std::printf("%-6s %4s %5s %4s %9s %9s %10s %10s %10s %8s %8s\n", "dtype", "bits", "group", "sym",
              "mism.vec", "mism.warp", "torch us", "warp us", "vec us", "vec/torch", "vec/warp");
  for (torch::ScalarType dt : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
    for (int bits : {1, 2, 3, 4, 8}) {
      for (int group : {16, 64, 128}) {
        for (bool sym : {false, true}) {
          if (sym && bits < 2) continue;
          // [B, T, H, D] memory seen as [B, H, T, D], like the model's projections.
          torch::Tensor x =
              (torch::randn({4, 512, 8, 128}, torch::TensorOptions().device(*dev)) * 3)
                  .to(dt)
                  .transpose(1, 2);
          x.select(2, 7).fill_(0.5);  // constant rows: exact
          QuantFormat f{bits, group, sym, false};
          auto time = [&](bool fused, bool vectorized) {
            SetFusedFakeQuantEnabled(fused);
            SetFusedFakeQuantVectorized(vectorized);
            torch::Tensor y = FakeQuantize(x, f);
            if (dev->is_cuda()) torch::cuda::synchronize();
            const double t0 = Now();
            for (int i = 0; i < 20; ++i) y = FakeQuantize(x, f);
            if (dev->is_cuda()) torch::cuda::synchronize();
            return std::make_pair(y, (Now() - t0) / 20 * 1e6);
          };
          auto [ref, t_ref] = time(false, true);
          auto [warp, t_warp] = time(true, false);
          auto [vec, t_vec] = time(true, true);
          const int64_t bad_vec = ref.ne(vec).sum().item<int64_t>();
          const int64_t bad_warp = ref.ne(warp).sum().item<int64_t>();
          failures += bad_vec != 0 || bad_warp != 0;
          std::printf("%-6s %4d %5d %4d %9lld %9lld %10.1f %10.1f %10.1f %8.2f %8.2f\n",
                      DtypeName(dt), bits, group, sym, static_cast<long long>(bad_vec),
                      static_cast<long long>(bad_warp), t_ref, t_warp, t_vec, t_ref / t_vec,
                      t_warp / t_vec);
        }
      }
    }
  }
  // A view whose rows start 8 bytes past a 16-byte boundary: the vectorized kernel must hand it
  // to the fallback, and the result must still be the libtorch path's.
  {
    torch::Tensor wide =
        torch::randn({4, 8, 512, 136}, torch::TensorOptions().device(*dev)).to(torch::kBFloat16);
    torch::Tensor x = wide.slice(-1, 4, 132);
    QuantFormat f{4, 64, false, false};
    SetFusedFakeQuantEnabled(false);
    torch::Tensor ref = FakeQuantize(x, f);
    SetFusedFakeQuantEnabled(true);
    SetFusedFakeQuantVectorized(true);
    const int64_t bad = ref.ne(FakeQuantize(x, f)).sum().item<int64_t>();
    failures += bad != 0;
    std::printf("misaligned bf16 view (offset 8 bytes): mismatch %lld\n",
                static_cast<long long>(bad));
  }
  // K and V in one launch (quant), and their first r coordinates quantized into zero-padded rows
  // (identity-basis hybrid): against the libtorch path of each tensor, padded with
  // constant_pad_nd, for both kernels; V with other strides than K.
  if (!dev->is_cuda()) std::printf("pair: CUDA only (no fused kernel on %s)\n", device.c_str());
  for (torch::ScalarType dt : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
    for (int r : {128, 64, 32}) {
      if (!dev->is_cuda()) break;
      for (bool vectorized : {true, false}) {
        const auto o = torch::TensorOptions().device(*dev);
        torch::Tensor k = (torch::randn({2, 300, 4, 128}, o) * 2).to(dt).transpose(1, 2);
        torch::Tensor v = torch::randn({2, 4, 300, 128}, o).to(dt);
        QuantFormat f{4, r == 128 ? 64 : r, false, false};
        torch::Tensor ks = k.slice(-1, 0, r), vs = v.slice(-1, 0, r);
        SetFusedFakeQuantEnabled(false);
        torch::Tensor rk = torch::constant_pad_nd(FakeQuantize(ks, f), {0, 128 - r});
        torch::Tensor rv = torch::constant_pad_nd(FakeQuantize(vs, f), {0, 128 - r});
        SetFusedFakeQuantEnabled(true);
        SetFusedFakeQuantVectorized(vectorized);
        torch::Tensor yk, yv;
        const bool ran = FusedFakeQuantizePair(ks, vs, f, 128, &yk, &yv);
        const int64_t bad = !ran ? -1
                                 : rk.ne(yk).sum().item<int64_t>() +
                                       rv.ne(yv).sum().item<int64_t>() +
                                       (yk.is_contiguous() && yv.is_contiguous() ? 0 : 1);
        failures += bad != 0;
        std::printf("pair %-5s r=%3d of 128, %s kernel: mismatch %lld\n", DtypeName(dt), r,
                    vectorized ? "vectorized" : "warp", static_cast<long long>(bad));
      }
    }
  }
  // Channel-axis quantization (the codec's K and V in one launch, read in place) against the
  // libtorch path of the same codec (transposed blocks): whole and unfinished blocks, a window
  // shorter than a block, transposed views, head sizes the 16-byte kernel cannot take.
  if (!dev->is_cuda()) std::printf("channel: CUDA only (no fused kernel on %s)\n", device.c_str());
  for (torch::ScalarType dt : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
    for (const char* method : {"quant:bits=4,axis=channel", "quant:bits=2,axis=channel,group=32",
                               "quant:bits=3,axis=channel,group=5,sym=1",
                               "quant:bits=2,axis=channel,group=32,residual=32",
                               "quant:bits=4,axis=channel,group=16,target=k"}) {
      for (int64_t T : {4096, 1000, 7}) {
        for (int64_t D : {128, 100}) {
          if (!dev->is_cuda()) break;
          absl::StatusOr<std::unique_ptr<KvCodec>> codec = BenchCodec(method, D);
          if (!codec.ok()) return Die(codec.status());
          const auto o = torch::TensorOptions().device(*dev);
          torch::Tensor k = (torch::randn({2, T, 4, D}, o) * 3).to(dt).transpose(1, 2);
          torch::Tensor v = torch::randn({2, 4, T, D}, o).to(dt);
          k.select(3, 5).fill_(0.5);  // a constant channel: exact
          auto apply = [&](bool fused, bool vectorized) {
            SetFusedFakeQuantEnabled(fused);
            SetFusedFakeQuantVectorized(vectorized);
            KvPair p = (*codec)->Apply(0, k, v);
            if (dev->is_cuda()) torch::cuda::synchronize();
            const double t0 = Now();
            for (int i = 0; i < 10; ++i) p = (*codec)->Apply(0, k, v);
            if (dev->is_cuda()) torch::cuda::synchronize();
            return std::make_pair(p, (Now() - t0) / 10 * 1e6);
          };
          auto [ref, t_ref] = apply(false, true);
          for (bool vectorized : {true, false}) {
            auto [got, t_got] = apply(true, vectorized);
            const int64_t bad = ref.k.compressed.ne(got.k.compressed).sum().item<int64_t>() +
                                ref.v.compressed.ne(got.v.compressed).sum().item<int64_t>();
            failures += bad != 0;
            std::printf(
                "channel %-5s %-46s T=%4lld D=%3lld %-10s mismatch %lld  %8.1f us vs "
                "libtorch %8.1f us (%.2fx)\n",
                DtypeName(dt), method, static_cast<long long>(T), static_cast<long long>(D),
                vectorized ? "vectorized" : "scalar", static_cast<long long>(bad), t_got, t_ref,
                t_ref / t_got);
          }
        }
      }
    }
  }
  SetFusedFakeQuantEnabled(was_enabled);
  SetFusedFakeQuantVectorized(true);
  failures += CheckLayerKernels(*dev);
  failures += CheckHeadScore(*dev);
  failures += CheckBandWindow(*dev);
  failures += CheckTunedGemm(*dev);
  std::printf("%s\n", failures == 0
                          ? "every fused kernel == its libtorch path (RMSNorm outputs and "
                            "tuned products: within the bounds above)"
                          : "MISMATCH");
  return failures == 0 ? 0 : 1;
}

// --attention-bench DEVICE: one decoder layer's KV-cache work at a model shape, apart from the
// rest of the model: for each method, the codec's Apply on random K/V [B, Hkv, T, D] and the
// attention over what it returns (Attend: SDPA's causal kernel for position-independent operands,
// the blockwise path for position-dependent ones), each timed between device synchronizations,
// median of --repeat runs. One JSON line per method; `none`'s attention is SDPA's causal kernel
// on the same shape, the baseline of the others' attention_vs_none. Position-dependent rows also
// time the block-at-a-time path (blockwise_ms) and give each path's largest difference from the
// masked fp32 reference on the first batch element, relative to its largest magnitude; where the
// packed band's sliding-window form applies (band_window), the bias form's time and difference
// too (bias_band_*).
int AttentionBench(std::map<std::string, std::string>& f) {
  absl::StatusOr<torch::Device> dev = ParseDevice(f["--attention-bench"]);
  if (!dev.ok()) return Die(dev.status());
  absl::StatusOr<torch::ScalarType> dt = ParseDtype(f.count("--dtype") ? f["--dtype"] : "bf16");
  if (!dt.ok()) return Die(dt.status());
  // The shape: B T H Hkv D (default: a batch of 4 windows of 4096 at mistral-7b's heads).
  std::vector<int64_t> shape = {4, 4096, 32, 8, 128};
  if (f.count("--shape")) {
    shape.clear();
    bool ok = true;
    for (absl::string_view x : absl::StrSplit(f["--shape"], ',')) {
      int64_t n = 0;
      ok = ok && absl::SimpleAtoi(x, &n) && n >= 1;
      shape.push_back(n);
    }
    if (!ok || shape.size() != 5 || shape[2] % shape[3] != 0) {
      std::fprintf(stderr, "--shape: expected B,T,H,Hkv,D with Hkv dividing H, got '%s'\n",
                   f["--shape"].c_str());
      return 2;
    }
  }
  const int64_t B = shape[0], T = shape[1], H = shape[2], Hkv = shape[3], D = shape[4];
  int repeat = 5;
  if (f.count("--repeat") && (!absl::SimpleAtoi(f["--repeat"], &repeat) || repeat < 1)) return 2;
  torch::manual_seed(0);
  auto opts = torch::TensorOptions().device(*dev).dtype(*dt);
  const torch::Tensor q = torch::randn({B, H, T, D}, opts);
  const torch::Tensor k = torch::randn({B, Hkv, T, D}, opts);
  const torch::Tensor v = torch::randn({B, Hkv, T, D}, opts);
  const torch::Tensor allowed = AllowedMask(T, 0, *dev);
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  auto sync = [&] {
    if (dev->is_cuda()) torch::cuda::synchronize();
  };
  auto median_ms = [&](const std::function<void()>& fn) {
    fn();  // warm-up
    std::vector<double> ms;
    for (int i = 0; i < repeat; ++i) {
      sync();
      const double t0 = Now();
      fn();
      sync();
      ms.push_back((Now() - t0) * 1e3);
    }
    std::sort(ms.begin(), ms.end());
    return ms[ms.size() / 2];
  };
  double none_attention = 0;
  for (absl::string_view text :
       absl::StrSplit(f.count("--methods") ? f["--methods"] : "none", ';')) {
    absl::StatusOr<std::unique_ptr<KvCodec>> codec = BenchCodec(text, D);
    if (!codec.ok()) return Die(codec.status());
    KvPair pair;
    const double apply = median_ms([&] { pair = (*codec)->Apply(0, k, v); });
    const double attention = median_ms([&] { (void)Attend(q, pair, allowed, 0, scale); });
    if (text == "none") none_attention = attention;
    const bool position_dependent = pair.k.position_dependent() || pair.v.position_dependent();
    // Position-dependent methods: the block-at-a-time path too, and both paths' largest
    // difference from the masked fp32 reference on the first batch element (relative to the
    // reference's largest magnitude).
    double blockwise = 0, diff_attend = 0, diff_blockwise = 0, bias_band = 0, diff_bias_band = 0;
    bool band_window = false;
    nlohmann::json phases = nlohmann::json::object();
    double apply_unfused = 0;
    if (position_dependent) {
      // Where the attention's time goes: the packed path's phases, each between device
      // synchronizations (the sum exceeds attention_ms by the synchronizations).
      static std::map<std::string, double>* marks = new std::map<std::string, double>();
      static double last = 0;
      static bool sync_cuda = false;
      sync_cuda = dev->is_cuda();
      marks->clear();
      SetAttentionPhaseHook([](const char* phase) {
        if (sync_cuda) torch::cuda::synchronize();
        const double now = Now();
        (*marks)[phase] += (now - last) * 1e3;
        last = now;
      });
      for (int i = 0; i < repeat; ++i) {
        sync();
        last = Now();
        (void)Attend(q, pair, allowed, 0, scale);
      }
      SetAttentionPhaseHook(nullptr);
      for (const auto& [phase, ms] : *marks) phases[phase] = ms / repeat;
      // The codec without the fused quantizer (what the kernel saves in Apply).
      SetFusedFakeQuantEnabled(false);
      apply_unfused = median_ms([&] { pair = (*codec)->Apply(0, k, v); });
      SetFusedFakeQuantEnabled(true);
      blockwise =
          median_ms([&] { (void)AttendBlockwise(q, pair, 0, scale, AttentionQueryBlock()); });
      // The packed path with the band through the memory-efficient kernel with a bias, where
      // the sliding-window form applies (the form it replaces).
      // (Attend packs windows of at least 8 query blocks.)
      band_window =
          T >= 8 * AttentionQueryBlock() && PackedBandWindowApplies(pair, T, AttentionQueryBlock());
      if (band_window) {
        SetPackedBandWindow(false);
        bias_band = median_ms([&] { (void)Attend(q, pair, allowed, 0, scale); });
        SetPackedBandWindow(true);
      }
      const KvPair one{OperandRows(pair.k, 0, 1), OperandRows(pair.v, 0, 1)};
      const torch::Tensor q1 = q.slice(0, 0, 1);
      const torch::Tensor ref = AttendMasked(
          q1.to(torch::kFloat32), KvPair{OperandFp32(one.k), OperandFp32(one.v)}, allowed, scale);
      const double mag = ref.abs().max().item<double>();
      auto rel = [&](const torch::Tensor& x) {
        return (x.to(torch::kFloat32) - ref).abs().max().item<double>() / mag;
      };
      diff_attend = rel(Attend(q1, one, allowed, 0, scale));
      diff_blockwise = rel(AttendBlockwise(q1, one, 0, scale, AttentionQueryBlock()));
      if (band_window) {
        SetPackedBandWindow(false);
        diff_bias_band = rel(Attend(q1, one, allowed, 0, scale));
        SetPackedBandWindow(true);
      }
    }
    nlohmann::json row = {{"bench", "attention"},
                          {"method", std::string(text)},
                          {"device", f["--attention-bench"]},
                          {"dtype", DtypeName(*dt)},
                          {"shape", {{"B", B}, {"T", T}, {"H", H}, {"Hkv", Hkv}, {"D", D}}},
                          {"position_dependent", position_dependent},
                          {"attention_block", AttentionQueryBlock()},
                          {"apply_ms", apply},
                          {"attention_ms", attention}};
    if (none_attention > 0) row["attention_vs_none"] = attention / none_attention;
    if (position_dependent) {
      row["blockwise_ms"] = blockwise;
      row["packed_phases_ms"] = phases;
      row["apply_unfused_ms"] = apply_unfused;
      row["max_rel_diff_vs_masked"] = diff_attend;
      row["blockwise_max_rel_diff_vs_masked"] = diff_blockwise;
      row["band_window"] = band_window;
      if (band_window) {
        row["bias_band_attention_ms"] = bias_band;
        row["bias_band_max_rel_diff_vs_masked"] = diff_bias_band;
      }
    }
    std::printf("%s\n", row.dump().c_str());
    std::fflush(stdout);
  }
  return 0;
}

int CpuSuite(std::map<std::string, std::string>& f) {
  int lines = 400;
  std::vector<int> threads = {1, 2};
  std::vector<std::string> models = {"ref-gpt2", "ref-llama"};
  if (f.count("--lines") && !absl::SimpleAtoi(f["--lines"], &lines)) return 2;
  if (f.count("--threads")) {
    threads.clear();
    for (auto t : absl::StrSplit(f["--threads"], ',')) {
      int n = 0;
      if (!absl::SimpleAtoi(t, &n)) return 2;
      threads.push_back(n);
    }
  }
  if (f.count("--models")) models = absl::StrSplit(f["--models"], ',');
  absl::StatusOr<std::string> text = ReadFile(AssetsDir() + "/data/wikitext-2/wiki.test.raw");
  if (!text.ok()) return Die(text.status());
  const std::string head = HeadLines(*text, lines);
  const std::string data = "/tmp/kvsweep_bench_wiki.raw";
  if (!WriteFileAtomic(data, head).ok()) return 1;

  std::printf("%-10s %7s %9s %12s %14s %8s\n", "model", "threads", "tokens", "eval tok/s",
              "forward tok/s", "ratio");
  for (const std::string& name : models) {
    for (int t : threads) {
      JobRequest r;
      r.model_path = AssetsDir() + "/models/" + name;
      r.task = "wikitext_stream";  // the baseline scores the same windows of the whole file
      r.data_path = data;
      absl::StatusOr<JobSpec> spec = ResolveJob(r);
      if (!spec.ok()) return Die(spec.status());
      EngineOptions eo;
      eo.threads = t;
      Engine engine(eo);
      (void)engine.Run(*spec, nullptr);  // warm-up: load, tokenizer, allocator
      absl::StatusOr<nlohmann::json> out = engine.Run(*spec, nullptr);
      if (!out.ok()) return Die(out.status());
      const double eval_tps = (*out)["timing"]["tokens_per_s"].get<double>();
      const int64_t tokens = (*out)["timing"]["forward_tokens"].get<int64_t>();
      // Baseline: the same windows through the bare forward pass (no LM head, no scoring),
      // batched like the scorer.
      absl::StatusOr<std::unique_ptr<Model>> m = Model::Load(spec->model_path, ModelOptions{});
      absl::StatusOr<std::unique_ptr<Tokenizer>> tok = LoadTokenizer(spec->model_path);
      if (!m.ok()) return Die(m.status());
      if (!tok.ok()) return Die(tok.status());
      auto ids = (*tok)->Encode(head);
      auto windows = RollingWindows(*ids, 0, spec->window, 1);
      double t0 = Now();
      int64_t fwd = 0;
      const int64_t per_batch = std::max<int64_t>(1, 4096 / spec->window);
      for (size_t i = 0; i < windows.size(); i += per_batch) {
        const size_t n = std::min<size_t>(per_batch, windows.size() - i);
        const int64_t T = windows[i].input.size();
        torch::Tensor x = torch::zeros({static_cast<int64_t>(n), T}, torch::kLong);
        for (size_t b = 0; b < n; ++b) {
          for (size_t k = 0; k < windows[i + b].input.size(); ++k)
            x[b][k] = windows[i + b].input[k];
          fwd += windows[i + b].input.size();
        }
        (*m)->Forward(x, nullptr);
      }
      const double fwd_tps = fwd / (Now() - t0);
      std::printf("%-10s %7d %9lld %12.0f %14.0f %8.2f\n", name.c_str(), at::get_num_threads(),
                  static_cast<long long>(tokens), eval_tps, fwd_tps, eval_tps / fwd_tps);
      std::fflush(stdout);
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // CLI11 parses (and answers --help); the modes read the given options by name.
  CLI::App app{
      "kvsweep engine benchmark: the CPU suite, one model's job mode, or the fused "
      "CUDA quantizer check (see the top of bench/engine_bench.cc)",
      "kvsweep-engine-bench"};
  const std::vector<std::pair<const char*, const char*>> options = {
      {"--lines", "CPU suite: WikiText lines"},
      {"--threads", "CPU suite: thread counts, comma-separated"},
      {"--models", "CPU suite: models under the assets, comma-separated"},
      {"--model", "job mode: a model directory"},
      {"--device", "job mode: cpu | cuda | cuda:N"},
      {"--dtype", "job mode: fp32 | bf16 | fp16"},
      {"--tasks", "job mode: tasks, comma-separated"},
      {"--methods", "job mode: method specs, ';'-separated"},
      {"--window", "job mode: W"},
      {"--limit", "job mode: LAMBADA documents"},
      {"--repeat", "job mode: passes (tokens/s is the median)"},
      {"--wiki-lines", "job mode: WikiText lines"},
      {"--calibration", "job mode: calibration text"},
      {"--out", "append JSON lines here"},
      {"--check-fused", "check the fused CUDA quantizer on this device"},
      {"--attention-bench", "one layer's codec and attention on DEVICE at --shape B,T,H,Hkv,D"},
      {"--shape", "attention bench: B,T,H,Hkv,D (default 4,4096,32,8,128)"},
      {"--attention-blocks",
       "job mode: query blocks of position-dependent attention, comma-separated"},
      {"--fused-layer",
       "job mode: on | off | both (the fused elementwise kernels of the layer and the LM head)"},
      {"--tuned-gemm", "job mode: on | off (the tuned matrix products, tuned_gemm.h)"},
  };
  std::map<std::string, std::string> values;
  std::vector<std::pair<std::string, CLI::Option*>> given;
  for (const auto& [name, help] : options) {
    given.emplace_back(name, app.add_option(name, values[name], help));
  }
  bool interleave = false, warmup_each = false;
  app.add_flag("--interleave", interleave, "job mode: pass i of every method before pass i + 1");
  app.add_flag("--warmup-each", warmup_each,
               "job mode: an untimed pass of every row before its timed passes");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  std::map<std::string, std::string> flags;
  for (const auto& [name, opt] : given) {
    if (opt->count() > 0) flags[name] = values[name];
  }
  if (interleave) flags["--interleave"] = "1";
  if (warmup_each) flags["--warmup-each"] = "1";
  if (flags.count("--check-fused")) return CheckFused(flags["--check-fused"]);
  if (flags.count("--attention-bench")) {
    if (flags.count("--attention-blocks")) {
      int64_t b = 0;
      if (!absl::SimpleAtoi(flags["--attention-blocks"], &b) || b < 1) {
        std::fprintf(stderr, "--attention-bench takes one --attention-blocks value\n");
        return 2;
      }
      SetAttentionQueryBlock(b);
    }
    return AttentionBench(flags);
  }
  return flags.count("--model") ? JobMode(flags) : CpuSuite(flags);
}

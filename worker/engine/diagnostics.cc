#include "worker/engine/diagnostics.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "spec/method_family.h"
#include "worker/engine/kv/quantizer.h"

namespace kvsweep::engine {
namespace {

using torch::Tensor;

Tensor Repeat(const Tensor& x, int64_t groups) {
  return groups == 1 ? x : x.repeat_interleave(groups, /*dim=*/1);
}

// Var_{p_t}(x_{., i}) for every query t and coordinate i: p [B, H, T, T], x [B, H, T, D] (fp64).
Tensor AttentionVariance(const Tensor& p, const Tensor& x) {
  Tensor mean = torch::matmul(p, x);
  return (torch::matmul(p, x * x) - mean * mean).clamp_min(0);
}

double Sum(const Tensor& t) { return t.sum().item<double>(); }

}  // namespace

AttentionDiagnostics::AttentionDiagnostics(const Model& model, int damage_bits)
    : model_(model), bits_(damage_bits), layers_(model.config().num_layers) {}

void AttentionDiagnostics::Observe(int layer, const Tensor& q, const Tensor& k_raw,
                                   const Tensor& v_raw, const KvPair& seen, const Tensor& allowed) {
  torch::NoGradGuard no_grad;
  // q [B, H, T, D]; k_raw, v_raw and seen.* [B, Hkv, T, D]; allowed [T, T].
  const int64_t T = q.size(2), D = q.size(3), groups = q.size(1) / k_raw.size(1);
  const double scale = model_.AttentionScale(layer);
  const Tensor blocked = allowed.logical_not();
  const float neg_inf = -std::numeric_limits<float>::infinity();
  Tensor qf = q.to(torch::kFloat32);
  auto scores = [&](const Tensor& k) {
    return torch::matmul(qf, Repeat(k.to(torch::kFloat32), groups).transpose(-2, -1));
  };
  Tensor s_clean = (scores(k_raw) * scale).masked_fill(blocked, neg_inf);
  Tensor s_seen = scores(seen.k.compressed);
  if (seen.k.position_dependent())
    s_seen = torch::where(seen.k.use_compressed, s_seen, scores(seen.k.raw));
  s_seen = (s_seen * scale).masked_fill(blocked, neg_inf);
  Tensor lp_clean = torch::log_softmax(s_clean, -1), lp_seen = torch::log_softmax(s_seen, -1);
  Tensor p_clean = lp_clean.exp(), p_seen = lp_seen.exp();

  Sums& acc = layers_[layer];
  if (T > 1) {
    // Rows t >= 1 (row 0 has a single key and can neither diverge nor flip).
    Tensor kl =
        torch::where(allowed, p_clean * (lp_clean - lp_seen), torch::zeros_like(p_clean)).sum(-1);
    acc.kl += Sum(kl.slice(-1, 1, T).to(torch::kFloat64));
    Tensor flips = s_clean.argmax(-1).ne(s_seen.argmax(-1)).slice(-1, 1, T);
    acc.flips += Sum(flips.to(torch::kFloat64));
    acc.queries += static_cast<double>(flips.numel());
  }

  // Attention outputs with clean K/V and with what was read.
  Tensor vf = Repeat(v_raw.to(torch::kFloat32), groups);
  Tensor o_clean = torch::matmul(p_clean, vf);
  Tensor vc = Repeat(seen.v.compressed.to(torch::kFloat32), groups);
  Tensor o_seen;
  if (seen.v.position_dependent()) {
    Tensor m = seen.v.use_compressed.to(torch::kFloat32);
    o_seen = torch::matmul(p_seen * m, vc) +
             torch::matmul(p_seen * (1 - m), Repeat(seen.v.raw.to(torch::kFloat32), groups));
  } else {
    o_seen = torch::matmul(p_seen, vc);
  }
  acc.out_err += Sum((o_seen - o_clean).to(torch::kFloat64).pow(2));
  acc.out_ref += Sum(o_clean.to(torch::kFloat64).pow(2));

  // Damage ratio (fp64): per-coordinate Fisher forms of dropping vs quantizing.
  QuantFormat f;
  f.bits = bits_;
  f.group = static_cast<int>(D);
  Tensor kd = k_raw.to(torch::kFloat64);
  Tensor err =
      FakeQuantize(k_raw.to(torch::kFloat32), f).to(torch::kFloat64) - kd;  // [B, Hkv, T, D]
  Tensor pd = p_clean.to(torch::kFloat64);
  Tensor q2 = q.to(torch::kFloat64).pow(2) * (scale * scale);
  acc.f_proj += Sum(q2 * AttentionVariance(pd, Repeat(kd, groups)));
  acc.f_quant += Sum(q2 * AttentionVariance(pd, Repeat(err, groups)));
  Tensor half = (kd.amax(-1) - kd.amin(-1)) / 2;  // [B, Hkv, T]
  acc.half_range_sq += Sum(half * half);
  acc.coord_sq += Sum(kd.pow(2).mean(-1));
  acc.tokens += static_cast<double>(half.numel());
}

nlohmann::json AttentionDiagnostics::Summary() const {
  const double predicted = 3.0 * std::pow(4.0, bits_);
  nlohmann::json layers = nlohmann::json::array();
  double kl = 0, flip = 0, out = 0, log_ratio = 0;
  int n = 0;
  for (size_t l = 0; l < layers_.size(); ++l) {
    const Sums& s = layers_[l];
    const double kl_mean = s.queries > 0 ? s.kl / s.queries : 0;
    const double flip_rate = s.queries > 0 ? s.flips / s.queries : 0;
    const double out_rel = s.out_ref > 0 ? s.out_err / s.out_ref : 0;
    const double ratio = s.f_quant > 0 ? s.f_proj / s.f_quant : 0;
    const double kappa = s.coord_sq > 0 ? std::sqrt(s.half_range_sq / s.coord_sq) : 0;
    layers.push_back({{"layer", l},
                      {"kl_mean", kl_mean},
                      {"flip_rate", flip_rate},
                      {"out_rel_err", out_rel},
                      {"damage_ratio", ratio},
                      {"kappa", kappa},
                      {"predicted_ratio_kappa", kappa > 0 ? predicted / (kappa * kappa) : 0},
                      {"queries", s.queries}});
    kl += kl_mean;
    flip += flip_rate;
    out += out_rel;
    if (ratio > 0) log_ratio += std::log(ratio);
    ++n;
  }
  nlohmann::json mean = nlohmann::json::object();
  if (n > 0) {
    mean = {{"kl_mean", kl / n},
            {"flip_rate", flip / n},
            {"out_rel_err", out / n},
            {"damage_ratio_geomean", std::exp(log_ratio / n)}};
  }
  return {
      {"damage_bits", bits_}, {"predicted_ratio", predicted}, {"layers", layers}, {"mean", mean}};
}

absl::StatusOr<nlohmann::json> RunDiagnostics(const Model& model, const KvCodec* codec,
                                              const MethodSpec& method,
                                              const std::vector<ScoreRequest>& requests,
                                              const DiagnosticsOptions& options) {
  if (requests.empty()) return absl::InvalidArgumentError("diagnostics: no sequences to run");
  int bits = options.damage_bits;
  if (bits == 0) {
    bits = MethodNumber(method, "bits").value_or(4);
  }
  if (bits < 1 || bits > 8) {
    return absl::InvalidArgumentError(
        absl::StrCat("diagnostics: damage bits ", bits, " out of range [1, 8]"));
  }
  AttentionDiagnostics diag(model, bits);
  int64_t tokens = 0, sequences = 0;
  absl::Status s = GuardTorch("diagnostics", [&]() -> absl::Status {
    torch::NoGradGuard no_grad;
    for (const ScoreRequest& r : requests) {
      if (sequences > 0 && tokens >= options.max_tokens) break;
      Tensor ids = torch::tensor(std::vector<int64_t>(r.input.begin(), r.input.end()), torch::kLong)
                       .unsqueeze(0);
      model.Forward(ids, codec, &diag);
      tokens += static_cast<int64_t>(r.input.size());
      ++sequences;
    }
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  nlohmann::json out = diag.Summary();
  out["sequences"] = sequences;
  out["tokens"] = tokens;
  out["definition"] =
      "per layer over the first sequences (unpadded): kl_mean = mean KL(p || p^) over queries t>=1 "
      "and heads, p from the layer's uncompressed keys and p^ from the keys attention read; "
      "flip_rate = fraction of those queries whose argmax key differs; out_rel_err = "
      "sum|o^-o|^2/sum|o|^2; damage_ratio = sum s^2 q_i^2 Var_p(k_i) / sum s^2 q_i^2 Var_p(e_i), "
      "e the per-token min-max quantization error of the keys at damage_bits (docs/kv-methods.md)";
  return out;
}

}  // namespace kvsweep::engine

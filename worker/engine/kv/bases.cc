#include "worker/engine/kv/bases.h"

#include <cmath>
#include <mutex>
#include <random>

#include "absl/strings/str_cat.h"
#include "worker/engine/kv/fused_quant.h"
#include "worker/engine/model.h"

namespace kvsweep::engine {
namespace {

using torch::Tensor;

const auto kF64 = torch::TensorOptions().dtype(torch::kFloat64);

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Makes the largest-|.| entry of every column positive (first one on ties).
Tensor FixSigns(Tensor basis) {
  Tensor idx = basis.abs().argmax(0);               // [D]
  Tensor pick = basis.gather(0, idx.unsqueeze(0));  // [1, D]
  return basis * torch::where(pick < 0, -torch::ones_like(pick), torch::ones_like(pick));
}

// Passes K/V through unchanged while summing x x^T per layer and head. Its spec is a rank spec
// only so that Model::Forward hands it pre-RoPE keys when asked (rope=pre).
class MomentCollector final : public KvCodec {
 public:
  MomentCollector(RopeStage rope, int layers) : k_(layers), v_(layers) {
    spec_.family = MethodFamily::kRank;
    spec_.r = 1;
    spec_.rope = rope;
  }
  const MethodSpec& spec() const override { return spec_; }
  KvPair Apply(int layer, const Tensor& k, const Tensor& v) const override {
    std::lock_guard<std::mutex> lock(mu_);
    Accumulate(k, &k_[layer]);
    Accumulate(v, &v_[layer]);
    return KvPair{KvOperand{k, {}, {}}, KvOperand{v, {}, {}}};
  }
  SecondMoments Take(int64_t tokens) {
    std::lock_guard<std::mutex> lock(mu_);
    SecondMoments m;
    m.k = std::move(k_);
    m.v = std::move(v_);
    m.tokens = tokens;
    return m;
  }

 private:
  static void Accumulate(const Tensor& x, Tensor* sum) {
    // x [B, Hkv, T, D] -> [Hkv, B*T, D] -> [Hkv, D, D].
    Tensor xd =
        x.to(torch::kCPU, torch::kFloat64).transpose(0, 1).reshape({x.size(1), -1, x.size(3)});
    Tensor m = torch::bmm(xd.transpose(1, 2), xd);
    *sum = sum->defined() ? *sum + m : m;
  }
  MethodSpec spec_;
  mutable std::mutex mu_;
  mutable std::vector<Tensor> k_, v_;
};

}  // namespace

Tensor IdentityBasis(int d) { return torch::eye(d, kF64); }

Tensor HadamardBasis(int d) {
  TORCH_CHECK(d > 0 && (d & (d - 1)) == 0, "Hadamard basis needs a power-of-two dimension, got ",
              d);
  Tensor h = torch::ones({1, 1}, kF64);
  while (h.size(0) < d) h = torch::cat({torch::cat({h, h}, 1), torch::cat({h, -h}, 1)}, 0);
  return h / std::sqrt(static_cast<double>(d));
}

uint64_t BasisSeed(int seed, int layer, int head, KvTensor which) {
  uint64_t x = SplitMix64(static_cast<uint64_t>(seed));
  x = SplitMix64(x ^ static_cast<uint64_t>(layer));
  x = SplitMix64(x ^ static_cast<uint64_t>(head));
  return SplitMix64(x ^ static_cast<uint64_t>(which));
}

Tensor RandomOrthogonalBasis(int d, uint64_t seed) {
  std::mt19937_64 gen(seed);
  // Box-Muller on 53-bit uniforms: u1 in (0, 1], u2 in [0, 1).
  std::vector<double> a(static_cast<size_t>(d) * d);
  for (size_t i = 0; i < a.size(); i += 2) {
    const double u1 = (static_cast<double>(gen() >> 11) + 1.0) * 0x1.0p-53;
    const double u2 = static_cast<double>(gen() >> 11) * 0x1.0p-53;
    const double rad = std::sqrt(-2.0 * std::log(u1));
    a[i] = rad * std::cos(2.0 * M_PI * u2);
    if (i + 1 < a.size()) a[i + 1] = rad * std::sin(2.0 * M_PI * u2);
  }
  // Columns c = a[c*d .. c*d+d); modified Gram-Schmidt, applied twice for orthogonality to
  // rounding. The R diagonal stays positive, which makes Q Haar-distributed.
  for (int c = 0; c < d; ++c) {
    double* col = &a[static_cast<size_t>(c) * d];
    for (int pass = 0; pass < 2; ++pass) {
      for (int p = 0; p < c; ++p) {
        const double* prev = &a[static_cast<size_t>(p) * d];
        double dot = 0;
        for (int i = 0; i < d; ++i) dot += prev[i] * col[i];
        for (int i = 0; i < d; ++i) col[i] -= dot * prev[i];
      }
    }
    double norm = 0;
    for (int i = 0; i < d; ++i) norm += col[i] * col[i];
    norm = std::sqrt(norm);
    for (int i = 0; i < d; ++i) col[i] /= norm;
  }
  // a holds columns contiguously: as a row-major [d, d] it is Q^T.
  return torch::from_blob(a.data(), {d, d}, kF64).t().clone();
}

Tensor EigenBasis(const Tensor& m) {
  Tensor sym = m.to(torch::kCPU, torch::kFloat64);
  sym = (sym + sym.t()) / 2;
  auto [evals, evecs] = at::linalg_eigh(sym, "L");  // ascending
  return FixSigns(evecs.flip({1}));
}

Tensor SingularBasis(const Tensor& w) {
  Tensor wd = w.to(torch::kCPU, torch::kFloat64);
  const bool full = wd.size(1) < wd.size(0);
  auto [u, s, vh] = at::linalg_svd(wd, /*full_matrices=*/full);  // descending
  return FixSigns(u);
}

absl::StatusOr<SecondMoments> CollectSecondMoments(const Model& model,
                                                   const std::vector<std::vector<int32_t>>& windows,
                                                   RopeStage rope) {
  const ModelConfig& c = model.config();
  if (windows.empty()) {
    return absl::FailedPreconditionError("PCA bases need calibration windows and none were given");
  }
  for (size_t i = 0; i < windows.size(); ++i) {
    const auto& w = windows[i];
    if (w.empty() || static_cast<int64_t>(w.size()) > c.max_positions) {
      return absl::InvalidArgumentError(absl::StrCat("calibration window ", i, " has ", w.size(),
                                                     " tokens; the model takes 1..",
                                                     c.max_positions));
    }
    for (int32_t id : w) {
      if (id < 0 || id >= c.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("calibration window ", i, ": token id ", id,
                                                       " outside the vocabulary of ",
                                                       c.vocab_size));
      }
    }
  }
  MomentCollector collector(rope, c.num_layers);
  int64_t tokens = 0;
  torch::NoGradGuard no_grad;
  // Windows of equal length go through the model together, up to 4096 tokens per batch.
  for (size_t i = 0; i < windows.size();) {
    const int64_t T = windows[i].size();
    size_t j = i;
    while (j < windows.size() && static_cast<int64_t>(windows[j].size()) == T &&
           static_cast<int64_t>(j - i + 1) * T <= std::max<int64_t>(T, 4096)) {
      ++j;
    }
    Tensor ids = torch::empty({static_cast<int64_t>(j - i), T}, torch::kLong);
    auto acc = ids.accessor<int64_t, 2>();
    for (size_t b = i; b < j; ++b) {
      for (int64_t t = 0; t < T; ++t) acc[b - i][t] = windows[b][t];
    }
    model.Forward(ids, &collector);
    tokens += (j - i) * T;
    i = j;
  }
  return collector.Take(tokens);
}

absl::StatusOr<KvBases> BuildBases(const MethodSpec& spec, const CodecContext& ctx) {
  if (ctx.model == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("method '", spec.ToString(), "' needs the model to build its bases"));
  }
  const Model& model = *ctx.model;
  const int layers = model.config().num_layers, hkv = model.kv_heads(), d = model.config().head_dim;
  SecondMoments moments;
  if (spec.basis == Basis::kPca) {
    absl::StatusOr<SecondMoments> m =
        CollectSecondMoments(model, ctx.calibration_windows, spec.rope);
    if (!m.ok()) return m.status();
    moments = std::move(*m);
  }
  KvBases out;
  out.k.resize(layers);
  out.v.resize(layers);
  for (int l = 0; l < layers; ++l) {
    for (KvTensor which : {KvTensor::kK, KvTensor::kV}) {
      const bool used = which == KvTensor::kK ? spec.compresses_k() : spec.compresses_v();
      if (!used) continue;
      std::vector<Tensor> heads;
      for (int h = 0; h < hkv; ++h) {
        switch (spec.basis) {
          case Basis::kIdentity:
            heads.push_back(IdentityBasis(d));
            break;
          case Basis::kHadamard:
            heads.push_back(HadamardBasis(d));
            break;
          case Basis::kRandom:
            heads.push_back(RandomOrthogonalBasis(d, BasisSeed(spec.seed, l, h, which)));
            break;
          case Basis::kPca: {
            const Tensor& m = which == KvTensor::kK ? moments.k[l] : moments.v[l];
            heads.push_back(EigenBasis(m[h]));
            break;
          }
          case Basis::kSvd: {
            const Tensor& w = which == KvTensor::kK ? model.layer(l).wk : model.layer(l).wv;
            heads.push_back(SingularBasis(
                w.slice(0, static_cast<int64_t>(h) * d, static_cast<int64_t>(h + 1) * d)));
            break;
          }
        }
      }
      (which == KvTensor::kK ? out.k : out.v)[l] = torch::stack(heads);
    }
  }
  return out;
}

std::vector<Tensor> LeadingColumns(const std::vector<Tensor>& bases, int r,
                                   const torch::TensorOptions& options) {
  std::vector<Tensor> out;
  for (const Tensor& u : bases) {
    if (!u.defined()) {
      out.emplace_back();
      continue;
    }
    out.push_back((r < 0 ? u : u.slice(-1, 0, r)).to(options).contiguous());
  }
  return out;
}

absl::Status Projection::Prepare(const CodecContext& ctx) {
  if (spec_.basis == Basis::kIdentity) return absl::OkStatus();
  absl::StatusOr<KvBases> b = BuildBases(spec_, ctx);
  if (!b.ok()) return b.status();
  const auto to =
      torch::TensorOptions().dtype(ctx.model->options().dtype).device(ctx.model->options().device);
  u_k_ = LeadingColumns(b->k, r_, to);
  u_v_ = LeadingColumns(b->v, r_, to);
  // A pipeline (worker/engine/placement.h): each layer's basis where that layer runs.
  for (std::vector<torch::Tensor>* u : {&u_k_, &u_v_}) {
    for (size_t l = 0; l < u->size(); ++l) {
      if ((*u)[l].defined()) (*u)[l] = (*u)[l].to(ctx.model->layer_device(static_cast<int>(l)));
    }
  }
  return absl::OkStatus();
}

bool Projection::ApplyQuantizedPair(const torch::Tensor& k, const torch::Tensor& v,
                                    const QuantFormat& f, torch::Tensor* k_out,
                                    torch::Tensor* v_out) const {
  if (spec_.basis != Basis::kIdentity) return false;
  const int64_t D = k.size(-1);
  const int64_t r = r_ == kAllColumns ? D : r_;
  if (v.size(-1) != D || r > D) return false;
  // The first r coordinates quantized, the dropped ones written as 0 by the same kernel.
  return FusedFakeQuantizePair(k.slice(-1, 0, r), v.slice(-1, 0, r), f, D, k_out, v_out);
}

}  // namespace kvsweep::engine

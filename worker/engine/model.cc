#include "worker/engine/model.h"

#include <cmath>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/log.h"
#include "worker/engine/attention.h"
#include "worker/engine/checkpoint.h"
#include "worker/engine/fused_layer.h"
#include "worker/engine/tuned_gemm.h"

namespace kvsweep::engine {

using torch::Tensor;

Tensor RmsNorm(const Tensor& x, const Tensor& w, double eps) {
  // transformers' LlamaRMSNorm: statistics in fp32, then weight * normalized.to(input dtype).
  Tensor xf = x.to(torch::kFloat32);
  Tensor var = xf.pow(2).mean(-1, /*keepdim=*/true);
  xf = xf * torch::rsqrt(var + eps);
  return w * xf.to(x.scalar_type());
}

// Gemma's RMSNorm: statistics and the (1 + w) scale in fp32, then the input dtype.
Tensor GemmaRmsNorm(const Tensor& x, const Tensor& w, double eps) {
  Tensor xf = x.to(torch::kFloat32);
  xf = xf * torch::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return (xf * (1.0 + w.to(torch::kFloat32))).to(x.scalar_type());
}

// OLMo 2's: fp32, times w (promoted to fp32), then the input dtype: one rounding.
Tensor Olmo2RmsNorm(const Tensor& x, const Tensor& w, double eps) {
  Tensor xf = x.to(torch::kFloat32);
  xf = xf * torch::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return (w.to(torch::kFloat32) * xf).to(x.scalar_type());
}

Tensor RmsNormOf(RmsNormStyle style, const Tensor& x, const Tensor& w, double eps) {
  switch (style) {
    case kRmsGemma:
      return GemmaRmsNorm(x, w, eps);
    case kRmsOlmo2:
      return Olmo2RmsNorm(x, w, eps);
    case kRmsLlama:
      break;
  }
  return RmsNorm(x, w, eps);
}

RmsNormStyle RmsNormStyleOf(const ModelConfig& c) {
  return c.gemma ? kRmsGemma : c.arch == Arch::kOlmo2 ? kRmsOlmo2 : kRmsLlama;
}

namespace {

Tensor LayerNorm(const Tensor& x, const Tensor& w, const Tensor& b, double eps) {
  return torch::layer_norm(x, {x.size(-1)}, w, b, eps);
}

Tensor Activation(const Tensor& x, const std::string& act) {
  if (act == "silu") return torch::silu(x);
  if (act == "gelu_new" || act == "gelu_pytorch_tanh") return torch::gelu(x, "tanh");
  if (act == "gelu") return torch::gelu(x);
  return torch::relu(x);  // "relu": the config parser admits nothing else
}

// transformers' MixtralSparseMoeBlock: router softmax in fp32, the top experts_per_tok per
// token, their weights renormalized to sum 1 (in the compute dtype), each expert a SwiGLU MLP.
Tensor MixtureOfExperts(const Tensor& h, const LayerWeights& w, const ModelConfig& c) {
  const Tensor flat = h.reshape({-1, h.size(-1)});
  const Tensor probs = torch::softmax(torch::linear(flat, w.router).to(torch::kFloat32), -1);
  auto [top_w, top_i] = probs.topk(c.experts_per_tok, -1);
  top_w = (top_w / top_w.sum(-1, /*keepdim=*/true)).to(h.scalar_type());
  Tensor out = torch::zeros_like(flat);
  for (int e = 0; e < c.num_experts; ++e) {
    const Tensor hit = top_i == e;  // [N, k]: at most one slot per token
    const Tensor rows = hit.any(-1).nonzero().squeeze(-1);
    if (rows.numel() == 0) continue;
    const Tensor weight = (top_w * hit.to(top_w.scalar_type())).sum(-1).index_select(0, rows);
    const Tensor xe = flat.index_select(0, rows);
    const Tensor ye = torch::linear(
        Activation(torch::linear(xe, w.e_gate[e]), c.activation) * torch::linear(xe, w.e_up[e]),
        w.e_down[e]);
    out.index_add_(0, rows, ye * weight.unsqueeze(-1));
  }
  return out.view(h.sizes());
}

}  // namespace

int64_t Model::num_parameters() const {
  std::set<const void*> seen;
  int64_t n = 0;
  auto add = [&](const Tensor& t) {
    if (t.defined() && seen.insert(t.data_ptr()).second) n += t.numel();
  };
  add(tok_emb_);
  add(pos_emb_);
  add(final_w_);
  add(final_b_);
  add(lm_head_);
  for (const LayerWeights& l : layers_) {
    for (const Tensor* t : {&l.norm1_w,      &l.norm1_b, &l.wq,
                            &l.bq,           &l.wk,      &l.bk,
                            &l.wv,           &l.bv,      &l.wo,
                            &l.bo,           &l.norm2_w, &l.norm2_b,
                            &l.w_gate,       &l.w_up,    &l.b_up,
                            &l.w_down,       &l.b_down,  &l.q_norm,
                            &l.k_norm,       &l.router,  &l.post_attn_norm,
                            &l.post_ffn_norm}) {
      add(*t);
    }
    for (const auto* v : {&l.e_gate, &l.e_up, &l.e_down}) {
      for (const Tensor& t : *v) add(t);
    }
  }
  return n;
}

absl::StatusOr<std::unique_ptr<Model>> Model::Load(const std::string& path,
                                                   const ModelOptions& options) {
  std::unique_ptr<Model> m(new Model());
  m->options_ = options;
  absl::StatusOr<ModelConfig> cfg = ReadModelConfig(path);
  if (!cfg.ok()) return cfg.status();
  m->config_ = *cfg;
  // A pipeline: each layer's device, planned before anything is loaded
  // (worker/engine/placement.h).
  m->layer_devices_.assign(std::max(0, m->config_.num_layers), options.device);
  if (options.pipeline.size() >= 2) {
    absl::StatusOr<Placement> p =
        PlanModelPlacement(m->config_, options.dtype, options.kv_heads, options.pipeline);
    if (!p.ok()) return p.status();
    m->placement_ = *std::move(p);
    m->options_.device = options.pipeline[0];
    for (size_t l = 0; l < m->layer_devices_.size(); ++l) {
      m->layer_devices_[l] = options.pipeline[m->placement_.layer_device[l]];
    }
    KV_LOG(INFO) << path << ": pipeline " << m->placement_.Describe(DeviceNames(options.pipeline));
  }
  absl::Status s = GuardTorch("loading " + path, [&]() -> absl::Status {
    torch::NoGradGuard no_grad;
    absl::Status st = m->config_.arch == Arch::kLlama2c ? m->LoadLlama2c(path) : m->LoadHf(path);
    if (!st.ok()) return st;
    m->kv_heads_ = m->config_.num_kv_heads;
    if (options.kv_heads != 0 && options.kv_heads != m->config_.num_kv_heads) {
      st = m->PoolKvHeads(options.kv_heads);
      if (!st.ok()) return st;
    }
    m->BuildRope();
    m->StackProjections();
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  KV_LOG(INFO) << "loaded " << ArchName(m->config_.arch) << " model " << path << " ("
               << m->num_parameters() << " params, " << m->config_.num_layers << " layers, "
               << m->config_.num_heads << "q/" << m->kv_heads_ << "kv heads of "
               << m->config_.head_dim << ", " << DtypeName(options.dtype) << " on "
               << options.device.str() << ")";
  return m;
}

absl::Status Model::LoadHf(const std::string& dir) {
  // The files job identity hashed, and no other (common/input_files.h).
  absl::StatusOr<ModelFiles> files = ResolveModelFiles(dir);
  if (!files.ok()) return files.status();
  absl::StatusOr<std::unique_ptr<Checkpoint>> ck_or = Checkpoint::Open(dir, *files);
  if (!ck_or.ok()) return ck_or.status();
  std::shared_ptr<Checkpoint> ck(std::move(*ck_or));
  keepalive_ = ck;
  const ModelConfig& c = config_;
  const int64_t V = c.vocab_size, Hd = c.hidden_size, D = c.head_dim, H = c.num_heads,
                Hkv = c.num_kv_heads, I = c.intermediate_size;
  const torch::ScalarType dt = options_.dtype;
  torch::Device dev = options_.device;  // each layer's own in the loops below (a pipeline)
  absl::Status err;
  auto load = [&](const std::string& name, std::vector<int64_t> shape) -> Tensor {
    if (!err.ok()) return Tensor();
    absl::StatusOr<Tensor> t = ck->Load(name, shape, dt, dev);
    if (!t.ok()) {
      err = t.status();
      return Tensor();
    }
    return *t;
  };
  layers_.resize(c.num_layers);
  if (c.arch == Arch::kGpt2) {
    std::string p = ck->Has("transformer.wte.weight") ? "transformer." : "";
    tok_emb_ = load(p + "wte.weight", {V, Hd});
    pos_emb_ = load(p + "wpe.weight", {c.max_positions, Hd});
    for (int i = 0; i < c.num_layers && err.ok(); ++i) {
      dev = layer_devices_[i];
      const std::string l = absl::StrCat(p, "h.", i, ".");
      LayerWeights& w = layers_[i];
      w.norm1_w = load(l + "ln_1.weight", {Hd});
      w.norm1_b = load(l + "ln_1.bias", {Hd});
      Tensor qkv = load(l + "attn.c_attn.weight", {Hd, 3 * Hd});  // Conv1D: [in, out]
      Tensor qkv_b = load(l + "attn.c_attn.bias", {3 * Hd});
      if (!err.ok()) break;
      qkv = qkv.t();
      w.wq = qkv.slice(0, 0, Hd).contiguous();
      w.wk = qkv.slice(0, Hd, 2 * Hd).contiguous();
      w.wv = qkv.slice(0, 2 * Hd, 3 * Hd).contiguous();
      w.bq = qkv_b.slice(0, 0, Hd).contiguous();
      w.bk = qkv_b.slice(0, Hd, 2 * Hd).contiguous();
      w.bv = qkv_b.slice(0, 2 * Hd, 3 * Hd).contiguous();
      w.wo = load(l + "attn.c_proj.weight", {Hd, Hd});
      w.bo = load(l + "attn.c_proj.bias", {Hd});
      w.norm2_w = load(l + "ln_2.weight", {Hd});
      w.norm2_b = load(l + "ln_2.bias", {Hd});
      w.w_up = load(l + "mlp.c_fc.weight", {Hd, I});
      w.b_up = load(l + "mlp.c_fc.bias", {I});
      w.w_down = load(l + "mlp.c_proj.weight", {I, Hd});
      w.b_down = load(l + "mlp.c_proj.bias", {Hd});
      if (!err.ok()) break;
      w.wo = w.wo.t().contiguous();
      w.w_up = w.w_up.t().contiguous();
      w.w_down = w.w_down.t().contiguous();
    }
    dev = layer_devices_.back();  // the final norm and an untied head: the last device
    final_w_ = load(p + "ln_f.weight", {Hd});
    final_b_ = load(p + "ln_f.bias", {Hd});
  } else {
    tok_emb_ = load("model.embed_tokens.weight", {V, Hd});
    for (int i = 0; i < c.num_layers && err.ok(); ++i) {
      dev = layer_devices_[i];
      const std::string l = absl::StrCat("model.layers.", i, ".");
      LayerWeights& w = layers_[i];
      if (c.norms_after) {
        // olmo2: norm1/norm2 are applied to the attention and MLP outputs (Forward).
        w.norm1_w = load(l + "post_attention_layernorm.weight", {Hd});
        w.norm2_w = load(l + "post_feedforward_layernorm.weight", {Hd});
      } else if (c.gemma) {
        w.norm1_w = load(l + "input_layernorm.weight", {Hd});
        w.post_attn_norm = load(l + "post_attention_layernorm.weight", {Hd});
        w.norm2_w = load(l + "pre_feedforward_layernorm.weight", {Hd});
        w.post_ffn_norm = load(l + "post_feedforward_layernorm.weight", {Hd});
      } else {
        w.norm1_w = load(l + "input_layernorm.weight", {Hd});
        w.norm2_w = load(l + "post_attention_layernorm.weight", {Hd});
      }
      if (c.arch == Arch::kPhi3) {
        // Fused [q; k; v] rows.
        Tensor qkv = load(l + "self_attn.qkv_proj.weight", {(H + 2 * Hkv) * D, Hd});
        if (!err.ok()) break;
        w.wq = qkv.slice(0, 0, H * D);
        w.wk = qkv.slice(0, H * D, (H + Hkv) * D);
        w.wv = qkv.slice(0, (H + Hkv) * D, (H + 2 * Hkv) * D);
      } else {
        w.wq = load(l + "self_attn.q_proj.weight", {H * D, Hd});
        w.wk = load(l + "self_attn.k_proj.weight", {Hkv * D, Hd});
        w.wv = load(l + "self_attn.v_proj.weight", {Hkv * D, Hd});
      }
      w.wo = load(l + "self_attn.o_proj.weight", {Hd, H * D});
      if (c.qk_norm != QkNorm::kNone) {
        const bool all = c.qk_norm == QkNorm::kAllHeads;
        w.q_norm = load(l + "self_attn.q_norm.weight", {all ? H * D : D});
        w.k_norm = load(l + "self_attn.k_norm.weight", {all ? Hkv * D : D});
      }
      if (c.qkv_bias) {
        w.bq = load(l + "self_attn.q_proj.bias", {H * D});
        w.bk = load(l + "self_attn.k_proj.bias", {Hkv * D});
        w.bv = load(l + "self_attn.v_proj.bias", {Hkv * D});
      }
      if (c.o_bias) w.bo = load(l + "self_attn.o_proj.bias", {Hd});
      if (c.num_experts > 0) {
        // Hugging Face's Mixtral layout: block_sparse_moe.gate and experts.E.{w1 gate, w3 up,
        // w2 down}.
        const std::string moe = l + "block_sparse_moe.";
        w.router = load(moe + "gate.weight", {c.num_experts, Hd});
        for (int e = 0; e < c.num_experts; ++e) {
          const std::string x = absl::StrCat(moe, "experts.", e, ".");
          w.e_gate.push_back(load(x + "w1.weight", {I, Hd}));
          w.e_up.push_back(load(x + "w3.weight", {I, Hd}));
          w.e_down.push_back(load(x + "w2.weight", {Hd, I}));
        }
      } else if (c.arch == Arch::kPhi3) {
        // Fused [gate; up] rows.
        Tensor gate_up = load(l + "mlp.gate_up_proj.weight", {2 * I, Hd});
        if (!err.ok()) break;
        w.w_gate = gate_up.slice(0, 0, I);
        w.w_up = gate_up.slice(0, I, 2 * I);
        w.w_down = load(l + "mlp.down_proj.weight", {Hd, I});
      } else {
        w.w_gate = load(l + "mlp.gate_proj.weight", {I, Hd});
        w.w_up = load(l + "mlp.up_proj.weight", {I, Hd});
        w.w_down = load(l + "mlp.down_proj.weight", {Hd, I});
      }
      if (c.mlp_bias) {
        w.b_up = load(l + "mlp.up_proj.bias", {I});
        w.b_down = load(l + "mlp.down_proj.bias", {Hd});
      }
    }
    dev = layer_devices_.back();
    final_w_ = load("model.norm.weight", {Hd});
  }
  if (!err.ok()) return err;
  if (c.tie_word_embeddings) {
    lm_head_ = tok_emb_;
  } else if (ck->Has("lm_head.weight")) {
    lm_head_ = load("lm_head.weight", {V, Hd});
  } else {
    return absl::NotFoundError(
        absl::StrCat(dir, ": tensor 'lm_head.weight' is missing and tie_word_embeddings is false"));
  }
  return err;
}

absl::Status Model::LoadLlama2c(const std::string& path) {
  absl::StatusOr<std::unique_ptr<MappedFile>> f_or = MappedFile::Open(path);
  if (!f_or.ok()) return f_or.status();
  std::shared_ptr<MappedFile> f(std::move(*f_or));
  keepalive_ = f;
  absl::StatusOr<Llama2cHeader> h = ParseLlama2cHeader(f->data(), f->size(), path);
  if (!h.ok()) return h.status();
  const int64_t V = h->vocab_size, Hd = h->dim, L = h->n_layers, I = h->hidden_dim;
  const int64_t D = Hd / h->n_heads, Hkv = h->n_kv_heads, H = h->n_heads;
  const int64_t kv_dim = Hkv * D;
  // llama2.c's legacy layout (run.c memory_map_weights), all fp32.
  const int64_t counts[] = {V * Hd,
                            L * Hd,
                            L * Hd * (H * D),
                            L * Hd * kv_dim,
                            L * Hd * kv_dim,
                            L * (H * D) * Hd,
                            L * Hd,
                            L * Hd * I,
                            L * I * Hd,
                            L * Hd * I,
                            Hd,
                            h->seq_len * D};
  int64_t floats = 0;
  for (int64_t n : counts) floats += n;
  if (!h->shared_classifier) floats += V * Hd;
  const uint64_t expect = 28 + static_cast<uint64_t>(floats) * 4;
  if (f->size() != expect) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": llama2.c file is ", f->size(),
                                                   " bytes but its header implies ", expect,
                                                   " (truncated, or not the legacy format)"));
  }
  const float* p = reinterpret_cast<const float*>(f->data() + 28);
  const auto dt = options_.dtype;
  auto dev = options_.device;
  auto take = [&](int64_t n, std::vector<int64_t> shape) {
    Tensor t = torch::from_blob(const_cast<float*>(p), shape, torch::kFloat32);
    p += n;
    return t;
  };
  Tensor emb = take(counts[0], {V, Hd});
  Tensor rms_att = take(counts[1], {L, Hd});
  Tensor wq = take(counts[2], {L, H * D, Hd});
  Tensor wk = take(counts[3], {L, kv_dim, Hd});
  Tensor wv = take(counts[4], {L, kv_dim, Hd});
  Tensor wo = take(counts[5], {L, Hd, H * D});
  Tensor rms_ffn = take(counts[6], {L, Hd});
  Tensor w1 = take(counts[7], {L, I, Hd});
  Tensor w2 = take(counts[8], {L, Hd, I});
  Tensor w3 = take(counts[9], {L, I, Hd});
  Tensor rms_final = take(counts[10], {Hd});
  p += counts[11];  // unused legacy RoPE tables
  Tensor wcls = h->shared_classifier ? emb : take(V * Hd, {V, Hd});
  auto conv = [&](const Tensor& t) { return t.to(dev).to(dt).contiguous(); };
  tok_emb_ = conv(emb);
  layers_.resize(L);
  for (int64_t i = 0; i < L; ++i) {
    dev = layer_devices_[i];
    LayerWeights& w = layers_[i];
    w.norm1_w = conv(rms_att[i]);
    w.wq = conv(wq[i]);
    w.wk = conv(wk[i]);
    w.wv = conv(wv[i]);
    w.wo = conv(wo[i]);
    w.norm2_w = conv(rms_ffn[i]);
    w.w_gate = conv(w1[i]);
    w.w_down = conv(w2[i]);
    w.w_up = conv(w3[i]);
  }
  dev = layer_devices_.back();
  final_w_ = conv(rms_final);
  lm_head_ = h->shared_classifier ? tok_emb_ : conv(wcls);
  return absl::OkStatus();
}

absl::Status Model::PoolKvHeads(int target) {
  const int native = config_.num_kv_heads;
  if (target <= 0 || target > native || native % target != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_heads=", target, " does not divide the model's ", native, " KV heads"));
  }
  if (config_.qk_norm == QkNorm::kAllHeads && target != native) {
    return absl::UnimplementedError(absl::StrCat(
        "kv_heads=", target, ": pooling KV heads of a model whose key norm spans all heads (",
        ArchName(config_.arch), ") is not supported"));
  }
  const int64_t g = native / target, D = config_.head_dim;
  auto pool = [&](const Tensor& t) -> Tensor {
    if (!t.defined()) return t;
    // Rows are grouped by head: [native*D, ...] -> [target, g, D, ...] -> mean over g.
    std::vector<int64_t> shape = {target, g, D};
    for (int64_t i = 1; i < t.dim(); ++i) shape.push_back(t.size(i));
    std::vector<int64_t> out = {target * D};
    for (int64_t i = 1; i < t.dim(); ++i) out.push_back(t.size(i));
    return t.to(torch::kFloat32)
        .reshape(shape)
        .mean(1)
        .reshape(out)
        .to(t.scalar_type())
        .contiguous();
  };
  for (LayerWeights& w : layers_) {
    w.wk = pool(w.wk);
    w.bk = pool(w.bk);
    w.wv = pool(w.wv);
    w.bv = pool(w.bv);
  }
  kv_heads_ = target;
  return absl::OkStatus();
}

namespace {

// transformers' inverse frequencies of one RoPE: 1 / theta^(arange(0, D, 2) / D) in fp32, then
// the scaling of its rope_type.
Tensor InverseFrequencies(const RopeParams& r, int64_t D) {
  Tensor exponents =
      torch::arange(0, D, 2, torch::TensorOptions().dtype(torch::kLong)).to(torch::kFloat32) /
      static_cast<float>(D);
  Tensor inv = 1.0 / torch::pow(static_cast<float>(r.theta), exponents);
  if (r.scaling == RopeScaling::kLinear) {
    inv = inv / static_cast<float>(r.factor);
  } else if (r.scaling == RopeScaling::kLlama3) {
    const double factor = r.factor, lo = r.low_freq_factor, hi = r.high_freq_factor,
                 old = r.original_max_positions;
    const double low_wavelen = old / lo, high_wavelen = old / hi;
    Tensor wavelen = 2 * M_PI / inv;
    Tensor scaled = torch::where(wavelen > low_wavelen, inv / factor, inv);
    Tensor smooth = (old / wavelen - lo) / (hi - lo);
    Tensor smoothed = (1 - smooth) * scaled / factor + smooth * scaled;
    Tensor medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen);
    inv = torch::where(medium, smoothed, scaled);
  }
  return inv;
}

}  // namespace

void Model::BuildRope() {
  if (!config_.uses_rope()) return;
  std::vector<const RopeParams*> distinct;
  rope_table_.assign(config_.num_layers, 0);
  for (int l = 0; l < config_.num_layers; ++l) {
    const RopeParams& r = config_.RopeOf(l);
    size_t i = 0;
    while (i < distinct.size() && !(*distinct[i] == r)) ++i;
    if (i == distinct.size()) distinct.push_back(&r);
    rope_table_[l] = static_cast<int>(i);
  }
  Tensor pos = torch::arange(config_.max_positions, torch::TensorOptions().dtype(torch::kFloat32));
  for (const RopeParams* r : distinct) {
    Tensor angles = torch::outer(pos, InverseFrequencies(*r, config_.head_dim));  // [P, D/2]
    if (!config_.rope_interleaved) angles = torch::cat({angles, angles}, -1);     // rotate-half
    rope_cos_.push_back(angles.cos().to(options_.device).to(options_.dtype));
    rope_sin_.push_back(angles.sin().to(options_.device).to(options_.dtype));
  }
}

void Model::StackProjections() {
  if (config_.arch == Arch::kGpt2 || !FusedLayerSupports(options_.device, options_.dtype)) return;
  for (LayerWeights& w : layers_) {
    if (w.wq.defined() && w.wk.defined() && w.wv.defined() && w.bq.defined() == w.bk.defined() &&
        w.bk.defined() == w.bv.defined()) {
      const int64_t nq = w.wq.size(0), nk = w.wk.size(0), nv = w.wv.size(0);
      w.w_qkv = torch::cat({w.wq, w.wk, w.wv}, 0);
      w.wq = w.w_qkv.slice(0, 0, nq);
      w.wk = w.w_qkv.slice(0, nq, nq + nk);
      w.wv = w.w_qkv.slice(0, nq + nk, nq + nk + nv);
      if (w.bq.defined()) {
        w.b_qkv = torch::cat({w.bq, w.bk, w.bv}, 0);
        w.bq = w.b_qkv.slice(0, 0, nq);
        w.bk = w.b_qkv.slice(0, nq, nq + nk);
        w.bv = w.b_qkv.slice(0, nq + nk, nq + nk + nv);
      }
    }
    if (w.w_gate.defined() && w.w_up.defined() && !w.b_up.defined()) {
      const int64_t I = w.w_gate.size(0);
      w.w_gate_up = torch::cat({w.w_gate, w.w_up}, 0);
      w.w_gate = w.w_gate_up.slice(0, 0, I);
      w.w_up = w.w_gate_up.slice(0, I, I + w.w_up.size(0));
    }
  }
}

Tensor Model::ApplyRope(const Tensor& x, int layer) const {
  if (!config_.uses_rope() || !x.defined()) return x;
  const int64_t T = x.size(2), D = x.size(3);
  const int table = rope_table_[layer];
  // .to: a no-op but on a pipeline's later devices.
  Tensor cos = rope_cos_[table].slice(0, 0, T).to(x.device());
  Tensor sin = rope_sin_[table].slice(0, 0, T).to(x.device());
  if (config_.rope_interleaved) {
    // llama2.c: pairs (2i, 2i+1) rotate by angle pos * freq_i.
    Tensor xp = x.reshape({x.size(0), x.size(1), T, D / 2, 2});
    Tensor x0 = xp.select(-1, 0), x1 = xp.select(-1, 1);
    return torch::stack({x0 * cos - x1 * sin, x0 * sin + x1 * cos}, -1).reshape(x.sizes());
  }
  // transformers: x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x2, x1).
  Tensor x1 = x.slice(-1, 0, D / 2), x2 = x.slice(-1, D / 2, D);
  return x * cos + torch::cat({-x2, x1}, -1) * sin;
}

double Model::AttentionScale(int layer) const {
  const bool gpt2 = config_.arch == Arch::kGpt2;
  double scale = 1.0;
  if (config_.query_pre_attn_scalar > 0) return 1.0 / std::sqrt(config_.query_pre_attn_scalar);
  if (!gpt2 || config_.scale_attn_weights)
    scale /= std::sqrt(static_cast<double>(config_.head_dim));
  if (gpt2 && config_.scale_attn_by_inverse_layer_idx) scale /= static_cast<double>(layer + 1);
  return scale;
}

Tensor Model::Forward(const Tensor& tokens, const KvCodec* codec,
                      AttentionObserver* observer) const {
  torch::NoGradGuard no_grad;
  const ModelConfig& c = config_;
  const int64_t B = tokens.size(0), T = tokens.size(1);
  const int64_t H = c.num_heads, Hkv = kv_heads_, D = c.head_dim, Hd = c.hidden_size;
  TORCH_CHECK(T <= c.max_positions, "sequence of ", T, " tokens exceeds max positions ",
              c.max_positions);
  const torch::Device dev = options_.device;
  Tensor ids = tokens.to(dev, torch::kLong);
  TORCH_CHECK(ids.numel() == 0 ||
                  (ids.min().item<int64_t>() >= 0 && ids.max().item<int64_t>() < c.vocab_size),
              "token id out of range for vocab of ", c.vocab_size);

  // Embeddings.
  Tensor x = tok_emb_.index_select(0, ids.reshape({-1})).view({B, T, Hd});
  if (c.arch == Arch::kGpt2) x = x + pos_emb_.slice(0, 0, T).unsqueeze(0);
  // gemma: times sqrt(hidden) rounded to the compute dtype, as transformers' normalizer
  // (gemma2) and embed_scale (gemma3).
  if (c.gemma) {
    x = x * torch::tensor(std::sqrt(static_cast<double>(Hd)), torch::kFloat64)
                .to(x.scalar_type())
                .to(x.device());
  }
  // RMSNorm of this family: Llama's, Gemma's (1 + w) or OLMo 2's.
  const RmsNormStyle norm_style = RmsNormStyleOf(c);
  auto rms = [&c, norm_style](const Tensor& t, const Tensor& w) {
    return RmsNormOf(norm_style, t, w, c.norm_eps);
  };

  std::map<std::pair<int, int>, Tensor> allowed_by_window;  // (window, device index)
  auto allowed = [&](int window) -> const Tensor& {
    const std::pair<int, int> key{window, x.device().index()};
    auto it = allowed_by_window.find(key);
    if (it == allowed_by_window.end()) {
      it = allowed_by_window.emplace(key, AllowedMask(T, window, x.device())).first;
    }
    return it->second;
  };
  const bool rope_pre = codec != nullptr && codec->keys_pre_rope();
  const bool gpt2 = c.arch == Arch::kGpt2;
  // CUDA in half precision, the fused layer kernels (fused_layer.h): a block's output joins the
  // residual stream in the kernel of the norm after it (`pending` until then; not where the norms
  // come after the blocks, OLMo 2's order), the stacked projections are one matrix product each,
  // and RoPE (after a per-head q/k norm) writes attention's layout directly.
  const bool fused = FusedLayerApplies(x) && !gpt2;
  const bool defer_residual = fused && !c.norms_after;
  // The products of the fused layer through the tuned table (tuned_gemm.h); the unfused layer
  // keeps libtorch's, as before it.
  auto linear = [fused](const Tensor& in, const Tensor& weight, const Tensor& bias) {
    return fused ? TunedLinear(in, weight, bias) : torch::linear(in, weight, bias);
  };
  Tensor pending;
  // x += pending, then the RMSNorm of x with weight w.
  auto add_norm = [&](const Tensor& w) -> Tensor {
    Tensor h;
    if (fused && FusedAddRmsNorm(&x, pending, w, c.norm_eps, norm_style, &h)) {
      pending = Tensor();
      return h;
    }
    if (pending.defined()) x = x + pending;
    pending = Tensor();
    return rms(x, w);
  };
  auto add = [&](const Tensor& delta) {
    if (defer_residual) {
      pending = delta;
    } else {
      x = x + delta;
    }
  };
  // x += RMSNorm(delta) with weight w: the norm after a block (OLMo 2).
  auto add_normed = [&](const Tensor& delta, const Tensor& w) {
    if (!(fused && FusedRmsNormAdd(&x, delta, w, c.norm_eps, norm_style))) {
      x = x + rms(delta, w);
    }
  };

  for (int l = 0; l < c.num_layers; ++l) {
    const LayerWeights& w = layers_[l];
    x = x.to(layer_devices_[l]);  // a pipeline's range boundary (else a no-op)
    if (pending.defined()) pending = pending.to(layer_devices_[l]);
    // Attention block.
    Tensor h = gpt2            ? LayerNorm(x, w.norm1_w, w.norm1_b, c.norm_eps)
               : c.norms_after ? x
                               : add_norm(w.norm1_w);
    Tensor q, k, v;
    const bool fused_rope =
        fused && w.w_qkv.defined() && c.uses_rope() && !c.rope_interleaved && !rope_pre;
    bool laid_out = false;
    Tensor p;  // the stacked product, where computed: [B, T, (H + 2 Hkv) D]
    if (fused_rope) {
      p = linear(h, w.w_qkv, w.b_qkv);
      Tensor pq = p.slice(-1, 0, H * D), pk = p.slice(-1, H * D, (H + Hkv) * D);
      QkHeadNorm head_norm;
      const QkHeadNorm* norm = nullptr;
      if (c.qk_norm == QkNorm::kAllHeads) {  // OLMo 2: one norm over all heads, libtorch's
        pq = rms(pq, w.q_norm);
        pk = rms(pk, w.k_norm);
      } else if (c.qk_norm == QkNorm::kPerHead) {  // in the kernel
        head_norm = {w.q_norm, w.k_norm, c.norm_eps, norm_style};
        norm = &head_norm;
      }
      const int table = rope_table_[l];
      // Queries position major where flash attention reads them (no position-dependent cache):
      // its output then comes in the same layout, which the output projection reads as is.
      const bool q_position_major = codec == nullptr || !codec->position_dependent();
      // .to: a no-op but on a pipeline's later devices (the T rows used, not the whole table).
      laid_out = FusedRopeLayout(pq, pk, p.slice(-1, (H + Hkv) * D, (H + 2 * Hkv) * D),
                                 rope_cos_[table].slice(0, 0, T).to(p.device()),
                                 rope_sin_[table].slice(0, 0, T).to(p.device()), H, Hkv, D, &q, &k,
                                 &v, norm, q_position_major);
    }
    if (!laid_out) {
      // The stacked product's slices where the kernel declined it (e.g. a head size whose
      // threads do not fit a warp's lanes), else the three products.
      q = p.defined() ? p.slice(-1, 0, H * D) : torch::linear(h, w.wq, w.bq);
      k = p.defined() ? p.slice(-1, H * D, (H + Hkv) * D) : torch::linear(h, w.wk, w.bk);
      if (c.qk_norm == QkNorm::kAllHeads) {
        q = rms(q, w.q_norm);
        k = rms(k, w.k_norm);
      }
      q = q.view({B, T, H, D});
      k = k.view({B, T, Hkv, D});
      if (c.qk_norm == QkNorm::kPerHead) {  // qwen3; gemma3 with Gemma's (1 + w) norm
        q = rms(q, w.q_norm);
        k = rms(k, w.k_norm);
      }
      q = q.transpose(1, 2);  // [B, H, T, D]
      k = k.transpose(1, 2);  // [B, Hkv, T, D]
      v = (p.defined() ? p.slice(-1, (H + Hkv) * D, (H + 2 * Hkv) * D)
                       : torch::linear(h, w.wv, w.bv))
              .view({B, T, Hkv, D})
              .transpose(1, 2);  // [B, Hkv, T, D]
      q = ApplyRope(q, l);
      if (!rope_pre) k = ApplyRope(k, l);
    }
    KvPair kv;
    if (rope_pre) {
      // Keys are compressed before the rotary embedding, then rotated as the cache would be.
      kv = codec->Apply(l, k, v);
      kv.k.compressed = ApplyRope(kv.k.compressed, l);
      kv.k.raw = ApplyRope(kv.k.raw, l);
      k = ApplyRope(k, l);
    } else {
      kv = codec != nullptr ? codec->Apply(l, k, v) : KvPair{{k, {}, {}}, {v, {}, {}}};
    }
    const double scale = AttentionScale(l);
    const int window = c.sliding_window[l];
    Tensor attn = Attend(q, kv, allowed(window), window, scale, c.attn_softcap);  // [B, H, T, D]
    if (observer != nullptr) observer->Observe(l, q, k, v, kv, allowed(window));
    Tensor o = linear(attn.transpose(1, 2).reshape({B, T, H * D}), w.wo, w.bo);
    if (c.norms_after) {
      add_normed(o, w.norm1_w);
    } else {
      add(c.gemma ? rms(o, w.post_attn_norm) : o);
    }

    // MLP block.
    h = gpt2            ? LayerNorm(x, w.norm2_w, w.norm2_b, c.norm_eps)
        : c.norms_after ? x
                        : add_norm(w.norm2_w);
    Tensor m;
    if (c.num_experts > 0) {
      m = MixtureOfExperts(h, w, c);
    } else if (gpt2) {
      m = torch::linear(Activation(torch::linear(h, w.w_up, w.b_up), c.activation), w.w_down,
                        w.b_down);
    } else {
      Tensor gate, up;
      if (fused && w.w_gate_up.defined()) {
        const Tensor gu = linear(h, w.w_gate_up, Tensor());  // [B, T, 2 I]
        gate = gu.slice(-1, 0, w.w_gate.size(0));
        up = gu.slice(-1, w.w_gate.size(0), gu.size(-1));
      } else {
        gate = torch::linear(h, w.w_gate);
        up = torch::linear(h, w.w_up, w.b_up);
      }
      Tensor act;
      if (!(fused && c.activation == "silu" && FusedSwiGlu(gate, up, &act))) {
        act = Activation(gate, c.activation) * up;
      }
      m = linear(act, w.w_down, w.b_down);
    }
    if (c.norms_after) {
      add_normed(m, w.norm2_w);
    } else {
      add(c.gemma ? rms(m, w.post_ffn_norm) : m);
    }
  }
  return (gpt2 ? LayerNorm(x, final_w_, final_b_, c.norm_eps) : add_norm(final_w_))
      .to(lm_head_.device());
}

Tensor Model::HeadLogits(const Tensor& hidden) const {
  torch::NoGradGuard no_grad;
  Tensor logits = torch::matmul(hidden, lm_head_.t());
  if (config_.final_softcap > 0) {
    // gemma2: cap * tanh(logits / cap) in the compute dtype, as transformers does.
    logits = torch::tanh(logits / config_.final_softcap) * config_.final_softcap;
  }
  return logits;
}

Tensor Model::Logits(const Tensor& hidden) const { return HeadLogits(hidden).to(torch::kFloat32); }

}  // namespace kvsweep::engine

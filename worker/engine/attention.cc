#include "worker/engine/attention.h"

#include <algorithm>
#include <atomic>
#include <limits>
#include <map>
#include <vector>

#include "common/log.h"
#include "worker/engine/kv/cache_masks.h"

#if defined(__has_include)
#if __has_include(<torch/version.h>)
#include <torch/version.h>
#endif
#endif
#ifndef TORCH_VERSION_MAJOR
#define TORCH_VERSION_MAJOR 1
#define TORCH_VERSION_MINOR 0
#endif
// SDPA with enable_gqa exists from libtorch 2.5; Debian's 1.13 uses the explicit path below.
#define KVSWEEP_HAS_SDPA \
  (TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 5))

namespace kvsweep::engine {
namespace {

using torch::Tensor;

Tensor RepeatKv(const Tensor& x, int64_t groups) {
  return groups == 1 ? x : x.repeat_interleave(groups, /*dim=*/1);
}

// softcap * tanh(s / softcap) (gemma2's attention logits); s itself when softcap is 0.
Tensor SoftCap(const Tensor& s, double softcap) {
  return softcap > 0 ? torch::tanh(s / softcap) * softcap : s;
}

// Entries a query at position t reads compressed: all of 0..t when `op` is position independent.
int64_t CompressedPrefix(const KvOperand& op, int64_t t) {
  return op.position_dependent() ? CompressedTokens(t + 1, op.block, op.residual) : t + 1;
}

// bool [C, L]: query t0 + r reads entry j0 + c at all (causal, window) and K, V in the given
// states (an operand that is not position dependent has only the compressed state).
Tensor StateMask(const KvPair& kv, bool k_compressed, bool v_compressed, int64_t t0, int64_t C,
                 int64_t j0, int64_t L, int window, torch::Device device) {
  auto opts = torch::TensorOptions().dtype(torch::kLong).device(device);
  Tensor t = torch::arange(t0, t0 + C, opts).unsqueeze(1);
  Tensor j = torch::arange(j0, j0 + L, opts).unsqueeze(0);
  Tensor m = j <= t;
  if (window > 0) m = m & ((t - j) < window);
  for (const auto& [op, compressed] : {std::pair<const KvOperand*, bool>{&kv.k, k_compressed},
                                       std::pair<const KvOperand*, bool>{&kv.v, v_compressed}}) {
    if (!op->position_dependent()) continue;
    // cache_masks.h: floor(max(0, t + 1 - R) / G) * G entries are compressed at step t.
    Tensor n = torch::div((t + 1 - op->residual).clamp_min(0), op->block, "floor") * op->block;
    m = m & (compressed ? j < n : j >= n);
  }
  return m;
}

#if KVSWEEP_HAS_SDPA
// mask [M, L] (bool) as an additive bias [M, L] whose rows start 16-element aligned, the layout
// the memory-efficient kernel reads once expanded to [B, Hkv, M, L] with stride 0 (Expand). A
// bool mask handed to SDPA is converted to an unaligned bias, which SDPA pads by materializing
// it expanded to [B, Hkv, M, L] (gigabytes for a batch of short LAMBADA documents).
Tensor AlignedBias(const Tensor& mask, torch::ScalarType dtype) {
  const int64_t M = mask.size(0), L = mask.size(1), padded = (L + 15) / 16 * 16;
  Tensor bias = torch::full({M, padded}, -std::numeric_limits<float>::infinity(),
                            torch::TensorOptions().dtype(dtype).device(mask.device()));
  bias.slice(1, 0, L).masked_fill_(mask, 0.0);
  return bias.slice(1, 0, L);
}

Tensor Expand(const Tensor& bias, int64_t B, int64_t Hkv) {
  return bias.view({1, 1, bias.size(0), bias.size(1)}).expand({B, Hkv, bias.size(0), bias.size(1)});
}
#endif

// Softmax attention of qf [B, Hkv, M, D] over k, v [B, Hkv, L, D] where mask [M, L] (bool)
// allows; [B, Hkv, M, D] out. `bias`: AlignedBias(mask) in qf's dtype, for the GPU's kernel.
Tensor MaskedSegmentAttention(const Tensor& qf, const Tensor& k, const Tensor& v,
                              const Tensor& mask, const Tensor& bias, double scale,
                              double softcap) {
#if KVSWEEP_HAS_SDPA
  if (!qf.is_cpu() && softcap <= 0) {
    return at::scaled_dot_product_attention(qf, k, v, Expand(bias, qf.size(0), qf.size(1)), 0.0,
                                            /*is_causal=*/false, scale);
  }
#endif
  Tensor s = torch::matmul(qf, k.transpose(-2, -1));
  s = SoftCap((s * scale).to(torch::kFloat32), softcap);
  s = s.masked_fill(mask.logical_not(), -std::numeric_limits<float>::infinity());
  return torch::matmul(torch::softmax(s, -1).to(qf.scalar_type()), v);
}

#if KVSWEEP_HAS_SDPA
// The same attention as the concatenation of an unmasked segment (kp, vp: flash attention) and a
// masked one (kb, vb, bias [M, Lb]: memory-efficient attention with an additive bias), merged by
// the log-sum-exp of each part's scaled scores. Every row of the masked part must allow at least
// one entry. CUDA, fp16/bf16 only; throws c10::Error where a kernel refuses its operands.
Tensor MergedSegmentAttention(const Tensor& qf, const Tensor& kp, const Tensor& vp,
                              const Tensor& kb, const Tensor& vb, const Tensor& bias,
                              double scale) {
  const int64_t M = qf.size(2);
  auto flash = at::_scaled_dot_product_flash_attention(qf, kp, vp, 0.0, /*is_causal=*/false,
                                                       /*return_debug_mask=*/false, scale);
  const Tensor& out_p = std::get<0>(flash);
  const Tensor lse_p = std::get<1>(flash).to(torch::kFloat32);  // [B, Hkv, M]
  auto eff = at::_scaled_dot_product_efficient_attention(
      qf, kb, vb, Expand(bias, qf.size(0), qf.size(1)),
      /*compute_log_sumexp=*/true, 0.0, /*is_causal=*/false, scale);
  const Tensor& out_b = std::get<0>(eff);
  const Tensor lse_b = std::get<1>(eff).slice(-1, 0, M).to(torch::kFloat32);  // padded rows
  // The prefix's share of each row's softmax mass: e^lse_p / (e^lse_p + e^lse_b).
  const Tensor share = torch::sigmoid(lse_p - lse_b).unsqueeze(-1);
  return torch::lerp(out_b.to(torch::kFloat32), out_p.to(torch::kFloat32), share)
      .to(qf.scalar_type());
}

// Whether the merged path may be tried (it is given up for the process after a refusal).
std::atomic<bool> merged_path_ok{true};
#endif

}  // namespace

Tensor AllowedMask(int64_t T, int window, torch::Device device) {
  auto opts = torch::TensorOptions().dtype(torch::kLong).device(device);
  Tensor t = torch::arange(T, opts).unsqueeze(1);
  Tensor j = torch::arange(T, opts).unsqueeze(0);
  Tensor allowed = j <= t;
  if (window > 0) allowed = allowed & ((t - j) < window);
  return allowed;
}

Tensor AttendMasked(const Tensor& q, const KvPair& kv, const Tensor& allowed, double scale,
                    double softcap) {
  const int64_t groups = q.size(1) / kv.k.compressed.size(1);
  auto scores_with = [&](const Tensor& k) {
    return torch::matmul(q, RepeatKv(k, groups).transpose(-2, -1));
  };
  Tensor s = scores_with(kv.k.compressed);
  if (kv.k.position_dependent()) {
    s = torch::where(kv.k.use_compressed, s, scores_with(kv.k.raw));
  }
  s = SoftCap((s * scale).to(torch::kFloat32), softcap);
  s = s.masked_fill(allowed.logical_not(), -std::numeric_limits<float>::infinity());
  Tensor p = torch::softmax(s, -1).to(q.scalar_type());
  if (!kv.v.position_dependent()) return torch::matmul(p, RepeatKv(kv.v.compressed, groups));
  Tensor m = kv.v.use_compressed.to(p.scalar_type());
  return torch::matmul(p * m, RepeatKv(kv.v.compressed, groups)) +
         torch::matmul(p * (1 - m), RepeatKv(kv.v.raw, groups));
}

namespace {

// Entries [a, b) of a block's band, read with K (V) compressed (kc, vc) or raw.
struct Segment {
  int64_t a, b;
  bool kc, vc;
};

// What a block of queries needs besides the layer's values: its masks, which depend only on
// positions and the operands' rules. Every layer of a forward pass, and every pass at the same
// positions, reuses them: building them is a few dozen small kernels per block, which on the
// GPU cost more time than the block's attention itself.
struct BlockMasks {
  Tensor mf;    // bool [g * C, L]: query rows (GQA heads folded in) by the band's entries
  Tensor bias;  // AlignedBias(mf) in the queries' dtype where a GPU kernel reads it
};

// Per thread (a forward pass runs on one), forgotten whole when it outgrows the bound.
constexpr size_t kMaxCachedBlockMasks = 512;
thread_local std::map<std::vector<int64_t>, BlockMasks> cached_block_masks;

}  // namespace

Tensor AttendBlockwise(const Tensor& q, const KvPair& kv, int window, double scale,
                       int64_t query_block, double softcap) {
  TORCH_CHECK(query_block >= 1, "AttendBlockwise: query block ", query_block);
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3);
  const int64_t Hkv = kv.k.compressed.size(1), g = H / Hkv;
  const KvOperand& k = kv.k;
  const KvOperand& v = kv.v;
  // K and V under one rule are always read in the same state.
  const bool one_rule = k.position_dependent() && v.position_dependent() && k.block == v.block &&
                        k.residual == v.residual;
#if KVSWEEP_HAS_SDPA
  const bool gpu_bias = !q.is_cpu() && softcap <= 0;
#else
  const bool gpu_bias = false;
#endif
  std::vector<Tensor> outs;
  for (int64_t t0 = 0; t0 < T; t0 += query_block) {
    const int64_t t1 = std::min(T, t0 + query_block), C = t1 - t0;
    // Entries some query of the block sees: [vis_lo, t1). All of them see [full_lo, t1) as far
    // as the window goes, and read [0, lo) compressed in both K and V.
    const int64_t vis_lo = window > 0 ? std::max<int64_t>(0, t0 - window + 1) : 0;
    const int64_t full_lo = window > 0 ? std::max<int64_t>(0, t1 - window) : 0;
    // (At most t0: query t0 then reads at least its own entry outside the unmasked segment.)
    const int64_t lo = std::min({CompressedPrefix(k, t0), CompressedPrefix(v, t0), t0});
    const int64_t full_hi = std::max(full_lo, lo);
#if KVSWEEP_HAS_SDPA
    // GPU, half precision: the unmasked segment through flash attention, the rest through the
    // masked kernel, merged by log-sum-exp (the unmasked segment is most of the work at long T).
    const bool merged = !q.is_cpu() && q.scalar_type() != torch::kFloat32 && full_hi > full_lo &&
                        full_hi <= t0 && D % 8 == 0 && D <= 256 && softcap <= 0 &&
                        merged_path_ok.load(std::memory_order_relaxed);
#else
    const bool merged = false;
#endif
    // Without the merge, the unmasked segment joins the masked ones (an all-true mask).
    const bool prefix_masked = full_hi > full_lo && !merged;
    // Entries [a, b), once per state combination that can occur there for these queries.
    std::vector<Segment> segments;
    auto band = [&](int64_t a, int64_t b) {
      if (b <= a) return;
      for (bool kc : {true, false}) {
        if (!kc && !k.position_dependent()) continue;
        if (kc ? a >= CompressedPrefix(k, t1 - 1) : b <= CompressedPrefix(k, t0)) continue;
        for (bool vc : {true, false}) {
          if (!vc && !v.position_dependent()) continue;
          if (one_rule && kc != vc) continue;
          if (vc ? a >= CompressedPrefix(v, t1 - 1) : b <= CompressedPrefix(v, t0)) continue;
          segments.push_back(Segment{a, b, kc, vc});
        }
      }
    };
    band(vis_lo, full_lo);
    band(full_hi, t1);
    std::vector<Tensor> ks, vs;
    if (prefix_masked) {
      ks.push_back(k.compressed.slice(2, full_lo, full_hi));
      vs.push_back(v.compressed.slice(2, full_lo, full_hi));
    }
    for (const Segment& sg : segments) {
      ks.push_back((sg.kc ? k.compressed : k.raw).slice(2, sg.a, sg.b));
      vs.push_back((sg.vc ? v.compressed : v.raw).slice(2, sg.a, sg.b));
    }
    const Tensor kcat = ks.size() == 1 ? ks[0] : torch::cat(ks, 2);
    const Tensor vcat = vs.size() == 1 ? vs[0] : torch::cat(vs, 2);
    // The masks follow from these numbers alone (the segments are computed from them).
    const std::vector<int64_t> key = {static_cast<int64_t>(q.device().type()),
                                      q.device().index(),
                                      static_cast<int64_t>(q.scalar_type()),
                                      gpu_bias,
                                      t0,
                                      C,
                                      window,
                                      g,
                                      k.position_dependent(),
                                      k.block,
                                      k.residual,
                                      v.position_dependent(),
                                      v.block,
                                      v.residual,
                                      prefix_masked,
                                      full_lo,
                                      full_hi,
                                      vis_lo};
    auto it = cached_block_masks.find(key);
    if (it == cached_block_masks.end()) {
      std::vector<Tensor> masks;
      if (prefix_masked) {
        masks.push_back(torch::ones({C, full_hi - full_lo},
                                    torch::TensorOptions().dtype(torch::kBool).device(q.device())));
      }
      for (const Segment& sg : segments) {
        masks.push_back(StateMask(kv, sg.kc, sg.vc, t0, C, sg.a, sg.b - sg.a, window, q.device()));
      }
      const Tensor mask = masks.size() == 1 ? masks[0] : torch::cat(masks, 1);  // [C, L]
      const int64_t L = mask.size(1);
      // Query heads h = kv_head * g + i become rows i * C + r of their KV head.
      BlockMasks bm;
      bm.mf = g == 1 ? mask : mask.unsqueeze(0).expand({g, C, L}).reshape({g * C, L});
#if KVSWEEP_HAS_SDPA
      if (gpu_bias) bm.bias = AlignedBias(bm.mf, q.scalar_type());
#endif
      if (cached_block_masks.size() >= kMaxCachedBlockMasks) cached_block_masks.clear();
      it = cached_block_masks.emplace(key, std::move(bm)).first;
    }
    const BlockMasks& bm = it->second;
    Tensor qf = q.slice(2, t0, t1).reshape({B, Hkv, g * C, D});
#if KVSWEEP_HAS_SDPA
    if (merged) {
      try {
        outs.push_back(MergedSegmentAttention(qf, k.compressed.slice(2, full_lo, full_hi),
                                              v.compressed.slice(2, full_lo, full_hi), kcat, vcat,
                                              bm.bias, scale)
                           .reshape({B, H, C, D}));
        continue;
      } catch (const c10::Error& e) {
        merged_path_ok.store(false);
        KV_LOG(WARNING) << "flash + masked attention merge refused (" << e.what_without_backtrace()
                        << "); position-dependent attention uses one masked kernel per block";
        return AttendBlockwise(q, kv, window, scale, query_block, softcap);
      }
    }
#endif
    outs.push_back(MaskedSegmentAttention(qf, kcat, vcat, bm.mf, bm.bias, scale, softcap)
                       .reshape({B, H, C, D}));
  }
  return outs.size() == 1 ? outs[0] : torch::cat(outs, 2);
}

namespace {
std::atomic<int64_t> query_block{kAttentionQueryBlock};
}  // namespace

int64_t AttentionQueryBlock() { return query_block.load(std::memory_order_relaxed); }

void SetAttentionQueryBlock(int64_t block) {
  TORCH_CHECK(block >= 1, "attention query block ", block, " is not positive");
  query_block.store(block, std::memory_order_relaxed);
}

Tensor Attend(const Tensor& q, const KvPair& kv_in, const Tensor& allowed, int window, double scale,
              double softcap) {
  // Blocks of one token and no residual window: every entry a query reads is compressed, so the
  // compressed tensor alone is the cache (position independent, exactly).
  auto simplify = [](const KvOperand& op) {
    return op.position_dependent() && op.block == 1 && op.residual == 0
               ? KvOperand{op.compressed, {}, {}}
               : op;
  };
  const KvPair kv{simplify(kv_in.k), simplify(kv_in.v)};
  if (kv.k.position_dependent() || kv.v.position_dependent()) {
    return AttendBlockwise(q, kv, window, scale, AttentionQueryBlock(), softcap);
  }
#if KVSWEEP_HAS_SDPA
  if (!q.is_cpu() && softcap <= 0) {
    // Fused kernels (flash / memory-efficient) on GPU; causal without a materialized mask when
    // there is no sliding window.
    // Contiguous [B, H, T, D] operands: with the strided views the projections produce, SDPA
    // ran slower on the H200 than with a codec's contiguous output.
    const int64_t groups = q.size(1) / kv.k.compressed.size(1);
    const Tensor qc = q.contiguous(), kc = kv.k.compressed.contiguous(),
                 vc = kv.v.compressed.contiguous();
    if (window == 0) {
      return at::scaled_dot_product_attention(qc, kc, vc, {}, 0.0, /*is_causal=*/true, scale,
                                              /*enable_gqa=*/groups > 1);
    }
    return at::scaled_dot_product_attention(qc, kc, vc, allowed, 0.0, /*is_causal=*/false, scale,
                                            /*enable_gqa=*/groups > 1);
  }
#endif
  return AttendMasked(q, kv, allowed, scale, softcap);
}

}  // namespace kvsweep::engine

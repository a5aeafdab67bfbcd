#include "worker/engine/attention.h"

#include <algorithm>
#include <atomic>
#include <limits>
#include <map>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include "common/log.h"
#include "worker/engine/kv/cache_masks.h"

#ifdef KVSWEEP_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "worker/engine/attention_gather_kernel.h"
#include "worker/engine/attention_merge_kernel.h"
#endif

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
// cuDNN's fused attention with its log-sum-exp (the packed path's causal part): from 2.6.
#define KVSWEEP_HAS_CUDNN_LSE \
  (TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 6))
// Flash attention's variable-length form with a sliding window (the packed path's band where its
// entries are read in one state per query block).
#define KVSWEEP_HAS_FLASH_WINDOW \
  (TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 7))
#if KVSWEEP_HAS_FLASH_WINDOW && defined(KVSWEEP_CUDA)
#include <ATen/ops/_flash_attention_forward_ops.h>
#endif

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

// bool [C, L]: query t0 + r reads entry j0 + c at all (causal, window, and with shift > 0 not
// among its entries j <= t - shift) and K, V in the given states (an operand that is not position
// dependent has only the compressed state).
Tensor StateMask(const KvPair& kv, bool k_compressed, bool v_compressed, int64_t t0, int64_t C,
                 int64_t j0, int64_t L, int window, int64_t shift, torch::Device device) {
  auto opts = torch::TensorOptions().dtype(torch::kLong).device(device);
  Tensor t = torch::arange(t0, t0 + C, opts).unsqueeze(1);
  Tensor j = torch::arange(j0, j0 + L, opts).unsqueeze(0);
  Tensor m = j <= t;
  if (window > 0) m = m & ((t - j) < window);
  if (shift > 0) m = m & (j > t - shift);
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

// Whether the merged path (a block at a time) and the packed path may be tried: each is given up
// for the process after a refusal.
std::atomic<bool> merged_path_ok{true};
std::atomic<bool> packed_path_ok{true};
// Whether the packed path's causal part may hand cuDNN K/V with fewer heads than q.
std::atomic<bool> cudnn_gqa_ok{true};
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

// How the blockwise paths split what queries [t0, t1) read: entries [prefix_lo, prefix_hi), which
// every query of the block sees and reads compressed in both K and V (the unmasked segment; empty
// when prefix_hi <= prefix_lo), and the band segments, each a range of entries in one combination
// of K and V states, covering the rest of what any of the queries sees. Depends on positions and
// the operands' rules only.
struct BlockLayout {
  int64_t t0, t1;
  int64_t prefix_lo, prefix_hi;
  int64_t shift = 0;  // > 0: the band leaves out what the shifted causal part reads (packed path)
  std::vector<Segment> segments;
  bool has_prefix() const { return prefix_hi > prefix_lo; }
};

// shift > 0 (no window): the layout of the packed path, where a causal attention shifted by
// `shift` covers entries j <= t - shift of every query t: no per-block prefix, and the band is
// what the block's queries read above that.
BlockLayout LayOutBlock(const KvPair& kv, int window, int64_t t0, int64_t t1, int64_t shift = 0) {
  const KvOperand& k = kv.k;
  const KvOperand& v = kv.v;
  // K and V under one rule are always read in the same state.
  const bool one_rule = k.position_dependent() && v.position_dependent() && k.block == v.block &&
                        k.residual == v.residual;
  BlockLayout out;
  out.t0 = t0;
  out.t1 = t1;
  // Entries some query of the block sees: [vis_lo, t1). All of them see [full_lo, t1) as far
  // as the window goes, and read [0, lo) compressed in both K and V.
  const int64_t vis_lo = window > 0 ? std::max<int64_t>(0, t0 - window + 1) : 0;
  const int64_t full_lo = window > 0 ? std::max<int64_t>(0, t1 - window) : 0;
  // (At most t0: query t0 then reads at least its own entry outside the unmasked segment.)
  const int64_t lo = std::min({CompressedPrefix(k, t0), CompressedPrefix(v, t0), t0});
  out.prefix_lo = full_lo;
  out.prefix_hi = std::max(full_lo, lo);
  out.shift = shift;
  if (shift > 0) out.prefix_lo = out.prefix_hi = 0;
  // Entries of [a, b) that some query of the block reads with K, V in states kc, vc: each query
  // t reads an interval of them (causal, window, shift, and where each state holds), so the
  // segment is trimmed to the hull of those intervals and left out where all are empty (a
  // per-token residual window under the shift: the band is all raw).
  auto used = [&](int64_t a, int64_t b, bool kc, bool vc) {
    int64_t first = b, end = a;
    for (int64_t t = t0; t < t1; ++t) {
      int64_t l = a, h = std::min(b, t + 1);
      if (window > 0) l = std::max(l, t - window + 1);
      if (shift > 0) l = std::max(l, t - shift + 1);
      for (const auto& [op, compressed] :
           {std::pair<const KvOperand*, bool>{&k, kc}, std::pair<const KvOperand*, bool>{&v, vc}}) {
        if (!op->position_dependent()) continue;
        const int64_t n = CompressedPrefix(*op, t);
        if (compressed) {
          h = std::min(h, n);
        } else {
          l = std::max(l, n);
        }
      }
      if (l < h) {
        first = std::min(first, l);
        end = std::max(end, h);
      }
    }
    return std::pair<int64_t, int64_t>{first, end};
  };
  auto band = [&](int64_t a, int64_t b) {
    if (b <= a) return;
    for (bool kc : {true, false}) {
      if (!kc && !k.position_dependent()) continue;
      for (bool vc : {true, false}) {
        if (!vc && !v.position_dependent()) continue;
        if (one_rule && kc != vc) continue;
        const auto [first, end] = used(a, b, kc, vc);
        if (first < end) out.segments.push_back(Segment{first, end, kc, vc});
      }
    }
  };
  if (shift > 0) {
    band(std::max<int64_t>(0, t0 - shift + 1), t1);
    return out;
  }
  band(vis_lo, full_lo);
  band(out.prefix_hi, t1);
  return out;
}

// bool [C, L] on the CPU: which query of the block reads which entry of its band segments
// (concatenated in order), in the segment's states.
Tensor BandMask(const KvPair& kv, const BlockLayout& bl, int window) {
  std::vector<Tensor> masks;
  for (const Segment& sg : bl.segments) {
    masks.push_back(StateMask(kv, sg.kc, sg.vc, bl.t0, bl.t1 - bl.t0, sg.a, sg.b - sg.a, window,
                              bl.shift, torch::kCPU));
  }
  return masks.size() == 1 ? masks[0] : torch::cat(masks, 1);
}

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

// The numbers a layout and its masks follow from (with the block's own positions added).
std::vector<int64_t> RulesKey(const Tensor& q, const KvPair& kv, int window, int64_t g,
                              bool gpu_bias) {
  return {static_cast<int64_t>(q.device().type()),
          q.device().index(),
          static_cast<int64_t>(q.scalar_type()),
          gpu_bias,
          window,
          g,
          kv.k.position_dependent(),
          kv.k.block,
          kv.k.residual,
          kv.v.position_dependent(),
          kv.v.block,
          kv.v.residual};
}

}  // namespace

Tensor AttendBlockwise(const Tensor& q, const KvPair& kv, int window, double scale,
                       int64_t query_block, double softcap) {
  TORCH_CHECK(query_block >= 1, "AttendBlockwise: query block ", query_block);
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3);
  const int64_t Hkv = kv.k.compressed.size(1), g = H / Hkv;
  const KvOperand& k = kv.k;
  const KvOperand& v = kv.v;
#if KVSWEEP_HAS_SDPA
  const bool gpu_bias = !q.is_cpu() && softcap <= 0;
#else
  const bool gpu_bias = false;
#endif
  std::vector<Tensor> outs;
  for (int64_t t0 = 0; t0 < T; t0 += query_block) {
    const int64_t t1 = std::min(T, t0 + query_block), C = t1 - t0;
    const BlockLayout bl = LayOutBlock(kv, window, t0, t1);
    const int64_t full_lo = bl.prefix_lo, full_hi = bl.prefix_hi;
#if KVSWEEP_HAS_SDPA
    // GPU, half precision: the unmasked segment through flash attention, the rest through the
    // masked kernel, merged by log-sum-exp (the unmasked segment is most of the work at long T).
    const bool merged = !q.is_cpu() && q.scalar_type() != torch::kFloat32 && bl.has_prefix() &&
                        full_hi <= t0 && D % 8 == 0 && D <= 256 && softcap <= 0 &&
                        merged_path_ok.load(std::memory_order_relaxed);
#else
    const bool merged = false;
#endif
    // Without the merge, the unmasked segment joins the masked ones (an all-true mask).
    const bool prefix_masked = bl.has_prefix() && !merged;
    std::vector<Tensor> ks, vs;
    if (prefix_masked) {
      ks.push_back(k.compressed.slice(2, full_lo, full_hi));
      vs.push_back(v.compressed.slice(2, full_lo, full_hi));
    }
    for (const Segment& sg : bl.segments) {
      ks.push_back((sg.kc ? k.compressed : k.raw).slice(2, sg.a, sg.b));
      vs.push_back((sg.vc ? v.compressed : v.raw).slice(2, sg.a, sg.b));
    }
    const Tensor kcat = ks.size() == 1 ? ks[0] : torch::cat(ks, 2);
    const Tensor vcat = vs.size() == 1 ? vs[0] : torch::cat(vs, 2);
    std::vector<int64_t> key = RulesKey(q, kv, window, g, gpu_bias);
    key.insert(key.end(), {t0, C, prefix_masked});
    auto it = cached_block_masks.find(key);
    if (it == cached_block_masks.end()) {
      std::vector<Tensor> masks;
      if (prefix_masked) masks.push_back(torch::ones({C, full_hi - full_lo}, torch::kBool));
      if (!bl.segments.empty()) masks.push_back(BandMask(kv, bl, window));
      const Tensor mask = (masks.size() == 1 ? masks[0] : torch::cat(masks, 1)).to(q.device());
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

// Everything the packed path needs besides the layer's values, for one batch size, length and
// set of rules: built once on the CPU, moved to the device, shared by every layer and pass.
struct PackedPlan {
  int64_t nb = 0, C = 0, L = 0;  // blocks, queries per block, band entries per block (padded)
  int64_t shift = 0;             // the causal part reads entries j <= t - shift compressed
  Tensor k_index, v_index;       // long [nb * L]: band entry -> row of cat(compressed, raw)
  Tensor band_mask;              // bool [nb, g * C, L] (GQA heads folded into the rows)
  Tensor band_bias;              // AlignedBias of band_mask (fused path)
  int64_t bytes = 0;
};

// The packed path pays a gather of every block's band and a merge over the whole output; below
// this many query blocks a window's few per-block calls cost less (measured on the H200: 64
// windows of 160 tokens, 0.7 ms a block at a time against 1.7-2.5 ms packed).
constexpr int64_t kPackedMinBlocks = 8;

// Windows of T tokens per packed call: at most this many tokens (8 windows of 4096).
constexpr int64_t kPackedChunkTokens = 32768;

// Per thread, forgotten whole past the bound (a plan at the 7B shape is ~20 MB).
constexpr int64_t kMaxCachedPlanBytes = int64_t{512} << 20;
thread_local std::map<std::vector<int64_t>, PackedPlan> cached_plans;
thread_local int64_t cached_plan_bytes = 0;

// Entries j <= t - PackedShift(op) are compressed for every query t: with blocks of G and a
// residual window of R, CompressedTokens(t + 1) >= t + 1 - R - (G - 1).
int64_t PackedShift(const KvOperand& op) {
  return op.position_dependent() ? op.residual + op.block - 1 : 0;
}

const PackedPlan& PlanFor(const Tensor& q, const KvPair& kv, int64_t query_block, bool fused) {
  const int64_t B = q.size(0), T = q.size(2), g = q.size(1) / kv.k.compressed.size(1);
  std::vector<int64_t> key = RulesKey(q, kv, 0, g, fused);
  key.insert(key.end(), {B, T, query_block});
  auto it = cached_plans.find(key);
  if (it != cached_plans.end()) return it->second;

  PackedPlan p;
  p.shift = std::max<int64_t>(1, std::max(PackedShift(kv.k), PackedShift(kv.v)));
  p.C = std::min(query_block, T);
  p.nb = (T + p.C - 1) / p.C;
  std::vector<BlockLayout> layouts;
  for (int64_t j = 0; j < p.nb; ++j) {
    layouts.push_back(LayOutBlock(kv, 0, j * p.C, std::min(T, (j + 1) * p.C), p.shift));
    int64_t len = 0;
    for (const Segment& sg : layouts.back().segments) len += sg.b - sg.a;
    p.L = std::max(p.L, len);
  }
  const int64_t C = p.C, L = p.L, nb = p.nb;
  std::vector<int64_t> k_index(static_cast<size_t>(nb * L)), v_index(k_index.size());
  Tensor mask = torch::zeros({nb, C, L}, torch::kBool);
  for (int64_t j = 0; j < nb; ++j) {
    const BlockLayout& bl = layouts[static_cast<size_t>(j)];
    const int64_t c = bl.t1 - bl.t0;
    // Band entries in segment order; the raw state is row T + e of cat(compressed, raw).
    // Padding entries (a block with a shorter band) point at row 0 and are masked.
    size_t col = static_cast<size_t>(j * L);
    for (const Segment& sg : bl.segments) {
      for (int64_t e = sg.a; e < sg.b; ++e, ++col) {
        k_index[col] = e + (sg.kc ? 0 : T);
        v_index[col] = e + (sg.vc ? 0 : T);
      }
    }
    const Tensor bm = BandMask(kv, bl, 0);
    mask[j].slice(0, 0, c).slice(1, 0, bm.size(1)).copy_(bm);
    // Padding rows (past T in the last block) read entry 0, so that no row is empty; their
    // output is dropped.
    if (c < C) mask[j].slice(0, c, C).select(1, 0).fill_(true);
  }
  const torch::Device dev = q.device();
  p.k_index = torch::tensor(k_index, torch::kLong).to(dev);
  p.v_index = torch::tensor(v_index, torch::kLong).to(dev);
  // Query heads h = kv_head * g + i become rows i * C + r of their KV head, per block.
  Tensor mf = g == 1 ? mask : mask.unsqueeze(1).expand({nb, g, C, L}).reshape({nb, g * C, L});
  p.band_mask = mf.to(dev);
#if KVSWEEP_HAS_SDPA
  if (fused) p.band_bias = AlignedBias(p.band_mask.view({nb * g * C, L}), q.scalar_type());
#endif
  p.bytes = (p.k_index.numel() + p.v_index.numel()) * 8 + p.band_mask.numel() +
            (p.band_bias.defined() ? p.band_bias.numel() * 2 + nb * g * C * 16 : 0);
  if (cached_plan_bytes + p.bytes > kMaxCachedPlanBytes) {
    cached_plans.clear();
    cached_plan_bytes = 0;
  }
  cached_plan_bytes += p.bytes;
  return cached_plans.emplace(key, std::move(p)).first->second;
}

// The band as a sliding window. Where every entry of a query block's band is read in one state by
// all of the block's queries, the block's entries [max(0, t0 - S + 1), t1) in position order, each
// in its state, make query t's band (entries (t - S, t]) the last S rows up to its own: flash
// attention's variable-length form, one sequence per block, with the window (S - 1, 0) counted
// from the bottom-right diagonal. Each block is the longest from its start (up to the query
// block) in which every entry has one state (channel blocks: a block per channel block); the
// plan exists only where every block's mask is then the window, checked entry by entry against
// the blockwise path's masks.
struct WindowPlan {
  int64_t S = 0;                    // the causal part's shift: the band is S entries wide
  std::vector<int64_t> starts;      // block j: queries [starts[j], starts[j + 1]); ends with T
  std::vector<int64_t> key_starts;  // block j: rows [key_starts[j], key_starts[j + 1]) of the band
  Tensor k_index, v_index;          // long [n]: band row -> row of cat(compressed, raw)
  Tensor cu_q, cu_k;                // int32 [blocks + 1]: starts, key_starts (the kernel's)
  int64_t n = 0, max_q = 0, max_k = 0;
  int64_t bytes = 0;
};

// bool [C, L]: flash attention's window (S - 1, 0) for a sequence of C queries over L rows,
// counted from its bottom-right diagonal: query i reads row k iff
// i + (L - C) - (S - 1) <= k <= i + (L - C).
Tensor WindowMask(int64_t C, int64_t L, int64_t S) {
  const Tensor i = torch::arange(C, torch::kLong).unsqueeze(1);
  const Tensor k = torch::arange(L, torch::kLong).unsqueeze(0);
  const Tensor diag = i + (L - C);
  return (k <= diag) & (k >= diag - (S - 1));
}

// Whether the block's band segments cover its entries [max(0, t0 - S + 1), t1) once each, in
// position order (each entry in one state).
bool InOneState(const BlockLayout& bl, int64_t S) {
  int64_t next = std::max<int64_t>(0, bl.t0 - S + 1);
  for (const Segment& sg : bl.segments) {
    if (sg.a != next) return false;
    next = sg.b;
  }
  return next == bl.t1;
}

// Flash attention computes a sequence in tiles of 64-128 query rows: blocks much shorter than
// that leave most of each tile empty (blocks of a few queries, where a per-token residual window
// narrower than the band cuts a block at every query, would cost far more than the bias form).
// The plan is refused where it would hold more than ceil(T / this) + 1 blocks (the first block of
// channel blocks is one query short of the others).
constexpr int64_t kWindowMinQueries = 32;

std::optional<WindowPlan> BuildWindowPlan(const KvPair& kv, int64_t T, int64_t query_block,
                                          int64_t S, int64_t min_queries) {
  const int64_t max_blocks = (T + min_queries - 1) / min_queries + 1;
  WindowPlan w;
  w.S = S;
  std::vector<int64_t> k_index, v_index, key_starts = {0};
  // The block's layout with its segments in position order.
  auto lay_out = [&](int64_t t0, int64_t t1) {
    BlockLayout bl = LayOutBlock(kv, 0, t0, t1, S);
    std::sort(bl.segments.begin(), bl.segments.end(),
              [](const Segment& x, const Segment& y) { return x.a < y.a; });
    return bl;
  };
  for (int64_t t0 = 0; t0 < T;) {
    // The longest block from t0 (up to query_block) whose entries each have one state: fewer
    // queries read fewer (query, entry) pairs, so the property holds for every shorter block.
    int64_t good = t0 + 1, bad = std::min(T, t0 + query_block) + 1;
    if (InOneState(lay_out(t0, bad - 1), S)) good = bad - 1;
    while (bad - good > 1) {
      const int64_t mid = (good + bad) / 2;
      (InOneState(lay_out(t0, mid), S) ? good : bad) = mid;
    }
    const int64_t t1 = good;
    const BlockLayout bl = lay_out(t0, t1);
    if (!InOneState(bl, S)) return std::nullopt;
    // The blockwise path's mask of this band against the window.
    const int64_t C = t1 - t0, lo = std::max<int64_t>(0, t0 - S + 1), L = t1 - lo;
    const Tensor mask = BandMask(kv, bl, 0);
    if (!mask.sizes().equals({C, L}) || !torch::equal(mask, WindowMask(C, L, S))) {
      return std::nullopt;
    }
    for (const Segment& sg : bl.segments) {
      for (int64_t e = sg.a; e < sg.b; ++e) {
        k_index.push_back(e + (sg.kc ? 0 : T));
        v_index.push_back(e + (sg.vc ? 0 : T));
      }
    }
    w.starts.push_back(t0);
    if (static_cast<int64_t>(w.starts.size()) > max_blocks) return std::nullopt;
    key_starts.push_back(key_starts.back() + L);
    w.max_q = std::max(w.max_q, C);
    w.max_k = std::max(w.max_k, L);
    t0 = t1;
  }
  w.starts.push_back(T);
  w.key_starts = key_starts;
  w.n = key_starts.back();
  w.k_index = torch::tensor(k_index, torch::kLong);
  w.v_index = torch::tensor(v_index, torch::kLong);
  std::vector<int32_t> cu_q(w.starts.begin(), w.starts.end());
  std::vector<int32_t> cu_k(key_starts.begin(), key_starts.end());
  TORCH_CHECK(w.n <= std::numeric_limits<int32_t>::max(),
              "windowed band: more entries than 32-bit offsets hold");
  w.cu_q = torch::tensor(cu_q, torch::kInt);
  w.cu_k = torch::tensor(cu_k, torch::kInt);
  w.bytes = (w.k_index.numel() + w.v_index.numel()) * 8 + (w.cu_q.numel() + w.cu_k.numel()) * 4;
  return w;
}

// Per thread, like the packed plans; nullopt where the rules admit no window plan.
thread_local std::map<std::vector<int64_t>, std::optional<WindowPlan>> cached_window_plans;
thread_local int64_t cached_window_plan_bytes = 0;

const WindowPlan* WindowPlanFor(const Tensor& q, const KvPair& kv, int64_t query_block, int64_t S,
                                int64_t min_queries) {
  const int64_t T = q.size(2), g = q.size(1) / kv.k.compressed.size(1);
  std::vector<int64_t> key = RulesKey(q, kv, 0, g, false);
  key.insert(key.end(), {T, query_block, S, min_queries});
  auto it = cached_window_plans.find(key);
  if (it == cached_window_plans.end()) {
    std::optional<WindowPlan> w = BuildWindowPlan(kv, T, query_block, S, min_queries);
    if (w) {
      const torch::Device dev = q.device();
      w->k_index = w->k_index.to(dev);
      w->v_index = w->v_index.to(dev);
      w->cu_q = w->cu_q.to(dev);
      w->cu_k = w->cu_k.to(dev);
    }
    // A refused plan counts a little, so that the cache stays bounded over many lengths.
    const int64_t bytes = w ? w->bytes : 256;
    if (cached_window_plan_bytes + bytes > kMaxCachedPlanBytes) {
      cached_window_plans.clear();
      cached_window_plan_bytes = 0;
    }
    cached_window_plan_bytes += bytes;
    it = cached_window_plans.emplace(key, std::move(w)).first;
  }
  return it->second ? &*it->second : nullptr;
}

std::atomic<bool> band_window_enabled{true};
// Whether the fused window form may be tried: given up for the process after a refusal (e.g. a
// libtorch built without flash attention), the bias form taking the band from then on.
std::atomic<bool> window_path_ok{true};

std::atomic<AttentionPhaseHook> phase_hook{nullptr};

void Mark(const char* phase) {
  if (AttentionPhaseHook hook = phase_hook.load(std::memory_order_relaxed)) hook(phase);
}

// Rows of cat(compressed, raw) along T (compressed alone for a position-independent operand).
Tensor Sources(const KvOperand& op) {
  return op.position_dependent() ? torch::cat({op.compressed, op.raw}, 2) : op.compressed;
}

#ifdef KVSWEEP_CUDA
// Sources(op).index_select(2, index) in one kernel, reading each entry where it lies: [B, H, n, D]
// contiguous, or with position_major [B, n, H, D] contiguous (flash attention's layout).
Tensor GatherBand(const KvOperand& op, const Tensor& index, bool position_major = false) {
  const Tensor& first = op.compressed;
  const Tensor second = op.position_dependent() ? op.raw : Tensor();
  TORCH_CHECK(index.is_contiguous() && first.stride(3) == 1 &&
                  (!second.defined() || (second.stride(3) == 1 && second.sizes() == first.sizes() &&
                                         second.dtype() == first.dtype())),
              "band gather: unexpected K/V layouts");
  const int64_t B = first.size(0), H = first.size(1), n = index.size(0), D = first.size(3);
  Tensor out = position_major ? torch::empty({B, n, H, D}, first.options())
                              : torch::empty({B, H, n, D}, first.options());
  BandGatherArgs a{};
  a.first = first.data_ptr();
  a.second = second.defined() ? second.data_ptr() : nullptr;
  for (int i = 0; i < 3; ++i) {
    a.first_strides[i] = first.stride(i);
    a.second_strides[i] = second.defined() ? second.stride(i) : 0;
  }
  a.index = index.data_ptr<int64_t>();
  a.n = n;
  a.out = out.data_ptr();
  const int dims[3] = {0, position_major ? 2 : 1, position_major ? 1 : 2};  // b, h, row
  for (int i = 0; i < 3; ++i) a.out_strides[i] = out.stride(dims[i]);
  a.B = B;
  a.H = H;
  a.T = first.size(2);
  a.D = D;
  a.elem_bytes = static_cast<int>(first.element_size());
  c10::cuda::CUDAGuard guard(first.device());
  const cudaError_t e = LaunchBandGather(a, at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(e == cudaSuccess, "band gather kernel: ", cudaGetErrorString(e));
  return out;
}
#endif

// The causal part: queries S.. over compressed entries 0..t - S, [B, H, T - S, D] and its fp32
// log-sum-exp [B, H, T - S]. `fused`: cuDNN's fused kernel, the one `none` uses; otherwise an
// explicit fp32 softmax.
std::pair<Tensor, Tensor> ShiftedCausal(const Tensor& q, const KvPair& kv, int64_t S, double scale,
                                        bool fused) {
  const int64_t H = q.size(1), T = q.size(2);
  const int64_t g = H / kv.k.compressed.size(1);
  const Tensor kc = kv.k.compressed.slice(2, 0, T - S);
  const Tensor vc = kv.v.compressed.slice(2, 0, T - S);
  Tensor out_p, lse_p;
#if KVSWEEP_HAS_CUDNN_LSE
  if (fused) {
    // GQA: cuDNN reads each KV head for its g query heads itself (tools/gpu/cudnn_gqa_probe.py:
    // bitwise the repeated K/V's result at the 7B shape, and faster by the repeat's copy);
    // where it refuses, K/V repeated for the process.
    auto causal = [&](const Tensor& k, const Tensor& v) {
      auto r = at::_scaled_dot_product_cudnn_attention(
          q.slice(2, S, T), k, v, std::nullopt, /*compute_log_sumexp=*/true, 0.0,
          /*is_causal=*/true, /*return_debug_mask=*/false, scale);
      out_p = std::get<0>(r);
      lse_p = std::get<1>(r);
    };
    bool done = false;
    if (g > 1 && cudnn_gqa_ok.load(std::memory_order_relaxed)) {
      try {
        causal(kc, vc);
        done = true;
      } catch (const c10::Error& e) {
        cudnn_gqa_ok.store(false);
        KV_LOG(WARNING) << "cuDNN attention refused grouped K/V (" << e.what_without_backtrace()
                        << "); the packed path repeats K/V for each query head";
      }
    }
    if (!done) causal(RepeatKv(kc, g), RepeatKv(vc, g));
    if (lse_p.dim() == 4) lse_p = lse_p.squeeze(-1);
    TORCH_CHECK(lse_p.dim() == 3 && lse_p.size(0) == q.size(0) && lse_p.size(1) == H &&
                    lse_p.size(2) == T - S && lse_p.scalar_type() == torch::kFloat32,
                "causal attention returned a log-sum-exp of shape ", lse_p.sizes());
    return {out_p, lse_p};
  }
#endif
  TORCH_CHECK(!fused, "AttendPacked: the fused kernels need libtorch >= 2.6 with CUDA");
  auto f32 = [](const Tensor& x) { return x.to(torch::kFloat32); };
  Tensor sc = torch::matmul(f32(q.slice(2, S, T)), RepeatKv(f32(kc), g).transpose(-2, -1)) * scale;
  sc = sc.masked_fill(torch::ones({T - S, T - S}, torch::kBool).triu(1).to(sc.device()),
                      -std::numeric_limits<float>::infinity());
  lse_p = torch::logsumexp(sc, -1);
  out_p = torch::matmul(torch::exp(sc - lse_p.unsqueeze(-1)), RepeatKv(f32(vc), g));
  return {out_p, lse_p};
}

// The band's output ob [B, H, T, D] (fp32, each row's softmax over its band) and log-sum-exp lb
// [B, H, T] merged with the causal part's (rows S..): each part's share of a row's softmax mass
// is the sigmoid of the difference of their log-sum-exps. In q's dtype.
Tensor MergeExplicit(Tensor ob, const Tensor& lb, const Tensor& out_p, const Tensor& lse_p,
                     int64_t S, torch::ScalarType dtype) {
  const int64_t T = ob.size(2);
  if (T <= S) return ob.to(dtype);
  const Tensor share = torch::sigmoid(lse_p.to(torch::kFloat32) - lb.slice(2, S, T)).unsqueeze(-1);
  // ob + share * (out_p - ob) on rows S.., in place.
  Tensor tail = ob.slice(2, S, T);
  tail.add_((out_p.to(torch::kFloat32) - tail).mul_(share));
  return ob.to(dtype);
}

#ifdef KVSWEEP_CUDA
// The merge kernel over one batch element's rows (or all of them), writing out (contiguous
// [B, H, T, D]); band_by_position: ob, lb indexed [b, h, t] by `band_strides`/`lse_strides`.
void MergeOnDevice(const Tensor& out, const Tensor& ob, const Tensor& lb,
                   const int64_t (&band_strides)[3], const int64_t (&lse_strides)[3],
                   bool band_by_position, const Tensor& out_p, const Tensor& lse_p, int64_t Hkv,
                   int64_t C, int64_t S) {
  TORCH_CHECK(ob.stride(-1) == 1 && (!out_p.defined() || out_p.stride(3) == 1),
              "packed attention: unexpected output layouts");
  AttentionMergeArgs a{};
  a.band_out = ob.data_ptr();
  a.band_lse = lb.data_ptr<float>();
  a.band_by_position = band_by_position;
  for (int i = 0; i < 3; ++i) {
    a.band_out_strides[i] = band_strides[i];
    a.band_lse_strides[i] = lse_strides[i];
  }
  if (out_p.defined()) {
    a.prefix_out = out_p.data_ptr();
    a.prefix_lse = lse_p.data_ptr<float>();
    for (int i = 0; i < 3; ++i) {
      a.prefix_out_strides[i] = out_p.stride(i);
      a.prefix_lse_strides[i] = lse_p.stride(i);
    }
  }
  a.out = out.data_ptr();
  a.B = out.size(0);
  a.H = out.size(1);
  a.T = out.size(2);
  a.D = out.size(3);
  a.Hkv = Hkv;
  a.g = a.H / Hkv;
  a.C = C;
  a.shift = out_p.defined() ? S : a.T;  // no causal part: every row is its band's
  c10::cuda::CUDAGuard guard(out.device());
  const cudaError_t e =
      LaunchAttentionMerge(a, out.scalar_type() == torch::kBFloat16 ? kMergeBF16 : kMergeF16,
                           at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(e == cudaSuccess, "attention merge kernel: ", cudaGetErrorString(e));
}
#endif

// The packed path with the band as a sliding window (WindowPlan).
Tensor AttendPackedWindow(const Tensor& q, const KvPair& kv, double scale, const WindowPlan& w,
                          bool fused) {
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3);
  const int64_t Hkv = kv.k.compressed.size(1), g = H / Hkv, S = w.S;
  const int64_t nb = static_cast<int64_t>(w.starts.size()) - 1;
#if KVSWEEP_HAS_FLASH_WINDOW && defined(KVSWEEP_CUDA)
  if (fused) {
    // Each batch element's queries read in place as [T, H, D] (a strided view), its band's
    // entries gathered into flash attention's [n, Hkv, D]; one variable-length call per element.
    const Tensor kb = GatherBand(kv.k, w.k_index, /*position_major=*/true);
    const Tensor vb = GatherBand(kv.v, w.v_index, /*position_major=*/true);
    Mark("gather");
    std::vector<Tensor> obs, lbs;
    for (int64_t b = 0; b < B; ++b) {
      auto r = at::_ops::_flash_attention_forward::call(
          q[b].transpose(0, 1), kb[b], vb[b], w.cu_q, w.cu_k, c10::SymInt(w.max_q),
          c10::SymInt(w.max_k), 0.0, /*is_causal=*/true, /*return_debug_mask=*/false, scale,
          std::optional<c10::SymInt>(S - 1), std::optional<c10::SymInt>(0), std::nullopt,
          std::nullopt);
      const Tensor& ob = std::get<0>(r);  // [T, H, D]
      const Tensor& lb = std::get<1>(r);  // [H, T]
      TORCH_CHECK(ob.dim() == 3 && ob.size(0) == T && ob.size(1) == H && lb.dim() == 2 &&
                      lb.size(0) == H && lb.size(1) == T && lb.scalar_type() == torch::kFloat32,
                  "windowed band attention returned shapes ", ob.sizes(), " and ", lb.sizes());
      obs.push_back(ob);
      lbs.push_back(lb);
    }
    Mark("band");
    Tensor out_p, lse_p;
    if (T > S) std::tie(out_p, lse_p) = ShiftedCausal(q, kv, S, scale, true);
    Mark("prefix");
    Tensor out = torch::empty({B, H, T, D}, q.options());
    for (int64_t b = 0; b < B; ++b) {
      const Tensor& ob = obs[static_cast<size_t>(b)];
      const Tensor& lb = lbs[static_cast<size_t>(b)];
      const int64_t band_strides[3] = {0, ob.stride(1), ob.stride(0)};
      const int64_t lse_strides[3] = {0, lb.stride(0), lb.stride(1)};
      MergeOnDevice(out[b].unsqueeze(0), ob, lb, band_strides, lse_strides,
                    /*band_by_position=*/true, T > S ? out_p[b].unsqueeze(0) : Tensor(),
                    T > S ? lse_p[b].unsqueeze(0) : Tensor(), Hkv, 0, S);
    }
    Mark("merge");
    return out;
  }
#endif
  TORCH_CHECK(!fused, "AttendPacked: the windowed band needs libtorch >= 2.7 with CUDA");
  // The same computation with explicit fp32 softmax, block by block: the rows each block's
  // sequence holds and flash attention's window over them, counted from the bottom-right
  // diagonal as the kernel counts it.
  auto f32 = [](const Tensor& x) { return x.to(torch::kFloat32); };
  const Tensor ks = f32(Sources(kv.k).index_select(2, w.k_index.to(q.device())));
  const Tensor vs = f32(Sources(kv.v).index_select(2, w.v_index.to(q.device())));
  Tensor ob = torch::empty({B, H, T, D}, q.options().dtype(torch::kFloat32));
  Tensor lb = torch::empty({B, H, T}, q.options().dtype(torch::kFloat32));
  for (int64_t j = 0; j < nb; ++j) {
    const int64_t t0 = w.starts[j], C = w.starts[j + 1] - t0;
    const int64_t k0 = w.key_starts[j], L = w.key_starts[j + 1] - k0;
    Tensor s = torch::matmul(f32(q.slice(2, t0, t0 + C)),
                             RepeatKv(ks.slice(2, k0, k0 + L), g).transpose(-2, -1)) *
               scale;
    const Tensor seen = WindowMask(C, L, S).to(q.device());
    s = s.masked_fill(seen.logical_not(), -std::numeric_limits<float>::infinity());
    const Tensor l = torch::logsumexp(s, -1);
    ob.slice(2, t0, t0 + C)
        .copy_(
            torch::matmul(torch::exp(s - l.unsqueeze(-1)), RepeatKv(vs.slice(2, k0, k0 + L), g)));
    lb.slice(2, t0, t0 + C).copy_(l);
  }
  if (T <= S) return ob.to(q.scalar_type());
  const auto [out_p, lse_p] = ShiftedCausal(q, kv, S, scale, false);
  return MergeExplicit(ob, lb, out_p, lse_p, S, q.scalar_type());
}

}  // namespace

Tensor AttendPacked(const Tensor& q, const KvPair& kv, double scale, int64_t query_block,
                    bool fused) {
  TORCH_CHECK(query_block >= 1, "AttendPacked: query block ", query_block);
#if !KVSWEEP_HAS_CUDNN_LSE
  TORCH_CHECK(!fused, "AttendPacked: the fused kernels need libtorch >= 2.6 with CUDA");
#endif
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3);
  const int64_t Hkv = kv.k.compressed.size(1), g = H / Hkv;
  // A few windows at a time: the packing's temporaries (gathered bands, repeated K/V, the
  // merge) are several times the layer's q, and a scoring batch holds up to 64 windows.
  const int64_t per_chunk = std::max<int64_t>(1, kPackedChunkTokens / T);
  if (B > per_chunk) {
    auto rows = [](const KvOperand& op, int64_t b0, int64_t b1) {
      return KvOperand{op.compressed.slice(0, b0, b1),
                       op.raw.defined() ? op.raw.slice(0, b0, b1) : op.raw, op.use_compressed,
                       op.block, op.residual};
    };
    std::vector<Tensor> outs;
    for (int64_t b0 = 0; b0 < B; b0 += per_chunk) {
      const int64_t b1 = std::min(B, b0 + per_chunk);
      outs.push_back(AttendPacked(q.slice(0, b0, b1),
                                  KvPair{rows(kv.k, b0, b1), rows(kv.v, b0, b1)}, scale,
                                  query_block, fused));
    }
    return torch::cat(outs, 0);
  }
  // The band as flash attention's sliding window where the rules allow it.
#if KVSWEEP_HAS_FLASH_WINDOW && defined(KVSWEEP_CUDA)
  const bool window_kernel = true;
#else
  const bool window_kernel = false;
#endif
  if ((!fused || (window_kernel && window_path_ok.load(std::memory_order_relaxed))) &&
      band_window_enabled.load(std::memory_order_relaxed)) {
    const int64_t S = std::max<int64_t>(1, std::max(PackedShift(kv.k), PackedShift(kv.v)));
    // The explicit form (tests) takes blocks of any length, to check the window's arithmetic.
    if (const WindowPlan* w = WindowPlanFor(q, kv, query_block, S, fused ? kWindowMinQueries : 1)) {
      Mark("plan");
      if (!fused) return AttendPackedWindow(q, kv, scale, *w, fused);
      try {
        return AttendPackedWindow(q, kv, scale, *w, fused);
      } catch (const c10::Error& e) {
        window_path_ok.store(false);
        KV_LOG(WARNING) << "windowed band attention refused (" << e.what_without_backtrace()
                        << "); the packed path's band uses the memory-efficient kernel with a bias";
      }
    }
  }
  const PackedPlan& p = PlanFor(q, kv, query_block, fused);
  Mark("plan");
  const int64_t nb = p.nb, C = p.C, L = p.L, Tp = nb * C, S = p.shift;
  auto f32 = [](const Tensor& x) { return x.to(torch::kFloat32); };

  // The bands: queries [B*Hkv, nb, g*C, D] (a batch element's KV head by block, the block's
  // GQA heads folded into its rows) over their gathered entries [B*Hkv, nb, L, D].
  Tensor qp = Tp > T ? torch::constant_pad_nd(q, {0, 0, 0, Tp - T}) : q;
  Tensor qf =
      qp.view({B, Hkv, g, nb, C, D}).permute({0, 1, 3, 2, 4, 5}).reshape({B * Hkv, nb, g * C, D});
  auto gather = [&](const KvOperand& op, const Tensor& index) {
#ifdef KVSWEEP_CUDA
    // GPU: one kernel reads each entry from the state it is in (no concatenation of the two).
    if (fused) return GatherBand(op, index).view({B * Hkv, nb, L, D});
#endif
    return Sources(op).index_select(2, index).view({B * Hkv, nb, L, D});
  };
  const Tensor kb = gather(kv.k, p.k_index), vb = gather(kv.v, p.v_index);
  Mark("gather");
  Tensor out_b, lse_b;  // [B*Hkv, nb, g*C, D], fp32 [B*Hkv, nb, g*C]
  Tensor out_p, lse_p;  // the causal part: [B, H, T - S, D], fp32 [B, H, T - S]
#if KVSWEEP_HAS_CUDNN_LSE
  if (fused) {
    const Tensor bias = p.band_bias.view({1, nb, g * C, L}).expand({B * Hkv, nb, g * C, L});
    auto eff = at::_scaled_dot_product_efficient_attention(qf, kb, vb, bias,
                                                           /*compute_log_sumexp=*/true, 0.0,
                                                           /*is_causal=*/false, scale);
    out_b = std::get<0>(eff);
    lse_b = std::get<1>(eff).slice(-1, 0, g * C).to(torch::kFloat32);
    Mark("band");
    if (T > S) {
      std::tie(out_p, lse_p) = ShiftedCausal(q, kv, S, scale, true);
      Mark("prefix");
#ifdef KVSWEEP_CUDA
      // The merge in one kernel, reading each part in the layout its kernel wrote.
      Tensor out = torch::empty({B, H, T, D}, q.options());
      const int64_t band_strides[3] = {out_b.stride(0), out_b.stride(1), out_b.stride(2)};
      const int64_t lse_strides[3] = {lse_b.stride(0), lse_b.stride(1), lse_b.stride(2)};
      MergeOnDevice(out, out_b, lse_b, band_strides, lse_strides, /*band_by_position=*/false, out_p,
                    lse_p, Hkv, C, S);
      Mark("merge");
      return out;
#endif
    }
  }
#endif
  if (!fused) {
    // The same two computations with explicit fp32 softmax.
    Tensor s = torch::matmul(f32(qf), f32(kb).transpose(-2, -1)) * scale;
    s = s.masked_fill(p.band_mask.logical_not().unsqueeze(0),
                      -std::numeric_limits<float>::infinity());
    lse_b = torch::logsumexp(s, -1);
    out_b = torch::matmul(torch::exp(s - lse_b.unsqueeze(-1)), f32(vb));
    if (T > S) std::tie(out_p, lse_p) = ShiftedCausal(q, kv, S, scale, false);
  }
  // Back to [B, H, T(+padding), ...] and merged.
  Tensor ob = out_b.view({B, Hkv, nb, g, C, D})
                  .permute({0, 1, 3, 2, 4, 5})
                  .reshape({B, H, Tp, D})
                  .slice(2, 0, T)
                  .to(torch::kFloat32);
  const Tensor lb =
      lse_b.view({B, Hkv, nb, g, C}).permute({0, 1, 3, 2, 4}).reshape({B, H, Tp}).slice(2, 0, T);
  Tensor out = MergeExplicit(ob, f32(lb), out_p, lse_p, S, q.scalar_type());
  Mark("merge");
  return out;
}

void SetAttentionPhaseHook(AttentionPhaseHook hook) { phase_hook.store(hook); }

void SetPackedBandWindow(bool enabled) { band_window_enabled.store(enabled); }
bool PackedBandWindow() { return band_window_enabled.load(); }

bool PackedBandWindowApplies(const KvPair& kv, int64_t T, int64_t query_block, bool fused) {
  const int64_t S = std::max<int64_t>(1, std::max(PackedShift(kv.k), PackedShift(kv.v)));
  return BuildWindowPlan(kv, T, query_block, S, fused ? kWindowMinQueries : 1).has_value();
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
#if KVSWEEP_HAS_CUDNN_LSE
    const int64_t D = q.size(3);
    if (!q.is_cpu() && q.scalar_type() != torch::kFloat32 && softcap <= 0 && D % 8 == 0 &&
        D <= 256 && q.size(2) >= kPackedMinBlocks * AttentionQueryBlock() &&
        (window == 0 || window >= q.size(2)) && packed_path_ok.load(std::memory_order_relaxed)) {
      try {
        return AttendPacked(q, kv, scale, AttentionQueryBlock(), /*fused=*/true);
      } catch (const c10::Error& e) {
        packed_path_ok.store(false);
        KV_LOG(WARNING) << "packed attention refused (" << e.what_without_backtrace()
                        << "); position-dependent attention goes a block at a time";
      }
    }
#endif
    return AttendBlockwise(q, kv, window, scale, AttentionQueryBlock(), softcap);
  }
#if KVSWEEP_HAS_SDPA
  if (!q.is_cpu() && softcap <= 0) {
    // Fused kernels (flash / memory-efficient) on GPU; causal without a materialized mask when
    // there is no sliding window.
    // Contiguous [B, H, T, D] operands: with the strided views the projections produce, SDPA
    // ran slower on the H200 than with a codec's contiguous output. Queries already dense
    // position major ([B, T, H, D] memory: the fused RoPE kernel's choice, or a projection's own
    // output viewed per head) stay so: the output then comes position major too.
    const int64_t groups = q.size(1) / kv.k.compressed.size(1);
    const Tensor qc = q.is_contiguous() || q.transpose(1, 2).is_contiguous() ? q : q.contiguous(),
                 kc = kv.k.compressed.contiguous(), vc = kv.v.compressed.contiguous();
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

// Attention over what a KV cache holds (kv/kv_codec.h), for the model's forward pass.
//
// Position-independent operands: one tensor serves every query (SDPA's fused kernels on the GPU
// with libtorch >= 2.5, the explicit softmax otherwise).
//
// Position-dependent operands (channel-axis blocks, residual windows): query t reads entry j
// compressed iff j < CompressedTokens(t + 1, block, residual) (kv/cache_masks.h) and its raw
// value otherwise. AttendBlockwise computes exactly that, a block of queries at a time, with no
// [B, H, T, T] tensor: for queries [t0, t1), the entries every one of them reads compressed (a
// prefix, or under a sliding window the part all of them see) form one unmasked segment; the
// rest of what any of them sees (the band of the unfinished block and the residual window near
// the diagonal, and the lower edge of a sliding window) is gathered once per combination of K
// and V states that can occur there, each with a [C, L] mask of which query reads which entry in
// that state. Every (query, entry) pair that attention reads appears in exactly one segment with
// the state it is read in, so one softmax over the concatenation is the per-query softmax of the
// cache semantics, summed in another order. Query heads of a GQA group are folded into the query
// rows, so K/V are never repeated. On the GPU in bf16/fp16 the unmasked segment goes through
// flash attention and the masked rest through the memory-efficient kernel with a bias, the two
// merged by their log-sum-exp; in fp32 (or if a kernel refuses its operands) the concatenation
// goes through one masked SDPA call per block; on the CPU it is an explicit fp32 softmax. Attend
// on the GPU in half precision packs all blocks into three calls instead (AttendPacked), falling
// back to a block at a time if a kernel refuses (and for windows shorter than the sequence, and
// sequences of fewer than 8 query blocks, where a block at a time costs less).
//
// AttendMasked is the reference the blockwise path is tested against: [B, H, T, T] scores with
// each entry's state chosen by the operands' use_compressed masks.
#ifndef KVSWEEP_WORKER_ENGINE_ATTENTION_H_
#define KVSWEEP_WORKER_ENGINE_ATTENTION_H_

#include <cstdint>

#include "worker/engine/kv/kv_codec.h"
#include "worker/engine/torch_util.h"

namespace kvsweep::engine {

// Queries per block of the blockwise path: 128 keeps the band (block + residual + unfinished
// channel block, read in two states) small against the prefix at W = 4096, and the per-block
// score tile of the explicit path (CPU) at [B, H, 128, T] fp32.
inline constexpr int64_t kAttentionQueryBlock = 128;

// The query block Attend uses: kAttentionQueryBlock unless a benchmark set another with
// SetAttentionQueryBlock (kvsweep-engine-bench --attention-blocks; workers never do). Another
// block computes the same attention, summed in another order.
int64_t AttentionQueryBlock();
void SetAttentionQueryBlock(int64_t block);

// q [B, H, T, D] (post-RoPE); kv operands [B, Hkv, T, D]; allowed: bool [T, T], causal and within
// `window` (0 = none); returns [B, H, T, D]. Position-dependent operands take the blockwise path.
// softcap > 0 (gemma2): scaled scores s become softcap * tanh(s / softcap) before the softmax,
// which no fused kernel does: the explicit softmax then runs on every device.
torch::Tensor Attend(const torch::Tensor& q, const KvPair& kv, const torch::Tensor& allowed,
                     int window, double scale, double softcap = 0);

// The blockwise path with `query_block` queries per block (tests vary it).
torch::Tensor AttendBlockwise(const torch::Tensor& q, const KvPair& kv, int window, double scale,
                              int64_t query_block = kAttentionQueryBlock, double softcap = 0);

// The blockwise attention in three kernel calls, without a window: a causal attention of
// queries S.. over compressed entries 0..T-S-1, shifted by S = max(residual + block - 1) so that
// every query t reads entries j <= t - S compressed (cuDNN's fused kernel, the one `none` uses);
// every block's band (what its queries read above that, in each state) in one call: flash
// attention's sliding window where each block's band entries have one state (SetPackedBandWindow
// below), else the memory-efficient kernel with a bias (the bands gathered and padded to one
// length, the blocks as heads); the two merged by their log-sum-exp in one kernel. `fused`: those
// CUDA kernels (half precision, libtorch >= 2.6; throws c10::Error where a kernel refuses);
// otherwise the same packing with explicit fp32 softmax in place of each kernel (what the CPU tests
// check). No softcap.
torch::Tensor AttendPacked(const torch::Tensor& q, const KvPair& kv, double scale,
                           int64_t query_block, bool fused);

// Where every entry of each query block's band is read in one state by all of the block's
// queries (per-token residual windows; channel blocks, one query block per channel block), the
// band goes through flash attention's variable-length form with a sliding window instead of the
// memory-efficient kernel with a bias (no bias, GQA heads read in place; libtorch >= 2.7 with
// CUDA; the CPU form checks the same blocks and window with explicit softmax). Benchmarks turn it
// off to time the bias form (kvsweep-engine-bench --attention-bench); workers never do.
void SetPackedBandWindow(bool enabled);
bool PackedBandWindow();
// Whether the rules of kv admit that form at T queries: for the fused kernels (at most
// ceil(T / 32) + 1 blocks, i.e. blocks of about 32 queries or more), or for AttendPacked's
// explicit form (fused false: blocks of any length).
bool PackedBandWindowApplies(const KvPair& kv, int64_t T, int64_t query_block, bool fused = true);

// Benchmarks only: called with a phase's name as the packed path finishes it ("plan",
// "gather", "band", "prefix" (the shifted causal part), "merge"), so that a caller can synchronize
// the device and read its clock; none (the default) in workers.
using AttentionPhaseHook = void (*)(const char* phase);
void SetAttentionPhaseHook(AttentionPhaseHook hook);

// The reference: explicit [B, H, T, T] scores and softmax in fp32.
torch::Tensor AttendMasked(const torch::Tensor& q, const KvPair& kv, const torch::Tensor& allowed,
                           double scale, double softcap = 0);

// bool [T, T]: query t may read entry j (j <= t and, with a window, t - j < window).
torch::Tensor AllowedMask(int64_t T, int window, torch::Device device);

}  // namespace kvsweep::engine

#endif  // KVSWEEP_WORKER_ENGINE_ATTENTION_H_

// The LM head's scoring: each row's target log-probability (fp64) and greedy hit from its
// logits. HeadScoreLibtorch with libtorch ops on any device and dtype; FusedHeadScore fused on the
// GPU (head_score.cu), from half-precision logits straight to the results without the [rows,
// vocab] fp32 and fp64 copies. The scorer (scorer.h) takes the fused one on CUDA in bf16/fp16
// while the fused kernels are enabled (fused_layer.h's switch covers it), the libtorch one
// elsewhere.
#ifndef KVSWEEP_WORKER_ENGINE_HEAD_SCORE_H_
#define KVSWEEP_WORKER_ENGINE_HEAD_SCORE_H_

#include "worker/engine/torch_util.h"

namespace kvsweep::engine {

// logits [n, V], targets [n] int64 on the same device -> *logprob [n] fp64 = logits[r, t_r] -
// logsumexp(logits[r]) and *hit [n] bool = (argmax(logits[r]) == t_r). The logits are widened to
// fp32 and each row's normaliser is accumulated in fp64 over blocks of at most 256 rows (the fp64
// copy of a block stays small even with a 150k vocabulary): an fp32 normaliser over tens of
// thousands of terms carries a bias of a few 1e-6 nats per token, which adds up over a document
// to more than the 1e-6 relative agreement a perplexity is held to.
void HeadScoreLibtorch(const torch::Tensor& logits, const torch::Tensor& targets,
                       torch::Tensor* logprob, torch::Tensor* hit);

// The same as HeadScoreLibtorch for logits in bf16/fp16 on CUDA with a contiguous last
// dimension, in one pass over each row: greedy hits identical, log-probabilities within
// 2^-22 + (3 + log(V)) * 2^-24 of it (each exp term fp32, eight of them summed in fp32, those sums
// in fp64: head_score.cu). False, with nothing written, where the kernel does not apply (the CPU,
// fp32, a build without CUDA, the fused kernels switched off, other shapes).
bool FusedHeadScore(const torch::Tensor& logits, const torch::Tensor& targets,
                    torch::Tensor* logprob, torch::Tensor* hit);

// FusedHeadScore's bound on |logprob - HeadScoreLibtorch's| for a vocabulary of `vocab` words:
// 2^-22 + (3 + log(vocab)) * 2^-24.
double FusedHeadScoreBound(int64_t vocab);

}  // namespace kvsweep::engine

#endif  // KVSWEEP_WORKER_ENGINE_HEAD_SCORE_H_

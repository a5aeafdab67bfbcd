// The LM head's scoring fused on the GPU (head_score.cu): from half-precision logits straight to
// each row's target log-probability (fp64) and greedy hit, without the [rows, vocab] fp32 and fp64
// copies the libtorch path makes. The scorer (scorer.h) uses it on CUDA in bf16/fp16 while the
// fused kernels are enabled (fused_layer.h's switch covers it); elsewhere, the libtorch path.
#ifndef KVSWEEP_WORKER_ENGINE_HEAD_SCORE_H_
#define KVSWEEP_WORKER_ENGINE_HEAD_SCORE_H_

#include "worker/engine/torch_util.h"

namespace kvsweep::engine {

// logits [n, V] (bf16/fp16 on CUDA, last dimension contiguous), targets [n] int64 on the same
// device -> *logprob [n] fp64 = logits[r, t_r] - logsumexp(logits[r]) and *hit [n] bool =
// (argmax(logits[r]) == t_r), as the libtorch path computes them from the logits widened to fp64
// (up to the fp64 summation order). False, with nothing written, where the kernel does not apply
// (the CPU, fp32, a build without CUDA, the fused kernels switched off, other shapes).
bool FusedHeadScore(const torch::Tensor& logits, const torch::Tensor& targets,
                    torch::Tensor* logprob, torch::Tensor* hit);

}  // namespace kvsweep::engine

#endif  // KVSWEEP_WORKER_ENGINE_HEAD_SCORE_H_

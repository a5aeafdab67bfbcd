// The CUDA side of the LM head's fused scoring (head_score.h); no libtorch in this header so that
// nvcc compiles the kernel without torch's headers.
#ifndef KVSWEEP_WORKER_ENGINE_HEAD_SCORE_KERNEL_H_
#define KVSWEEP_WORKER_ENGINE_HEAD_SCORE_KERNEL_H_

#include <cuda_runtime.h>
#include <stdint.h>

namespace kvsweep::engine {

// Storage dtypes of the logits the kernel reads.
enum HeadKernelDtype : int { kHeadBf16 = 0, kHeadFp16 = 1 };

// rows x vocab logits, row r at logits + r * stride (elements), each row contiguous. Per row r:
//   logprob[r] = x[target[r]] - (m' + log(sum_j exp(x[j] - m'))), in fp64, where m is the row's
//               largest value and m' = m, or 0 where m is infinite (libtorch's logsumexp);
//   hit[r]     = 1 when target[r] is the first index of the row's largest value (torch::argmax,
//               NaN counting as the largest), else 0.
// A target outside [0, vocab) gives logprob NaN and hit 0.
struct HeadScoreArgs {
  const void* logits;
  int64_t stride;
  int64_t rows, vocab;
  const int64_t* target;
  double* logprob;
  bool* hit;
  int dtype;  // HeadKernelDtype
};
cudaError_t LaunchHeadScore(const HeadScoreArgs& a, cudaStream_t stream);

}  // namespace kvsweep::engine

#endif  // KVSWEEP_WORKER_ENGINE_HEAD_SCORE_KERNEL_H_

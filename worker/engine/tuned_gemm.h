// Matrix products through cuBLASLt with an algorithm chosen by measurement (tuned_gemm.cu's
// table), where the table has one for this GPU and shape; libtorch's torch::linear (cuBLAS's
// default choice) everywhere else: the CPU, fp32, a build without CUDA, a bias, a shape or GPU
// the table does not know, operands not 256-byte aligned, autograd recording, or switched off.
// Another algorithm may add the k terms in another order, so the two may differ in the last bits
// of some outputs (on the table's shapes the H200 gave the same bits: every entry reduces over k
// in one pass, as the default did there). The choice depends only on the table, the GPU, the
// cuBLASLt version and the shape, never on a timing taken at run time, so a run repeats bit for
// bit.
#ifndef KVSWEEP_WORKER_ENGINE_TUNED_GEMM_H_
#define KVSWEEP_WORKER_ENGINE_TUNED_GEMM_H_

#include <cstdint>
#include <string>

#include "worker/engine/torch_util.h"

namespace kvsweep::engine {

// On by default; benchmarks switch it off to compare.
void SetTunedGemmEnabled(bool on);
bool TunedGemmEnabled();

// torch::linear(x, w, b): y [..., n] = x [..., k] w^T (+ b), w [n, k]. Tuned where enabled, b is
// undefined, x and w are contiguous, 256-byte aligned bf16/fp16 on one CUDA device, no gradient
// is recorded and the table has an entry. A cuBLASLt error is a c10::Error naming its status.
torch::Tensor TunedLinear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b);

// One line on why the tuned path takes or declines the product x [m, k] w^T of this dtype on
// this CUDA device (the GPU, cuBLASLt's version, the table entry, the heuristic's candidates);
// "not CUDA" elsewhere. For --check-fused.
std::string ExplainTunedLinear(torch::Device device, torch::ScalarType dtype, int64_t m, int64_t n,
                               int64_t k);

// Products run with a tuned algorithm since the process started (results record the difference
// over a run, so that a number says which kind of product made it).
int64_t TunedGemmCount();

}  // namespace kvsweep::engine

#endif  // KVSWEEP_WORKER_ENGINE_TUNED_GEMM_H_

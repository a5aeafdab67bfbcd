// The CUDA side of the tuned matrix products (tuned_gemm.h): cuBLASLt with the algorithm a table
// of measurements names for this GPU and shape. No libtorch in this header, so that nvcc compiles
// tuned_gemm.cu without torch's headers.
#ifndef KVSWEEP_WORKER_ENGINE_TUNED_GEMM_KERNEL_H_
#define KVSWEEP_WORKER_ENGINE_TUNED_GEMM_KERNEL_H_

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

namespace kvsweep::engine {

// y [m, n] = x [m, k] w^T with w [n, k], all row major and contiguous, in one storage dtype,
// accumulated in fp32 (nn.Linear without a bias).
struct TunedGemmShape {
  int device = 0;
  bool bf16 = true;  // else fp16
  int64_t m = 0, n = 0, k = 0;
};

// The workspace cuBLASLt may use (as tools/gpu/gemm_algos.cu measured with).
constexpr size_t kTunedGemmWorkspaceBytes = size_t{32} << 20;

// The plan for this shape on the current device (an opaque pointer, valid for the process), or
// null where the table has no entry for this GPU, cuBLASLt major version, dtype, n and k, where m
// is below the entry's rows, or where cuBLASLt's heuristic for the exact shape
// does not offer the entry's algorithm. The first call per shape asks the heuristic; later calls
// find it cached. Thread safe.
const void* FindTunedGemmPlan(const TunedGemmShape& shape);

// Why FindTunedGemmPlan gives a plan or none for this shape, in one line into buf (the GPU's
// name, cuBLASLt's version, the table entry if any, and the heuristic's candidates), for checks.
void ExplainTunedGemm(const TunedGemmShape& shape, char* buf, size_t len);

// Runs the plan's product on `stream` with `workspace` (kTunedGemmWorkspaceBytes, device memory);
// x, w, y and the workspace 256-byte aligned (what the heuristic assumed). Returns cuBLASLt's
// status (0: success).
int LaunchTunedGemm(const void* plan, const void* x, const void* w, void* y, void* workspace,
                    cudaStream_t stream);

}  // namespace kvsweep::engine

#endif  // KVSWEEP_WORKER_ENGINE_TUNED_GEMM_KERNEL_H_

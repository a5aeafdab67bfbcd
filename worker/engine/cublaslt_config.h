// cuBLASLt algorithm configurations as the tuned products' table (tuned_gemm.cu) records them and
// tools/gpu/gemm_algos.cu prints them: nine CUBLASLT_ALGO_CONFIG_* fields. Header only, no
// libtorch, for nvcc.
#ifndef KVSWEEP_WORKER_ENGINE_CUBLASLT_CONFIG_H_
#define KVSWEEP_WORKER_ENGINE_CUBLASLT_CONFIG_H_

#include <cublasLt.h>
#include <stdint.h>

#include <string>
#include <vector>

namespace kvsweep::engine {

// The fields, in the order a table entry lists them.
inline constexpr cublasLtMatmulAlgoConfigAttributes_t kAlgoConfigFields[] = {
    CUBLASLT_ALGO_CONFIG_ID,
    CUBLASLT_ALGO_CONFIG_TILE_ID,
    CUBLASLT_ALGO_CONFIG_STAGES_ID,
    CUBLASLT_ALGO_CONFIG_SPLITK_NUM,
    CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME,
    CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING,
    CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION,
    CUBLASLT_ALGO_CONFIG_INNER_SHAPE_ID,
    CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID};
inline constexpr int kNumAlgoConfigFields =
    sizeof(kAlgoConfigFields) / sizeof(kAlgoConfigFields[0]);

// A field's value, -1 where cuBLASLt does not report it. The inner and cluster shapes are 16-bit
// and the others 32-bit: cuBLASLt refuses a read of another size.
inline int64_t AlgoConfigField(const cublasLtMatmulAlgo_t& algo,
                               cublasLtMatmulAlgoConfigAttributes_t field) {
  const bool narrow = field == CUBLASLT_ALGO_CONFIG_INNER_SHAPE_ID ||
                      field == CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID;
  uint32_t v32 = 0;
  uint16_t v16 = 0;
  size_t written = 0;
  if (cublasLtMatmulAlgoConfigGetAttribute(&algo, field, narrow ? static_cast<void*>(&v16) : &v32,
                                           narrow ? sizeof(v16) : sizeof(v32),
                                           &written) != CUBLAS_STATUS_SUCCESS) {
    return -1;
  }
  return narrow ? static_cast<int64_t>(v16) : static_cast<int64_t>(static_cast<int32_t>(v32));
}

// "{id, tile, stages, ...}": the fields as a table entry writes them.
inline std::string DescribeAlgoConfig(const cublasLtMatmulAlgo_t& algo) {
  std::string out = "{";
  for (int i = 0; i < kNumAlgoConfigFields; ++i) {
    out += (i > 0 ? ", " : "") + std::to_string(AlgoConfigField(algo, kAlgoConfigFields[i]));
  }
  return out + "}";
}

// y [m, n] = x [m, k] w^T (row major, one storage dtype, fp32 accumulation) in cuBLASLt's
// column-major terms: A = w as k x n with TRANSA = T, B = x as k x m, C = D = y as n x m.
struct LtDescriptors {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
};

inline void DestroyLtDescriptors(LtDescriptors* d) {
  if (d->c != nullptr) cublasLtMatrixLayoutDestroy(d->c);
  if (d->b != nullptr) cublasLtMatrixLayoutDestroy(d->b);
  if (d->a != nullptr) cublasLtMatrixLayoutDestroy(d->a);
  if (d->op != nullptr) cublasLtMatmulDescDestroy(d->op);
  *d = LtDescriptors();
}

// Creates the product's descriptors into *d (the caller destroys them) and asks the heuristic for
// up to 32 candidates within `workspace` bytes into *found. Returns the first failing call's
// status, else the heuristic's; *found is empty unless it succeeded.
inline cublasStatus_t AskLtHeuristic(cublasLtHandle_t handle, bool bf16, int64_t m, int64_t n,
                                     int64_t k, size_t workspace, LtDescriptors* d,
                                     std::vector<cublasLtMatmulHeuristicResult_t>* found) {
  const cudaDataType_t t = bf16 ? CUDA_R_16BF : CUDA_R_16F;
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  cublasLtMatmulPreference_t pref = nullptr;
  cublasStatus_t st = cublasLtMatmulDescCreate(&d->op, CUBLAS_COMPUTE_32F, CUDA_R_32F);
  auto then = [&st](auto call) {
    if (st == CUBLAS_STATUS_SUCCESS) st = call();
  };
  then([&] {
    return cublasLtMatmulDescSetAttribute(d->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta));
  });
  then([&] {
    return cublasLtMatmulDescSetAttribute(d->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb));
  });
  then([&] { return cublasLtMatrixLayoutCreate(&d->a, t, k, n, k); });
  then([&] { return cublasLtMatrixLayoutCreate(&d->b, t, k, m, k); });
  then([&] { return cublasLtMatrixLayoutCreate(&d->c, t, n, m, n); });
  then([&] { return cublasLtMatmulPreferenceCreate(&pref); });
  then([&] {
    return cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                &workspace, sizeof(workspace));
  });
  found->assign(32, cublasLtMatmulHeuristicResult_t{});
  int returned = 0;
  then([&] {
    return cublasLtMatmulAlgoGetHeuristic(handle, d->op, d->a, d->b, d->c, d->c, pref,
                                          static_cast<int>(found->size()), found->data(),
                                          &returned);
  });
  found->resize(st == CUBLAS_STATUS_SUCCESS ? returned : 0);
  if (pref != nullptr) cublasLtMatmulPreferenceDestroy(pref);
  return st;
}

}  // namespace kvsweep::engine

#endif  // KVSWEEP_WORKER_ENGINE_CUBLASLT_CONFIG_H_

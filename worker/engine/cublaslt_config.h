// cuBLASLt algorithm configurations as the tuned products' table (tuned_gemm.cu) records them and
// tools/gpu/gemm_algos.cu prints them: nine CUBLASLT_ALGO_CONFIG_* fields. Header only, no
// libtorch, for nvcc.
#ifndef KVSWEEP_WORKER_ENGINE_CUBLASLT_CONFIG_H_
#define KVSWEEP_WORKER_ENGINE_CUBLASLT_CONFIG_H_

#include <cublasLt.h>
#include <stdint.h>

#include <string>

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

}  // namespace kvsweep::engine

#endif  // KVSWEEP_WORKER_ENGINE_CUBLASLT_CONFIG_H_

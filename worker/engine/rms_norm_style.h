// Where an RMSNorm rounds to the storage dtype: transformers' families differ only there (r is
// rsqrt(mean(x^2) + eps), computed in fp32). No includes, so that the CUDA kernels
// (fused_layer_kernel.h) and the libtorch ops (model.h) share it.
#ifndef KVSWEEP_WORKER_ENGINE_RMS_NORM_STYLE_H_
#define KVSWEEP_WORKER_ENGINE_RMS_NORM_STYLE_H_

namespace kvsweep::engine {

enum RmsNormStyle : int {
  kRmsLlama = 0,  // w * round(x * r): LlamaRMSNorm (Llama, Mistral, Qwen, Phi-3, Mixtral)
  kRmsGemma = 1,  // round(x * r * (1 + w)): GemmaRMSNorm (Gemma 2 and 3)
  kRmsOlmo2 = 2,  // round(w * x * r): Olmo2RMSNorm
};

}  // namespace kvsweep::engine

#endif  // KVSWEEP_WORKER_ENGINE_RMS_NORM_STYLE_H_

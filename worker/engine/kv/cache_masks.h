// Which state each cache entry is in when a given query reads it, for methods whose stored state
// depends on the decode step (docs/kv-methods.md, "Masks").
//
// At decode step t the cache holds tokens 0..t (token t stored before it is read). With an fp16
// residual window of R tokens, the R most recent tokens are kept uncompressed. With channel-axis
// blocks of G tokens (KIVI keys), tokens outside the window are quantized a whole block at a time,
// so at step t the first floor(max(0, t + 1 - R) / G) * G tokens are compressed and the rest (the
// unfinished block plus the window) are fp16. Token-axis quantization is block size 1.
//
// Returned masks are bool [T, T]: use_compressed[t][j] is true iff query t reads entry j in its
// compressed state (entries j > t are never read; their value is irrelevant).
#ifndef KVSWEEP_WORKER_ENGINE_KV_CACHE_MASKS_H_
#define KVSWEEP_WORKER_ENGINE_KV_CACHE_MASKS_H_

#include <cstdint>

#include "worker/engine/torch_util.h"

namespace kvsweep::engine {

// block >= 1 (1 = token axis), residual >= 0.
torch::Tensor CompressedStateMask(int64_t T, int block, int residual, torch::Device device);

// Number of compressed tokens in a cache of `n` tokens under the rule above.
int64_t CompressedTokens(int64_t n, int block, int residual);

}  // namespace kvsweep::engine

#endif  // KVSWEEP_WORKER_ENGINE_KV_CACHE_MASKS_H_

// Scores continuation log-likelihoods in batches: the engine's one hot loop.
//
// A request is an input sequence and the tokens its last positions must predict (lm-eval's
// (context, continuation) after truncation): position input.size() - cont.size() + i predicts
// cont[i]. Requests are sorted by length, right-padded into batches (causal attention makes the
// padding invisible to real positions, for every codec, since compressed state never crosses
// from later to earlier tokens), run through the model with the job's KV codec, and only the
// scored positions go through the LM head.
#ifndef KVSWEEP_WORKER_ENGINE_SCORER_H_
#define KVSWEEP_WORKER_ENGINE_SCORER_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/kv/kv_codec.h"
#include "worker/engine/model.h"

namespace kvsweep::engine {

struct ScoreRequest {
  std::vector<int32_t> input;
  std::vector<int32_t> cont;  // the last cont.size() positions of input predict these
};

struct ScoreResult {
  double loglik = 0;   // sum of log p(cont[i] | ...)
  bool greedy = true;  // every cont token is the argmax
};

struct ScorerOptions {
  // Tokens per forward batch (B x padded T); 0 = a default for the device.
  int64_t batch_tokens = 0;
  // Largest fraction of padding tokens a batch may hold (sorted lengths make batches of similar
  // length; padded positions cost compute but never change results).
  double max_padding = 0.1;
  // Rows per LM-head chunk (bounds the [rows, vocab] logits buffers).
  int64_t head_rows = 2048;
};

struct ScoreStats {
  int64_t forward_tokens = 0;  // real (unpadded) tokens run through the model
  int64_t padded_tokens = 0;
  int64_t sequences = 0;
  int64_t scored_tokens = 0;
};

// Returns false to stop (cancellation); `fraction` is of forward tokens done.
using ScoreProgress = std::function<bool(double fraction)>;

// The batch budget used when ScorerOptions.batch_tokens is 0: 4096 tokens on the CPU; on a GPU,
// BatchTokensFor the model's ActivationBytesPerToken and the device's free memory.
int64_t DefaultBatchTokens(const Model& model, const KvCodec* codec,
                           const std::vector<ScoreRequest>& requests);

// Live device bytes per batch token in one layer while windows of up to max_len tokens are scored
// (elt: the compute dtype's size); with soft-capped attention scores (gemma2), whose explicit
// softmax holds [B, H, T, T] scores, it grows with max_len.
int64_t ActivationBytesPerToken(const ModelConfig& c, int64_t elt, int64_t kv_heads,
                                bool position_dependent, int64_t max_len);

// Tokens per batch: half of free_bytes over bytes_per_token, at least one window of max_len and at
// most 262144; 16384 when the free memory is unknown (free_bytes <= 0).
int64_t BatchTokensFor(int64_t bytes_per_token, int64_t max_len, int64_t free_bytes);

// Errors: kInvalidArgument (empty input, input longer than the model allows, a token id outside
// the vocabulary, cont longer than input), kCancelled, kResourceExhausted (OOM), kInternal.
absl::StatusOr<std::vector<ScoreResult>> ScoreRequests(const Model& model, const KvCodec* codec,
                                                       const std::vector<ScoreRequest>& requests,
                                                       const ScorerOptions& options,
                                                       const ScoreProgress& progress,
                                                       ScoreStats* stats,
                                                       AttentionObserver* observer = nullptr);

}  // namespace kvsweep::engine

#endif  // KVSWEEP_WORKER_ENGINE_SCORER_H_

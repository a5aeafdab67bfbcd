// Greedy decoding (temperature 0): the simplest end-to-end check that a model is loaded right
// (stories260K must continue "Once upon a time" as the assets README quotes), and a way to eyeball
// what a KV method does to text. Each step re-runs the whole prefix, so compressed state is
// exactly what the cache would hold at that step.
#ifndef KVSWEEP_WORKER_ENGINE_GENERATE_H_
#define KVSWEEP_WORKER_ENGINE_GENERATE_H_

#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/model.h"

namespace kvsweep::engine {

// Appends up to `max_new` argmax tokens to `prompt` (which should start with BOS where the
// model expects one), stopping after `stop_id` (if >= 0) is produced or max positions reached.
// Returns only the new tokens. kInvalidArgument for an empty prompt or ids out of range.
absl::StatusOr<std::vector<int32_t>> GreedyGenerate(const Model& model, const KvCodec* codec,
                                                    const std::vector<int32_t>& prompt, int max_new,
                                                    int32_t stop_id);

}  // namespace kvsweep::engine

#endif  // KVSWEEP_WORKER_ENGINE_GENERATE_H_

#include "worker/engine/generate.h"

#include "absl/strings/str_cat.h"

namespace kvsweep::engine {

absl::StatusOr<std::vector<int32_t>> GreedyGenerate(const Model& model, const KvCodec* codec,
                                                    const std::vector<int32_t>& prompt, int max_new,
                                                    int32_t stop_id) {
  if (prompt.empty()) return absl::InvalidArgumentError("generate: empty prompt");
  const ModelConfig& c = model.config();
  for (int32_t id : prompt) {
    if (id < 0 || id >= c.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("generate: token id ", id, " outside the vocabulary"));
    }
  }
  return GuardTorch("generate", [&]() -> absl::StatusOr<std::vector<int32_t>> {
    std::vector<int32_t> seq = prompt, out;
    for (int i = 0; i < max_new && static_cast<int>(seq.size()) < c.max_positions; ++i) {
      torch::Tensor ids =
          torch::tensor(std::vector<int64_t>(seq.begin(), seq.end()), torch::kLong).unsqueeze(0);
      torch::Tensor h = model.Forward(ids, codec);
      const int32_t next =
          static_cast<int32_t>(model.Logits(h.select(1, h.size(1) - 1)).argmax(-1).item<int64_t>());
      out.push_back(next);
      seq.push_back(next);
      if (next == stop_id) break;
    }
    return out;
  });
}

}  // namespace kvsweep::engine
